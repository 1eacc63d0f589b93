//! Token-based copy, the offload Windows calls ODX (SBC-4 §5.13 POPULATE
//! TOKEN, §5.52 WRITE USING TOKEN, SPC-4 §6.18.5 RECEIVE ROD TOKEN
//! INFORMATION). POPULATE TOKEN hands out a 512-byte ROD token that stands
//! for block ranges of a LU; WRITE USING TOKEN copies what it stands for
//! into ranges of any LU of the same target, as a media task through the
//! stores (the EXTENDED COPY engine, [`crate::xcopy::CopyJob`]).
//!
//! A token is not a point-in-time copy: it is revoked as soon as anything
//! writes one of its source blocks (a later WRITE USING TOKEN then fails
//! with INVALID TOKEN OPERATION, TOKEN REVOKED, and the initiator falls
//! back to reads and writes), so what it copies is always what the source
//! held when the token was made. Tokens also lapse after their inactivity
//! timeout, and carry 128 bits from the OS's random keys so that they
//! cannot be guessed.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cdb::{be16, be32, be64};
use crate::io::IoOp;
use crate::lu::{Ctx, HandlerResult, Lun, Reply};
use crate::sense::{asc, Sense};
use crate::xcopy::{CopyJob, CopyProgress, CopySegment, HeldCopies};
use crate::LunId;

/// Block device ROD token limits (SBC-4 §6.6.? third-party copy VPD).
pub(crate) const MAX_RANGES: usize = 64;
pub(crate) const DEFAULT_INACTIVITY_SECS: u32 = 30;
pub(crate) const MAX_INACTIVITY_SECS: u32 = 300;
/// The most a token stands for, in bytes.
pub(crate) const MAX_TOKEN_BYTES: u64 = 1 << 30;
/// Tokens alive at once per target; the oldest goes first.
const MAX_TOKENS: usize = 64;

const TOKEN_LEN: usize = 512;
/// Our ROD type: vendor specific (SPC-4 table 123: F0000000h-FEFFFFFFh).
const ROD_TYPE: u32 = 0xf000_0001;

const POPULATE_TOKEN: u8 = 0x10;
const WRITE_USING_TOKEN: u8 = 0x11;

const TOKEN_UNKNOWN: (u8, u8) = (0x23, 0x04);
const TOKEN_REVOKED: (u8, u8) = (0x23, 0x06);
const TOKEN_EXPIRED: (u8, u8) = (0x23, 0x07);
const UNSUPPORTED_TOKEN_TYPE: (u8, u8) = (0x23, 0x01);
const TOO_MANY_SEGMENT_DESCRIPTORS: (u8, u8) = (0x26, 0x08);

/// What a token stands for: its LU, its extents in bytes, the LU's block.
type Source = (LunId, Vec<(u64, u64)>, u64);

/// One token: what it stands for and until when.
#[derive(Debug)]
struct Token {
    bytes: Vec<u8>,
    lun: LunId,
    /// Source extents in bytes, in order.
    extents: Vec<(u64, u64)>,
    block: u64,
    timeout: Duration,
    last_used: Instant,
}

/// The tokens of one target, shared by its loops' copies of the LU state
/// (writes on any loop revoke them).
pub struct RodTokens {
    tokens: Mutex<Vec<Token>>,
    /// How many tokens exist: writes look at the list only when some do.
    live: AtomicUsize,
    keys: RandomState,
    serial: AtomicU64,
    clock: Box<dyn Fn() -> Instant + Send + Sync>,
}

impl std::fmt::Debug for RodTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RodTokens")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for RodTokens {
    fn default() -> Self {
        RodTokens::with_clock(Box::new(Instant::now))
    }
}

impl RodTokens {
    /// Tokens that tell time by `clock` (tests pass their own).
    pub fn with_clock(clock: Box<dyn Fn() -> Instant + Send + Sync>) -> RodTokens {
        RodTokens {
            tokens: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            keys: RandomState::new(),
            serial: AtomicU64::new(1),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Token>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// 64 unguessable bits: SipHash under the process's random keys.
    fn random(&self, n: u64) -> u64 {
        let mut h = self.keys.build_hasher();
        h.write_u64(n);
        h.finish()
    }

    /// Whether any token is alive.
    pub(crate) fn any(&self) -> bool {
        self.live.load(Ordering::Acquire) > 0
    }

    /// Revoke the tokens of LU `lun` with a source extent overlapping the
    /// byte ranges `written` (a command about to write them).
    pub(crate) fn written(&self, lun: LunId, written: &[(u64, u64)]) {
        if self.live.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = (self.clock)();
        let mut t = self.lock();
        // Lapsed tokens go too, so that writes stop looking once the
        // last one has (see `any`).
        t.retain(|tok| now.duration_since(tok.last_used) < tok.timeout);
        t.retain(|tok| {
            tok.lun != lun
                || !tok.extents.iter().any(|&(o, l)| {
                    written
                        .iter()
                        .any(|&(wo, wl)| wo < o.saturating_add(l) && o < wo.saturating_add(wl))
                })
        });
        self.live.store(t.len(), Ordering::Release);
    }

    /// The LU removed (or replaced): its tokens go.
    pub(crate) fn forget_lun(&self, lun: LunId) {
        let mut t = self.lock();
        t.retain(|tok| tok.lun != lun);
        self.live.store(t.len(), Ordering::Release);
    }

    fn create(&self, lun: LunId, extents: Vec<(u64, u64)>, block: u64, timeout: u32) -> Vec<u8> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let total: u64 = extents.iter().map(|e| e.1).sum();
        // SPC-4 §6.4.? ROD token format: ROD TYPE, length 01F8h, the copy
        // manager's identifier for it, then (vendor specific here) the
        // bytes represented and 128 random bits.
        let mut b = vec![0u8; TOKEN_LEN];
        b[0..4].copy_from_slice(&ROD_TYPE.to_be_bytes());
        b[6..8].copy_from_slice(&((TOKEN_LEN - 8) as u16).to_be_bytes());
        b[8..16].copy_from_slice(&serial.to_be_bytes());
        b[48..64].copy_from_slice(&u128::from(total).to_be_bytes());
        b[64..72].copy_from_slice(&self.random(serial).to_be_bytes());
        b[72..80].copy_from_slice(&self.random(!serial).to_be_bytes());
        let now = (self.clock)();
        let mut t = self.lock();
        t.retain(|tok| now.duration_since(tok.last_used) < tok.timeout);
        if t.len() >= MAX_TOKENS {
            t.remove(0);
        }
        t.push(Token {
            bytes: b.clone(),
            lun,
            extents,
            block,
            timeout: Duration::from_secs(u64::from(timeout)),
            last_used: now,
        });
        self.live.store(t.len(), Ordering::Release);
        b
    }

    /// The token whose 512 bytes are `bytes`: its source LU, extents and
    /// block size; removed with `delete`.
    fn take(&self, bytes: &[u8], delete: bool) -> Result<Source, Sense> {
        if be32(bytes, 0) != ROD_TYPE {
            return Err(Sense::illegal(UNSUPPORTED_TOKEN_TYPE));
        }
        let now = (self.clock)();
        let mut t = self.lock();
        let Some(i) = t.iter().position(|tok| tok.bytes == bytes) else {
            // Ours, but not (any more) in the list: a write revoked it,
            // or it was never made here.
            let serial = be64(bytes, 8);
            let known = serial < self.serial.load(Ordering::Relaxed)
                && bytes[64..72] == self.random(serial).to_be_bytes();
            return Err(Sense::illegal(if known {
                TOKEN_REVOKED
            } else {
                TOKEN_UNKNOWN
            }));
        };
        if now.duration_since(t[i].last_used) >= t[i].timeout {
            t.remove(i);
            self.live.store(t.len(), Ordering::Release);
            return Err(Sense::illegal(TOKEN_EXPIRED));
        }
        t[i].last_used = now;
        let r = (t[i].lun, t[i].extents.clone(), t[i].block);
        if delete {
            t.remove(i);
            self.live.store(t.len(), Ordering::Release);
        }
        Ok(r)
    }
}

/// Block device range descriptors (SBC-4 §5.13.3) at `at`, `len` bytes of
/// them, checked against the LU: byte extents.
fn ranges(lun: &Lun, p: &[u8], at: usize, len: usize) -> Result<Vec<(u64, u64)>, Sense> {
    if !len.is_multiple_of(16) || at + len > p.len() {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if len == 0 {
        return Err(Sense::invalid_param(at as u16 - 2));
    }
    if len / 16 > MAX_RANGES {
        return Err(Sense::illegal(TOO_MANY_SEGMENT_DESCRIPTORS));
    }
    let bs = lun.cfg.bs();
    let mut out = Vec::with_capacity(len / 16);
    let mut total = 0u64;
    for d in p[at..at + len].chunks(16) {
        let (lba, blocks) = (be64(d, 0), u64::from(be32(d, 8)));
        if lba
            .checked_add(blocks)
            .is_none_or(|end| end > lun.cfg.blocks())
        {
            return Err(Sense::lba_out_of_range());
        }
        // lba + blocks fits the LU, whose size in bytes fits a u64.
        total = total.saturating_add(blocks * bs);
        if total > MAX_TOKEN_BYTES {
            return Err(Sense::invalid_param(at as u16));
        }
        if blocks > 0 {
            out.push((lba * bs, blocks * bs));
        }
    }
    Ok(out)
}

/// POPULATE TOKEN or WRITE USING TOKEN on LU `id`.
pub(crate) fn execute(
    luns: &std::collections::BTreeMap<LunId, Lun>,
    id: LunId,
    tokens: &Arc<RodTokens>,
    held: &mut HeldCopies,
    ctx: &Ctx<'_>,
    dout: &[u8],
) -> HandlerResult {
    let cdb = ctx.cdb;
    let Some(lun) = luns.get(&id) else {
        return Err(Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED));
    };
    if let Some(s) = crate::lu::not_ready(lun) {
        return Err(s);
    }
    let sa = cdb[1] & 0x1f;
    let list_id = be32(cdb, 6);
    let plen = be32(cdb, 10) as usize;
    if plen == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    let wanted = plen as u64;
    if dout.len() < plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let p = &dout[..plen];
    if held
        .get(ctx.nexus, list_id)
        .is_some_and(|h| h.state.load(Ordering::Acquire) == 0)
    {
        return Err(Sense::illegal((0x00, 0x16))); // OPERATION IN PROGRESS
    }
    if sa == POPULATE_TOKEN {
        if plen < 16 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let rtv = p[2] & 0x02 != 0;
        if rtv && be32(p, 8) != 0 && be32(p, 8) != ROD_TYPE {
            return Err(Sense::invalid_param(8));
        }
        let timeout = match be32(p, 4) {
            0 => DEFAULT_INACTIVITY_SECS,
            t if t > MAX_INACTIVITY_SECS => return Err(Sense::invalid_param(4)),
            t => t,
        };
        let extents = ranges(lun, p, 16, usize::from(be16(p, 14)))?;
        let token = tokens.create(id, extents, lun.cfg.bs(), timeout);
        let progress = CopyProgress {
            rod: Some((POPULATE_TOKEN, Some(token))),
            ..Default::default()
        };
        progress.finish(true);
        held.hold(ctx.nexus, list_id, Arc::new(progress));
        return Ok(Reply::Good { wanted });
    }
    // WRITE USING TOKEN.
    if plen < 536 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    let delete = p[2] & 0x02 != 0;
    let offset_blocks = be64(p, 8);
    let dest = ranges(lun, p, 536, usize::from(be16(p, 534)))?;
    let (src, extents, src_bs) = tokens.take(&p[16..16 + TOKEN_LEN], delete)?;
    let Some(src_lun) = luns.get(&src) else {
        return Err(Sense::illegal(TOKEN_REVOKED));
    };
    if let Some(s) = crate::lu::not_ready(src_lun) {
        return Err(s);
    }
    // The source's reservations hold as for a READ of it.
    let probe = [crate::cdb::op::READ_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    if src != id
        && (src_lun.reserved_by.is_some_and(|h| h != ctx.nexus)
            || src_lun
                .pr
                .check_access(ctx.initiator, ctx.port.relative_port, &probe)
                .is_err())
    {
        return Ok(Reply::Conflict);
    }
    if src_bs != lun.cfg.bs() {
        return Err(Sense::invalid_param(536));
    }
    // Walk the token's extents from OFFSET INTO ROD, filling the
    // destination ranges in order; what the token lacks is not copied
    // (RECEIVE ROD TOKEN INFORMATION reports the transfer count).
    let mut skip = offset_blocks.saturating_mul(src_bs);
    let mut source = extents.into_iter().filter_map(move |(o, l)| {
        if skip >= l {
            skip -= l;
            None
        } else {
            let r = (o + skip, l - skip);
            skip = 0;
            Some(r)
        }
    });
    let mut cur = source.next();
    let mut segments = Vec::new();
    let flush = !lun.cfg.write_cache;
    for (mut d_off, mut d_len) in dest {
        while d_len > 0 {
            let Some((s_off, s_len)) = cur else { break };
            let n = d_len.min(s_len);
            segments.push(CopySegment {
                src,
                dst: id,
                src_offset: s_off,
                dst_offset: d_off,
                len: n,
                flush,
            });
            d_off += n;
            d_len -= n;
            cur = (s_len > n)
                .then(|| (s_off + n, s_len - n))
                .or_else(|| source.next());
        }
    }
    let progress = Arc::new(CopyProgress {
        rod: Some((WRITE_USING_TOKEN, None)),
        ..Default::default()
    });
    held.hold(ctx.nexus, list_id, progress.clone());
    if segments.is_empty() {
        progress.finish(true);
        return Ok(Reply::Good { wanted });
    }
    let mut lus = vec![(src, src_lun.io_lock.clone(), None)];
    if src != id {
        lus.push((id, lun.io_lock.clone(), None));
    }
    Ok(Reply::Io {
        op: IoOp::Copy(Box::new(CopyJob::new(segments, lus, progress))),
        wanted,
    })
}

/// RECEIVE ROD TOKEN INFORMATION (SPC-4 §6.18.5) for the list identifier
/// in CDB bytes 2-5: how the POPULATE TOKEN or WRITE USING TOKEN went, and
/// the ROD token POPULATE TOKEN made.
pub(crate) fn receive_rod_token_information(
    held: &HeldCopies,
    ctx: &Ctx<'_>,
    block: u64,
    din: &mut Vec<u8>,
) -> HandlerResult {
    let cdb = ctx.cdb;
    let alloc = be32(cdb, 10) as usize;
    let Some(p) = held.get(ctx.nexus, be32(cdb, 2)) else {
        return Err(Sense::invalid_cdb(2, None));
    };
    let Some((sa, token)) = &p.rod else {
        return Err(Sense::invalid_cdb(2, None));
    };
    din.clear();
    din.resize(32, 0);
    din[4] = *sa;
    din[5] = match p.state.load(Ordering::Acquire) {
        0 => 0x10, // in progress, foreground
        1 => 0x01,
        _ => 0x02,
    };
    din[15] = 0xf1; // TRANSFER COUNT UNITS: logical blocks
    let blocks = p.bytes.load(Ordering::Relaxed) / block.max(1);
    din[16..24].copy_from_slice(&blocks.to_be_bytes());
    din[24..26].copy_from_slice(&p.segments.load(Ordering::Relaxed).to_be_bytes());
    match token {
        Some(t) => {
            din.extend_from_slice(&((2 + t.len()) as u32).to_be_bytes());
            din.extend_from_slice(&[0, 0]);
            din.extend_from_slice(t);
        }
        None => din.extend_from_slice(&0u32.to_be_bytes()),
    }
    let avail = (din.len() - 4) as u32;
    din[0..4].copy_from_slice(&avail.to_be_bytes());
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// The block device ROD token limits descriptor of the third-party copy
/// VPD page (SBC-4 §6.6.7.2), for a LU of `block`-byte blocks.
pub(crate) fn rod_limits_descriptor(block: u64) -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[2..4].copy_from_slice(&32u16.to_be_bytes());
    d[10..12].copy_from_slice(&(MAX_RANGES as u16).to_be_bytes());
    d[12..16].copy_from_slice(&MAX_INACTIVITY_SECS.to_be_bytes());
    d[16..20].copy_from_slice(&DEFAULT_INACTIVITY_SECS.to_be_bytes());
    d[20..28].copy_from_slice(&(MAX_TOKEN_BYTES / block.max(1)).to_be_bytes());
    d[28..36].copy_from_slice(&((8u64 << 20) / block.max(1)).to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens lapse after their inactivity timeout, counted from their
    /// last use.
    #[test]
    fn tokens_expire_when_idle() {
        let now = Arc::new(Mutex::new(Instant::now()));
        let t = {
            let now = now.clone();
            RodTokens::with_clock(Box::new(move || *now.lock().unwrap()))
        };
        let tok = t.create(LunId(1), vec![(0, 4096)], 512, 10);
        *now.lock().unwrap() += Duration::from_secs(9);
        assert!(t.take(&tok, false).is_ok(), "used at 9 s");
        *now.lock().unwrap() += Duration::from_secs(9);
        assert!(t.take(&tok, false).is_ok(), "9 s after its last use");
        *now.lock().unwrap() += Duration::from_secs(10);
        let e = t.take(&tok, false).unwrap_err();
        assert_eq!(e.asc, TOKEN_EXPIRED);
        // Writes elsewhere leave a token alone; over it, revoke it.
        let tok = t.create(LunId(1), vec![(4096, 4096)], 512, 10);
        t.written(LunId(2), &[(4096, 512)]);
        t.written(LunId(1), &[(0, 4096)]);
        assert!(t.take(&tok, false).is_ok());
        t.written(LunId(1), &[(8191, 1)]);
        assert_eq!(t.take(&tok, false).unwrap_err().asc, TOKEN_REVOKED);
    }
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    /// Once the last token has lapsed, writes stop looking (the first
    /// write after purges it).
    #[test]
    fn lapsed_tokens_stop_costing_writes() {
        let now = Arc::new(Mutex::new(Instant::now()));
        let t = {
            let now = now.clone();
            RodTokens::with_clock(Box::new(move || *now.lock().unwrap()))
        };
        t.create(LunId(1), vec![(0, 512)], 512, 5);
        assert!(t.any());
        *now.lock().unwrap() += Duration::from_secs(6);
        t.written(LunId(2), &[(0, 512)]);
        assert!(!t.any());
    }
}
