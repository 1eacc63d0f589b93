//! Types shared by the LU dispatcher (`lunset`) and the command handlers,
//! in their own module so neither imports the other.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::{DeviceType, LunConfig, TargetPort};
use crate::pr::{Names, PrState};
use crate::sense::{asc, Asc, Sense, SenseFormat};
use crate::NexusId;

/// At most this many unit attentions wait per nexus and LU; older ones are
/// dropped first (SAM-5 §5.14 lets a device server keep a bounded queue).
const MAX_PENDING_UA: usize = 8;

/// What a handler decided.
#[derive(Debug)]
pub(crate) enum Reply {
    /// GOOD; Data-In (if any) is in the output buffer, already truncated.
    Good { wanted: u64 },
    /// RESERVATION CONFLICT status, no sense.
    Conflict,
    /// A media operation for a worker thread; the Data-Out goes with it.
    Io { op: crate::io::IoOp, wanted: u64 },
}

pub(crate) type HandlerResult = Result<Reply, Sense>;

/// One logical unit and the state SCSI keeps for it.
#[derive(Debug, Clone)]
pub(crate) struct Lun {
    pub cfg: LunConfig,
    /// Control mode page SWP (software write protect), set by MODE SELECT.
    pub swp: bool,
    /// Holder of an SPC-2 RESERVE(6)/(10) reservation.
    pub reserved_by: Option<NexusId>,
    /// Nexuses whose PREVENT ALLOW MEDIUM REMOVAL prevents removal.
    pub prevent: BTreeSet<NexusId>,
    /// Persistent reservation state (SPC-4 §5.13); survives LU reset and
    /// I_T nexus loss.
    pub pr: PrState,
    /// The store keeps `pr` for every gateway serving the medium: PERSISTENT
    /// RESERVE OUT goes to it, and `pr` is the copy it last delivered.
    pub shared_pr: bool,
    /// The `pr.seq` up to which PR events were delivered to our nexuses.
    pub pr_seen: u64,
    /// The `pr.seq` last written to `cfg.pr_file`.
    pub pr_saved: crate::aptpl::SavedSeq,
    /// Nexuses whose tasks on this LU a PREEMPT AND ABORT aborted, for
    /// the transport ([`crate::LunSet::take_task_aborts`]).
    pub task_aborts: Vec<NexusId>,
    /// Orders media access: COMPARE AND WRITE and ORWRITE take it
    /// exclusively, every other media command shared, so their
    /// read-modify-write is atomic with respect to other commands
    /// (SBC-3 §5.2) although tasks run on a worker pool.
    pub io_lock: Arc<RwLock<()>>,
    /// SANITIZE (SBC-4 §4.11): [`SANITIZE_IDLE`], [`SANITIZE_RUNNING`] or
    /// [`SANITIZE_FAILED`]; shared with the media task that runs it, which
    /// outlives aborts, resets and the session that sent it.
    pub sanitize: Arc<AtomicU8>,
    /// Pending unit attentions per nexus.
    pub(crate) ua: BTreeMap<NexusId, VecDeque<Asc>>,
    /// LUN 0 that exists only because nothing was configured there.
    pub(crate) implicit: bool,
}

impl Lun {
    pub(crate) fn new(cfg: LunConfig) -> Lun {
        Lun {
            cfg,
            swp: false,
            reserved_by: None,
            prevent: BTreeSet::new(),
            pr: PrState::default(),
            shared_pr: false,
            pr_seen: 0,
            pr_saved: Default::default(),
            task_aborts: Vec::new(),
            io_lock: Arc::new(RwLock::new(())),
            sanitize: Arc::new(AtomicU8::new(SANITIZE_IDLE)),
            ua: BTreeMap::new(),
            implicit: false,
        }
    }

    pub(crate) fn add_ua(&mut self, n: NexusId, code: Asc) {
        let q = self.ua.entry(n).or_default();
        if q.contains(&code) {
            return;
        }
        if q.len() >= MAX_PENDING_UA {
            q.pop_front();
        }
        q.push_back(code);
    }

    pub(crate) fn pop_ua(&mut self, n: NexusId) -> Option<Asc> {
        let q = self.ua.get_mut(&n)?;
        let code = q.pop_front();
        if q.is_empty() {
            self.ua.remove(&n);
        }
        code
    }

    pub(crate) fn clear_ua(&mut self, n: NexusId, code: Asc) {
        if let Some(q) = self.ua.get_mut(&n) {
            q.retain(|c| *c != code);
        }
    }

    /// The sense format configured (or chosen with D_SENSE).
    pub(crate) fn sense_format(&self) -> SenseFormat {
        self.cfg.sense_format
    }

    /// Whether writes are refused, and with which code (SBC-3 §4.10).
    pub(crate) fn write_protect(&self) -> Option<Sense> {
        if self.cfg.readonly {
            Some(Sense::new(
                crate::sense::key::DATA_PROTECT,
                asc::WRITE_PROTECTED,
            ))
        } else if self.swp {
            Some(Sense::new(
                crate::sense::key::DATA_PROTECT,
                asc::SOFTWARE_WRITE_PROTECTED,
            ))
        } else {
            None
        }
    }
}

/// What a command handler sees besides the LU.
pub(crate) struct Ctx<'a> {
    pub cdb: &'a [u8],
    pub nexus: NexusId,
    pub port: &'a TargetPort,
    /// The initiator's Expected Data Transfer Length.
    pub expected_len: u32,
    /// SCSI initiator port name of `nexus` (PR registrations are keyed by it).
    pub initiator: &'a str,
    /// Every I_T nexus with its port name (to route PR unit attentions).
    pub names: &'a Names,
}

pub(crate) const SANITIZE_IDLE: u8 = 0;
pub(crate) const SANITIZE_RUNNING: u8 = 1;
pub(crate) const SANITIZE_FAILED: u8 = 2;

/// NOT READY, SANITIZE IN PROGRESS while a SANITIZE runs on the LU.
pub(crate) fn sanitizing(lun: &Lun) -> Option<Sense> {
    (lun.sanitize.load(Ordering::Acquire) == SANITIZE_RUNNING)
        .then(|| Sense::new(crate::sense::key::NOT_READY, asc::SANITIZE_IN_PROGRESS))
}

/// Whether a LU can serve media access: a disk with a medium, no
/// SANITIZE running, none failed (SBC-4 §4.11.4: MEDIUM ERROR, SANITIZE
/// COMMAND FAILED until EXIT FAILURE MODE).
pub(crate) fn not_ready(lun: &Lun) -> Option<Sense> {
    if let Some(s) = sanitizing(lun) {
        return Some(s);
    }
    if lun.sanitize.load(Ordering::Acquire) == SANITIZE_FAILED {
        return Some(Sense::new(
            crate::sense::key::MEDIUM_ERROR,
            asc::SANITIZE_COMMAND_FAILED,
        ));
    }
    if lun.cfg.online || lun.cfg.device_type == DeviceType::Controller {
        None
    } else if lun.cfg.removable {
        Some(Sense::new(
            crate::sense::key::NOT_READY,
            asc::MEDIUM_NOT_PRESENT,
        ))
    } else {
        Some(Sense::new(
            crate::sense::key::NOT_READY,
            asc::LUN_BECOMING_READY,
        ))
    }
}
