"""Node logging: one line per event on stderr, never the function's secrets or tokens."""

from __future__ import annotations

import logging
import os


def configure_logging() -> None:
    level = os.environ.get("SPEARLET_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # grpc and uvicorn are chatty at INFO about things a user does not act on.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
