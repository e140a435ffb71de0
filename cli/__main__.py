"""``python -m cli``: the same as the ``vizcnn`` command (handy under torchrun)."""
from cli.main import main

main()
