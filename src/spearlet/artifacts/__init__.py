"""Fetching artifacts by path or URL, verifying checksums, caching them by digest, sharing them
across a cluster."""

from spearlet.artifacts.fetch import Artifact, ArtifactFetcher

__all__ = ["Artifact", "ArtifactFetcher"]
