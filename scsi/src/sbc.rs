//! Block commands (SBC-3): READ CAPACITY, READ/WRITE/VERIFY/WRITE AND
//! VERIFY in all sizes, SYNCHRONIZE CACHE, PRE-FETCH, WRITE SAME, UNMAP,
//! GET LBA STATUS, COMPARE AND WRITE, ORWRITE. Each validates its CDB here
//! and becomes an [`IoOp`].

use crate::cdb::{be16, be32, be64, byte, lba_range, op, sa, service_action, LbaRange};
use crate::inquiry::{
    max_write_same_blocks, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_UNMAP_LBA_COUNT,
};
use crate::io::{Compare, IoOp};
use crate::lu::{not_ready, Ctx, HandlerResult, Lun, Reply};
use crate::sense::{asc, Sense};
use crate::MAX_TRANSFER_BYTES;

/// Byte 1 flags (SBC-3 §5).
const PROTECT_MASK: u8 = 0xe0;
const FUA: u8 = 0x08;

/// Most LBA status descriptors one GET LBA STATUS returns.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 1024;

pub(crate) fn execute(lun: &Lun, ctx: &Ctx<'_>, dout: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    if let Some(s) = not_ready(lun) {
        return Err(s);
    }
    let cdb = ctx.cdb;
    match cdb[0] {
        op::READ_CAPACITY_10 => read_capacity_10(lun, cdb, din),
        op::SERVICE_ACTION_IN_16 => match service_action(cdb) {
            sa::READ_CAPACITY_16 => read_capacity_16(lun, cdb, din),
            _ => get_lba_status(lun, cdb),
        },
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => read(lun, cdb),
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => write(lun, cdb, false),
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            write(lun, cdb, true)
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => verify(lun, cdb, dout),
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => {
            let r = lba_range(cdb);
            to_end(lun, r)?;
            Ok(Reply::Io {
                op: IoOp::Sync,
                wanted: 0,
            })
        }
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => {
            // SBC-3 §5.9: with no cache to load, GOOD (not CONDITION MET)
            // once the range is valid.
            check_range(lun, lba_range(cdb))?;
            Ok(Reply::Good { wanted: 0 })
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => write_same(lun, cdb, dout),
        op::UNMAP => unmap(lun, cdb, dout),
        op::COMPARE_AND_WRITE => compare_and_write(lun, ctx, dout),
        op::ORWRITE_16 => orwrite(lun, cdb),
        op::WRITE_ATOMIC_16 => write_atomic(lun, cdb),
        op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12 => read_defect_data(cdb, din),
        _ => Err(Sense::invalid_opcode()),
    }
}

/// READ DEFECT DATA (10) and (12) (SBC-4 §5.11, §5.12): a virtual medium
/// has no defects, so the answer is an empty list in the format asked
/// for, with PLISTV/GLISTV saying which lists it stands for.
fn read_defect_data(cdb: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    let ten = cdb[0] == op::READ_DEFECT_DATA_10;
    let flags = if ten { byte(cdb, 2) } else { byte(cdb, 1) };
    let format = flags & 0x07;
    // 000b short block, 001b/010b extended, 011b long block, 100b bytes
    // from index, 101b physical sector; 110b is vendor specific, 111b
    // reserved.
    if format > 0b101 {
        return Err(Sense::invalid_cdb(if ten { 2 } else { 1 }, Some(0)));
    }
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        be32(cdb, 6) as usize
    };
    din.clear();
    din.resize(if ten { 4 } else { 8 }, 0);
    din[1] = flags & 0x1f; // PLISTV, GLISTV and the format, as requested
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// The byte of the CDB that holds the transfer length, for field pointers.
fn length_byte(cdb: &[u8]) -> u16 {
    match crate::cdb::group_length(cdb[0]) {
        Some(6) => 4,
        Some(10) => 7,
        Some(12) => 6,
        _ => 10,
    }
}

/// SBC-3 §4.5: LBA + length past the last block → LBA OUT OF RANGE.
fn check_range(lun: &Lun, r: LbaRange) -> Result<(), Sense> {
    match r.lba.checked_add(u64::from(r.blocks)) {
        Some(end) if end <= lun.cfg.blocks() => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// For commands where 0 blocks means "to the last LBA": the block count.
fn to_end(lun: &Lun, r: LbaRange) -> Result<u64, Sense> {
    let blocks = lun.cfg.blocks();
    if r.lba > blocks {
        return Err(Sense::lba_out_of_range());
    }
    if r.blocks == 0 {
        return Ok(blocks - r.lba);
    }
    check_range(lun, r)?;
    Ok(u64::from(r.blocks))
}

/// RDPROTECT/WRPROTECT/VRPROTECT must be 0: we keep no protection
/// information (SBC-3 §4.22.2 with PROTECT=0 in INQUIRY).
fn check_protect(r: LbaRange) -> Result<(), Sense> {
    if r.flags & PROTECT_MASK != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    Ok(())
}

/// Transfer size in bytes, refused above [`MAX_TRANSFER_BYTES`] (the
/// MAXIMUM TRANSFER LENGTH of VPD B0).
fn transfer_bytes(lun: &Lun, cdb: &[u8], blocks: u64) -> Result<u64, Sense> {
    match blocks.checked_mul(lun.cfg.bs()) {
        Some(n) if n <= MAX_TRANSFER_BYTES => Ok(n),
        _ => Err(Sense::invalid_cdb(length_byte(cdb), None)),
    }
}

fn read(lun: &Lun, cdb: &[u8]) -> HandlerResult {
    let r = lba_range(cdb);
    check_protect(r)?;
    check_range(lun, r)?;
    let len = transfer_bytes(lun, cdb, u64::from(r.blocks))?;
    if len == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    Ok(Reply::Io {
        op: IoOp::Read {
            offset: r.lba * lun.cfg.bs(),
            len,
        },
        wanted: len,
    })
}

/// WRITE (`verify` false) or WRITE AND VERIFY (SBC-3 §5.30-5.32, §5.35).
fn write(lun: &Lun, cdb: &[u8], verify: bool) -> HandlerResult {
    let r = lba_range(cdb);
    check_protect(r)?;
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    check_range(lun, r)?;
    let len = transfer_bytes(lun, cdb, u64::from(r.blocks))?;
    if len == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    // FUA (not on WRITE AND VERIFY, which reads back anyway) or a disabled
    // write cache: the data must be on the medium before GOOD.
    let fua = !verify && r.flags & FUA != 0;
    let flush = fua || !lun.cfg.write_cache || verify;
    Ok(Reply::Io {
        op: IoOp::Write {
            offset: r.lba * lun.cfg.bs(),
            len,
            flush,
            verify,
            atomic: false,
        },
        wanted: len,
    })
}

/// WRITE ATOMIC (16) (SBC-4 §5.48): all of it or none of it, as any
/// other command sees it. It runs alone on its LU (under the LU's media
/// lock, as COMPARE AND WRITE does), so no read or write overlaps half
/// of it. Up to MAXIMUM ATOMIC TRANSFER LENGTH; no atomic boundaries.
fn write_atomic(lun: &Lun, cdb: &[u8]) -> HandlerResult {
    let flags = byte(cdb, 1);
    if flags & PROTECT_MASK != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    let lba = be64(cdb, 2);
    let blocks = be16(cdb, 12);
    check_range(
        lun,
        LbaRange {
            lba,
            blocks: u32::from(blocks),
            flags,
        },
    )?;
    if be16(cdb, 10) != 0 {
        // ATOMIC BOUNDARY: MAXIMUM ATOMIC BOUNDARY SIZE is 0.
        return Err(Sense::invalid_cdb(10, None));
    }
    let len = u64::from(blocks) * lun.cfg.bs();
    if len > crate::inquiry::MAX_ATOMIC_BYTES {
        return Err(Sense::invalid_cdb(12, None));
    }
    if len == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    Ok(Reply::Io {
        op: IoOp::Write {
            offset: lba * lun.cfg.bs(),
            len,
            flush: flags & FUA != 0 || !lun.cfg.write_cache,
            verify: false,
            atomic: true,
        },
        wanted: len,
    })
}

/// VERIFY (10)/(12)/(16) (SBC-3 §5.33): BYTCHK 00b checks readability,
/// 01b compares with Data-Out, 11b compares every block with one block.
/// DPO is a cache hint and is accepted.
fn verify(lun: &Lun, cdb: &[u8], dout: &[u8]) -> HandlerResult {
    let r = lba_range(cdb);
    check_protect(r)?;
    check_range(lun, r)?;
    let bs = lun.cfg.bs();
    let offset = r.lba * bs;
    let blocks = u64::from(r.blocks);
    let (compare, wanted) = match (r.flags >> 1) & 0x03 {
        0 => (Compare::None, 0),
        1 => (Compare::DataOut, transfer_bytes(lun, cdb, blocks)?),
        3 => (Compare::OneBlock, if blocks == 0 { 0 } else { bs }),
        _ => return Err(Sense::invalid_cdb(1, Some(2))),
    };
    if blocks == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    if compare == Compare::OneBlock && (dout.len() as u64) < bs {
        // BYTCHK 11b needs the whole block to compare against.
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    Ok(Reply::Io {
        op: IoOp::Verify {
            offset,
            len: blocks * bs,
            compare,
            block: bs,
        },
        wanted,
    })
}

fn read_capacity_10(lun: &Lun, cdb: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    // SBC-3 §5.16: without PMI the LBA field must be zero.
    if byte(cdb, 8) & 0x01 == 0 && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_cdb(2, None));
    }
    let last = lun.cfg.blocks().saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    din.clear();
    din.extend_from_slice(&last.to_be_bytes());
    din.extend_from_slice(&(lun.cfg.bs() as u32).to_be_bytes());
    Ok(Reply::Good { wanted: 8 })
}

fn read_capacity_16(lun: &Lun, cdb: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    let alloc = be32(cdb, 10) as usize;
    let cfg = &lun.cfg;
    din.clear();
    din.resize(32, 0);
    din[0..8].copy_from_slice(&cfg.blocks().saturating_sub(1).to_be_bytes());
    din[8..12].copy_from_slice(&(cfg.bs() as u32).to_be_bytes());
    din[13] = cfg.lbppbe & 0x0f;
    let mut b14 = (cfg.la_lba.min(0x3fff) as u16).to_be_bytes();
    if cfg.thin {
        b14[0] |= 0x80 | 0x40; // LBPME, LBPRZ
    }
    din[14..16].copy_from_slice(&b14);
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

fn get_lba_status(lun: &Lun, cdb: &[u8]) -> HandlerResult {
    let lba = be64(cdb, 2);
    let alloc = be32(cdb, 10) as usize;
    let total = lun.cfg.blocks();
    if lba >= total {
        return Err(Sense::lba_out_of_range());
    }
    let max_descriptors = (alloc.saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    Ok(Reply::Io {
        op: IoOp::GetLbaStatus {
            lba,
            total_blocks: total,
            block: lun.cfg.bs(),
            max_descriptors,
            alloc,
        },
        wanted: alloc as u64,
    })
}

/// WRITE SAME (10)/(16) (SBC-3 §5.41-5.42).
fn write_same(lun: &Lun, cdb: &[u8], dout: &[u8]) -> HandlerResult {
    let r = lba_range(cdb);
    let flags = r.flags;
    check_protect(r)?;
    let ndob = cdb[0] == op::WRITE_SAME_16 && flags & 0x01 != 0;
    let unmap = flags & 0x08 != 0;
    if flags & 0x10 != 0 {
        // ANCHOR: ANC_SUP is 0 in VPD B2.
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    if flags & 0x06 != 0 {
        // PBDATA / LBDATA: obsolete, unsupported.
        return Err(Sense::invalid_cdb(
            1,
            Some(if flags & 0x04 != 0 { 2 } else { 1 }),
        ));
    }
    if unmap && !lun.cfg.thin {
        // LBPWS/LBPWS10 are 0 without thin provisioning.
        return Err(Sense::invalid_cdb(1, Some(3)));
    }
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    let blocks = to_end(lun, r)?;
    if blocks > max_write_same_blocks(&lun.cfg) {
        return Err(Sense::invalid_cdb(length_byte(cdb), None));
    }
    let bs = lun.cfg.bs();
    let wanted = if ndob { 0 } else { bs };
    if !ndob && dout.len() as u64 != bs {
        // The Data-Out must be exactly one logical block.
        return Err(Sense::invalid_cdb(length_byte(cdb), None));
    }
    if blocks == 0 {
        return Ok(Reply::Good { wanted });
    }
    let op = IoOp::WriteSame {
        offset: r.lba * bs,
        blocks,
        block: bs,
        unmap,
        ndob,
        flush: !lun.cfg.write_cache,
    };
    Ok(Reply::Io { op, wanted })
}

/// UNMAP (SBC-3 §5.28): parameter list of 16-byte block descriptors.
fn unmap(lun: &Lun, cdb: &[u8], dout: &[u8]) -> HandlerResult {
    if byte(cdb, 1) & 0x01 != 0 {
        return Err(Sense::invalid_cdb(1, Some(0))); // ANCHOR unsupported
    }
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    let plen = usize::from(be16(cdb, 7));
    let wanted = plen as u64;
    if plen == 0 {
        return Ok(Reply::Good { wanted });
    }
    if plen < 8 || dout.len() < 8 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let data = &dout[..plen.min(dout.len())];
    let bd_len = usize::from(be16(data, 2)).min(data.len() - 8);
    let count = bd_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param(2));
    }
    let bs = lun.cfg.bs();
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for i in 0..count {
        let at = 8 + i * 16;
        let r = LbaRange {
            lba: be64(data, at),
            blocks: be32(data, at + 8),
            flags: 0,
        };
        check_range(lun, r)?;
        if r.blocks == 0 {
            continue;
        }
        total += u64::from(r.blocks);
        if MAX_UNMAP_LBA_COUNT != u32::MAX && total > u64::from(MAX_UNMAP_LBA_COUNT) {
            return Err(Sense::invalid_param((at + 8) as u16));
        }
        ranges.push((r.lba * bs, u64::from(r.blocks) * bs));
    }
    if ranges.is_empty() {
        return Ok(Reply::Good { wanted });
    }
    Ok(Reply::Io {
        op: IoOp::Unmap { ranges },
        wanted,
    })
}

/// COMPARE AND WRITE (SBC-3 §5.2): NUMBER OF LOGICAL BLOCKS in byte 13,
/// at most the MAXIMUM COMPARE AND WRITE LENGTH of VPD B0; the Data-Out
/// is that many blocks of verify data followed by as many of write data,
/// and must be exactly that long. The worker runs it under the LU's
/// exclusive lock, so it is atomic with respect to other media commands.
fn compare_and_write(lun: &Lun, ctx: &Ctx<'_>, dout: &[u8]) -> HandlerResult {
    let cdb = ctx.cdb;
    let flags = byte(cdb, 1);
    if flags & PROTECT_MASK != 0 {
        return Err(Sense::invalid_cdb(1, Some(7)));
    }
    let r = LbaRange {
        lba: be64(cdb, 2),
        blocks: u32::from(byte(cdb, 13)),
        flags,
    };
    if r.blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
        return Err(Sense::invalid_cdb(13, None));
    }
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    check_range(lun, r)?;
    let bs = lun.cfg.bs();
    let len = u64::from(r.blocks) * bs;
    let wanted = 2 * len;
    // The initiator must send both halves, no more and no less (as LIO:
    // a Data-Out overflow on a data CDB is an invalid field). This also
    // catches NUMBER OF LOGICAL BLOCKS 0 sent with data, which is how
    // libiscsi's 256-block COMPARE AND WRITE lands in the one-byte field.
    if u64::from(ctx.expected_len) != wanted || (dout.len() as u64) != wanted {
        return Err(Sense::invalid_cdb(13, None));
    }
    if r.blocks == 0 {
        // SBC-3 §5.2: zero blocks is not an error and touches nothing.
        return Ok(Reply::Good { wanted: 0 });
    }
    Ok(Reply::Io {
        op: IoOp::CompareAndWrite {
            offset: r.lba * bs,
            len,
            flush: flags & FUA != 0 || !lun.cfg.write_cache,
        },
        wanted,
    })
}

/// ORWRITE (16) (SBC-3 §5.9): OR the Data-Out into the blocks, read and
/// write under the LU's exclusive lock. ORPROTECT must be zero, BMOP and
/// the generation numbers of the multi-command form are not used.
fn orwrite(lun: &Lun, cdb: &[u8]) -> HandlerResult {
    let r = lba_range(cdb);
    check_protect(r)?;
    if let Some(s) = lun.write_protect() {
        return Err(s);
    }
    check_range(lun, r)?;
    let len = transfer_bytes(lun, cdb, u64::from(r.blocks))?;
    if len == 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    Ok(Reply::Io {
        op: IoOp::OrWrite {
            offset: r.lba * lun.cfg.bs(),
            len,
            flush: r.flags & FUA != 0 || !lun.cfg.write_cache,
        },
        wanted: len,
    })
}
