#!/usr/bin/env python3
"""Greets `name`. The function name arrives in SPEAR_FUNCTION_NAME, the parameters as JSON on stdin."""

import json
import os
import sys

params = json.load(sys.stdin)
name = params.get("name") or "world"
greeting = f"Hello, {name}!"
if os.environ.get("SPEAR_FUNCTION_NAME") == "shout":
    greeting = greeting.upper()
print(f"greeting {name}", file=sys.stderr)
json.dump({"greeting": greeting}, sys.stdout)
