//! The `session_sequence` fuzz target's harness on seeded pseudo-random
//! input, so its invariants are checked on every test run (the fuzzer
//! itself needs nightly and runs separately: see fuzz/RESULTS.md).

#[path = "common/sequence.rs"]
mod sequence;

#[test]
fn random_sequences_keep_the_invariants() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut total = sequence::Seen::default();
    for _ in 0..8000 {
        let n = (next() % 600) as usize;
        let input: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        let seen = sequence::run(&input);
        total.scsi += seen.scsi;
        total.pdus_out += seen.pdus_out;
        total.r2ts += seen.r2ts;
    }
    // The sequences reach SCSI, solicit data and get answers.
    assert!(total.scsi > 2000, "{total:?}");
    assert!(total.r2ts > 1000, "{total:?}");
    assert!(total.pdus_out > 20000, "{total:?}");
}
