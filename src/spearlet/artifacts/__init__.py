"""Fetching artifacts by path or URL, verifying checksums, caching downloads by digest."""

from spearlet.artifacts.fetch import Artifact, ArtifactFetcher

__all__ = ["Artifact", "ArtifactFetcher"]
