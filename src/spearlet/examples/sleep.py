#!/usr/bin/env python3
"""Sleeps `seconds` (default 1) and reports how long it slept."""

import json
import sys
import time

seconds = float(json.load(sys.stdin).get("seconds", 1))
start = time.monotonic()
while time.monotonic() - start < seconds:
    print(f"slept {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)
    time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - start))))
json.dump({"slept": round(time.monotonic() - start, 3)}, sys.stdout)
