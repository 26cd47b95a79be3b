#!/usr/bin/env bash
# The README's first quick-start command: build the example agents for wasm32-wasip2 and
# the braid binary, then run the parallel example workflow through the real CLI, recorded
# in the embedded SQLite default (./braid.db).
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
# The same build the tests use (tests/artifacts/build.rs), into the same target folder.
cargo build --quiet --profile agent --target wasm32-wasip2 --target-dir target/agents \
  -p word-count -p shout -p digest-agent -p merge
cargo build --quiet --release -p braid
agents=target/agents/wasm32-wasip2/agent
set -x
./target/release/braid run examples/workflows/parallel.json --agents "$agents" \
  --input '{"text": "Braid runs every step in its own sandbox"}'
