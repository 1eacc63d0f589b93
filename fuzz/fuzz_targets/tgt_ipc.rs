//! tgt management requests: decoded, then handled against a table with a
//! daemon stand-in; a bad request must fail cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtgt::mgmt::{self, BackingInfo, Effect, Live, LunSpec, SessionInfo, TargetTable, TgtadmError};

struct Fake;
impl Live for Fake {
    fn open_backing(&mut self, _tid: u32, _spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        Ok(BackingInfo { size_bytes: 1 << 30, readonly: false, physical_block_size: 0 })
    }
    fn sessions(&self, _tid: u32) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn apply(&mut self, _effect: Effect) {}
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = mgmt::ipc::decode_request(data) {
        let mut table = TargetTable::new();
        let _ = mgmt::handle(&mut table, &req, &mut Fake);
        let _ = mgmt::handle(&mut table, &req, &mut Fake);
    }
});
