//! Arbitrary sequences of initiator PDUs, raw bytes, SCSI completions,
//! timeouts, connection churn and resets against one sans-I/O session
//! (`iscsi::session::Session`); the harness checks its invariants (no
//! panic, at most the window's width held, StatSN never backwards, no
//! task or window slot left once everything has ended).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../iscsi/tests/common/sequence.rs"]
mod sequence;

fuzz_target!(|data: &[u8]| {
    sequence::run(data);
});
