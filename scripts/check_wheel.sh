#!/usr/bin/env bash
# A user's install, end to end: build the wheel from the committed tree, install it with its
# dependencies from the package index into a fresh venv, start `spearlet serve` with the bundled
# tasks, and invoke each one with the installed CLI. (tests/test_packaging.py checks the same wheel
# offline, borrowing the dev environment's dependencies; this also proves the declared ones.)
# Usage: scripts/check_wheel.sh [PYTHON]   (default python3; .ci/run calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
work=$(mktemp -d)
chmod 755 "$work" # the node runs functions as `nobody` when root: they must reach the venv
node=""
cleanup() {
  if [[ -n $node ]]; then kill "$node" 2>/dev/null || true; wait "$node" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/source" "$work/run"
git archive HEAD | tar -x -C "$work/source"
"$python" -m venv "$work/venv"
bin=$work/venv/bin
"$bin/pip" wheel -q --no-deps -w "$work/dist" "$work/source"
"$bin/pip" install -q "$work"/dist/spearlet-*.whl
echo "installed: $("$bin/spearlet" --version)"

(cd "$work/run" && exec "$bin/spearlet" serve --grpc-port 0 --http-port 0 >"$work/node.log" 2>&1) &
node=$!
target=""
for _ in $(seq 300); do
  target=$(sed -n 's/^ *gRPC *//p' "$work/node.log")
  [[ -n $target ]] && break
  kill -0 "$node" 2>/dev/null || { cat "$work/node.log"; echo "the node did not start" >&2; exit 1; }
  sleep 0.1
done
[[ -n $target ]] || { cat "$work/node.log"; echo "the node did not listen in 30 s" >&2; exit 1; }

# task, its parameters, the exit code and what the output must hold
check() {
  local task=$1 expect=$2 holds=$3
  shift 3
  local out code=0
  out=$("$bin/spearlet" invoke "$task" "$@" --target "$target" --json) || code=$?
  if [[ $code != "$expect" || $out != *"$holds"* ]]; then
    echo "$task: exit $code (expected $expect), output: $out" >&2
    exit 1
  fi
  echo "ok: $task"
}
check hello 0 '"greeting": "Hello, Ada!"' -p name=Ada
check echo 0 '"x": 1' -p x=1
check sleep 0 '"slept": 0' -p seconds=0
check fail 1 'NONZERO_EXIT'
check greet 0 '"greeting": "Hello, Ada!"' -p name=Ada
check wasm-echo 0 '"x": 1' -p x=1
check wasm-hello 0 '"hello": "wasm"'
echo "the installed wheel serves every bundled task"
