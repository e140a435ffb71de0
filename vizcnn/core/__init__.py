"""The core every layer stands on: reverse rules (``rules``), layers by name, their
geometry and the one tap (``layers``), the model's state and device (``state``), the
errors (``errors``), batches, progress and statistics. Imports nothing else of vizcnn."""
