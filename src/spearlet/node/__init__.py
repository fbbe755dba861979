"""A node: every part built from the settings and wired together, then served (the composition root)."""

from spearlet.node.node import Node, serve

__all__ = ["Node", "serve"]
