#!/usr/bin/env bash
# Fuzzes the readers of other people's files (tests/fuzz.rs) with many more cases than the
# suite runs: the NIfTI reader and the session readers (state.json, events.jsonl).
#
#   bench/fuzz.sh [CASES]     (default 5000 per property)
set -euo pipefail
cd "$(dirname "$0")/.."
PROPTEST_CASES="${1:-5000}" exec ./with-torch cargo test --release --test fuzz -- --nocapture
