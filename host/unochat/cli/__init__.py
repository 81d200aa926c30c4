"""cli: the `unochat` command (main) and the interactive chat (chat). May import every subpackage; the
only place that imports lazily (main.py), to keep torch off the commands that do not train."""
from .main import main

__all__ = ["main"]
