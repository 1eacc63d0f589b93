//! PDU framing and digests: any byte stream is either framed, asks for
//! more, or is refused; never a panic or an allocation past the limit.
#![no_main]
use iscsi::pdu::{decode, Digests};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let dg = Digests {
        header: data[0] & 1 != 0,
        data: data[0] & 2 != 0,
    };
    let mut rest = &data[1..];
    while let Ok(Some((pdu, n))) = decode(rest, dg, 65536) {
        assert!(n <= rest.len());
        assert!(pdu.data.len() <= 65536);
        let again = pdu.encode(dg);
        assert_eq!(decode(&again, dg, 65536).unwrap().unwrap().0, pdu);
        rest = &rest[n..];
    }
});
