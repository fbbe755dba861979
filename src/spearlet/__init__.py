"""spearlet: a function-execution node for SPEAR."""

__version__ = "0.1.0"
