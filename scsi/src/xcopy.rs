//! EXTENDED COPY (LID1) with block device to block device segments, and
//! RECEIVE COPY RESULTS (SPC-4 §6.4, §6.18): the copy manager VMware's
//! Full Copy offload drives. Copy targets are named by identification
//! descriptors (E4h), matched against the VPD 83h designators of the LUs
//! of this target; every length, count and index in the parameter list is
//! checked before anything is copied. The copy itself is a media task
//! ([`IoOp::Copy`]) that the daemon runs off its event loops, reading and
//! writing 1 MiB at a time through each LU's store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use crate::cdb::{be16, be32, be64, byte, op};
use crate::config::DeviceType;
use crate::device::BlockDevice;
use crate::io::IoOp;
use crate::lu::{Ctx, HandlerResult, Lun, Reply};
use crate::sense::{asc, Sense};
use crate::{LunId, NexusId};

/// Operating parameters (RECEIVE COPY RESULTS, SPC-4 §6.18.4).
pub(crate) const MAX_TARGET_DESCRIPTORS: usize = 8;
pub(crate) const MAX_SEGMENT_DESCRIPTORS: usize = 8;
pub(crate) const MAX_DESCRIPTOR_LIST_LENGTH: usize = 1024;
/// The most bytes one segment copies (a 4096-byte LU's 65535 blocks);
/// a command copies at most eight of them.
pub(crate) const MAX_SEGMENT_BYTES: u64 = 256 << 20;
/// Held results kept per target, oldest dropped first.
const MAX_HELD: usize = 256;

/// Descriptor type codes (SPC-4 tables 104, 107).
const IDENTIFICATION_DESCRIPTOR: u8 = 0xe4;
const BLOCK_TO_BLOCK: u8 = 0x02;
const TARGET_DESCRIPTOR_LEN: usize = 32;
const HEADER_LEN: usize = 16;

const COPY_ABORTED: u8 = 0x0a;
const COPY_TARGET_DEVICE_NOT_REACHABLE: (u8, u8) = (0x0d, 0x02);
const INCORRECT_COPY_TARGET_DEVICE_TYPE: (u8, u8) = (0x0d, 0x03);
const TOO_MANY_TARGET_DESCRIPTORS: (u8, u8) = (0x26, 0x06);
const UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: (u8, u8) = (0x26, 0x07);
const TOO_MANY_SEGMENT_DESCRIPTORS: (u8, u8) = (0x26, 0x08);
const UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: (u8, u8) = (0x26, 0x09);
const OPERATION_IN_PROGRESS: (u8, u8) = (0x00, 0x16);

/// RECEIVE COPY RESULTS service actions (LID1).
const COPY_STATUS: u16 = 0x00;
const OPERATING_PARAMETERS: u16 = 0x03;

/// One block-to-block segment, resolved to LUs and byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySegment {
    pub src: LunId,
    pub dst: LunId,
    pub src_offset: u64,
    pub dst_offset: u64,
    pub len: u64,
    /// The destination's write cache is off: flush before GOOD.
    pub flush: bool,
}

/// An LU a copy touches: its id, its media lock, its store once attached.
pub(crate) type CopyLu = (LunId, Arc<RwLock<()>>, Option<Arc<dyn BlockDevice>>);

/// An EXTENDED COPY ready to run: its segments, and the LUs it touches,
/// each with its media lock and, once the daemon has attached it
/// ([`crate::IoTask::attach_copy_stores`]), its store.
#[derive(Clone)]
pub(crate) struct CopyJob {
    pub segments: Vec<CopySegment>,
    pub lus: Vec<CopyLu>,
    pub progress: Arc<CopyProgress>,
    /// Marks the held result failed if the job is dropped unrun (its LU
    /// removed first, a store that panicked), so its list identifier is
    /// not "in progress" for ever.
    pub _unfinished: Arc<Unfinished>,
}

/// See [`CopyJob::_unfinished`].
#[derive(Debug)]
pub(crate) struct Unfinished(pub Arc<CopyProgress>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        let _ = self
            .0
            .state
            .compare_exchange(0, 2, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl CopyJob {
    pub(crate) fn new(
        segments: Vec<CopySegment>,
        lus: Vec<CopyLu>,
        progress: Arc<CopyProgress>,
    ) -> CopyJob {
        CopyJob {
            segments,
            lus,
            _unfinished: Arc::new(Unfinished(progress.clone())),
            progress,
        }
    }
}

impl std::fmt::Debug for CopyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyJob")
            .field("segments", &self.segments)
            .field(
                "lus",
                &self
                    .lus
                    .iter()
                    .map(|(id, _, d)| (id.0, d.is_some()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PartialEq for CopyJob {
    fn eq(&self, o: &CopyJob) -> bool {
        self.segments == o.segments && Arc::ptr_eq(&self.progress, &o.progress)
    }
}

impl Eq for CopyJob {}

impl CopyJob {
    /// Copy every segment, a MiB at a time, each read under its source
    /// LU's media lock and each write under its destination's (so no
    /// COMPARE AND WRITE on either sees half a chunk). Stops at the first
    /// failure: COPY ABORTED with the segment's number in INFORMATION
    /// and the store's additional sense code.
    pub(crate) fn run(&self, buf: &mut Vec<u8>) -> Result<(), Sense> {
        const CHUNK: u64 = 1 << 20;
        let lu = |id: LunId| self.lus.iter().find(|l| l.0 == id);
        let r = self.segments.iter().enumerate().try_for_each(|(n, s)| {
            let stop = |asc: (u8, u8)| copy_aborted(asc).with_info(n as u64);
            let (Some((_, src_lock, Some(src))), Some((_, dst_lock, Some(dst)))) =
                (lu(s.src), lu(s.dst))
            else {
                return Err(stop(COPY_TARGET_DEVICE_NOT_REACHABLE));
            };
            let mut at = 0;
            while at < s.len {
                let n = (s.len - at).min(CHUNK) as usize;
                {
                    let _g = src_lock.read().unwrap_or_else(|p| p.into_inner());
                    src.read_into(buf, s.src_offset + at, n)
                        .map_err(|_| stop(asc::UNRECOVERED_READ_ERROR))?;
                }
                {
                    let _g = dst_lock.read().unwrap_or_else(|p| p.into_inner());
                    dst.write_at(&buf[..n], s.dst_offset + at).map_err(|e| {
                        let m = crate::io::MediaResult::from_io(&e);
                        stop(m.sense(false).map_or(asc::WRITE_ERROR, |s| s.asc))
                    })?;
                }
                at += n as u64;
            }
            if s.flush {
                dst.flush().map_err(|_| stop(asc::WRITE_ERROR))?;
            }
            self.progress.segment_done(s.len);
            Ok(())
        });
        buf.clear();
        self.progress.finish(r.is_ok());
        r
    }
}

/// How a held copy stands (COPY STATUS, SPC-4 §6.18.2).
#[derive(Debug, Default)]
pub struct CopyProgress {
    /// 0 in progress, 1 completed, 2 completed with an error.
    pub(crate) state: AtomicU8,
    pub(crate) segments: AtomicU16,
    pub(crate) bytes: AtomicU64,
    /// For RECEIVE ROD TOKEN INFORMATION: the service action the list
    /// identifier was used with (POPULATE TOKEN, WRITE USING TOKEN) and
    /// the ROD token POPULATE TOKEN made.
    pub(crate) rod: Option<(u8, Option<Vec<u8>>)>,
}

impl CopyProgress {
    pub(crate) fn segment_done(&self, bytes: u64) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn finish(&self, ok: bool) {
        self.state.store(if ok { 1 } else { 2 }, Ordering::Release);
    }
}

/// Results held for RECEIVE COPY RESULTS, by nexus and list identifier.
#[derive(Debug, Default, Clone)]
pub(crate) struct HeldCopies {
    held: BTreeMap<(NexusId, u32), Arc<CopyProgress>>,
    order: VecDeque<(NexusId, u32)>,
}

impl HeldCopies {
    pub(crate) fn hold(&mut self, n: NexusId, list: u32, p: Arc<CopyProgress>) {
        if self.held.insert((n, list), p).is_none() {
            self.order.push_back((n, list));
        }
        while self.order.len() > MAX_HELD {
            if let Some(k) = self.order.pop_front() {
                self.held.remove(&k);
            }
        }
    }
    pub(crate) fn get(&self, n: NexusId, list: u32) -> Option<&Arc<CopyProgress>> {
        self.held.get(&(n, list))
    }
    /// A nexus lost: what was held for it goes (SPC-4 §6.4.1).
    pub(crate) fn forget(&mut self, n: NexusId) {
        self.held.retain(|k, _| k.0 != n);
        self.order.retain(|k| k.0 != n);
    }
}

pub(crate) fn copy_aborted(asc: (u8, u8)) -> Sense {
    Sense::new(COPY_ABORTED, asc)
}

/// `s` pointing at byte `at` of the parameter list.
fn param_field(mut s: Sense, at: u16) -> Sense {
    s.field = Some(crate::sense::FieldPointer {
        in_cdb: false,
        byte: at,
        bit: None,
    });
    s
}

/// EXTENDED COPY (LID1): the parameter list checked and resolved into an
/// [`IoOp::Copy`] against the LUs of `luns`.
pub(crate) fn extended_copy(
    luns: &BTreeMap<LunId, Lun>,
    held: &mut HeldCopies,
    ctx: &Ctx<'_>,
    dout: &[u8],
) -> HandlerResult {
    let cdb = ctx.cdb;
    let plen = be32(cdb, 10) as usize;
    if plen == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    let wanted = plen as u64;
    if plen < HEADER_LEN || dout.len() < plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let p = &dout[..plen];
    let list_id = u32::from(p[0]);
    let list_usage = (p[1] >> 3) & 0x03;
    if list_usage == 0b01 {
        return Err(Sense::invalid_param(1)); // reserved
    }
    let tdl = usize::from(be16(p, 2));
    let sdl = be32(p, 8) as usize;
    let inline = be32(p, 12) as usize;
    if HEADER_LEN
        .checked_add(tdl)
        .and_then(|n| n.checked_add(sdl))
        .and_then(|n| n.checked_add(inline))
        .is_none_or(|n| n > plen)
    {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if tdl + sdl > MAX_DESCRIPTOR_LIST_LENGTH {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if inline != 0 {
        // MAXIMUM INLINE DATA LENGTH is 0.
        return Err(Sense::invalid_param(12));
    }
    if tdl % TARGET_DESCRIPTOR_LEN != 0 {
        return Err(Sense::invalid_param(2));
    }
    if tdl / TARGET_DESCRIPTOR_LEN > MAX_TARGET_DESCRIPTORS {
        return Err(Sense::illegal(TOO_MANY_TARGET_DESCRIPTORS));
    }
    // Target descriptors: identification descriptors only.
    let mut targets = Vec::new();
    for (i, d) in p[HEADER_LEN..HEADER_LEN + tdl]
        .chunks(TARGET_DESCRIPTOR_LEN)
        .enumerate()
    {
        let at = (HEADER_LEN + i * TARGET_DESCRIPTOR_LEN) as u16;
        if d[0] != IDENTIFICATION_DESCRIPTOR {
            return Err(param_field(
                Sense::illegal(UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE),
                at,
            ));
        }
        // Peripheral device type 0 (block) is the only kind we copy.
        if d[1] & 0x1f != 0 {
            return Err(copy_aborted(INCORRECT_COPY_TARGET_DEVICE_TYPE));
        }
        targets.push((resolve(luns, &d[4..24]), block_length(d)));
    }
    // Segment descriptors: count them first, then read them.
    let segs = &p[HEADER_LEN + tdl..HEADER_LEN + tdl + sdl];
    let mut descs = Vec::new();
    let mut off = 0;
    while off < segs.len() {
        if off + 4 > segs.len() {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let len = usize::from(be16(segs, off + 2)) + 4;
        if off + len > segs.len() {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        descs.push((off, &segs[off..off + len]));
        off += len;
    }
    if descs.len() > MAX_SEGMENT_DESCRIPTORS {
        return Err(Sense::illegal(TOO_MANY_SEGMENT_DESCRIPTORS));
    }
    let mut segments = Vec::with_capacity(descs.len());
    for (n, (off, d)) in descs.into_iter().enumerate() {
        let at = (HEADER_LEN + tdl + off) as u16;
        if d[0] != BLOCK_TO_BLOCK {
            return Err(param_field(
                Sense::illegal(UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE),
                at,
            ));
        }
        if d.len() != 28 {
            return Err(Sense::invalid_param(at + 2));
        }
        match segment(luns, &targets, ctx, d, n as u64, at) {
            Ok(s) => segments.push(s),
            Err(Some(s)) => return Err(s),
            Err(None) => return Ok(Reply::Conflict),
        }
    }
    if segments.is_empty() {
        return Ok(Reply::Good { wanted });
    }
    let progress = Arc::new(CopyProgress::default());
    // LIST ID USAGE 00b and 10b name the copy by its list identifier,
    // which must then be unique among copies in progress; we hold the
    // results of both (SPC-4 §6.4.3.2 table 102).
    if list_usage != 0b11 {
        if held
            .get(ctx.nexus, list_id)
            .is_some_and(|p| p.state.load(Ordering::Acquire) == 0)
        {
            return Err(Sense::illegal(OPERATION_IN_PROGRESS));
        }
        held.hold(ctx.nexus, list_id, progress.clone());
    }
    let mut ids: Vec<LunId> = segments.iter().flat_map(|s| [s.src, s.dst]).collect();
    ids.sort_by_key(|l| l.0);
    ids.dedup();
    let lus = ids
        .into_iter()
        .filter_map(|id| luns.get(&id).map(|l| (id, l.io_lock.clone(), None)))
        .collect();
    Ok(Reply::Io {
        op: IoOp::Copy(Box::new(CopyJob::new(segments, lus, progress))),
        wanted,
    })
}

/// The disk block length a target descriptor gives (0: unstated).
fn block_length(d: &[u8]) -> u64 {
    u64::from(crate::cdb::be24(d, 29))
}

/// The LU whose VPD 83h names the designation descriptor `desig`: one
/// with LU association (SPC-4 §7.8.6), compared by code set, type and
/// value.
fn resolve(luns: &BTreeMap<LunId, Lun>, desig: &[u8]) -> Option<LunId> {
    let (code_set, typ, len) = (desig[0] & 0x0f, desig[1] & 0x0f, usize::from(desig[3]));
    if (desig[1] >> 4) & 0x03 != 0 || len > 16 {
        return None;
    }
    let want = &desig[4..4 + len];
    let mut page = Vec::new();
    luns.iter().find_map(|(id, lun)| {
        if lun.implicit || lun.cfg.device_type != DeviceType::Disk {
            return None;
        }
        page.clear();
        crate::inquiry::lu_designators(&lun.cfg, &mut page);
        let mut at = 0;
        while at + 4 <= page.len() {
            let (cs, t, l) = (page[at] & 0x0f, page[at + 1], usize::from(page[at + 3]));
            let value = page.get(at + 4..at + 4 + l)?;
            if cs == code_set && t & 0x0f == typ && (t >> 4) & 0x03 == 0 && value == want {
                return Some(*id);
            }
            at += 4 + l;
        }
        None
    })
}

/// One block-to-block segment descriptor (SPC-4 §6.4.6.5), segment
/// number `n`, checked against its copy targets. `Err(None)`: a copy
/// target's reservation conflicts.
fn segment(
    luns: &BTreeMap<LunId, Lun>,
    targets: &[(Option<LunId>, u64)],
    ctx: &Ctx<'_>,
    d: &[u8],
    n: u64,
    at: u16,
) -> Result<CopySegment, Option<Sense>> {
    let dc = d[1] & 0x02 != 0;
    let target = |i: usize| -> Result<(LunId, &Lun, u64), Option<Sense>> {
        let (id, stated) = targets
            .get(i)
            .and_then(|&(id, bl)| Some((id?, bl)))
            .ok_or(Some(
                copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE).with_info(n),
            ))?;
        let lun = luns.get(&id).ok_or(Some(
            copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE).with_info(n),
        ))?;
        if stated != 0 && stated != lun.cfg.bs() {
            return Err(Some(
                copy_aborted(INCORRECT_COPY_TARGET_DEVICE_TYPE).with_info(n),
            ));
        }
        if crate::lu::not_ready(lun).is_some() {
            return Err(Some(
                copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE).with_info(n),
            ));
        }
        Ok((id, lun, lun.cfg.bs()))
    };
    let (src, src_lun, src_bs) = target(usize::from(be16(d, 4)))?;
    let (dst, dst_lun, dst_bs) = target(usize::from(be16(d, 6)))?;
    let (src_lba, dst_lba) = (be64(d, 12), be64(d, 20));
    let blocks = u64::from(be16(d, 10));
    let len = blocks * if dc { dst_bs } else { src_bs };
    if len % src_bs != 0 || len % dst_bs != 0 {
        return Err(Some(
            copy_aborted(INCORRECT_COPY_TARGET_DEVICE_TYPE).with_info(n),
        ));
    }
    if len > MAX_SEGMENT_BYTES {
        return Err(Some(Sense::invalid_param(at + 10)));
    }
    let fits = |lba: u64, bs: u64, lun: &Lun| {
        lba.checked_add(len / bs)
            .is_some_and(|end| end <= lun.cfg.blocks())
    };
    if !fits(src_lba, src_bs, src_lun) || !fits(dst_lba, dst_bs, dst_lun) {
        // The copy stops at this segment, whose number INFORMATION
        // holds (SPC-4 §6.4.5).
        return Err(Some(copy_aborted(asc::NO_ADDITIONAL_SENSE).with_info(n)));
    }
    if let Some(s) = dst_lun.write_protect() {
        return Err(Some(s));
    }
    // Other LUs' reservations hold for the copy as for a READ of the
    // source and a WRITE of the destination.
    for (lun, opcode) in [(src_lun, op::READ_10), (dst_lun, op::WRITE_10)] {
        let probe = [opcode, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        if lun.reserved_by.is_some_and(|h| h != ctx.nexus)
            || lun
                .pr
                .check_access(ctx.initiator, ctx.port.relative_port, &probe)
                .is_err()
        {
            return Err(None);
        }
    }
    Ok(CopySegment {
        src,
        dst,
        src_offset: src_lba * src_bs,
        dst_offset: dst_lba * dst_bs,
        len,
        flush: !dst_lun.cfg.write_cache,
    })
}

/// RECEIVE COPY RESULTS (LID1): COPY STATUS of a held copy, or the
/// copy manager's OPERATING PARAMETERS.
pub(crate) fn receive_copy_results(
    held: &HeldCopies,
    ctx: &Ctx<'_>,
    din: &mut Vec<u8>,
) -> HandlerResult {
    let cdb = ctx.cdb;
    let alloc = be32(cdb, 10) as usize;
    din.clear();
    match u16::from(byte(cdb, 1) & 0x1f) {
        COPY_STATUS => {
            let Some(p) = held.get(ctx.nexus, u32::from(byte(cdb, 2))) else {
                return Err(Sense::invalid_cdb(2, None));
            };
            din.resize(12, 0);
            din[0..4].copy_from_slice(&8u32.to_be_bytes());
            din[4] = p.state.load(Ordering::Acquire);
            din[5..7].copy_from_slice(&p.segments.load(Ordering::Relaxed).to_be_bytes());
            din[7] = 0; // TRANSFER COUNT UNITS: bytes
            let bytes = p.bytes.load(Ordering::Relaxed).min(u64::from(u32::MAX)) as u32;
            din[8..12].copy_from_slice(&bytes.to_be_bytes());
        }
        OPERATING_PARAMETERS => {
            din.resize(43, 0);
            din[8..10].copy_from_slice(&(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
            din[10..12].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
            din[12..16].copy_from_slice(&(MAX_DESCRIPTOR_LIST_LENGTH as u32).to_be_bytes());
            din[16..20].copy_from_slice(&(MAX_SEGMENT_BYTES as u32).to_be_bytes());
            // No inline or held data, no streams; copies run one per
            // command, as many as commands.
            din[34..36].copy_from_slice(&(MAX_HELD as u16).to_be_bytes());
            din[36] = u8::MAX;
            din[37] = 9; // DATA SEGMENT GRANULARITY: 2^9 bytes
            din.push(2); // IMPLEMENTED DESCRIPTOR LIST LENGTH, byte 43
            din.extend_from_slice(&[BLOCK_TO_BLOCK, IDENTIFICATION_DESCRIPTOR]);
            let avail = (din.len() - 4) as u32;
            din[0..4].copy_from_slice(&avail.to_be_bytes());
        }
        _ => return Err(Sense::invalid_cdb(1, Some(4))),
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// The third-party copy VPD page's descriptors (SPC-4 §7.8.17): the
/// commands supported, the parameter data and the descriptor types.
pub(crate) fn third_party_copy_vpd(block: u64, d: &mut Vec<u8>) {
    // The block device ROD token limits (POPULATE TOKEN, WRITE USING
    // TOKEN).
    d.extend_from_slice(&crate::odx::rod_limits_descriptor(block));
    let mut desc = |typ: u16, body: &[u8]| {
        let padded = body.len().div_ceil(4) * 4;
        d.extend_from_slice(&typ.to_be_bytes());
        d.extend_from_slice(&(padded as u16).to_be_bytes());
        d.extend_from_slice(body);
        d.extend(std::iter::repeat_n(0, padded - body.len()));
    };
    // Supported commands: EXTENDED COPY (LID1), POPULATE TOKEN, WRITE
    // USING TOKEN; RECEIVE COPY RESULTS COPY STATUS, OPERATING PARAMETERS
    // and RECEIVE ROD TOKEN INFORMATION.
    let cmds = [
        op::EXTENDED_COPY,
        3,
        0x00,
        0x10,
        0x11,
        op::RECEIVE_COPY_RESULTS,
        3,
        COPY_STATUS as u8,
        OPERATING_PARAMETERS as u8,
        0x07,
    ];
    let mut body = vec![cmds.len() as u8];
    body.extend_from_slice(&cmds);
    desc(0x0001, &body);
    // Parameter data: the LID1 limits.
    // (Offsets here are the descriptor's less its 4-byte header: MAXIMUM
    // CSCD DESCRIPTOR COUNT at byte 8, MAXIMUM SEGMENT DESCRIPTOR COUNT
    // at 10, MAXIMUM DESCRIPTOR LIST LENGTH at 12, MAXIMUM INLINE DATA
    // LENGTH at 16.)
    let mut body = vec![0u8; 28];
    body[4..6].copy_from_slice(&(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
    body[6..8].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
    body[8..12].copy_from_slice(&(MAX_DESCRIPTOR_LIST_LENGTH as u32).to_be_bytes());
    desc(0x0004, &body);
    // Supported descriptors.
    desc(0x0008, &[2, BLOCK_TO_BLOCK, IDENTIFICATION_DESCRIPTOR]);
}
