"""llmtune: a command-line toolkit that takes a language model through its training life."""

__version__ = "0.1.0"
