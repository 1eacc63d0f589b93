#!/usr/bin/env bash
# The long soak: 64 sessions x queue depth 64 of mixed 4 KiB - 1 MiB random
# reads and writes against a release rtgtd, every byte verified end to end
# (rtgt-load --verify), rtgtd's RSS sampled, and nothing (sessions, threads,
# memory) left after logout. Ten minutes by default; the test command runs
# the same test for 60 s.
# usage: bench/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
RTGT_SOAK_SECONDS=${1:-600} RTGT_TEST_DAEMON="$PWD/target/release/rtgtd" \
  cargo test --release -p initiator --test soak -- --nocapture
