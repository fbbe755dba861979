"""Crash safety at full size (the experiment is tests/e2e/crash_safety.py, which the suite runs small).

    python -m bench.crash_safety [--executions 1000] [--kills 5] [--seed 1]

Prints a summary and writes bench/results/crash_safety.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import write_results
from tests.e2e.crash_safety import run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spearlet-crash-") as tmp:
        figures = run(args.executions, args.kills, args.seed, Path(tmp) / "data")
    print(json.dumps(figures, indent=2))
    print(f"wrote {write_results('crash_safety', figures)}")


if __name__ == "__main__":
    main()
