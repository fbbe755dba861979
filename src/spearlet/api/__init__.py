"""Transports: thin adapters between the wire and the engine (gRPC, HTTP, completion callbacks)."""
