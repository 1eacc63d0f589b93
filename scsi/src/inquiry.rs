//! INQUIRY (SPC-4 §6.6): standard data and the vital product data pages
//! 0x00, 0x80, 0x83 (SPC-4 §7.8) and, for disks, 0xB0, 0xB1, 0xB2 (SBC-3 §6.6).
//! Identity bytes follow tgt 1.0.85 (usr/spc.c) so that a LU served by tgt
//! keeps its serial number and designators.

use crate::cdb::{be16, byte};
use crate::config::{DeviceType, LunConfig, TargetPort};
use crate::lu::{Ctx, HandlerResult, Lun, Reply};
use crate::sense::Sense;
use crate::{LunId, MAX_TRANSFER_BYTES};

/// Length of the serial number and T10 designator fields in tgt (SCSI_SN_LEN, SCSI_ID_LEN).
const TGT_ID_LEN: usize = 36;

/// Length of standard INQUIRY data we return (as tgt: through 4 version descriptors).
const STANDARD_LEN: usize = 66;

/// The MAXIMUM WRITE SAME LENGTH we announce, in bytes; WRITE SAME repeats
/// one block, so this bounds worker time, not memory.
pub(crate) const MAX_WRITE_SAME_BYTES: u64 = 1 << 30;

/// MAXIMUM COMPARE AND WRITE LENGTH we announce in VPD B0 (SBC-3 §6.6.4):
/// the largest NUMBER OF LOGICAL BLOCKS of COMPARE AND WRITE.
pub(crate) const MAX_COMPARE_AND_WRITE_BLOCKS: u32 = 255;

/// MAXIMUM ATOMIC TRANSFER LENGTH we announce in VPD B0 (SBC-4 §6.6.4),
/// in bytes: a WRITE ATOMIC runs alone on its LU, so this bounds how long
/// it holds the others back.
pub(crate) const MAX_ATOMIC_BYTES: u64 = 1 << 20;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT we announce in VPD B0.
pub(crate) const MAX_UNMAP_DESCRIPTORS: u32 = 2048;

/// The MAXIMUM UNMAP LBA COUNT we announce; 0xffffffff = no limit (SBC-3 §6.6.4).
pub(crate) const MAX_UNMAP_LBA_COUNT: u32 = 0xffff_ffff;

pub(crate) fn max_write_same_blocks(cfg: &LunConfig) -> u64 {
    MAX_WRITE_SAME_BYTES / cfg.bs()
}

fn peripheral(cfg: &LunConfig) -> u8 {
    cfg.device_type.peripheral_type()
}

fn padded(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, b) in dst.iter_mut().zip(s.bytes()) {
        *d = if (0x20..0x7f).contains(&b) { b } else { b' ' };
    }
}

pub(crate) fn execute(lun: &Lun, ctx: &Ctx<'_>, din: &mut Vec<u8>) -> HandlerResult {
    let cdb = ctx.cdb;
    let evpd = byte(cdb, 1) & 0x01 != 0;
    let page = byte(cdb, 2);
    let alloc = usize::from(be16(cdb, 3));
    if byte(cdb, 1) & 0x02 != 0 {
        // CMDDT is obsolete (SPC-4 §6.6.1).
        return Err(Sense::invalid_cdb(1, Some(1)));
    }
    if !evpd && page != 0 {
        return Err(Sense::invalid_cdb(2, None));
    }
    din.clear();
    if !evpd {
        standard(&lun.cfg, din);
    } else {
        vpd(&lun.cfg, ctx, page, din)?;
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// INQUIRY to a LUN that does not exist: peripheral qualifier 3, type 0x1f
/// (SPC-4 §6.6.2).
pub(crate) fn no_lun(ctx: &Ctx<'_>, din: &mut Vec<u8>) -> HandlerResult {
    let cdb = ctx.cdb;
    let evpd = byte(cdb, 1) & 0x01 != 0;
    let page = byte(cdb, 2);
    let alloc = usize::from(be16(cdb, 3));
    din.clear();
    match (evpd, page) {
        (false, 0) => {
            let mut cfg = LunConfig::tgt_defaults(0, LunId(0));
            cfg.product_id.clear();
            standard(&cfg, din);
            din[0] = 0x7f;
        }
        (true, 0) => din.extend_from_slice(&[0x7f, 0, 0, 1, 0]),
        _ => return Err(Sense::invalid_cdb(2, None)),
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

fn standard(cfg: &LunConfig, d: &mut Vec<u8>) {
    d.resize(STANDARD_LEN, 0);
    d[0] = peripheral(cfg);
    d[1] = if cfg.removable { 0x80 } else { 0 };
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, RESPONSE DATA FORMAT 2
    d[4] = (STANDARD_LEN - 5) as u8;
    if cfg.alua {
        d[5] = 0x30; // TPGS 11b: implicit and explicit asymmetric access
    }
    if cfg.device_type == DeviceType::Disk {
        d[5] |= 0x08; // 3PC: EXTENDED COPY (SPC-4 §6.6.2)
    }
    d[7] = 0x02; // CMDQUE
    padded(&mut d[8..16], &cfg.vendor_id);
    padded(&mut d[16..32], &cfg.product_id);
    padded(&mut d[32..36], &cfg.product_rev);
    let second = match cfg.device_type {
        DeviceType::Disk => 0x04c0,       // SBC-3
        DeviceType::Controller => 0x01fb, // SCC-2
    };
    // Version descriptors (SPC-4 table 148): SAM-5, iSCSI, SPC-4, SBC-3/SCC-2.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, second].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
}

fn pages(cfg: &LunConfig) -> &'static [u8] {
    match (cfg.device_type, cfg.thin) {
        (DeviceType::Controller, _) => &[0x00, 0x80, 0x83],
        (DeviceType::Disk, false) => &[0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1],
        (DeviceType::Disk, true) => &[0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2],
    }
}

fn vpd(cfg: &LunConfig, ctx: &Ctx<'_>, page: u8, d: &mut Vec<u8>) -> Result<(), Sense> {
    if !pages(cfg).contains(&page) {
        return Err(Sense::invalid_cdb(2, None));
    }
    d.extend_from_slice(&[peripheral(cfg), page, 0, 0]);
    match page {
        0x00 => d.extend_from_slice(pages(cfg)),
        0x80 => unit_serial(cfg, d),
        0x83 => device_identification(cfg, ctx.port, d),
        0x8f => crate::xcopy::third_party_copy_vpd(cfg.bs(), d),
        0xb0 => block_limits(cfg, d),
        0xb1 => {
            d.resize(4 + 0x3c, 0);
            d[4..6].copy_from_slice(&cfg.rotation_rate.to_be_bytes());
            if cfg.thin {
                // WABEREQ 01b: after SANITIZE BLOCK ERASE, reads succeed
                // (and return zeros: LBPRZ) (SBC-4 §6.6.2).
                d[7] = 0x40;
            }
        }
        _ => {
            // 0xb2 logical block provisioning (SBC-4 §6.6.4): the
            // threshold exponent, LBPU, LBPWS, LBPWS10, LBPRZ;
            // provisioning type 2 = thin.
            d.extend_from_slice(&[cfg.threshold_exponent(), 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0]);
        }
    }
    let len = (d.len() - 4) as u16;
    d[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// tgt's VPD 0x80: the serial number right-adjusted in 36 space-filled bytes.
fn unit_serial(cfg: &LunConfig, d: &mut Vec<u8>) {
    let sn = cfg.scsi_sn.as_bytes();
    let sn = &sn[..sn.len().min(TGT_ID_LEN)];
    d.extend(std::iter::repeat_n(b' ', TGT_ID_LEN - sn.len()));
    d.extend_from_slice(sn);
}

/// VPD 0x83 (SPC-4 §7.8.6): tgt's three LU designators (T10 vendor id,
/// NAA local, NAA IEEE registered extended), then the target port's
/// relative port, target port group, port name and target device name.
fn device_identification(cfg: &LunConfig, port: &TargetPort, d: &mut Vec<u8>) {
    lu_designators(cfg, d);
    // Target port designators: protocol iSCSI (5), PIV set, association 01b.
    d.extend_from_slice(&[0x51, 0x94, 0, 4, 0, 0]);
    d.extend_from_slice(&port.relative_port.to_be_bytes());
    d.extend_from_slice(&[0x51, 0x95, 0, 4, 0, 0]);
    d.extend_from_slice(&port.tpgt.to_be_bytes());
    // SCSI name strings (RFC 7143 §13.5): "<name>,t,0x<tpgt>" for the port
    // and "<name>" for the target device (association 10b).
    let port_name = format!("{},t,0x{:04x}", port.target_name, port.tpgt);
    name_string(d, 0x98, &port_name);
    name_string(d, 0xa8, &port.target_name);
}

/// VPD 83h's designators with LU association (also what names an LU as
/// an EXTENDED COPY target).
pub(crate) fn lu_designators(cfg: &LunConfig, d: &mut Vec<u8>) {
    // T10 vendor identification: ASCII, association LU.
    d.extend_from_slice(&[0x02, 0x01, 0, TGT_ID_LEN as u8]);
    let mut id = [0u8; TGT_ID_LEN];
    for (dst, b) in id.iter_mut().zip(cfg.scsi_id.bytes()) {
        *dst = b;
    }
    d.extend_from_slice(&id);

    // NAA 3 (locally assigned): tgt's numeric_id of tid and lun, or the
    // medium's own.
    d.extend_from_slice(&[0x01, 0x03, 0, 8]);
    let mut naa = cfg.numeric_id.to_be_bytes();
    naa[0] = (naa[0] & 0x0f) | 0x30;
    d.extend_from_slice(&naa);

    // NAA 6: tgt reads every character of scsi_id as a hex digit (non-hex
    // ones count as 0), right-adjusted into 128 bits.
    d.extend_from_slice(&[0x01, 0x03, 0, 16]);
    let v = cfg.scsi_id.chars().fold(0u128, |acc, ch| {
        (acc << 4) | u128::from(ch.to_digit(16).unwrap_or(0))
    });
    let mut ext = v.to_be_bytes();
    ext[0] = (ext[0] & 0x0f) | 0x60;
    d.extend_from_slice(&ext);
}

fn name_string(d: &mut Vec<u8>, type_byte: u8, name: &str) {
    let bytes = &name.as_bytes()[..name.len().min(220)];
    // Null-terminated, padded to a multiple of four (SPC-4 §7.8.6.11).
    let len = (bytes.len() + 1).div_ceil(4) * 4;
    d.extend_from_slice(&[0x53, type_byte, 0, len as u8]);
    d.extend_from_slice(bytes);
    d.extend(std::iter::repeat_n(0, len - bytes.len()));
}

/// VPD 0xB0 block limits (SBC-3 §6.6.4), page length 0x3c.
fn block_limits(cfg: &LunConfig, d: &mut Vec<u8>) {
    let base = d.len();
    d.resize(base + 0x3c, 0);
    let p = &mut d[base..];
    // Byte offsets below are from the page start, minus the 4-byte header.
    p[1] = MAX_COMPARE_AND_WRITE_BLOCKS as u8;
    p[2..4].copy_from_slice(&(cfg.optimal_xfer_gran.min(0xffff) as u16).to_be_bytes());
    let max_xfer = (MAX_TRANSFER_BYTES / cfg.bs()) as u32;
    p[4..8].copy_from_slice(&max_xfer.to_be_bytes());
    p[8..12].copy_from_slice(&cfg.optimal_xfer_len.to_be_bytes());
    if cfg.thin {
        p[16..20].copy_from_slice(&MAX_UNMAP_LBA_COUNT.to_be_bytes());
        p[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        // UNMAP granularity: one physical block.
        let gran = 1u32 << cfg.lbppbe.min(15);
        p[24..28].copy_from_slice(&gran.to_be_bytes());
    }
    p[32..40].copy_from_slice(&max_write_same_blocks(cfg).to_be_bytes());
    // MAXIMUM ATOMIC TRANSFER LENGTH; no alignment, granularity or
    // atomic boundaries (SBC-4 §6.6.4).
    p[40..44].copy_from_slice(&((MAX_ATOMIC_BYTES / cfg.bs()) as u32).to_be_bytes());
}
