//! Text key=value parsing (RFC 7143 §6) with its limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(kvs) = iscsi::text::parse(data) {
        let again = iscsi::text::encode(&kvs);
        assert_eq!(iscsi::text::parse(&again).unwrap(), kvs);
    }
});
