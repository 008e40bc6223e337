"""``python -m advdim`` runs the command-line interface."""

from advdim.cli import entry

entry()
