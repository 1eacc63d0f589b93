//! What the management plane needs from the running daemon: backing store
//! checks, live sessions, and a way to hand it committed changes.

use std::net::SocketAddr;

use super::ipc::TgtadmError;
use super::table::LunSpec;
pub use crate::stats::Snapshot;

/// One connection of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Connection id (CID, RFC 7143 section 11.12.4).
    pub cid: u32,
    /// The initiator's address.
    pub peer: SocketAddr,
}

/// One session (I_T nexus) of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The I_T nexus id; tgt uses the TSIH (RFC 7143 section 11.12.6), and
    /// `--sid` addresses sessions by it.
    pub nexus_id: u64,
    /// InitiatorName.
    pub initiator: String,
    /// InitiatorAlias, if sent.
    pub alias: Option<String>,
    /// Connections, first one first (`show` prints the first in the target
    /// listing, all in `--mode conn`).
    pub connections: Vec<ConnInfo>,
}

/// What opening a backing store found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackingInfo {
    /// Size of the medium in bytes.
    pub size_bytes: u64,
    /// The store could only be opened read-only (tgt's `rdwr` falls back to
    /// read-only on EACCES/EROFS and marks the unit read-only).
    pub readonly: bool,
    /// Physical block size reported by the device (0 if unknown); used to
    /// derive LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
    pub physical_block_size: u32,
    /// A name for the medium that is the same wherever it is opened (an
    /// RBD image: cluster, pool and image ids); the unit's SCSI identity
    /// then derives from it (see `mgmt::handler::medium_identity`).
    pub identity: Option<String>,
}

/// A target's I/O counters as management names things: sessions by I_T
/// nexus id (`--sid`), connections by CID. Counted since the object
/// appeared (a LUN since it was added, a session since login).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetCounters {
    /// All commands of the target.
    pub total: Snapshot,
    /// By LUN.
    pub luns: Vec<(u64, Snapshot)>,
    /// By nexus id: the session's totals and its connections' (by CID).
    pub sessions: Vec<SessionCounters>,
}

/// A session's counters: (nexus id, its totals, its connections' by CID).
pub type SessionCounters = (u64, Snapshot, Vec<(u32, Snapshot)>);

/// A committed configuration change, handed to the daemon after the table
/// was updated. `LunSpec`s are complete: the daemon needs no other lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A target was created; its LUN 0 follows as [`Effect::LunAdded`].
    TargetCreated {
        /// Target id.
        tid: u32,
        /// Target name.
        name: String,
    },
    /// A target was deleted; with `force`, its sessions must be closed.
    TargetDeleted {
        /// Target id.
        tid: u32,
        /// `--force` was given.
        force: bool,
    },
    /// A logical unit was added (its backing store was checked by
    /// [`Live::open_backing`]).
    LunAdded {
        /// Target id.
        tid: u32,
        /// The unit.
        spec: LunSpec,
    },
    /// A logical unit was removed.
    LunDeleted {
        /// Target id.
        tid: u32,
        /// LUN.
        lun: u64,
    },
    /// A logical unit's attributes (or its medium) changed.
    LunUpdated {
        /// Target id.
        tid: u32,
        /// The unit as it is now.
        spec: LunSpec,
    },
    /// A target went ready or offline.
    TargetStateChanged {
        /// Target id.
        tid: u32,
        /// Ready now.
        ready: bool,
    },
    /// A target's session parameters, NOP settings or redirection changed
    /// (they apply to new sessions; read them from the table).
    TargetParamsChanged {
        /// Target id.
        tid: u32,
    },
    /// ACL rules of a target changed (apply at the next login).
    AclChanged {
        /// Target id.
        tid: u32,
    },
    /// Accounts or their bindings changed.
    AccountsChanged,
    /// The system went ready or offline.
    SystemStateChanged {
        /// Ready now.
        ready: bool,
    },
    /// Start accepting on a portal (bound by [`Live::bind_portal`]).
    PortalAdded(SocketAddr),
    /// Stop listening on a portal.
    PortalRemoved(SocketAddr),
    /// Close one connection of a session.
    ConnectionClose {
        /// Target id.
        tid: u32,
        /// Session (nexus) id.
        sid: u64,
        /// Connection id.
        cid: u32,
    },
    /// `--mode lld --op stop`: the iSCSI driver exited; stop listening.
    LldStopped,
    /// `--mode lld --op start`: the iSCSI driver runs again; listen again.
    LldStarted,
    /// Ask the initiator to log a connection out (iSCSI AsyncEvent 1); it
    /// is closed if it has not within [`LOGOUT_WAIT`].
    RequestLogout {
        /// Target id.
        tid: u32,
        /// Session (nexus) id.
        sid: u64,
        /// Connection id.
        cid: u32,
    },
    /// SPDK's latency histogram of a target on (from empty) or off.
    HistogramChanged {
        /// Target id.
        tid: u32,
        /// On.
        enable: bool,
    },
    /// `--mode system --op delete` succeeded (no target left): the daemon
    /// should exit; the management loop has already stopped accepting.
    SystemDeleted,
}

/// How long an initiator asked to log out has to do so (SPDK's
/// `ISCSI_LOGOUT_REQUEST_TIMEOUT`).
pub const LOGOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Work a [`Live`] put off because it could block the management thread
/// (opening a backing store: a slow NFS file or a remote image). The
/// request that needed it failed without changing anything; the caller
/// runs the work on another thread, hands its result back with
/// [`Live::finish_deferred`] and handles the request again, which then
/// finds the store open.
pub struct Deferred(pub Box<dyn FnOnce() -> DeferredDone + Send>);

/// The result of a [`Deferred`], for [`Live::finish_deferred`].
pub struct DeferredDone(pub Box<dyn std::any::Any + Send>);

/// The running daemon, as seen from the management plane.
pub trait Live {
    /// Work put off during the last request (see [`Deferred`]).
    fn take_deferred(&mut self) -> Option<Deferred> {
        None
    }

    /// The result of work taken with [`take_deferred`](Live::take_deferred).
    fn finish_deferred(&mut self, done: DeferredDone) {
        let _ = done;
    }

    /// A request begins (it may run several rounds, see [`Deferred`]).
    fn begin_request(&mut self) {}

    /// A request is answered: stores opened for it and not used are
    /// closed.
    fn end_request(&mut self) {}

    /// Check (open or stat) the backing store for a new LUN or a new medium
    /// (`spec.path` is set, `spec.bstype` is a file-backed type). Called
    /// as the last fallible step: on `Ok` the change is committed and
    /// followed by [`Effect::LunAdded`] / [`Effect::LunUpdated`]. tgt
    /// answers [`TgtadmError::InvalidRequest`] for a missing or unusable
    /// file.
    fn open_backing(&mut self, tid: u32, spec: &LunSpec) -> Result<BackingInfo, TgtadmError>;

    /// Sessions (I_T nexuses) of a target, newest first (tgt's order).
    fn sessions(&self, tid: u32) -> Vec<SessionInfo>;

    /// Apply a committed change to the running target loops.
    fn apply(&mut self, effect: Effect);

    /// Bind a new portal's listening socket (tgt answers
    /// [`TgtadmError::InvalidRequest`] when it cannot). On `Ok`,
    /// [`Effect::PortalAdded`] follows.
    fn bind_portal(&mut self, addr: SocketAddr) -> Result<(), TgtadmError> {
        let _ = addr;
        Ok(())
    }

    /// Whether a logical unit has commands queued or running (deleting it
    /// then fails with [`TgtadmError::LunActive`]).
    fn lun_busy(&self, tid: u32, lun: u64) -> bool {
        let _ = (tid, lun);
        false
    }

    /// The daemon's I/O counters, for `--op stat` (none in tests' fakes).
    fn stats(&self) -> Option<std::sync::Arc<crate::stats::Stats>> {
        None
    }

    /// A target's I/O counters for `--op stat`; `None` when the daemon
    /// keeps none (stat then shows zeros).
    fn counters(&self, tid: u32) -> Option<TargetCounters> {
        let _ = tid;
        None
    }

    /// A target's SPDK latency histogram counts (see
    /// [`crate::stats::SpdkHistogram`]), while it is on.
    fn histogram(&self, tid: u32) -> Option<Vec<u64>> {
        let _ = tid;
        None
    }

    /// The current size of a unit's backing store (`spec.path` is set, a
    /// file-backed type), for `--params disksize=auto`. The store stays
    /// in use as it is; only its size is read. The default opens it as
    /// [`Live::open_backing`] does.
    fn backing_size(&mut self, tid: u32, spec: &LunSpec) -> Result<u64, TgtadmError> {
        self.open_backing(tid, spec).map(|i| i.size_bytes)
    }

    /// Whether an initiator holds PREVENT ALLOW MEDIUM REMOVAL on the unit
    /// (SBC-3 section 5.13); shown, and refuses taking it offline.
    fn prevent_removal(&self, tid: u32, lun: u64) -> bool {
        let _ = (tid, lun);
        false
    }
}
