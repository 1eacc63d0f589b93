//! rtgtd: event loops, backends, target table and management for rtgt.
//!
//! - [`daemon`]: the main thread (portals, login, discovery, management).
//! - [`dataplane`]: one event-loop thread per target (or a pool), owning its
//!   sessions (named so, not `target/`, which tools skip as cargo's build dir).
//! - [`backend`]: backing stores behind LUNs.
//! - [`mgmt`]: the typed management core and its adapters (tgt's IPC,
//!   JSON-RPC, metrics), the target table and `show`. (The clients,
//!   `rtgtadm` and `rtgt-admin`, live in the `tgt-admin` crate.)
//! - [`registry`]: live sessions shared by login, loops and management.

pub mod backend;
pub mod daemon;
pub mod dataplane;
pub mod mgmt;
pub mod registry;
pub mod stats;
