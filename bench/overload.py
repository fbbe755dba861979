"""Overload, for longer than the suite runs it (the experiment is tests/e2e/overload.py).

    python -m bench.overload [--seconds 60] [--clients 12] [--max-pending 200]

Prints a summary and writes bench/results/overload.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bench.common import write_results
from tests.e2e.overload import measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--max-pending", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spearlet-overload-") as tmp:
        figures = asyncio.run(measure(args.seconds, args.clients, args.max_pending, Path(tmp) / "data"))
    print(json.dumps(figures, indent=2))
    print(f"wrote {write_results('overload', figures)}")


if __name__ == "__main__":
    main()
