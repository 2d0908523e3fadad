"""``python -m guardrail`` runs the CLI."""

from guardrail.cli import entrypoint

entrypoint()
