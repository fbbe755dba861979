"""Data and events every layer agrees on: models, errors, codes, ids, values, lifecycle events.

Imports nothing of the node beyond itself (ARCHITECTURE.md, "Layers").
"""
