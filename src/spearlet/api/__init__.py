"""Transports: thin adapters between the wire and the core."""
