#!/usr/bin/env bash
# Every test of rtgt: format and lint, unit and integration tests (the
# integration tests use libiscsi's tools, qemu-img, tgtd and tgtadm when
# installed; the RBD tests need Ceph, which this script requires), then
# libiscsi's iscsi-test-cu conformance suite against a fresh rtgtd with a
# pass floor that only goes up, on a file LUN and on an RBD LUN served by
# two gateways at once.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# The RBD tests fail rather than skip when Ceph is missing.
export RTGT_REQUIRE_CEPH=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo build --workspace --all-targets
cargo test --workspace
# The initiator's interoperability suite again, now against rtgtd.
RTGT_TEST_DAEMON="$PWD/target/debug/rtgtd" cargo test -p initiator --test against_tgtd
# A 60-second soak: 64 sessions x QD64, 4 KiB-1 MiB, every byte verified,
# memory bounded, nothing left after logout (bench/soak.sh runs it longer).
RTGT_TEST_DAEMON="$PWD/target/debug/rtgtd" cargo test -p initiator --test soak -- --nocapture
tests/conformance/run.sh target/debug/rtgtd target/conformance
# The same suite on an RBD LUN in a throwaway one-node Ceph cluster, held
# to the file LUN's floor, with two gateways (port groups 1 and 2) serving
# the image under one IQN: the suite's second URL goes to the second, so
# its reservation, PR, COMPARE AND WRITE and multipath tests run across
# gateways.
ceph_dir=$(mktemp -d)
trap 'tests/ceph/cluster.sh stop "$ceph_dir"; rm -rf "$ceph_dir"' EXIT
RTGT_CONFORMANCE_RBD=$(tests/ceph/cluster.sh start "$ceph_dir" | tail -1) RTGT_CONFORMANCE_GATEWAYS=2 \
  tests/conformance/run.sh target/debug/rtgtd target/conformance-rbd
