//! Transport-agnostic SCSI direct-access block device emulation (SPC-4, SBC-3).
//!
//! The crate knows nothing of iSCSI and does no I/O of its own. A transport
//! hands each command to [`LunSet::execute`]; the answer is either complete
//! ([`Outcome::Done`]) or an [`IoTask`] that the caller runs against the LUN's
//! [`BlockDevice`] wherever blocking is allowed (a worker thread), producing the
//! final [`Response`]. A SCSI failure is a value (CHECK CONDITION with sense),
//! never an `Err`.
//!
//! # Contract (kept stable: the daemon is written against it)
//! * `buf` passed to `execute` holds the command's Data-Out bytes on entry (as
//!   many as the initiator sent, at most its expected transfer length); on a
//!   `Done` answer it holds the Data-In bytes to send (`Response::data_len` of them).
//! * `IoTask::run(dev, buf)` takes that same buffer: Data-Out on entry, Data-In
//!   on exit.
//! * `Response::wanted` is the number of bytes the CDB itself asks to move, so
//!   the transport can compute overflow / underflow residuals against the
//!   initiator's expected length: N blocks for READ/WRITE, the allocation
//!   length for INQUIRY-like commands, the parameter list length for MODE
//!   SELECT/UNMAP, 0 on CHECK CONDITION. The transport sends
//!   `min(data_len, expected_len)` bytes of Data-In.
//! * Data-Out shorter than the CDB asks (the initiator's expected length was
//!   smaller) is processed as far as it goes: a WRITE writes what arrived
//!   (FCP-4 / SAM-5 overflow rule); WRITE SAME needs exactly one block.
//! * Data-In on `Done` is already truncated to the CDB's allocation length.
//! * Every media access becomes an [`IoTask`]; all checks (LUN, unit
//!   attention, reservation, not ready, CDB fields, write protect, LBA
//!   range, [`MAX_TRANSFER_BYTES`]) happen in `execute` first.

mod aptpl;
mod cdb;
mod config;
pub mod device;
mod inquiry;
mod io;
mod lu;
mod lunset;
mod mode;
mod odx;
mod opcodes;
mod pr;
mod sanitize;
mod sbc;
pub mod sense;
mod spc;
mod xcopy;

#[cfg(test)]
mod tests;

pub use config::{DeviceType, LunConfig, TargetPort};
pub use device::{
    AccessState, BlockDevice, CompletionSink, MemDevice, MemSharedState, PortGroup,
    SharedMemDevice, SharedState, StateSubscriber,
};
pub use io::{IoTask, MediaResult, NativeIo, SimpleIo};
pub use lunset::LunSet;
pub use pr::{asymmetric_access_changed, iscsi_initiator_port_name, SharedChange};
pub use sense::SenseFormat;

/// The largest transfer one command may ask for (MAXIMUM TRANSFER LENGTH in
/// VPD B0 is this divided by the block size); larger requests get ILLEGAL
/// REQUEST, INVALID FIELD IN CDB. Bounds every buffer a CDB can size.
/// 32 MiB: 65536 blocks of 512 bytes, the largest single WRITE libiscsi's
/// WRITE SAME tests issue.
pub const MAX_TRANSFER_BYTES: u64 = 32 << 20;

/// Identifies one I_T nexus (an iSCSI session) for unit attentions and reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u64);

/// A LUN number as the transport addresses it (flat, 0..16383 in tgt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LunId(pub u64);

/// SAM status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    TaskAborted = 0x40,
}

/// The final answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// Sense bytes already formatted (fixed or descriptor, as the LU is set);
    /// empty unless status is CHECK CONDITION.
    pub sense: Vec<u8>,
    /// Valid Data-In bytes at the start of the command buffer.
    pub data_len: usize,
    /// Bytes the CDB asks to transfer (either direction), for residuals.
    pub wanted: u64,
}

/// What the transport passes for one command.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub cdb: &'a [u8],
    pub nexus: NexusId,
    pub lun: LunId,
    /// The initiator's Expected Data Transfer Length.
    pub expected_len: u32,
}

/// `execute`'s answer.
#[derive(Debug)]
pub enum Outcome {
    Done(Response),
    Io(IoTask),
}
