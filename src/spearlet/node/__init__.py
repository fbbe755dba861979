"""A node: every part built from the settings and wired together, then served (the composition root)."""

from spearlet.node.node import Node, check_settings, serve

__all__ = ["Node", "check_settings", "serve"]
