"""The gRPC transport (stubs generated from spearlet.proto and committed)."""
