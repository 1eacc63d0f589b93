//! Persistent reservations (SPC-4 §5.13, §6.15 PERSISTENT RESERVE IN,
//! §6.16 PERSISTENT RESERVE OUT).
//!
//! Registrations are keyed by the SCSI initiator port name of the I_T
//! nexus (for iSCSI `<InitiatorName>,i,0x<ISID>`, RFC 7143 §13.2), not by
//! the transport's session counter, so they survive I_T nexus loss and a
//! reconnecting initiator with the same name and ISID finds its
//! registration again (SPC-4 §5.13.1: PR state is kept across I_T nexus
//! loss and logical unit reset). APTPL is not supported: nothing persists
//! over a power loss, as REPORT CAPABILITIES says (PTPL_C 0).

use std::collections::BTreeMap;

use crate::cdb::{be16, be32, be64, byte, op, sa};
use crate::lu::{Ctx, HandlerResult, Lun, Reply};
use crate::sense::{asc, Sense};
use crate::NexusId;

/// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1).
pub(crate) mod in_sa {
    pub const READ_KEYS: u16 = 0x00;
    pub const READ_RESERVATION: u16 = 0x01;
    pub const REPORT_CAPABILITIES: u16 = 0x02;
    pub const READ_FULL_STATUS: u16 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2).
pub(crate) mod out_sa {
    pub const REGISTER: u16 = 0x00;
    pub const RESERVE: u16 = 0x01;
    pub const RELEASE: u16 = 0x02;
    pub const CLEAR: u16 = 0x03;
    pub const PREEMPT: u16 = 0x04;
    pub const PREEMPT_AND_ABORT: u16 = 0x05;
    pub const REGISTER_AND_IGNORE: u16 = 0x06;
}

/// Persistent reservation types (SPC-4 §6.16.3 table 204).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    fn from_code(c: u8) -> Option<PrType> {
        Some(match c {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }
    /// All-registrants types: every registrant is a reservation holder
    /// (SPC-4 §5.13.9).
    fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }
    /// Types under which registrants that are not holders get access.
    fn registrants_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }
    /// Exclusive-access types refuse reads too.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// The persistent reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    /// Initiator port name of the holder (unused for all-registrants types).
    holder: String,
    typ: PrType,
}

/// PR state of one logical unit.
#[derive(Debug, Default, Clone)]
pub(crate) struct PrState {
    /// PRGENERATION (SPC-4 §6.15.2): bumped by every PROUT that changes
    /// registrations, never by RESERVE or RELEASE.
    generation: u32,
    /// Registrations in the order they were made: (initiator port name, key).
    regs: Vec<(String, u64)>,
    res: Option<Reservation>,
}

impl PrState {
    fn key_of(&self, port: &str) -> Option<u64> {
        self.regs.iter().find(|(p, _)| p == port).map(|(_, k)| *k)
    }

    fn is_holder(&self, port: &str) -> bool {
        match &self.res {
            Some(r) if r.typ.all_registrants() => self.key_of(port).is_some(),
            Some(r) => r.holder == port,
            None => false,
        }
    }

    /// The access rules of SPC-4 §5.13.1 (table 46) and SBC-3 §4.17 for a
    /// command from `port`; `Err(())` means RESERVATION CONFLICT.
    pub(crate) fn check_access(&self, port: &str, cdb: &[u8]) -> Result<(), ()> {
        // SPC-4 §5.13.3: while any I_T nexus is registered, SPC-2 RESERVE
        // and RELEASE conflict, whoever sends them.
        if matches!(
            cdb[0],
            op::RESERVE_6 | op::RESERVE_10 | op::RELEASE_6 | op::RELEASE_10
        ) {
            return if self.regs.is_empty() {
                Ok(())
            } else {
                Err(())
            };
        }
        let Some(res) = &self.res else {
            return Ok(());
        };
        if self.is_holder(port) {
            return Ok(());
        }
        let registered = self.key_of(port).is_some();
        if registered && res.typ.registrants_access() {
            return Ok(());
        }
        match access_class(cdb) {
            Access::Allowed => Ok(()),
            Access::Read if !res.typ.exclusive_access() => Ok(()),
            _ => Err(()),
        }
    }
}

/// How a command fares under a reservation it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Allowed under every reservation type.
    Allowed,
    /// Refused only by the exclusive-access types.
    Read,
    /// Refused by every type.
    Write,
}

/// SPC-4 table 46 / SBC-3 table 13 by command.
fn access_class(cdb: &[u8]) -> Access {
    match cdb[0] {
        op::INQUIRY
        | op::REQUEST_SENSE
        | op::REPORT_LUNS
        | op::TEST_UNIT_READY
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::MAINTENANCE_IN
        | op::READ_CAPACITY_10 => Access::Allowed,
        op::SERVICE_ACTION_IN_16 if crate::cdb::service_action(cdb) == sa::READ_CAPACITY_16 => {
            Access::Allowed
        }
        // PREVENT ALLOW MEDIUM REMOVAL with PREVENT 00b is allowed.
        op::PREVENT_ALLOW if byte(cdb, 4) & 0x03 == 0 => Access::Allowed,
        op::READ_6
        | op::READ_10
        | op::READ_12
        | op::READ_16
        | op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::MODE_SENSE_6
        | op::MODE_SENSE_10
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16
        | op::SERVICE_ACTION_IN_16 => Access::Read,
        _ => Access::Write,
    }
}

/// PERSISTENT RESERVE IN / OUT. `ctx.initiator` names the caller's
/// registration; `ctx.names` routes unit attentions to the nexuses of the
/// registrants they concern.
pub(crate) fn execute(
    lun: &mut Lun,
    ctx: &Ctx<'_>,
    dout: &[u8],
    din: &mut Vec<u8>,
) -> HandlerResult {
    match ctx.cdb[0] {
        op::PERSISTENT_RESERVE_IN => pr_in(lun, ctx, din),
        _ => pr_out(lun, ctx, dout),
    }
}

fn pr_in(lun: &Lun, ctx: &Ctx<'_>, din: &mut Vec<u8>) -> HandlerResult {
    let cdb = ctx.cdb;
    let alloc = usize::from(be16(cdb, 7));
    let pr = &lun.pr;
    din.clear();
    din.extend_from_slice(&pr.generation.to_be_bytes());
    match crate::cdb::service_action(cdb) {
        in_sa::READ_KEYS => {
            // SPC-4 §6.15.2: the ADDITIONAL LENGTH is not cut by the
            // allocation length, only the list is.
            din.extend_from_slice(&((pr.regs.len() * 8) as u32).to_be_bytes());
            for (_, k) in &pr.regs {
                din.extend_from_slice(&k.to_be_bytes());
            }
        }
        in_sa::READ_RESERVATION => match &pr.res {
            None => din.extend_from_slice(&0u32.to_be_bytes()),
            Some(r) => {
                din.extend_from_slice(&16u32.to_be_bytes());
                // SPC-4 §6.15.3.2: all-registrants types report key 0.
                let key = if r.typ.all_registrants() {
                    0
                } else {
                    pr.key_of(&r.holder).unwrap_or(0)
                };
                din.extend_from_slice(&key.to_be_bytes());
                din.extend_from_slice(&[0, 0, 0, 0, 0, r.typ as u8, 0, 0]);
            }
        },
        in_sa::REPORT_CAPABILITIES => {
            // SPC-4 §6.15.4: LENGTH 8; CRH (compatible reservation handling,
            // §5.13.3); SIP_C, ATP_C, PTPL_C 0; TMV with ALLOW COMMANDS 000b;
            // the six types in the type mask.
            din.clear();
            din.extend_from_slice(&[
                0,
                8,
                0x10,
                0x80,
                0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                0x01,
                0,
                0,
            ]);
        }
        in_sa::READ_FULL_STATUS => {
            let mut descs = Vec::new();
            for (port, key) in &pr.regs {
                let holder = pr.is_holder(port);
                descs.extend_from_slice(&key.to_be_bytes());
                descs.extend_from_slice(&[0, 0, 0, 0]);
                descs.push(u8::from(holder)); // R_HOLDER; ALL_TG_PT 0
                descs.push(match (&pr.res, holder) {
                    (Some(r), true) => r.typ as u8,
                    _ => 0,
                });
                descs.extend_from_slice(&[0, 0, 0, 0]);
                descs.extend_from_slice(&ctx.port.relative_port.to_be_bytes());
                let tid = transport_id(port);
                descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                descs.extend_from_slice(&tid);
            }
            din.extend_from_slice(&(descs.len() as u32).to_be_bytes());
            din.extend_from_slice(&descs);
        }
        _ => return Err(Sense::invalid_cdb(1, Some(4))),
    }
    din.truncate(alloc);
    Ok(Reply::Good {
        wanted: alloc as u64,
    })
}

/// iSCSI TransportID (SPC-4 §7.6.4.6): format 01b (initiator port with
/// ISID) for `<name>,i,0x<isid>`, else format 00b with the name; the
/// string is null-terminated and padded to a multiple of four bytes.
fn transport_id(port: &str) -> Vec<u8> {
    let format = if port.contains(",i,0x") { 0x40 } else { 0x00 };
    let name = port.as_bytes();
    let len = ((name.len() + 1).div_ceil(4) * 4).max(20);
    let mut t = vec![format | 0x05, 0];
    t.extend_from_slice(&(len as u16).to_be_bytes());
    t.extend_from_slice(name);
    t.resize(4 + len, 0);
    t
}

/// Queue `code` for every I_T nexus whose port name is in `ports`.
fn ua_to(lun: &mut Lun, ctx: &Ctx<'_>, ports: &[String], code: crate::sense::Asc) {
    for (n, name) in ctx.names {
        if ports.iter().any(|p| p == name) {
            lun.add_ua(*n, code);
        }
    }
}

/// The registrants other than `me`.
fn others(pr: &PrState, me: &str) -> Vec<String> {
    pr.regs
        .iter()
        .filter(|(p, _)| p != me)
        .map(|(p, _)| p.clone())
        .collect()
}

fn pr_out(lun: &mut Lun, ctx: &Ctx<'_>, dout: &[u8]) -> HandlerResult {
    let cdb = ctx.cdb;
    let action = crate::cdb::service_action(cdb);
    let scope = byte(cdb, 2) >> 4;
    let type_code = byte(cdb, 2) & 0x0f;
    let plen = be32(cdb, 5) as usize;
    let wanted = plen as u64;
    if action > out_sa::REGISTER_AND_IGNORE {
        // REGISTER AND MOVE (and reserved codes) are not supported.
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    // SPC-4 §6.16.3: the basic parameter list is 24 bytes.
    if plen != 24 || dout.len() < 24 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let key = be64(dout, 0);
    let sark = be64(dout, 8);
    let flags = byte(dout, 20);
    if flags & 0x08 != 0 {
        return Err(Sense::invalid_param(20)); // SPEC_I_PT: SIP_C is 0
    }
    if flags & 0x04 != 0 {
        return Err(Sense::invalid_param(20)); // ALL_TG_PT: ATP_C is 0
    }
    if flags & 0x01 != 0 {
        return Err(Sense::invalid_param(20)); // APTPL: PTPL_C is 0
    }
    let me = ctx.initiator;
    let good = Ok(Reply::Good { wanted });
    let mine = lun.pr.key_of(me);

    if action == out_sa::REGISTER || action == out_sa::REGISTER_AND_IGNORE {
        // SPC-4 §5.13.7.
        if action == out_sa::REGISTER && key != mine.unwrap_or(0) {
            return Ok(Reply::Conflict);
        }
        match (mine, sark) {
            (None, 0) => return good,
            (None, k) => lun.pr.regs.push((me.to_string(), k)),
            (Some(_), 0) => unregister(lun, ctx, me),
            (Some(_), k) => {
                for r in lun.pr.regs.iter_mut().filter(|(p, _)| p == me) {
                    r.1 = k;
                }
            }
        }
        lun.pr.generation = lun.pr.generation.wrapping_add(1);
        return good;
    }

    // Every other action needs a registered nexus and its own key.
    if mine != Some(key) {
        return Ok(Reply::Conflict);
    }
    let lu_scope = || {
        if scope != 0 {
            Err(Sense::invalid_cdb(2, Some(7)))
        } else {
            Ok(())
        }
    };
    let typ = || PrType::from_code(type_code).ok_or(Sense::invalid_cdb(2, Some(3)));
    match action {
        out_sa::RESERVE => {
            // SPC-4 §5.13.9.
            lu_scope()?;
            let t = typ()?;
            match &lun.pr.res {
                None => {
                    lun.pr.res = Some(Reservation {
                        holder: me.to_string(),
                        typ: t,
                    });
                    good
                }
                Some(r) if lun.pr.is_holder(me) && r.typ == t => good,
                Some(_) => Ok(Reply::Conflict),
            }
        }
        out_sa::RELEASE => {
            // SPC-4 §5.13.11.2.
            let Some(r) = lun.pr.res.clone() else {
                return good;
            };
            if !lun.pr.is_holder(me) {
                return good;
            }
            lu_scope()?;
            if r.typ as u8 != type_code {
                return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PR));
            }
            lun.pr.res = None;
            if r.typ.registrants_access() {
                let o = others(&lun.pr, me);
                ua_to(lun, ctx, &o, asc::RESERVATIONS_RELEASED);
            }
            good
        }
        out_sa::CLEAR => {
            // SPC-4 §5.13.11.2.6.
            let o = others(&lun.pr, me);
            lun.pr.regs.clear();
            lun.pr.res = None;
            lun.pr.generation = lun.pr.generation.wrapping_add(1);
            ua_to(lun, ctx, &o, asc::RESERVATIONS_PREEMPTED);
            good
        }
        out_sa::PREEMPT | out_sa::PREEMPT_AND_ABORT => {
            preempt(lun, ctx, sark, scope, type_code, wanted)
        }
        _ => Err(Sense::invalid_cdb(1, Some(4))),
    }
}

/// Remove `port`'s registration, releasing the reservation it holds
/// (SPC-4 §5.13.11.2.3: an all-registrants reservation goes only with the
/// last registrant; a registrants-only one tells the others).
fn unregister(lun: &mut Lun, ctx: &Ctx<'_>, port: &str) {
    let held = lun.pr.is_holder(port);
    lun.pr.regs.retain(|(p, _)| p != port);
    let Some(r) = lun.pr.res.clone() else {
        return;
    };
    if r.typ.all_registrants() {
        if lun.pr.regs.is_empty() {
            lun.pr.res = None;
        }
    } else if held {
        lun.pr.res = None;
        if r.typ.registrants_access() {
            let o = others(&lun.pr, port);
            ua_to(lun, ctx, &o, asc::RESERVATIONS_RELEASED);
        }
    }
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11.4); aborting the
/// preempted nexuses' tasks is the transport's business.
fn preempt(
    lun: &mut Lun,
    ctx: &Ctx<'_>,
    sark: u64,
    scope: u8,
    type_code: u8,
    wanted: u64,
) -> HandlerResult {
    let me = ctx.initiator;
    let pr = &mut lun.pr;
    let new_res = |t: u8| -> Result<Reservation, Sense> {
        if scope != 0 {
            return Err(Sense::invalid_cdb(2, Some(7)));
        }
        Ok(Reservation {
            holder: me.to_string(),
            typ: PrType::from_code(t).ok_or(Sense::invalid_cdb(2, Some(3)))?,
        })
    };
    let victims = |pr: &PrState, k: Option<u64>| -> Vec<String> {
        pr.regs
            .iter()
            .filter(|(p, key)| p != me && k.is_none_or(|k| *key == k))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let (removed, released_others) = match pr.res.clone() {
        None => {
            if sark == 0 {
                return Err(Sense::invalid_param(8));
            }
            let v = victims(pr, Some(sark));
            if v.is_empty() && pr.key_of(me) != Some(sark) {
                return Ok(Reply::Conflict);
            }
            (v, false)
        }
        Some(r) if r.typ.all_registrants() && sark == 0 => {
            // Preempt every other registrant and take a new reservation.
            let res = new_res(type_code)?;
            let changed = res.typ != r.typ;
            pr.res = Some(res);
            (victims(pr, None), changed)
        }
        Some(r) if !r.typ.all_registrants() && pr.key_of(&r.holder) == Some(sark) => {
            let res = new_res(type_code)?;
            let changed = res.typ != r.typ;
            pr.res = Some(res);
            (victims(pr, Some(sark)), changed)
        }
        Some(_) => {
            if sark == 0 {
                return Err(Sense::invalid_param(8));
            }
            let v = victims(pr, Some(sark));
            if v.is_empty() && pr.key_of(me) != Some(sark) {
                return Ok(Reply::Conflict);
            }
            (v, false)
        }
    };
    pr.regs.retain(|(p, _)| !removed.contains(p));
    pr.generation = pr.generation.wrapping_add(1);
    ua_to(lun, ctx, &removed, asc::REGISTRATIONS_PREEMPTED);
    if released_others {
        let o = others(&lun.pr, me);
        ua_to(lun, ctx, &o, asc::RESERVATIONS_RELEASED);
    }
    Ok(Reply::Good { wanted })
}

/// The iSCSI initiator port name of a session (RFC 7143 §13.2 / SPC-4
/// §7.6.4.6): `<InitiatorName>,i,0x<ISID as 12 hex digits>`.
pub fn iscsi_initiator_port_name(initiator_name: &str, isid: [u8; 6]) -> String {
    let mut s = format!("{initiator_name},i,0x");
    for b in isid {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The port name used for a nexus the transport did not name.
pub(crate) fn anonymous_port_name(n: NexusId) -> String {
    format!("nexus-{}", n.0)
}

/// For the dispatcher's UA routing: name per nexus.
pub(crate) type Names = BTreeMap<NexusId, String>;
