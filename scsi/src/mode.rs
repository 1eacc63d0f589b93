//! MODE SENSE (6)/(10) and MODE SELECT (6)/(10) (SPC-4 §6.11-6.14) over the
//! mode pages a disk has: read-write error recovery 0x01, disconnect-
//! reconnect 0x02, format device 0x03, rigid disk geometry 0x04 (SBC-3
//! §6.5), caching 0x08 (WCE changeable), control 0x0A (D_SENSE and SWP
//! changeable) and informational exceptions control 0x1C; on thin LUs
//! also the logical block provisioning subpage 0x1C/0x02 (SBC-4 §6.5.7),
//! which shows the soft threshold.

use crate::cdb::{be16, byte, op};
use crate::lu::{Ctx, HandlerResult, Lun, Reply};
use crate::sense::{asc, Sense, SenseFormat};

/// Page codes in ascending order, as MODE SENSE of all pages returns them.
const PAGES: [u8; 7] = [0x01, 0x02, 0x03, 0x04, 0x08, 0x0a, 0x1c];
const ALL_PAGES: u8 = 0x3f;
/// MODE SENSE's subpage code for a page and all its subpages.
const ALL_SUBPAGES: u8 = 0xff;
/// The logical block provisioning subpage of page 0x1C (SBC-4 §6.5.7).
const LBP: (u8, u8) = (0x1c, 0x02);

/// Page control field (SPC-4 §6.11.1 table 171).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

/// The mode parameters that can change, current or default.
#[derive(Debug, Clone, Copy)]
struct Params {
    wce: bool,
    d_sense: bool,
    swp: bool,
    blocks: u64,
    bs: u64,
    rotation_rate: u16,
    /// Thin provisioning: the LBP subpage exists.
    thin: bool,
    /// The soft threshold's THRESHOLD COUNT, when one is set.
    threshold: Option<u32>,
}

impl Params {
    fn current(lun: &Lun) -> Params {
        Params {
            wce: lun.cfg.write_cache,
            d_sense: lun.cfg.sense_format == SenseFormat::Descriptor,
            swp: lun.swp,
            blocks: lun.cfg.blocks(),
            bs: lun.cfg.bs(),
            rotation_rate: lun.cfg.rotation_rate,
            thin: lun.cfg.thin,
            threshold: lun.cfg.soft_threshold_sets(),
        }
    }
    fn default_of(lun: &Lun) -> Params {
        Params {
            wce: true,
            d_sense: false,
            swp: false,
            ..Params::current(lun)
        }
    }
}

pub(crate) fn is_select(opcode: u8) -> bool {
    opcode == op::MODE_SELECT_6 || opcode == op::MODE_SELECT_10
}

pub(crate) fn execute(
    lun: &mut Lun,
    ctx: &Ctx<'_>,
    dout: &[u8],
    din: &mut Vec<u8>,
) -> HandlerResult {
    if is_select(ctx.cdb[0]) {
        select(lun, ctx.cdb, dout)
    } else {
        sense(lun, ctx.cdb, din)
    }
}

/// Page `code` (with its 2-byte header) under page control `pc`.
fn page(code: u8, pc: Pc, p: &Params) -> Vec<u8> {
    let mut v = match code {
        0x01 => vec![0u8; 12],
        0x02 => {
            let mut v = vec![0u8; 16];
            v[2] = 0x80; // buffer full ratio
            v[3] = 0x80; // buffer empty ratio
            v[5] = 0x0a; // bus inactivity limit
            v
        }
        0x03 => {
            let mut v = vec![0u8; 24];
            v[10..12].copy_from_slice(&32u16.to_be_bytes()); // sectors per track
            v[12..14].copy_from_slice(&(p.bs.min(0xffff) as u16).to_be_bytes());
            v
        }
        0x04 => {
            let mut v = vec![0u8; 24];
            let heads = 64u64;
            let cylinders = (p.blocks / (heads * 32)).min(0xff_ffff) as u32;
            v[2..5].copy_from_slice(&cylinders.to_be_bytes()[1..]);
            v[5] = heads as u8;
            v[20..22].copy_from_slice(&p.rotation_rate.to_be_bytes());
            v
        }
        0x08 => {
            let mut v = vec![0u8; 20];
            v[2] = 0x10 | if p.wce { 0x04 } else { 0 }; // DISC, WCE
            v[4..6].copy_from_slice(&[0xff, 0xff]);
            v[8..12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
            v[12] = 0x80; // FSW
            v[13] = 0x14; // number of cache segments
            v
        }
        0x0a => {
            let mut v = vec![0u8; 12];
            v[2] = 0x02 | if p.d_sense { 0x04 } else { 0 }; // GLTSD, D_SENSE
            v[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
            v[4] = if p.swp { 0x08 } else { 0 };
            v[8..10].copy_from_slice(&[0xff, 0xff]); // busy timeout: unlimited
            v
        }
        _ => {
            let mut v = vec![0u8; 12];
            v[2] = 0x08; // DEXCPT
            v
        }
    };
    v[0] = code;
    v[1] = (v.len() - 2) as u8;
    if pc == Pc::Changeable {
        for b in &mut v[2..] {
            *b = 0;
        }
        match code {
            0x08 => v[2] = 0x04,
            0x0a => {
                v[2] = 0x04;
                v[4] = 0x08;
            }
            _ => {}
        }
    }
    v
}

/// Subpage `sub` of page `code` (with its 4-byte header, SPF set), or
/// `None` where the LU has no such subpage.
fn subpage(code: u8, sub: u8, pc: Pc, p: &Params) -> Option<Vec<u8>> {
    if (code, sub) != LBP || !p.thin {
        return None;
    }
    // Header, SITUA 0 (the unit attention goes to every nexus), 11
    // reserved bytes; then a threshold descriptor: ENABLED, type soft
    // (000b), ARMING_INC (001b), resource: used LBA mapping resources
    // (02h), THRESHOLD COUNT in threshold sets (VPD B2h's exponent).
    let mut v = vec![0u8; 16];
    if let Some(count) = p.threshold {
        v.extend_from_slice(&[0x80 | 0x01, 0x02, 0, 0]);
        v.extend_from_slice(&count.to_be_bytes());
    }
    v[0] = 0x40 | code;
    v[1] = sub;
    let len = (v.len() - 4) as u16;
    v[2..4].copy_from_slice(&len.to_be_bytes());
    if pc == Pc::Changeable {
        for b in &mut v[4..] {
            *b = 0;
        }
    }
    Some(v)
}

/// The subpages of page `code` this LU has, in ascending order.
fn subpages_of(code: u8, p: &Params) -> impl Iterator<Item = u8> + '_ {
    (1..ALL_SUBPAGES).filter(move |&s| code == LBP.0 && s == LBP.1 && p.thin)
}

fn sense(lun: &Lun, cdb: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    let ten = cdb[0] == op::MODE_SENSE_10;
    let dbd = byte(cdb, 1) & 0x08 != 0;
    let llbaa = ten && byte(cdb, 1) & 0x10 != 0;
    let pc = match byte(cdb, 2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
    };
    let code = byte(cdb, 2) & 0x3f;
    let sub_req = byte(cdb, 3);
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };

    let params = match pc {
        Pc::Default => Params::default_of(lun),
        _ => Params::current(lun),
    };
    // (page, subpage) pairs in the order MODE SENSE returns them; subpage
    // 0 is the page_0 format page.
    let wanted_codes: &[u8] = if code == ALL_PAGES {
        &PAGES
    } else if PAGES.contains(&code) {
        std::slice::from_ref(&PAGES[PAGES.iter().position(|c| *c == code).unwrap_or(0)])
    } else {
        return Err(Sense::invalid_cdb(2, Some(5)));
    };
    let mut pages: Vec<(u8, u8)> = Vec::new();
    for &c in wanted_codes {
        match sub_req {
            0 => pages.push((c, 0)),
            ALL_SUBPAGES => {
                pages.push((c, 0));
                pages.extend(subpages_of(c, &params).map(|s| (c, s)));
            }
            s if code != ALL_PAGES && subpages_of(c, &params).any(|x| x == s) => pages.push((c, s)),
            _ => return Err(Sense::invalid_cdb(3, None)),
        }
    }

    din.clear();
    let header_len = if ten { 8 } else { 4 };
    din.resize(header_len, 0);
    let mut dsp = 0x10; // DPOFUA: DPO and FUA are honoured (SBC-3 §6.5.1)
    if lun.write_protect().is_some() {
        dsp |= 0x80; // WP
    }
    let bd_len = match (dbd, llbaa) {
        (true, _) => 0,
        (false, false) => 8,
        (false, true) => 16,
    };
    if bd_len > 0 {
        let (blocks, bs) = if pc == Pc::Changeable {
            (0, 0)
        } else {
            (params.blocks, params.bs)
        };
        if bd_len == 8 {
            din.extend_from_slice(&(u32::try_from(blocks).unwrap_or(u32::MAX)).to_be_bytes());
            din.push(0);
            din.extend_from_slice(&(bs as u32).to_be_bytes()[1..]);
        } else {
            din.extend_from_slice(&blocks.to_be_bytes());
            din.extend_from_slice(&[0; 4]);
            din.extend_from_slice(&(bs as u32).to_be_bytes());
        }
    }
    for (c, sub) in pages {
        match sub {
            0 => din.extend_from_slice(&page(c, pc, &params)),
            _ => din.extend(subpage(c, sub, pc, &params).unwrap_or_default()),
        }
    }
    if ten {
        let len = (din.len() - 2) as u16;
        din[0..2].copy_from_slice(&len.to_be_bytes());
        din[3] = dsp;
        din[4] = u8::from(bd_len == 16); // LONGLBA
        din[6..8].copy_from_slice(&(bd_len as u16).to_be_bytes());
    } else {
        din[0] = (din.len() - 1) as u8;
        din[2] = dsp;
        din[3] = bd_len as u8;
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

fn select(lun: &mut Lun, cdb: &[u8], dout: &[u8]) -> HandlerResult {
    let ten = cdb[0] == op::MODE_SELECT_10;
    let flags = byte(cdb, 1);
    if flags & 0x10 == 0 {
        // PF=0: vendor-specific page format, which we do not have.
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    if flags & 0x01 != 0 {
        // SP=1: no saved pages.
        return Err(Sense::invalid_cdb(1, Some(0)));
    }
    let plen = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(byte(cdb, 4))
    };
    let wanted = plen as u64;
    if plen == 0 {
        return Ok(Reply::Good { wanted });
    }
    let header_len = if ten { 8 } else { 4 };
    if dout.len() < plen || plen < header_len {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let data = &dout[..plen];
    let (bd_len, long) = if ten {
        (usize::from(be16(data, 6)), byte(data, 4) & 0x01 != 0)
    } else {
        (usize::from(data[3]), false)
    };
    let bd_size = if long { 16 } else { 8 };
    if bd_len % bd_size != 0 || header_len + bd_len > plen {
        return Err(Sense::invalid_param(if ten { 6 } else { 3 }));
    }
    // Block descriptors may only restate the current block length.
    let mut off = header_len;
    while off < header_len + bd_len {
        let bs = if long {
            u64::from(crate::cdb::be32(data, off + 12))
        } else {
            u64::from(crate::cdb::be24(data, off + 5))
        };
        if bs != 0 && bs != lun.cfg.bs() {
            return Err(Sense::invalid_param(
                (off + if long { 12 } else { 5 }) as u16,
            ));
        }
        off += bd_size;
    }

    let current = Params::current(lun);
    let mut next = current;
    while off < plen {
        let code = data[off] & 0x3f;
        let spf = data[off] & 0x40 != 0;
        let hdr = if spf { 4 } else { 2 };
        if off + hdr > plen {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let (cur, mask, len) = if spf {
            // Subpages (the LBP page) have nothing changeable: they may
            // only restate what MODE SENSE shows.
            let sub = data[off + 1];
            let (Some(cur), Some(mask)) = (
                subpage(code, sub, Pc::Current, &current),
                subpage(code, sub, Pc::Changeable, &current),
            ) else {
                return Err(Sense::invalid_param(off as u16));
            };
            (cur, mask, usize::from(be16(data, off + 2)) + 4)
        } else {
            if !PAGES.contains(&code) {
                return Err(Sense::invalid_param(off as u16));
            }
            (
                page(code, Pc::Current, &current),
                page(code, Pc::Changeable, &current),
                usize::from(data[off + 1]) + 2,
            )
        };
        if len != cur.len() {
            return Err(Sense::invalid_param((off + 1) as u16));
        }
        if off + cur.len() > plen {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let new = &data[off..off + cur.len()];
        for i in hdr..cur.len() {
            if (new[i] ^ cur[i]) & !mask[i] != 0 {
                return Err(Sense::invalid_param((off + i) as u16));
            }
        }
        match if spf { 0 } else { code } {
            0x08 => next.wce = new[2] & 0x04 != 0,
            0x0a => {
                next.d_sense = new[2] & 0x04 != 0;
                next.swp = new[4] & 0x08 != 0;
            }
            _ => {}
        }
        off += cur.len();
    }
    lun.cfg.write_cache = next.wce;
    lun.cfg.sense_format = if next.d_sense {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    };
    lun.swp = next.swp;
    Ok(Reply::Good { wanted })
}
