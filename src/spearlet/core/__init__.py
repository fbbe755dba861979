"""The transport-free heart of the node: tasks, executions and the invoker."""
