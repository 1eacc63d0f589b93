//! tgt management requests: decoded, then handled against a table with a
//! daemon stand-in; a bad request must fail cleanly.
//!
//! The input is a sequence of requests (each header's `len` says where the
//! next one starts), handled in turn against one table, so that later
//! requests find the targets, LUNs, accounts and ACLs earlier ones made.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtgt::mgmt::ipc::{RequestHeader, REQ_HDR_LEN};
use rtgt::mgmt::{self, BackingInfo, Effect, Live, LunSpec, SessionInfo, TargetTable, TgtadmError};

struct Fake;
impl Live for Fake {
    fn open_backing(&mut self, _tid: u32, _spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        Ok(BackingInfo {
            size_bytes: 1 << 30,
            readonly: false,
            physical_block_size: 0,
            identity: None,
        })
    }
    fn sessions(&self, _tid: u32) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn apply(&mut self, _effect: Effect) {}
}

fuzz_target!(|data: &[u8]| {
    let mut table = TargetTable::new();
    let mut rest = data;
    // A bounded number of requests keeps one input's run time small.
    for _ in 0..16 {
        let Ok(req) = mgmt::ipc::decode_request(rest) else {
            return;
        };
        let _ = mgmt::handle(&mut table, &req, &mut Fake);
        let _ = mgmt::handle(&mut table, &req, &mut Fake);
        let mut hdr = [0u8; REQ_HDR_LEN];
        hdr.copy_from_slice(&rest[..REQ_HDR_LEN]);
        // decode_request succeeded, so `len` is within the input.
        let len = RequestHeader::decode(&hdr).len as usize;
        rest = &rest[len..];
    }
});
