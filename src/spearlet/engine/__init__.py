"""What drives an invocation: the invoker, the task registry, the scheduler (ARCHITECTURE.md)."""
