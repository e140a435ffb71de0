"""Figures and HTML: results in, matplotlib Figures (built without pyplot) or text out.
Nothing here computes an analysis or writes a file; from ``vizcnn.methods`` only result
types and constants are imported."""
