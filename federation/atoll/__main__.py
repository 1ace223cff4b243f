"""``python -m atoll`` runs the CLI (the lab starts its components this way)."""

from atoll.cli.main import app

app()
