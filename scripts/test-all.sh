#!/usr/bin/env bash
# Every test of rtgt: format and lint, unit and integration tests (the
# integration tests use libiscsi's tools, qemu-img, tgtd and tgtadm when
# installed; the RBD tests need Ceph, which this script requires), then
# libiscsi's iscsi-test-cu conformance suite against a fresh rtgtd with a
# pass floor that only goes up, on a file LUN (thin; then removable and
# read-only for the suites that need them) and on an RBD LUN served by
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
# The suites that need another kind of LUN: removable (PREVENT ALLOW
# MEDIUM REMOVAL, START STOP UNIT eject and load, NOT READY while
# ejected) and read-only; then the union of the three configurations,
# which must reach 222 distinct tests.
RTGT_CONFORMANCE_PARAMS=removable=1 RTGT_CONFORMANCE_SUITES='PreventAllow|StartStopUnit|NoMedia' \
  RTGT_CONFORMANCE_FLOOR=12 tests/conformance/run.sh target/debug/rtgtd target/conformance-removable
RTGT_CONFORMANCE_PARAMS=readonly=1 RTGT_CONFORMANCE_SUITES='ReadOnly' \
  RTGT_CONFORMANCE_FLOOR=1 tests/conformance/run.sh target/debug/rtgtd target/conformance-readonly
python3 tests/conformance/summary.py --union target/conformance/all.log \
  target/conformance-removable/all.log target/conformance-readonly/all.log --floor 222
# The Debian package: built, installed, its unit's lines run (READY=1
# awaited as systemd would), a LUN served and read, removed again.
python3 scripts/test-deb.py
# The same suite on an RBD LUN in a throwaway one-node Ceph cluster, held
# to the file LUN's floor, with two gateways (port groups 1 and 2) serving
# the image under one IQN: the suite's second URL goes to the second, so
# its reservation, PR, COMPARE AND WRITE and multipath tests run across
# gateways.
ceph_dir=$(mktemp -d)
trap 'tests/ceph/cluster.sh stop "$ceph_dir"; rm -rf "$ceph_dir"' EXIT
RTGT_CONFORMANCE_RBD=$(tests/ceph/cluster.sh start "$ceph_dir" | tail -1) RTGT_CONFORMANCE_GATEWAYS=2 \
  tests/conformance/run.sh target/debug/rtgtd target/conformance-rbd
