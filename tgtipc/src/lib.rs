//! tgt 1.0.85's management IPC, shared by the daemon (`rtgtd` serves it)
//! and the clients (`rtgtadm`, `rtgt-admin`, which send it):
//!
//! - [`ipc`]: the wire layout (`tgtadm_req` / `tgtadm_rsp`) and error codes.
//! - [`request`]: the typed request and tgt's C-style parameter parsing.
//! - [`socket`]: the socket and its lock file at tgt's path.

pub mod ipc;
pub mod request;
pub mod socket;
