"""The two Rich consoles every command writes to: ``out`` (results, stdout) and ``err`` (notes,
progress and errors, stderr).  Core modules (the sweep's progress, training's notes) write here
without importing the command line (:mod:`advdim.cli` re-exports both)."""

from __future__ import annotations

from rich.console import Console

out = Console()
err = Console(stderr=True)
