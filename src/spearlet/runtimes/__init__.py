"""Runtimes turn (task, input, limits) into output, logs and an outcome, and can be stopped."""

from spearlet.runtimes.base import Invocation, Limits, Outcome, Runtime, StopRequest

__all__ = ["Invocation", "Limits", "Outcome", "Runtime", "StopRequest"]
