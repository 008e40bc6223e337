"""CLI commands of advdim.theory (registered on the main app by ``advdim.cli``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this layer's commands to ``app``."""
