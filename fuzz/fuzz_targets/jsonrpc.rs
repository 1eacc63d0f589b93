//! JSON-RPC requests: framed as the socket frames them, then run against
//! one table with a daemon stand-in, in turn, so later calls find what
//! earlier ones made. Beyond not crashing, a refused call must leave the
//! table exactly as it was (no half-applied change).
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtgt::mgmt::rpc::{self, methods, Frame};
use rtgt::mgmt::{BackingInfo, Effect, Live, LunSpec, SessionInfo, TargetTable, TgtadmError};
use serde_json::Value;

struct Fake;
impl Live for Fake {
    fn open_backing(&mut self, _tid: u32, spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        match spec.path.as_deref() {
            Some(p) if p.starts_with('/') => Ok(BackingInfo {
                size_bytes: 1 << 30,
                ..BackingInfo::default()
            }),
            _ => Err(TgtadmError::InvalidRequest),
        }
    }
    fn sessions(&self, _tid: u32) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn apply(&mut self, _effect: Effect) {}
}

fuzz_target!(|data: &[u8]| {
    let values = match rpc::split(data) {
        Frame::Values(v, _) | Frame::Bad(v) => v,
    };
    let mut table = TargetTable::new();
    // A bounded number of calls keeps one input's run time small.
    for v in values.into_iter().take(32) {
        let calls = match v {
            Value::Array(a) => a,
            v => vec![v],
        };
        for c in calls.into_iter().take(32) {
            let Some(method) = c.get("method").and_then(Value::as_str) else {
                continue;
            };
            let before = table.clone();
            let r = methods::call(&mut table, &mut Fake, method, c.get("params"));
            if r.is_err() {
                assert!(table == before, "{method} failed but changed the table");
            }
        }
    }
});
