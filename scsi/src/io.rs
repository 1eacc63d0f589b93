//! Media operations that run off the event loop against a [`BlockDevice`].
//! Every check that can be made without touching the medium has already
//! been made by [`crate::LunSet::execute`]; here only I/O can fail.

use std::sync::{Arc, RwLock};

use crate::device::BlockDevice;
use crate::sense::{asc, key, Sense, SenseFormat};
use crate::{LunId, Response, Status};

/// Largest chunk read or written at once by operations whose size is not a
/// transfer (VERIFY without BYTCHK, WRITE SAME, zero-fill).
const CHUNK: u64 = 1 << 20;

/// How VERIFY / WRITE AND VERIFY compare (SBC-3 §5.33 BYTCHK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    /// BYTCHK 00b: only check the medium can be read.
    None,
    /// BYTCHK 01b: compare with the Data-Out buffer.
    DataOut,
    /// BYTCHK 11b: compare every block with the one block of Data-Out.
    OneBlock,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IoOp {
    Read {
        offset: u64,
        len: u64,
    },
    /// Write the first `len` bytes of Data-Out (fewer if fewer arrived);
    /// then flush if `flush`, then read back and compare if `verify`.
    Write {
        offset: u64,
        len: u64,
        flush: bool,
        verify: bool,
        /// WRITE ATOMIC: no other I/O of the LU may overlap it.
        atomic: bool,
    },
    Verify {
        offset: u64,
        len: u64,
        compare: Compare,
        block: u64,
    },
    WriteSame {
        offset: u64,
        blocks: u64,
        block: u64,
        unmap: bool,
        ndob: bool,
        flush: bool,
    },
    Unmap {
        ranges: Vec<(u64, u64)>,
    },
    /// COMPARE AND WRITE (SBC-3 §5.2): Data-Out holds `len` bytes to
    /// compare, then `len` bytes to write.
    CompareAndWrite {
        offset: u64,
        len: u64,
        flush: bool,
    },
    /// ORWRITE (SBC-3 §5.9): OR the `len` bytes of Data-Out into the medium.
    OrWrite {
        offset: u64,
        len: u64,
        flush: bool,
    },
    Sync,
    /// EXTENDED COPY between LUs of the target.
    Copy(Box<crate::xcopy::CopyJob>),
    /// SANITIZE of the whole medium.
    Sanitize(Box<crate::sanitize::SanitizeJob>),
    /// Write (or remove) a LU's APTPL state file.
    SavePr(Box<crate::aptpl::PrSave>),
    /// REPORT TARGET PORT GROUPS (SPC-4 §6.36) as the store sees the
    /// gateways serving its medium; `group` and `rel` are ours.
    ReportTargetPortGroups {
        extended: bool,
        alloc: u32,
        group: u16,
        rel: u16,
    },
    /// SET TARGET PORT GROUPS (SPC-4 §6.39): make `optimized` the
    /// preferred group (`None`: nothing to change).
    SetTargetPortGroups {
        optimized: Option<u16>,
    },
    /// PERSISTENT RESERVE OUT on a LU whose PR state the store keeps for
    /// every gateway (see [`crate::device::SharedState`]); Data-Out holds
    /// the parameter list.
    PrOut {
        cdb: Vec<u8>,
        me: crate::pr::Nexus,
    },
    GetLbaStatus {
        lba: u64,
        total_blocks: u64,
        block: u64,
        max_descriptors: usize,
        alloc: usize,
    },
}

/// A media command ready to run on a worker thread.
#[derive(Debug)]
pub struct IoTask {
    lun: LunId,
    op: IoOp,
    format: SenseFormat,
    wanted: u64,
    /// The LU's logical block length, to name LBAs in sense data.
    block: u64,
    /// The LU's media lock (see `Lun::io_lock`).
    lock: Option<Arc<RwLock<()>>>,
}

/// A plain transfer an asynchronous engine (io_uring) can submit itself,
/// without the worker path: see [`IoTask::simple`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimpleIo {
    /// Read `len` bytes at `offset` into the buffer (resized to `len`).
    Read { offset: u64, len: usize },
    /// Write the first `len` bytes of the buffer at `offset`; then make
    /// them durable if `flush` (FUA, or write cache off).
    Write {
        offset: u64,
        len: usize,
        flush: bool,
    },
    /// Make everything written durable (SYNCHRONIZE CACHE).
    Flush,
}

/// An operation an asynchronous store ([`BlockDevice::submit`]) runs
/// itself: the plain transfers of [`SimpleIo`] and the offloads a store
/// such as librbd has verbs for. Borrowed from the task; the store copies
/// what it needs before `submit` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeIo<'a> {
    Simple(SimpleIo),
    /// Deallocate these `(offset, len)` byte ranges; they read back as
    /// zeros (UNMAP, SBC-3 §5.28, with LBPRZ).
    Discard {
        ranges: &'a [(u64, u64)],
    },
    /// Write the first `block` bytes of the buffer repeatedly over `len`
    /// bytes at `offset` (WRITE SAME, SBC-3 §5.45). `zeros`: the pattern is
    /// all zeros (or NDOB); `unmap`: the range may be deallocated instead.
    WriteSame {
        offset: u64,
        len: u64,
        block: usize,
        zeros: bool,
        unmap: bool,
    },
    /// Compare the medium with the buffer's first `len` bytes and, when
    /// equal, write its next `len` bytes, atomically (SBC-3 §5.2).
    CompareAndWrite {
        offset: u64,
        len: usize,
    },
}

/// How an operation on the medium ended, for the SCSI answer
/// ([`IoTask::complete`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaResult {
    Ok,
    /// The medium failed the operation: MEDIUM ERROR.
    Failed,
    /// COMPARE AND WRITE found a difference at this byte of the compared
    /// data: MISCOMPARE.
    Miscompare(u64),
    /// The store is out of reach for now (a timeout, a lost connection, a
    /// fenced client reopening): NOT READY, LOGICAL UNIT IS IN PROCESS OF
    /// BECOMING READY, which initiators retry (Linux's SCSI layer
    /// requeues it).
    Unavailable,
    /// The store refuses writes (a snapshot, a read-only file): DATA
    /// PROTECT, WRITE PROTECTED.
    WriteProtected,
    /// The store has no space for the write (ENOSPC, EDQUOT): DATA
    /// PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT, as SBC-4 §4.7.3.6
    /// has a thin-provisioned LU answer.
    NoSpace,
}

impl MediaResult {
    /// The result for a negative errno (io_uring, librbd) or zero and up.
    pub fn from_errno(r: i64) -> MediaResult {
        if r >= 0 {
            return MediaResult::Ok;
        }
        match i32::try_from(-r).unwrap_or(0) {
            // ETIMEDOUT, ESHUTDOWN (Ceph's EBLOCKLISTED), ENOTCONN,
            // ECONNREFUSED, ECONNRESET, EAGAIN, EHOSTUNREACH, ENETUNREACH.
            110 | 108 | 107 | 111 | 104 | 11 | 113 | 101 => MediaResult::Unavailable,
            // EROFS
            30 => MediaResult::WriteProtected,
            // ENOSPC, EDQUOT
            28 | 122 => MediaResult::NoSpace,
            _ => MediaResult::Failed,
        }
    }

    /// The result for an error from a blocking store call.
    pub fn from_io(e: &std::io::Error) -> MediaResult {
        match e.raw_os_error() {
            Some(n) => MediaResult::from_errno(-i64::from(n)),
            None => match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::NotConnected => {
                    MediaResult::Unavailable
                }
                _ => MediaResult::Failed,
            },
        }
    }

    /// The sense for a failure (`None` for [`MediaResult::Ok`]); `read`
    /// picks the medium error's kind.
    pub(crate) fn sense(self, read: bool) -> Option<Sense> {
        Some(match self {
            MediaResult::Ok => return None,
            MediaResult::Failed if read => read_error(),
            MediaResult::Failed => write_error(),
            MediaResult::Miscompare(at) => miscompare(at),
            MediaResult::Unavailable => Sense::new(key::NOT_READY, asc::LUN_BECOMING_READY),
            MediaResult::WriteProtected => Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED),
            MediaResult::NoSpace => Sense::new(
                key::DATA_PROTECT,
                asc::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
            ),
        })
    }
}

fn read_error() -> Sense {
    Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR)
}
fn write_error() -> Sense {
    Sense::new(key::MEDIUM_ERROR, asc::WRITE_ERROR)
}
/// The sense for a failed blocking read.
fn read_fault(e: std::io::Error) -> Sense {
    MediaResult::from_io(&e)
        .sense(true)
        .unwrap_or_else(read_error)
}
/// The sense for a failed blocking write, flush or deallocation.
fn write_fault(e: std::io::Error) -> Sense {
    MediaResult::from_io(&e)
        .sense(false)
        .unwrap_or_else(write_error)
}
/// REPORT TARGET PORT GROUPS data (SPC-4 §6.36.2): every gateway serving
/// the medium is one target port group with one port. A store that knows
/// of no other gateway gives our group alone, active/optimized.
fn report_target_port_groups(
    dev: &dyn BlockDevice,
    extended: bool,
    alloc: u32,
    group: u16,
    rel: u16,
    out: &mut Vec<u8>,
) -> Result<(), Sense> {
    use crate::device::{AccessState, PortGroup};
    let groups = match dev.port_groups(group, rel) {
        None => vec![PortGroup {
            id: group,
            state: AccessState::ActiveOptimized,
            preferred: false,
            ports: vec![rel],
        }],
        Some(Ok(g)) => g,
        Some(Err(m)) => return Err(m.sense(true).unwrap_or_else(internal_failure)),
    };
    out.clear();
    out.extend_from_slice(&[0; 4]);
    if extended {
        // FORMAT TYPE 001b; IMPLICIT TRANSITION TIME: the seconds a
        // takeover may take (the cluster's watch timeout).
        out.extend_from_slice(&[0x10, IMPLICIT_TRANSITION_S, 0, 0]);
    }
    for g in &groups {
        // PREF and the state; the states we use: transitioning (T_SUP),
        // unavailable (U_SUP), active/non-optimized (AN_SUP),
        // active/optimized (AO_SUP).
        out.push(g.state as u8 | if g.preferred { 0x80 } else { 0 });
        out.push(0x80 | 0x08 | 0x02 | 0x01);
        out.extend_from_slice(&g.id.to_be_bytes());
        // Reserved, STATUS CODE 0 (none), vendor specific.
        out.extend_from_slice(&[0, 0, 0]);
        out.push(g.ports.len().min(255) as u8);
        for p in g.ports.iter().take(255) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out.truncate(alloc as usize);
    Ok(())
}

/// Seconds an implicit ALUA transition may take, for REPORT TARGET PORT
/// GROUPS' extended header: a dead gateway's lock is broken once the
/// cluster drops its watch (30 s by default).
const IMPLICIT_TRANSITION_S: u8 = 35;

/// The store could not keep the state it shares (HARDWARE ERROR,
/// INTERNAL TARGET FAILURE).
fn internal_failure() -> Sense {
    Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
}

fn miscompare(at: u64) -> Sense {
    Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_info(at)
}

impl IoTask {
    pub(crate) fn new(
        lun: LunId,
        op: IoOp,
        format: SenseFormat,
        wanted: u64,
        block: u64,
        lock: Option<Arc<RwLock<()>>>,
    ) -> IoTask {
        IoTask {
            lun,
            op,
            format,
            wanted,
            block: block.max(1),
            lock,
        }
    }

    /// The first LBA the command addresses, if it addresses a range.
    fn first_lba(&self) -> Option<u64> {
        match self.op {
            IoOp::Read { offset, .. }
            | IoOp::Write { offset, .. }
            | IoOp::Verify { offset, .. }
            | IoOp::WriteSame { offset, .. }
            | IoOp::CompareAndWrite { offset, .. }
            | IoOp::OrWrite { offset, .. } => Some(offset / self.block),
            IoOp::Unmap { .. }
            | IoOp::Sync
            | IoOp::GetLbaStatus { .. }
            | IoOp::PrOut { .. }
            | IoOp::ReportTargetPortGroups { .. }
            | IoOp::SetTargetPortGroups { .. }
            | IoOp::Copy(_)
            | IoOp::Sanitize(_)
            | IoOp::SavePr(_) => None,
        }
    }

    /// The byte ranges this task writes, with their LUs (a copy writes
    /// another LU's): ROD tokens standing for them are revoked.
    pub(crate) fn writes(&self) -> Vec<(LunId, u64, u64)> {
        let own = |o: u64, l: u64| vec![(self.lun, o, l)];
        match &self.op {
            &IoOp::Write { offset, len, .. }
            | &IoOp::CompareAndWrite { offset, len, .. }
            | &IoOp::OrWrite { offset, len, .. } => own(offset, len),
            &IoOp::WriteSame {
                offset,
                blocks,
                block,
                ..
            } => own(offset, blocks.saturating_mul(block)),
            IoOp::Unmap { ranges } => ranges.iter().map(|&(o, l)| (self.lun, o, l)).collect(),
            IoOp::Copy(job) => job
                .segments
                .iter()
                .map(|s| (s.dst, s.dst_offset, s.len))
                .collect(),
            IoOp::Sanitize(job) => own(0, job.len),
            _ => Vec::new(),
        }
    }

    /// Whether the task must run on a worker even for a store that never
    /// blocks (EXTENDED COPY, SANITIZE, an APTPL state file to write):
    /// it may take long, or touch a file system.
    pub fn off_loop(&self) -> bool {
        matches!(self.op, IoOp::Copy(_) | IoOp::Sanitize(_) | IoOp::SavePr(_))
    }

    /// A task whose command is answered GOOD before it runs (SANITIZE
    /// with IMMED): the daemon answers, then runs it on its own.
    pub fn is_immediate(&self) -> bool {
        matches!(&self.op, IoOp::Sanitize(job) if job.immed)
    }

    /// Give an EXTENDED COPY the stores of the LUs it names (the daemon
    /// calls this for every task; others ignore it); an LU with none
    /// found fails the copy (COPY TARGET DEVICE NOT REACHABLE).
    pub fn attach_copy_stores(&mut self, mut f: impl FnMut(LunId) -> Option<Arc<dyn BlockDevice>>) {
        if let IoOp::Copy(job) = &mut self.op {
            for lu in &mut job.lus {
                lu.2 = f(lu.0);
            }
        }
    }

    /// A MEDIUM ERROR names, in INFORMATION, the LBA it concerns (SBC-3's
    /// error reporting): here the command's first, as neither the kernel
    /// nor librbd says which block of a failed transfer was at fault.
    fn with_lba(&self, s: Sense) -> Sense {
        match self.first_lba() {
            Some(lba) if s.key == key::MEDIUM_ERROR && s.info.is_none() => s.with_info(lba),
            _ => s,
        }
    }

    pub fn lun(&self) -> LunId {
        self.lun
    }

    /// Bytes the CDB asks to transfer (as in [`Response::wanted`]).
    pub fn wanted(&self) -> u64 {
        self.wanted
    }

    /// The transfer this task amounts to when it is a plain read, write or
    /// flush, for engines that submit I/O themselves; `None` for everything
    /// else (compare, verify, write same, unmap, ...), which must [`run`].
    /// `buf` is the command buffer as `run` would get it.
    ///
    /// [`run`]: IoTask::run
    pub fn simple(&self, buf: &[u8]) -> Option<SimpleIo> {
        match self.op {
            IoOp::Read { offset, len } => Some(SimpleIo::Read {
                offset,
                len: len as usize,
            }),
            IoOp::Write {
                offset,
                len,
                flush,
                verify: false,
                atomic: false,
            } => Some(SimpleIo::Write {
                offset,
                len: (len as usize).min(buf.len()),
                flush,
            }),
            IoOp::Sync => Some(SimpleIo::Flush),
            _ => None,
        }
    }

    /// The operation an asynchronous store may run for this task itself
    /// (see [`NativeIo`]); `None` for what only [`run`] does (verify,
    /// ORWRITE, GET LBA STATUS, write-and-verify).
    ///
    /// [`run`]: IoTask::run
    pub fn native<'a>(&'a self, buf: &[u8]) -> Option<NativeIo<'a>> {
        match &self.op {
            IoOp::Unmap { ranges } => Some(NativeIo::Discard { ranges }),
            &IoOp::WriteSame {
                offset,
                blocks,
                block,
                unmap,
                ndob,
                flush: false,
            } => {
                let block = usize::try_from(block).ok()?;
                let pattern = buf.get(..block);
                if !ndob && !unmap && pattern.is_none() {
                    return None;
                }
                Some(NativeIo::WriteSame {
                    offset,
                    len: blocks.checked_mul(block as u64)?,
                    block,
                    zeros: ndob || pattern.is_some_and(|p| p.iter().all(|&b| b == 0)),
                    unmap,
                })
            }
            &IoOp::CompareAndWrite {
                offset,
                len,
                flush: false,
            } if buf.len() as u64 >= 2 * len => Some(NativeIo::CompareAndWrite {
                offset,
                len: len as usize,
            }),
            _ => self.simple(buf).map(NativeIo::Simple),
        }
    }

    /// The LU media lock `run` holds around the task. None for a copy:
    /// it locks each LU it touches chunk by chunk itself, and holding the
    /// task's lock as well would take one lock twice, which deadlocks
    /// with a COMPARE AND WRITE queued for it in between (std's RwLock
    /// makes new readers wait behind a waiting writer).
    pub(crate) fn task_lock(&self) -> Option<&Arc<RwLock<()>>> {
        match self.op {
            IoOp::Copy(_) => None,
            _ => self.lock.as_ref(),
        }
    }

    /// Whether this task must not overlap any other I/O of its LU
    /// (COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, SANITIZE): an engine that bypasses [`run`] must
    /// drain its own I/O first.
    ///
    /// [`run`]: IoTask::run
    pub fn is_exclusive(&self) -> bool {
        matches!(
            self.op,
            IoOp::CompareAndWrite { .. }
                | IoOp::OrWrite { .. }
                | IoOp::Write { atomic: true, .. }
                | IoOp::Sanitize(_)
        )
    }

    /// The answer for a task whose [`simple`](IoTask::simple) or
    /// [`native`](IoTask::native) operation an engine performed. On
    /// success `buf` holds the Data-In (for a read); on failure it is
    /// cleared.
    pub fn complete(self, result: MediaResult, buf: &mut Vec<u8>) -> Response {
        let read = matches!(self.op, IoOp::Read { .. });
        let Some(sense) = result.sense(read).map(|s| self.with_lba(s)) else {
            if !read {
                buf.clear();
            }
            return Response {
                status: Status::Good,
                sense: Vec::new(),
                data_len: buf.len(),
                wanted: self.wanted,
            };
        };
        buf.clear();
        Response {
            status: Status::CheckCondition,
            sense: sense.to_bytes(self.format),
            data_len: 0,
            wanted: 0,
        }
    }

    /// Run against `dev`. `buf` holds the Data-Out on entry and the Data-In on exit.
    pub fn run(self, dev: &dyn BlockDevice, buf: &mut Vec<u8>) -> Response {
        if let IoOp::PrOut { cdb, me } = &self.op {
            return self.pr_out(dev, cdb, me, buf);
        }
        if let &IoOp::ReportTargetPortGroups {
            extended,
            alloc,
            group,
            rel,
        } = &self.op
        {
            let r = report_target_port_groups(dev, extended, alloc, group, rel, buf);
            return self.answer(r, buf);
        }
        // Read-modify-write commands hold the LU's lock exclusively, all
        // others shared, so no command sees or interleaves with half of a
        // COMPARE AND WRITE or ORWRITE. A poisoned lock only means another
        // task panicked; the medium is as consistent as it was.
        let exclusive = self.is_exclusive();
        let result = match self.task_lock() {
            Some(l) if exclusive => {
                let _g = l.write().unwrap_or_else(|p| p.into_inner());
                self.perform(dev, buf)
            }
            Some(l) => {
                let _g = l.read().unwrap_or_else(|p| p.into_inner());
                self.perform(dev, buf)
            }
            None => self.perform(dev, buf),
        };
        self.answer(result, buf)
    }

    /// The response for a task that ran: GOOD with `buf` as Data-In, or
    /// CHECK CONDITION (with the command's LBA for a medium error).
    fn answer(&self, result: Result<(), Sense>, buf: &mut Vec<u8>) -> Response {
        match result {
            Ok(()) => Response {
                status: Status::Good,
                sense: Vec::new(),
                data_len: buf.len(),
                wanted: self.wanted,
            },
            Err(s) => {
                buf.clear();
                Response {
                    status: Status::CheckCondition,
                    sense: self.with_lba(s).to_bytes(self.format),
                    data_len: 0,
                    wanted: 0,
                }
            }
        }
    }

    /// PERSISTENT RESERVE OUT applied to the state the store keeps: by
    /// compare-and-set, so a change made meanwhile through another gateway
    /// is applied first and this command judged against it.
    fn pr_out(
        &self,
        dev: &dyn BlockDevice,
        cdb: &[u8],
        me: &crate::pr::Nexus,
        buf: &mut Vec<u8>,
    ) -> Response {
        let dout = std::mem::take(buf);
        let mut reply: crate::lu::HandlerResult = Err(internal_failure());
        let stored = match dev.shared_state() {
            None => Err(MediaResult::Failed),
            Some(shared) => shared.update(&mut |cur| {
                let Some(mut pr) = crate::pr::PrState::decode(cur) else {
                    // Not a state we wrote: refuse rather than overwrite.
                    reply = Err(internal_failure());
                    return None;
                };
                let seq = pr.seq;
                reply = crate::pr::apply(&mut pr, me, cdb, &dout, true);
                (pr.seq != seq).then(|| pr.encode())
            }),
        };
        let result = match (stored, reply) {
            // A failure is the store's, not the medium's: no MEDIUM ERROR.
            (Err(MediaResult::Failed), _) => Err(internal_failure()),
            (Err(m), _) => Err(m.sense(false).unwrap_or_else(internal_failure)),
            (Ok(()), Ok(crate::lu::Reply::Conflict)) => {
                return Response {
                    status: Status::ReservationConflict,
                    sense: Vec::new(),
                    data_len: 0,
                    wanted: 0,
                }
            }
            (Ok(()), Ok(_)) => Ok(()),
            (Ok(()), Err(s)) => Err(s),
        };
        // `buf` is empty: the parameter list was taken above.
        self.answer(result, buf)
    }

    fn perform(&self, dev: &dyn BlockDevice, buf: &mut Vec<u8>) -> Result<(), Sense> {
        match &self.op {
            &IoOp::Read { offset, len } => {
                dev.read_into(buf, offset, len as usize).map_err(read_fault)
            }
            &IoOp::Write {
                offset,
                len,
                flush,
                verify,
                atomic: _,
            } => {
                let n = (len as usize).min(buf.len());
                dev.write_at(&buf[..n], offset).map_err(write_fault)?;
                if flush {
                    dev.flush().map_err(write_fault)?;
                }
                if verify {
                    compare_range(dev, offset, &buf[..n])?;
                }
                buf.clear();
                Ok(())
            }
            &IoOp::Verify {
                offset,
                len,
                compare,
                block,
            } => {
                match compare {
                    Compare::None => check_readable(dev, offset, len)?,
                    Compare::DataOut => {
                        let n = (len as usize).min(buf.len());
                        compare_range(dev, offset, &buf[..n])?;
                    }
                    Compare::OneBlock => {
                        let b = (block as usize).min(buf.len());
                        let mut at = 0;
                        while at < len {
                            compare_range(dev, offset + at, &buf[..b]).map_err(|s| {
                                match s.info {
                                    Some(i) => miscompare(at + i),
                                    None => s,
                                }
                            })?;
                            at += block;
                        }
                    }
                }
                buf.clear();
                Ok(())
            }
            &IoOp::WriteSame {
                offset,
                blocks,
                block,
                unmap,
                ndob,
                flush,
            } => {
                let len = blocks.saturating_mul(block);
                // SBC-3 §5.45: with UNMAP set the blocks may be deallocated
                // whatever the Data-Out holds; with LBPRZ they then read as
                // zeros, as libiscsi's WRITE SAME tests expect.
                if unmap {
                    dev.punch_hole(offset, len).map_err(write_fault)?;
                } else {
                    let pattern: &[u8] = if ndob {
                        &[]
                    } else {
                        &buf[..(block as usize).min(buf.len())]
                    };
                    write_repeated(dev, offset, len, block, pattern)?;
                }
                if flush {
                    dev.flush().map_err(write_fault)?;
                }
                buf.clear();
                Ok(())
            }
            IoOp::Unmap { ranges } => {
                for &(offset, len) in ranges {
                    dev.punch_hole(offset, len).map_err(write_fault)?;
                }
                buf.clear();
                Ok(())
            }
            &IoOp::CompareAndWrite { offset, len, flush } => {
                let n = len as usize;
                if buf.len() < 2 * n {
                    return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
                }
                exclusively(dev, &mut |dev| {
                    // MISCOMPARE carries the offset of the first differing
                    // byte from the start of the Data-Out (SBC-3 §5.2).
                    compare_range(dev, offset, &buf[..n])?;
                    dev.write_at(&buf[n..2 * n], offset).map_err(write_fault)?;
                    if flush {
                        dev.flush().map_err(write_fault)?;
                    }
                    Ok(())
                })?;
                buf.clear();
                Ok(())
            }
            &IoOp::OrWrite { offset, len, flush } => {
                let n = (len as usize).min(buf.len());
                exclusively(dev, &mut |dev| {
                    let mut cur = vec![0u8; n];
                    dev.read_at(&mut cur, offset).map_err(read_fault)?;
                    for (c, d) in cur.iter_mut().zip(&buf[..n]) {
                        *c |= *d;
                    }
                    dev.write_at(&cur, offset).map_err(write_fault)?;
                    if flush {
                        dev.flush().map_err(write_fault)?;
                    }
                    Ok(())
                })?;
                buf.clear();
                Ok(())
            }
            IoOp::Sync => {
                buf.clear();
                dev.flush().map_err(write_fault)
            }
            IoOp::Copy(job) => job.run(buf),
            IoOp::Sanitize(job) => job.run(dev, buf),
            IoOp::SavePr(save) => {
                buf.clear();
                save.run()
            }
            &IoOp::SetTargetPortGroups { optimized } => {
                buf.clear();
                match optimized.map(|g| dev.prefer_port_group(g)) {
                    None => Ok(()),
                    // A store that knows of one gateway only: ours is the
                    // group, and optimized already.
                    Some(None) => Ok(()),
                    Some(Some(Ok(true))) => Ok(()),
                    // Not a group serving the medium, or not one alive.
                    Some(Some(Ok(false))) => Err(Sense::invalid_param(4)),
                    Some(Some(Err(m))) => Err(m.sense(false).unwrap_or_else(internal_failure)),
                }
            }
            // Answered by `run` before `perform` is reached.
            IoOp::PrOut { .. } | IoOp::ReportTargetPortGroups { .. } => Err(internal_failure()),
            &IoOp::GetLbaStatus {
                lba,
                total_blocks,
                block,
                max_descriptors,
                alloc,
            } => {
                get_lba_status(dev, lba, total_blocks, block, max_descriptors, buf)?;
                buf.truncate(alloc);
                Ok(())
            }
        }
    }
}

/// Read `len` bytes at `offset` in chunks, only to see they can be read.
/// Run a read-modify-write on the store's exclusive view, if it has one
/// (see [`BlockDevice::exclusive_view`]), else on the store.
fn exclusively(
    dev: &dyn BlockDevice,
    f: &mut dyn FnMut(&dyn BlockDevice) -> Result<(), Sense>,
) -> Result<(), Sense> {
    let mut result = Err(internal_failure());
    let mut run = |d: &dyn BlockDevice| result = f(d);
    match dev.exclusive_view(&mut run) {
        None => run(dev),
        // `result` stays a failure if the store did not run `f`.
        Some(Ok(())) => {}
        Some(Err(m)) => return Err(m.sense(false).unwrap_or_else(internal_failure)),
    }
    result
}

fn check_readable(dev: &dyn BlockDevice, offset: u64, len: u64) -> Result<(), Sense> {
    let mut tmp = vec![0u8; len.min(CHUNK) as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(CHUNK) as usize;
        dev.read_at(&mut tmp[..n], offset + at)
            .map_err(read_fault)?;
        at += n as u64;
    }
    Ok(())
}

/// Compare the medium at `offset` with `want`; MISCOMPARE carries the byte
/// offset of the first difference (SBC-3 §5.33).
fn compare_range(dev: &dyn BlockDevice, offset: u64, want: &[u8]) -> Result<(), Sense> {
    let mut tmp = vec![0u8; (want.len() as u64).min(CHUNK) as usize];
    let mut at = 0usize;
    while at < want.len() {
        let n = (want.len() - at).min(CHUNK as usize);
        dev.read_at(&mut tmp[..n], offset + at as u64)
            .map_err(read_fault)?;
        if let Some(i) = tmp[..n]
            .iter()
            .zip(&want[at..at + n])
            .position(|(a, b)| a != b)
        {
            return Err(miscompare((at + i) as u64));
        }
        at += n;
    }
    Ok(())
}

/// Write `pattern` (one block; zeros if shorter) repeatedly over `len` bytes.
fn write_repeated(
    dev: &dyn BlockDevice,
    offset: u64,
    len: u64,
    block: u64,
    pattern: &[u8],
) -> Result<(), Sense> {
    let block = block.max(1);
    let per_chunk = (CHUNK / block).max(1);
    let chunk_len = (per_chunk * block).min(len) as usize;
    let mut chunk = vec![0u8; chunk_len];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = pattern.get(i % block as usize).copied().unwrap_or(0);
    }
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(chunk_len as u64) as usize;
        dev.write_at(&chunk[..n], offset + at)
            .map_err(write_fault)?;
        at += n as u64;
    }
    Ok(())
}

/// GET LBA STATUS parameter data (SBC-3 §5.6): LBA status descriptors from
/// `lba` on, each a run of blocks sharing one provisioning status.
fn get_lba_status(
    dev: &dyn BlockDevice,
    lba: u64,
    total_blocks: u64,
    block: u64,
    max_descriptors: usize,
    buf: &mut Vec<u8>,
) -> Result<(), Sense> {
    buf.clear();
    buf.resize(8, 0);
    let mut at = lba;
    let mut count = 0;
    while at < total_blocks && count < max_descriptors {
        let (mapped, run) = dev
            .map_status(at.saturating_mul(block))
            .map_err(read_fault)?;
        let run_blocks = (run / block)
            .clamp(1, total_blocks - at)
            .min(u64::from(u32::MAX));
        buf.extend_from_slice(&at.to_be_bytes());
        buf.extend_from_slice(&(run_blocks as u32).to_be_bytes());
        // Provisioning status: 0 mapped, 1 deallocated.
        buf.extend_from_slice(&[u8::from(!mapped), 0, 0, 0]);
        at += run_blocks;
        count += 1;
    }
    let len = (buf.len() - 4) as u32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(op: IoOp, result: MediaResult) -> Response {
        let task = IoTask::new(LunId(1), op, SenseFormat::Fixed, 4096, 512, None);
        let mut buf = vec![0u8; 4096];
        task.complete(result, &mut buf)
    }

    fn key_asc(r: &Response) -> (u8, u8, u8) {
        (r.sense[2] & 0x0f, r.sense[12], r.sense[13])
    }

    /// Each store error becomes the sense an initiator acts on: retry
    /// (NOT READY 04/01), stop writing (DATA PROTECT), or fail the I/O
    /// (MEDIUM ERROR, by direction).
    #[test]
    fn store_errors_map_to_the_sense_initiators_act_on() {
        let read = || IoOp::Read {
            offset: 0,
            len: 4096,
        };
        let write = || IoOp::Write {
            atomic: false,
            offset: 0,
            len: 4096,
            flush: false,
            verify: false,
        };
        assert_eq!(MediaResult::from_errno(-110), MediaResult::Unavailable);
        assert_eq!(MediaResult::from_errno(-108), MediaResult::Unavailable);
        assert_eq!(MediaResult::from_errno(-30), MediaResult::WriteProtected);
        assert_eq!(MediaResult::from_errno(-28), MediaResult::NoSpace);
        assert_eq!(MediaResult::from_errno(-5), MediaResult::Failed);
        assert_eq!(MediaResult::from_errno(4096), MediaResult::Ok);
        let ok = answer(read(), MediaResult::Ok);
        assert_eq!((ok.status, ok.data_len), (Status::Good, 4096));
        let cases = [
            (read(), MediaResult::Failed, (0x03, 0x11, 0x00)),
            (write(), MediaResult::Failed, (0x03, 0x0c, 0x00)),
            (write(), MediaResult::Unavailable, (0x02, 0x04, 0x01)),
            (write(), MediaResult::WriteProtected, (0x07, 0x27, 0x00)),
            (write(), MediaResult::NoSpace, (0x07, 0x27, 0x07)),
        ];
        for (op, result, want) in cases {
            let r = answer(op, result);
            assert_eq!(r.status, Status::CheckCondition);
            assert_eq!(r.data_len, 0);
            assert_eq!(key_asc(&r), want, "{result:?}");
        }
        let r = answer(
            IoOp::CompareAndWrite {
                offset: 0,
                len: 512,
                flush: false,
            },
            MediaResult::Miscompare(37),
        );
        assert_eq!(key_asc(&r), (0x0e, 0x1d, 0x00));
        assert_eq!(u32::from_be_bytes(r.sense[3..7].try_into().unwrap()), 37);
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(MediaResult::from_io(&e), MediaResult::NoSpace);
    }

    /// A MEDIUM ERROR carries the command's first LBA in INFORMATION
    /// (VALID set), from an engine's result and from a blocking run alike.
    #[test]
    fn medium_errors_name_the_lba() {
        let info = |r: &Response| {
            assert_eq!(r.sense[0] & 0x80, 0x80, "VALID");
            u32::from_be_bytes(r.sense[3..7].try_into().unwrap())
        };
        let read_at = |lba: u64| IoOp::Read {
            offset: lba * 512,
            len: 4096,
        };
        assert_eq!(info(&answer(read_at(8), MediaResult::Failed)), 8);
        // Other failures name no LBA.
        let r = answer(read_at(8), MediaResult::Unavailable);
        assert_eq!(r.sense[0] & 0x80, 0);
        // A blocking read past a small store's end fails on the medium.
        let dev = crate::MemDevice::new(8192);
        let task = IoTask::new(LunId(1), read_at(12), SenseFormat::Fixed, 4096, 512, None);
        let mut buf = Vec::new();
        let r = task.run(&dev, &mut buf);
        assert_eq!(key_asc(&r), (0x03, 0x11, 0x00));
        assert_eq!(info(&r), 12);
    }
}
