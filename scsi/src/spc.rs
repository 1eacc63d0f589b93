//! Primary commands (SPC-4): TEST UNIT READY, REQUEST SENSE, REPORT LUNS,
//! RESERVE/RELEASE (SPC-2 §7.21-7.24), START STOP UNIT and PREVENT ALLOW
//! MEDIUM REMOVAL (SBC-3 §5.25, §5.12), REPORT SUPPORTED OPERATION CODES and
//! REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.35, §6.36).

use crate::cdb::{be16, be32, byte, op, sa, service_action};
use crate::lu::{not_ready, Ctx, HandlerResult, Lun, Reply};
use crate::opcodes;
use crate::sense::{asc, key, Sense, SenseFormat};
use crate::LunId;

pub(crate) fn execute(
    lun: &mut Lun,
    ctx: &Ctx<'_>,
    dout: &[u8],
    din: &mut Vec<u8>,
) -> HandlerResult {
    let cdb = ctx.cdb;
    match cdb[0] {
        op::TEST_UNIT_READY => match not_ready(lun) {
            Some(s) => Err(s),
            None => Ok(Reply::Good { wanted: 0 }),
        },
        op::REQUEST_SENSE => {
            let pending = lun.pop_ua(ctx.nexus).map(Sense::unit_attention);
            let s = pending
                .or_else(|| not_ready(lun))
                .unwrap_or(Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL_SENSE));
            request_sense_with(ctx, s, din)
        }
        op::RESERVE_6 | op::RESERVE_10 | op::RELEASE_6 | op::RELEASE_10
            if lun.shared_pr && byte(cdb, 1) & 0x13 == 0 =>
        {
            // The store keeps the reservation for every gateway.
            Ok(crate::pr::shared_task(ctx, 0))
        }
        op::RESERVE_6 | op::RESERVE_10 => {
            // Third-party and extent reservations are not supported.
            if byte(cdb, 1) & 0x13 != 0 {
                return Err(Sense::invalid_cdb(1, None));
            }
            lun.reserved_by = Some(ctx.nexus);
            Ok(Reply::Good { wanted: 0 })
        }
        op::RELEASE_6 | op::RELEASE_10 => {
            if byte(cdb, 1) & 0x13 != 0 {
                return Err(Sense::invalid_cdb(1, None));
            }
            // SPC-2 §7.23: a RELEASE from a non-holder succeeds and changes nothing.
            if lun.reserved_by == Some(ctx.nexus) {
                lun.reserved_by = None;
            }
            Ok(Reply::Good { wanted: 0 })
        }
        op::START_STOP_UNIT => start_stop(lun, cdb),
        op::PREVENT_ALLOW => {
            if byte(cdb, 4) & 0x03 != 0 {
                lun.prevent.insert(ctx.nexus);
            } else {
                lun.prevent.remove(&ctx.nexus);
            }
            Ok(Reply::Good { wanted: 0 })
        }
        op::MAINTENANCE_IN if service_action(cdb) == sa::REPORT_SUPPORTED_OPCODES => {
            report_opcodes(lun, cdb, din)
        }
        op::MAINTENANCE_IN if service_action(cdb) == sa::REPORT_TARGET_PORT_GROUPS => {
            // The store knows every gateway's group and state: asked off
            // the event loop, as a media task.
            Ok(Reply::Io {
                op: crate::io::IoOp::ReportTargetPortGroups {
                    extended: byte(cdb, 1) >> 5 == 1,
                    alloc: be32(cdb, 6),
                    group: ctx.port.tpgt,
                    rel: ctx.port.relative_port,
                },
                wanted: u64::from(be32(cdb, 6)),
            })
        }
        op::MAINTENANCE_IN => report_tmfs(cdb, din),
        op::MAINTENANCE_OUT => set_target_port_groups(cdb, dout),
        _ => Err(Sense::invalid_opcode()),
    }
}

/// REQUEST SENSE data (SPC-4 §6.39): `s` as parameter data, in the format
/// the DESC bit asks for, GOOD status.
pub(crate) fn request_sense_with(ctx: &Ctx<'_>, s: Sense, din: &mut Vec<u8>) -> HandlerResult {
    let alloc = usize::from(byte(ctx.cdb, 4));
    let format = if byte(ctx.cdb, 1) & 0x01 != 0 {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    };
    din.clear();
    din.extend_from_slice(&s.to_bytes(format));
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// REPORT LUNS (SPC-4 §6.33) with tgt's LUN encoding: peripheral device
/// addressing below 256, flat space addressing (SAM-5 §4.7.7) above.
pub(crate) fn report_luns(ctx: &Ctx<'_>, ids: &[LunId], din: &mut Vec<u8>) -> HandlerResult {
    let cdb = ctx.cdb;
    let alloc = be32(cdb, 6) as usize;
    let select = byte(cdb, 2);
    if select > 2 {
        return Err(Sense::invalid_cdb(2, None));
    }
    if alloc < 16 {
        // SPC-3 §6.21 (kept by tgt): allocation length below 16 is invalid.
        return Err(Sense::invalid_cdb(6, None));
    }
    din.clear();
    din.resize(8, 0);
    if select != 1 {
        for id in ids {
            let l = id.0 & 0x3fff;
            let first = if l > 0xff { 0x40 | (l >> 8) as u8 } else { 0 };
            din.extend_from_slice(&[first, l as u8, 0, 0, 0, 0, 0, 0]);
        }
    }
    let list_len = (din.len() - 8) as u32;
    din[0..4].copy_from_slice(&list_len.to_be_bytes());
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// START STOP UNIT (SBC-3 §5.25): LOEJ ejects or loads a removable medium;
/// power conditions are accepted and ignored.
fn start_stop(lun: &mut Lun, cdb: &[u8]) -> HandlerResult {
    let b4 = byte(cdb, 4);
    if b4 >> 4 != 0 {
        return Ok(Reply::Good { wanted: 0 });
    }
    let loej = b4 & 0x02 != 0;
    let start = b4 & 0x01 != 0;
    if loej && lun.cfg.removable {
        // While removal is prevented the medium stays as it is: neither
        // ejected (SBC-3 §5.25) nor loaded again, as tgt and libiscsi's
        // PreventAllow.Eject have it.
        if !lun.prevent.is_empty() {
            return Err(Sense::illegal(asc::MEDIUM_REMOVAL_PREVENTED));
        }
        lun.cfg.online = start;
    }
    Ok(Reply::Good { wanted: 0 })
}

/// Command timeouts descriptor (SPC-4 §6.35.4): length 0x0a, no limits.
const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn report_opcodes(lun: &Lun, cdb: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    let rctd = byte(cdb, 2) & 0x80 != 0;
    let options = byte(cdb, 2) & 0x07;
    let req_op = byte(cdb, 3);
    let req_sa = be16(cdb, 4);
    let alloc = be32(cdb, 6) as usize;
    din.clear();
    match options {
        0 => {
            din.resize(4, 0);
            for c in opcodes::supported(&lun.cfg) {
                let sa = c.sa.unwrap_or(0);
                let flags = if rctd { 0x02 } else { 0 } | u8::from(c.sa.is_some());
                din.extend_from_slice(&[c.opcode, 0, (sa >> 8) as u8, sa as u8, 0, flags]);
                din.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                if rctd {
                    din.extend_from_slice(&TIMEOUTS);
                }
            }
            let len = (din.len() - 4) as u32;
            din[0..4].copy_from_slice(&len.to_be_bytes());
        }
        1..=3 => {
            let with_sa = opcodes::has_service_actions(req_op);
            match (options, with_sa) {
                (1, true) | (2, false) => return Err(Sense::invalid_cdb(2, Some(2))),
                _ => {}
            }
            let found = opcodes::lookup(&lun.cfg, req_op, if with_sa { req_sa } else { 0 });
            let ctdp = if rctd { 0x80 } else { 0 };
            match found {
                Some(c) => {
                    // SUPPORT 011b: supported as the standard defines it.
                    din.extend_from_slice(&[0, ctdp | 0x03]);
                    din.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    din.extend_from_slice(c.usage);
                    if rctd {
                        din.extend_from_slice(&TIMEOUTS);
                    }
                }
                // SUPPORT 001b: not supported.
                None => din.extend_from_slice(&[0, 0x01, 0, 0]),
            }
        }
        _ => return Err(Sense::invalid_cdb(2, Some(2))),
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.36): ABORT TASK,
/// ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
fn report_tmfs(cdb: &[u8], din: &mut Vec<u8>) -> HandlerResult {
    let repd = byte(cdb, 2) & 0x80 != 0;
    let alloc = be32(cdb, 6) as usize;
    din.clear();
    din.extend_from_slice(&[0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0, 0, 0]);
    if repd {
        din[3] = 0x0c;
        din.resize(16, 0);
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// SET TARGET PORT GROUPS (SPC-4 §6.39): the group asked to be
/// active/optimized becomes the preferred path of every gateway (the store
/// does it, as a media task). Active/non-optimized for a group is what
/// every other group already is, so it changes nothing; standby,
/// unavailable and transitioning are states we never enter: INVALID
/// FIELD IN PARAMETER LIST.
fn set_target_port_groups(cdb: &[u8], dout: &[u8]) -> HandlerResult {
    let plen = be32(cdb, 6) as usize;
    if plen < 4 || !plen.is_multiple_of(4) || dout.len() < plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let mut optimized = None;
    for (i, d) in dout[4..plen].chunks(4).enumerate() {
        let at = (4 + i * 4) as u16;
        let group = u16::from_be_bytes([d[2], d[3]]);
        match d[0] & 0x0f {
            0x0 if optimized.is_some_and(|g| g != group) => {
                // Two groups cannot both be the one optimized.
                return Err(Sense::invalid_param(at));
            }
            0x0 => optimized = Some(group),
            0x1 => {}
            _ => return Err(Sense::invalid_param(at)),
        }
    }
    Ok(Reply::Io {
        op: crate::io::IoOp::SetTargetPortGroups { optimized },
        wanted: plen as u64,
    })
}
