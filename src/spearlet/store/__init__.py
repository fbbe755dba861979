"""Where tasks and execution records live: an interface and one module per implementation."""

from spearlet.store.base import Store

__all__ = ["Store"]
