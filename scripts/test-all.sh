#!/usr/bin/env bash
# Every test of rtgt: format and lint, unit and integration tests (the
# integration tests use libiscsi's tools, qemu-img, tgtd and tgtadm when
# installed), then libiscsi's iscsi-test-cu conformance suite against a
# fresh rtgtd with a pass floor that only goes up.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace
# The initiator's interoperability suite again, now against rtgtd.
RTGT_TEST_DAEMON="$PWD/target/debug/rtgtd" cargo test -p initiator --test against_tgtd
tests/conformance/run.sh target/debug/rtgtd target/conformance
