"""One writer per command: compute (``vizcnn.methods``), render (``vizcnn.render``), write
(``vizcnn.io``) — nothing else. Each ``write_*`` returns the summary it writes to
summary.json."""
