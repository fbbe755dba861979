"""Where tasks and execution records live: an interface and one module per implementation."""

from spearlet.store.base import ExecutionPage, Stats, Store, TaskPage

__all__ = ["ExecutionPage", "Stats", "Store", "TaskPage"]
