//! Persistent reservations (SPC-4 §5.13, §6.15 PERSISTENT RESERVE IN,
//! §6.16 PERSISTENT RESERVE OUT).
//!
//! Registrations are keyed by the I_T nexus as SPC-4 names it: the SCSI
//! initiator port name (for iSCSI `<InitiatorName>,i,0x<ISID>`, RFC 7143
//! §13.2) and the relative target port identifier, not by the transport's
//! session counter, so they survive I_T nexus loss and a reconnecting
//! initiator with the same name and ISID finds its registration again
//! (SPC-4 §5.13.1: PR state is kept across I_T nexus loss and logical unit
//! reset). The target port matters when several gateways serve one
//! medium: each is its own target port, and the state is then kept by the
//! store for all of them ([`crate::device::SharedState`]), encoded by
//! [`PrState::encode`]. Unit attentions a change owes to other nexuses are
//! recorded in the state as events ([`Event`]), which every gateway
//! delivers to the nexuses it has. APTPL is offered (PTPL_C 1) only where
//! the store keeps the state: there it outlives every gateway anyway; a
//! LU of one process keeps it in memory and refuses APTPL (PTPL_C 0).

use std::collections::{BTreeMap, VecDeque};

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
    pub const REGISTER_AND_MOVE: u16 = 0x07;
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

/// At most this many registrations per LU (SPC-4 §5.13.7: beyond, the
/// device server answers INSUFFICIENT REGISTRATION RESOURCES); it bounds
/// the state a peer can make us keep and the encoded state's size.
pub(crate) const MAX_REGISTRATIONS: usize = 256;

/// Unit attentions kept in the state for gateways to deliver; a gateway
/// that falls further behind than this loses the oldest (as a nexus's own
/// queue drops its oldest, SAM-5 §5.14).
const MAX_EVENTS: usize = 64;

/// Longest initiator port name kept (iSCSI names are at most 223 bytes,
/// RFC 7143 §4.2.7.1, plus `,i,0x` and the ISID).
const MAX_PORT_NAME: usize = 255;

/// An I_T nexus as PR state names it (SPC-4 §5.13.7: a registration
/// belongs to one initiator port and one target port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Nexus {
    /// SCSI initiator port name.
    pub port: String,
    /// Relative target port identifier.
    pub rel: u16,
}

/// iSCSI initiator port names are `<name>,i,0x<ISID>` (RFC 7143 §10.1).
const ISID_SEPARATOR: &str = ",i,0x";

impl Nexus {
    /// Whether this registration stands for the I_T nexus of initiator
    /// port `port` and relative target port `rel`: relative port 0 stands
    /// for every target port (ALL_TG_PT), a name without an ISID for every
    /// initiator port of that iSCSI name (a TransportID of format 00b).
    fn is(&self, port: &str, rel: u16) -> bool {
        (self.rel == rel || self.rel == 0)
            && (self.port == port
                || (!self.port.contains(ISID_SEPARATOR)
                    && port
                        .strip_prefix(self.port.as_str())
                        .is_some_and(|rest| rest.starts_with(ISID_SEPARATOR))))
    }
}

/// A unit attention a change owes to one nexus (SPC-4 §5.13.11), kept with
/// the state so that the gateway that has the nexus delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// The state's `seq` once the change was made.
    pub seq: u64,
    /// The nexus; one with an empty port name stands for every nexus
    /// behind any other target port than `to.rel` (a reset made there,
    /// whose gateway told its own nexuses at once; 0 for every nexus).
    pub to: Nexus,
    pub code: crate::sense::Asc,
}

/// The persistent reservation, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    /// The holder (unused for all-registrants types).
    holder: Nexus,
    typ: PrType,
}

/// PR state of one logical unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PrState {
    /// PRGENERATION (SPC-4 §6.15.2): bumped by every PROUT that changes
    /// registrations, never by RESERVE or RELEASE.
    generation: u32,
    /// Registrations in the order they were made, with their keys.
    regs: Vec<(Nexus, u64)>,
    res: Option<Reservation>,
    /// The holder of an SPC-2 RESERVE(6)/(10) reservation, when the store
    /// keeps it (a LU of one gateway keeps it as `Lun::reserved_by`).
    pub(crate) spc2: Option<Nexus>,
    /// APTPL as the last registration set it (stores that keep the state).
    aptpl: bool,
    /// Bumped by every change of any kind: a copy with a higher `seq` is
    /// newer (gateways install only those).
    pub(crate) seq: u64,
    /// Unit attentions owed by the last changes, oldest first.
    pub(crate) events: VecDeque<Event>,
}

impl PrState {
    /// What a power loss keeps (SPC-4 §5.13.5): registrations, the
    /// reservation, PRGENERATION and APTPL; not the unit attentions owed
    /// to nexuses that a restart ends, nor an SPC-2 reservation.
    fn persisted(&self) -> PrState {
        PrState {
            events: VecDeque::new(),
            spc2: None,
            ..self.clone()
        }
    }

    fn key_of(&self, port: &str, rel: u16) -> Option<u64> {
        self.regs
            .iter()
            .find(|(n, _)| n.is(port, rel))
            .map(|(_, k)| *k)
    }

    fn is_holder(&self, port: &str, rel: u16) -> bool {
        match &self.res {
            Some(r) if r.typ.all_registrants() => self.key_of(port, rel).is_some(),
            Some(r) => r.holder.is(port, rel),
            None => false,
        }
    }

    /// The access rules of SPC-4 §5.13.1 (table 46) and SBC-3 §4.17 for a
    /// command from initiator port `port` through relative target port
    /// `rel`; `Err(())` means RESERVATION CONFLICT.
    pub(crate) fn check_access(&self, port: &str, rel: u16, cdb: &[u8]) -> Result<(), ()> {
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
        if self.is_holder(port, rel) {
            return Ok(());
        }
        let registered = self.key_of(port, rel).is_some();
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
        | op::READ_DEFECT_DATA_10
        | op::READ_DEFECT_DATA_12
        | op::RECEIVE_COPY_RESULTS
        | op::SERVICE_ACTION_IN_16 => Access::Read,
        // POPULATE TOKEN reads its ranges.
        op::EXTENDED_COPY if crate::cdb::service_action(cdb) == 0x10 => Access::Read,
        _ => Access::Write,
    }
}

/// PERSISTENT RESERVE IN / OUT. `ctx.initiator` and the target port name
/// the caller's I_T nexus. PERSISTENT RESERVE OUT on a LU whose state the
/// store keeps for several gateways goes to the store as a media task
/// ([`crate::io::IoOp::PrOut`], run by [`apply_out`]); otherwise it is
/// applied here and its unit attentions delivered at once.
pub(crate) fn execute(
    lun: &mut Lun,
    ctx: &Ctx<'_>,
    dout: &[u8],
    din: &mut Vec<u8>,
) -> HandlerResult {
    if ctx.cdb[0] == op::PERSISTENT_RESERVE_IN {
        let persistent = lun.shared_pr || lun.cfg.pr_file.is_some();
        return pr_in(&lun.pr, persistent, ctx, din);
    }
    if lun.shared_pr {
        return Ok(shared_task(ctx, u64::from(be32(ctx.cdb, 5))));
    }
    let me = Nexus {
        port: ctx.initiator.to_string(),
        rel: ctx.port.relative_port,
    };
    let (seq, was_aptpl) = (lun.pr.seq, lun.pr.aptpl);
    let abort = crate::cdb::service_action(ctx.cdb) == out_sa::PREEMPT_AND_ABORT;
    let before = if abort {
        lun.pr.regs.clone()
    } else {
        Vec::new()
    };
    let r = apply(&mut lun.pr, &me, ctx.cdb, dout, lun.cfg.pr_file.is_some());
    if abort && matches!(r, Ok(Reply::Good { .. })) {
        // SPC-4 §5.13.11.2.5: the preempted nexuses' tasks on this LU are
        // aborted; the transport does that.
        let rel = ctx.port.relative_port;
        let gone: Vec<&Nexus> = before
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !lun.pr.regs.iter().any(|(m, _)| m == *n))
            .collect();
        for (id, name) in ctx.names.iter() {
            // Never the preempting nexus itself (a registration by name
            // alone may stand for it as well as for its victims).
            if *id != ctx.nexus
                && gone.iter().any(|n| n.is(name, rel))
                && !lun.task_aborts.contains(id)
            {
                lun.task_aborts.push(*id);
            }
        }
    }
    deliver_events(lun, ctx.names, ctx.port.relative_port);
    // With APTPL set (or just cleared) the change reaches the state file
    // before the command's GOOD: a media task writes it.
    match (r, &lun.cfg.pr_file) {
        (Ok(Reply::Good { wanted }), Some(path))
            if lun.pr.seq != seq && (lun.pr.aptpl || was_aptpl) =>
        {
            Ok(Reply::Io {
                op: crate::io::IoOp::SavePr(Box::new(crate::aptpl::PrSave {
                    path: path.clone(),
                    medium: lun.cfg.path.clone().unwrap_or_default(),
                    state: lun.pr.aptpl.then(|| lun.pr.persisted().encode()),
                    seq: lun.pr.seq,
                    saved: lun.pr_saved.clone(),
                })),
                wanted,
            })
        }
        (r, _) => r,
    }
}

/// State restored from an APTPL file onto LU `lun`; false when the file
/// is not for its medium, does not parse, or does not have APTPL set.
pub(crate) fn restore(lun: &mut Lun, file: &[u8]) -> bool {
    let medium = lun.cfg.path.clone().unwrap_or_default();
    let Some(pr) = crate::aptpl::state_for(file, &medium).and_then(PrState::decode) else {
        return false;
    };
    if !pr.aptpl {
        return false;
    }
    *lun.pr_saved.0.lock().unwrap_or_else(|p| p.into_inner()) = pr.seq;
    lun.pr_seen = pr.seq;
    lun.pr = pr;
    true
}

/// The shared state after the target port groups' access states changed
/// (the store saw its lock move): every nexus of every gateway is owed
/// ASYMMETRIC ACCESS STATE CHANGED (SPC-4 §5.15.2.2). `None` when the
/// state does not parse.
pub fn asymmetric_access_changed(state: &[u8]) -> Option<Vec<u8>> {
    let mut pr = PrState::decode(state)?;
    // Relative port 0 is no port's: the event reaches every gateway.
    let everyone = Nexus {
        port: String::new(),
        rel: 0,
    };
    ua_to(&mut pr, &[everyone], asc::ASYMMETRIC_ACCESS_STATE_CHANGED);
    pr.bump()?;
    Some(pr.encode())
}

/// The media task that applies this command (PERSISTENT RESERVE OUT,
/// RESERVE, RELEASE) to the state the store keeps (see [`apply`]).
pub(crate) fn shared_task(ctx: &Ctx<'_>, wanted: u64) -> Reply {
    Reply::Io {
        op: crate::io::IoOp::PrOut {
            cdb: ctx.cdb.to_vec(),
            me: Nexus {
                port: ctx.initiator.to_string(),
                rel: ctx.port.relative_port,
            },
        },
        wanted,
    }
}

/// Stand-in for a holder of an SPC-2 reservation that is not one of this
/// gateway's nexuses: every nexus here conflicts with it.
const ELSEWHERE: NexusId = NexusId(u64::MAX);

/// For a LU whose state the store keeps: which of our nexuses (or
/// [`ELSEWHERE`]) holds its SPC-2 reservation.
pub(crate) fn local_spc2_holder(lun: &mut Lun, names: &Names, rel: u16) {
    lun.reserved_by = lun.pr.spc2.as_ref().map(|h| {
        names
            .iter()
            .find(|(_, name)| h.rel == rel && **name == h.port)
            .map_or(ELSEWHERE, |(n, _)| *n)
    });
}

/// A change the store's state owes to an event no command carries, to be
/// applied with [`crate::SharedState::update`] before the transport
/// answers what caused it: an SPC-2 reservation released by its I_T
/// nexus's loss (SPC-2 §5.5.1), or a LOGICAL UNIT RESET or target reset,
/// which also releases it and tells the nexuses of the other gateways
/// (SAM-5 §6.3.3: every I_T nexus gets the unit attention).
#[derive(Debug, Clone)]
pub struct SharedChange {
    lun: crate::LunId,
    what: Change,
}

#[derive(Debug, Clone)]
enum Change {
    /// This holder's SPC-2 reservation goes.
    Release(Nexus),
    /// A reset through relative target port `0`.
    Reset(u16),
}

impl SharedChange {
    pub(crate) fn release(lun: crate::LunId, holder: Nexus) -> SharedChange {
        SharedChange {
            lun,
            what: Change::Release(holder),
        }
    }

    pub(crate) fn reset(lun: crate::LunId, rel: u16) -> SharedChange {
        SharedChange {
            lun,
            what: Change::Reset(rel),
        }
    }

    pub fn lun(&self) -> crate::LunId {
        self.lun
    }

    /// The state after the change, `None` when it changes nothing (or the
    /// state does not parse).
    pub fn apply(&self, state: &[u8]) -> Option<Vec<u8>> {
        let mut pr = PrState::decode(state)?;
        match &self.what {
            Change::Release(holder) => {
                if pr.spc2.as_ref() != Some(holder) {
                    return None;
                }
                pr.spc2 = None;
            }
            &Change::Reset(rel) => {
                pr.spc2 = None;
                let everyone_else = Nexus {
                    port: String::new(),
                    rel,
                };
                ua_to(&mut pr, &[everyone_else], asc::BUS_DEVICE_RESET_FUNCTION);
            }
        }
        pr.bump()?;
        Some(pr.encode())
    }
}

/// Queue, for the nexuses in `names` (all behind relative target port
/// `rel`), the unit attentions of events this LU has not delivered yet.
pub(crate) fn deliver_events(lun: &mut Lun, names: &Names, rel: u16) {
    let seen = lun.pr_seen;
    let due: Vec<(NexusId, crate::sense::Asc)> = lun
        .pr
        .events
        .iter()
        .filter(|e| e.seq > seen)
        .flat_map(|e| {
            let everyone = e.to.port.is_empty();
            names
                .iter()
                .filter(move |(_, name)| {
                    if everyone {
                        e.to.rel != rel
                    } else {
                        e.to.is(name, rel)
                    }
                })
                .map(move |(n, _)| (*n, e.code))
        })
        .collect();
    for (n, code) in due {
        lun.add_ua(n, code);
    }
    lun.pr_seen = lun.pr.seq;
}

/// `persistent`: the store keeps the state (PTPL_C).
fn pr_in(pr: &PrState, persistent: bool, ctx: &Ctx<'_>, din: &mut Vec<u8>) -> HandlerResult {
    let cdb = ctx.cdb;
    let alloc = usize::from(be16(cdb, 7));
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
                    pr.key_of(&r.holder.port, r.holder.rel).unwrap_or(0)
                };
                din.extend_from_slice(&key.to_be_bytes());
                din.extend_from_slice(&[0, 0, 0, 0, 0, r.typ as u8, 0, 0]);
            }
        },
        in_sa::REPORT_CAPABILITIES => {
            // SPC-4 §6.15.4: LENGTH 8; CRH (compatible reservation handling,
            // §5.13.3); SIP_C and ATP_C (SPEC_I_PT, ALL_TG_PT); PTPL_C
            // where the state is kept, PTPL_A as the last REGISTER set it;
            // TMV with ALLOW COMMANDS 000b; the six types in the type mask.
            din.clear();
            din.extend_from_slice(&[
                0,
                8,
                0x10 | 0x08 | 0x04 | u8::from(persistent),
                0x80 | u8::from(persistent && pr.aptpl),
                0x80 | 0x40 | 0x20 | 0x08 | 0x02,
                0x01,
                0,
                0,
            ]);
        }
        in_sa::READ_FULL_STATUS => {
            let mut descs = Vec::new();
            for (who, key) in &pr.regs {
                let holder = pr.is_holder(&who.port, who.rel);
                descs.extend_from_slice(&key.to_be_bytes());
                descs.extend_from_slice(&[0, 0, 0, 0]);
                // ALL_TG_PT, R_HOLDER.
                descs.push(if who.rel == 0 { 0x02 } else { 0 } | u8::from(holder));
                descs.push(match (&pr.res, holder) {
                    (Some(r), true) => r.typ as u8,
                    _ => 0,
                });
                descs.extend_from_slice(&[0, 0, 0, 0]);
                descs.extend_from_slice(&who.rel.to_be_bytes());
                let tid = transport_id(&who.port);
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

/// Owe `code` to every nexus in `to` (delivered by [`deliver_events`]).
fn ua_to(pr: &mut PrState, to: &[Nexus], code: crate::sense::Asc) {
    let seq = pr.seq + 1;
    for n in to {
        if pr.events.len() >= MAX_EVENTS {
            pr.events.pop_front();
        }
        pr.events.push_back(Event {
            seq,
            to: n.clone(),
            code,
        });
    }
}

/// The registrants other than `me`.
fn others(pr: &PrState, me: &Nexus) -> Vec<Nexus> {
    pr.regs
        .iter()
        .filter(|(n, _)| !n.is(&me.port, me.rel))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Apply PERSISTENT RESERVE OUT (SPC-4 §6.16, §5.13.7 to §5.13.11), or
/// the SPC-2 RESERVE or RELEASE of a LU whose state the store keeps, from
/// `me` to `pr`; the unit attentions it owes are added to `pr.events`, and
/// `pr.seq` moves if anything changed. `dout` is the parameter list;
/// `persistent`: the store keeps the state, so APTPL may be set.
pub(crate) fn apply(
    pr: &mut PrState,
    me: &Nexus,
    cdb: &[u8],
    dout: &[u8],
    persistent: bool,
) -> HandlerResult {
    let before = pr.clone();
    let r = match cdb[0] {
        op::RESERVE_6 | op::RESERVE_10 | op::RELEASE_6 | op::RELEASE_10 => spc2(pr, me, cdb),
        _ => pr_out(pr, me, cdb, dout, persistent),
    };
    if *pr != before && pr.bump().is_none() {
        *pr = before;
        return Err(Sense::new(
            crate::sense::key::HARDWARE_ERROR,
            asc::INTERNAL_TARGET_FAILURE,
        ));
    }
    r
}

/// SPC-2 RESERVE / RELEASE (SPC-2 §7.21, §7.23) against the shared state:
/// judged again here, as another gateway may have changed it since the
/// dispatcher looked.
fn spc2(pr: &mut PrState, me: &Nexus, cdb: &[u8]) -> HandlerResult {
    // SPC-4 §5.13.3: while any I_T nexus is registered, they conflict.
    if !pr.regs.is_empty() {
        return Ok(Reply::Conflict);
    }
    let reserve = matches!(cdb[0], op::RESERVE_6 | op::RESERVE_10);
    match &pr.spc2 {
        Some(h) if h != me && reserve => return Ok(Reply::Conflict),
        // A RELEASE from a non-holder succeeds and changes nothing.
        Some(h) if h != me => {}
        _ if reserve => pr.spc2 = Some(me.clone()),
        _ => pr.spc2 = None,
    }
    Ok(Reply::Good { wanted: 0 })
}

fn pr_out(
    pr: &mut PrState,
    me: &Nexus,
    cdb: &[u8],
    dout: &[u8],
    persistent: bool,
) -> HandlerResult {
    let action = crate::cdb::service_action(cdb);
    let scope = byte(cdb, 2) >> 4;
    let type_code = byte(cdb, 2) & 0x0f;
    let plen = be32(cdb, 5) as usize;
    let wanted = plen as u64;
    if action == out_sa::REGISTER_AND_MOVE {
        return register_and_move(pr, me, scope, type_code, plen, dout, persistent);
    }
    if action > out_sa::REGISTER_AND_MOVE {
        return Err(Sense::invalid_cdb(1, Some(4)));
    }
    if plen < 24 || dout.len() < plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let key = be64(dout, 0);
    let sark = be64(dout, 8);
    let flags = byte(dout, 20);
    let spec_i_pt = flags & 0x08 != 0;
    // SPC-4 §6.16.3: the basic parameter list is 24 bytes; only REGISTER
    // with SPEC_I_PT adds TransportIDs to it.
    if !spec_i_pt && plen != 24 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let aptpl = flags & 0x01 != 0;
    if aptpl && !persistent {
        return Err(Sense::invalid_param(20)); // APTPL: PTPL_C is 0
    }
    let good = Ok(Reply::Good { wanted });
    let mine = pr.key_of(&me.port, me.rel);

    if action == out_sa::REGISTER || action == out_sa::REGISTER_AND_IGNORE {
        // SPC-4 §5.13.7. ALL_TG_PT registers the initiator port through
        // every target port (relative port 0 stands for them all).
        let all_tg_pt = flags & 0x04 != 0;
        let rel = if all_tg_pt { 0 } else { me.rel };
        if action == out_sa::REGISTER && key != mine.unwrap_or(0) {
            return Ok(Reply::Conflict);
        }
        if spec_i_pt {
            // SPC-4 §5.13.7.2: only REGISTER from a nexus not yet
            // registered, registering itself and the initiator ports
            // its TransportIDs name, all or none.
            if action != out_sa::REGISTER || mine.is_some() {
                return Err(Sense::invalid_param(20));
            }
            if sark == 0 {
                return Err(Sense::invalid_param(8));
            }
            let mut new = vec![Nexus {
                port: me.port.clone(),
                rel,
            }];
            for port in transport_ids(dout, plen)? {
                let n = Nexus { port, rel };
                // Registered already, by this name or one standing for it
                // (or for which it stands): all or nothing, so none.
                if pr
                    .regs
                    .iter()
                    .any(|(r, _)| *r == n || r.is(&n.port, n.rel) || n.is(&r.port, r.rel))
                {
                    return Ok(Reply::Conflict);
                }
                if !new.contains(&n) {
                    new.push(n);
                }
            }
            if pr.regs.len() + new.len() > MAX_REGISTRATIONS {
                return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES));
            }
            pr.regs.extend(new.into_iter().map(|n| (n, sark)));
            pr.aptpl = aptpl;
            pr.generation = pr.generation.wrapping_add(1);
            return good;
        }
        match (mine, sark) {
            (None, 0) => return good,
            (None, _) if pr.regs.len() >= MAX_REGISTRATIONS || me.port.len() > MAX_PORT_NAME => {
                return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES));
            }
            (None, k) => pr.regs.push((
                Nexus {
                    port: me.port.clone(),
                    rel,
                },
                k,
            )),
            (Some(_), 0) => unregister(pr, me),
            (Some(_), k) => {
                for r in pr.regs.iter_mut().filter(|(n, _)| n.is(&me.port, me.rel)) {
                    r.1 = k;
                }
            }
        }
        // SPC-4 §5.13.5: the last valid APTPL received governs.
        pr.aptpl = aptpl;
        pr.generation = pr.generation.wrapping_add(1);
        return good;
    }

    // Every other action needs a registered nexus and its own key, and
    // takes neither SPEC_I_PT nor ALL_TG_PT (SPC-4 §6.16.3 table 207).
    if mine != Some(key) {
        return Ok(Reply::Conflict);
    }
    if flags & 0x0c != 0 {
        return Err(Sense::invalid_param(20));
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
            match &pr.res {
                None => {
                    pr.res = Some(Reservation {
                        holder: me.clone(),
                        typ: t,
                    });
                    good
                }
                Some(r) if pr.is_holder(&me.port, me.rel) && r.typ == t => good,
                Some(_) => Ok(Reply::Conflict),
            }
        }
        out_sa::RELEASE => {
            // SPC-4 §5.13.11.2.
            let Some(r) = pr.res.clone() else {
                return good;
            };
            if !pr.is_holder(&me.port, me.rel) {
                return good;
            }
            lu_scope()?;
            if r.typ as u8 != type_code {
                return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PR));
            }
            pr.res = None;
            if r.typ.registrants_access() {
                let o = others(pr, me);
                ua_to(pr, &o, asc::RESERVATIONS_RELEASED);
            }
            good
        }
        out_sa::CLEAR => {
            // SPC-4 §5.13.11.2.6.
            let o = others(pr, me);
            pr.regs.clear();
            pr.res = None;
            pr.generation = pr.generation.wrapping_add(1);
            ua_to(pr, &o, asc::RESERVATIONS_PREEMPTED);
            good
        }
        out_sa::PREEMPT | out_sa::PREEMPT_AND_ABORT => {
            preempt(pr, me, sark, scope, type_code, wanted)
        }
        _ => Err(Sense::invalid_cdb(1, Some(4))),
    }
}

/// The initiator port names of the iSCSI TransportIDs (SPC-4 §7.6.4.6)
/// a REGISTER with SPEC_I_PT carries after its 24 bytes: format 00b names
/// a device (every port of it), 01b one port (`<name>,i,0x<ISID>`).
fn transport_ids(dout: &[u8], plen: usize) -> Result<Vec<String>, Sense> {
    if plen < 28 {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let len = be32(dout, 24) as usize;
    if 28 + len > plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let mut ids = Vec::new();
    let mut at = 28;
    while at < 28 + len {
        let (port, n) = transport_id_at(dout, at, 28 + len)?;
        if ids.len() >= MAX_REGISTRATIONS {
            return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES));
        }
        ids.push(port);
        at += n;
    }
    Ok(ids)
}

/// One iSCSI TransportID at `at` (ending by `end`): the initiator port
/// name it gives, normalized as [`crate::iscsi_initiator_port_name`]
/// writes them, and its length.
fn transport_id_at(d: &[u8], at: usize, end: usize) -> Result<(String, usize), Sense> {
    let bad = Sense::invalid_param(at as u16);
    if at + 4 > end {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let (format, proto) = (d[at] >> 6, d[at] & 0x0f);
    if proto != 0x05 || format > 1 {
        return Err(bad);
    }
    let len = usize::from(be16(d, at + 2));
    if len < 20 || len % 4 != 0 || at + 4 + len > end {
        return Err(bad);
    }
    let raw = &d[at + 4..at + 4 + len];
    let text = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = std::str::from_utf8(text).map_err(|_| bad)?;
    let port = match (format, text.split_once(ISID_SEPARATOR)) {
        (0, None) if !text.is_empty() => text.to_string(),
        (1, Some((name, isid)))
            if !name.is_empty()
                && isid.len() == 12
                && isid.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            format!("{name}{ISID_SEPARATOR}{}", isid.to_ascii_lowercase())
        }
        _ => return Err(bad),
    };
    if port.len() > MAX_PORT_NAME {
        return Err(bad);
    }
    Ok((port, 4 + len))
}

/// REGISTER AND MOVE (SPC-4 §5.13.8): the holder of a reservation
/// registers the I_T nexus a TransportID and relative target port name
/// with SERVICE ACTION RESERVATION KEY, moves the reservation (of TYPE) to
/// it, and with UNREG gives up its own registration.
fn register_and_move(
    pr: &mut PrState,
    me: &Nexus,
    scope: u8,
    type_code: u8,
    plen: usize,
    dout: &[u8],
    persistent: bool,
) -> HandlerResult {
    if plen < 24 || dout.len() < plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let (key, sark) = (be64(dout, 0), be64(dout, 8));
    let (unreg, aptpl) = (dout[17] & 0x02 != 0, dout[17] & 0x01 != 0);
    let rel = be16(dout, 18);
    let tlen = be32(dout, 20) as usize;
    if 24 + tlen > plen {
        return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    if pr.key_of(&me.port, me.rel) != Some(key) {
        return Ok(Reply::Conflict);
    }
    let Some(res) = pr.res.clone() else {
        return Ok(Reply::Conflict);
    };
    // Only the holder of a reservation with one holder can move it.
    if res.typ.all_registrants() || !pr.is_holder(&me.port, me.rel) {
        return Ok(Reply::Conflict);
    }
    if scope != 0 {
        return Err(Sense::invalid_cdb(2, Some(7)));
    }
    let typ = PrType::from_code(type_code).ok_or(Sense::invalid_cdb(2, Some(3)))?;
    if aptpl && !persistent {
        return Err(Sense::invalid_param(17));
    }
    if sark == 0 {
        return Err(Sense::invalid_param(8));
    }
    let (port, _) = transport_id_at(dout, 24, 24 + tlen)?;
    // The destination is one I_T nexus: a port, through a real port.
    if !port.contains(ISID_SEPARATOR) || rel == 0 {
        return Err(Sense::invalid_param(if rel == 0 { 18 } else { 24 }));
    }
    let dest = Nexus { port, rel };
    if dest == *me {
        return Err(Sense::invalid_param(24));
    }
    // SPC-4 §5.13.8: the destination is registered with SERVICE ACTION
    // RESERVATION KEY unless it is registered already (its key stays).
    if pr.key_of(&dest.port, dest.rel).is_none() {
        if pr.regs.len() >= MAX_REGISTRATIONS {
            return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES));
        }
        pr.regs.push((dest.clone(), sark));
    }
    pr.res = Some(Reservation { holder: dest, typ });
    if unreg {
        pr.regs.retain(|(n, _)| !n.is(&me.port, me.rel));
    }
    pr.aptpl = aptpl;
    pr.generation = pr.generation.wrapping_add(1);
    Ok(Reply::Good {
        wanted: plen as u64,
    })
}

/// Remove `who`'s registration, releasing the reservation it holds
/// (SPC-4 §5.13.11.2.3: an all-registrants reservation goes only with the
/// last registrant; a registrants-only one tells the others).
fn unregister(pr: &mut PrState, who: &Nexus) {
    let held = pr.is_holder(&who.port, who.rel);
    pr.regs.retain(|(n, _)| !n.is(&who.port, who.rel));
    let Some(r) = pr.res.clone() else {
        return;
    };
    if r.typ.all_registrants() {
        if pr.regs.is_empty() {
            pr.res = None;
        }
    } else if held {
        pr.res = None;
        if r.typ.registrants_access() {
            let o = others(pr, who);
            ua_to(pr, &o, asc::RESERVATIONS_RELEASED);
        }
    }
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 §5.13.11.4); aborting the
/// preempted nexuses' tasks is the transport's business.
fn preempt(
    pr: &mut PrState,
    me: &Nexus,
    sark: u64,
    scope: u8,
    type_code: u8,
    wanted: u64,
) -> HandlerResult {
    let new_res = |t: u8| -> Result<Reservation, Sense> {
        if scope != 0 {
            return Err(Sense::invalid_cdb(2, Some(7)));
        }
        Ok(Reservation {
            holder: me.clone(),
            typ: PrType::from_code(t).ok_or(Sense::invalid_cdb(2, Some(3)))?,
        })
    };
    let victims = |pr: &PrState, k: Option<u64>| -> Vec<Nexus> {
        pr.regs
            .iter()
            .filter(|(n, key)| !n.is(&me.port, me.rel) && k.is_none_or(|k| *key == k))
            .map(|(n, _)| n.clone())
            .collect()
    };
    let my_key = pr.key_of(&me.port, me.rel);
    let (removed, released_others) = match pr.res.clone() {
        None => {
            if sark == 0 {
                return Err(Sense::invalid_param(8));
            }
            let v = victims(pr, Some(sark));
            if v.is_empty() && my_key != Some(sark) {
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
        Some(r)
            if !r.typ.all_registrants()
                && pr.key_of(&r.holder.port, r.holder.rel) == Some(sark) =>
        {
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
            if v.is_empty() && my_key != Some(sark) {
                return Ok(Reply::Conflict);
            }
            (v, false)
        }
    };
    pr.regs.retain(|(n, _)| !removed.contains(n));
    pr.generation = pr.generation.wrapping_add(1);
    ua_to(pr, &removed, asc::REGISTRATIONS_PREEMPTED);
    if released_others {
        let o = others(pr, me);
        ua_to(pr, &o, asc::RESERVATIONS_RELEASED);
    }
    Ok(Reply::Good { wanted })
}

/// Encoding of [`PrState`] for a store that keeps it for several gateways:
/// versioned, big-endian, length-prefixed; [`PrState::decode`] checks
/// every length against what is left, so a damaged object is refused, not
/// trusted.
const ENCODING: &[u8; 4] = b"RPR1";

/// The highest `seq` a state may have: every state must be followable by
/// a newer one, so none parses at `u64::MAX`, and no change makes one.
const LAST_SEQ: u64 = u64::MAX - 1;

impl PrState {
    /// Move `seq` on; `None` (and no change) at [`LAST_SEQ`], which only
    /// damage to the stored state can bring near.
    fn bump(&mut self) -> Option<()> {
        if self.seq >= LAST_SEQ {
            return None;
        }
        self.seq += 1;
        Some(())
    }

    /// The state as bytes (see [`PrState::decode`]).
    pub(crate) fn encode(&self) -> Vec<u8> {
        fn nexus(out: &mut Vec<u8>, n: &Nexus) {
            out.extend_from_slice(&n.rel.to_be_bytes());
            out.extend_from_slice(&(n.port.len() as u16).to_be_bytes());
            out.extend_from_slice(n.port.as_bytes());
        }
        let mut out = Vec::with_capacity(64 + self.regs.len() * 64);
        out.extend_from_slice(ENCODING);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&(self.regs.len() as u32).to_be_bytes());
        for (n, key) in &self.regs {
            out.extend_from_slice(&key.to_be_bytes());
            nexus(&mut out, n);
        }
        match &self.res {
            None => out.push(0),
            Some(r) => {
                out.push(r.typ as u8);
                nexus(&mut out, &r.holder);
            }
        }
        match &self.spc2 {
            None => out.push(0),
            Some(n) => {
                out.push(1);
                nexus(&mut out, n);
            }
        }
        out.push(u8::from(self.aptpl));
        out.extend_from_slice(&(self.events.len() as u32).to_be_bytes());
        for e in &self.events {
            out.extend_from_slice(&e.seq.to_be_bytes());
            out.extend_from_slice(&[e.code.0, e.code.1]);
            nexus(&mut out, &e.to);
        }
        out
    }

    /// Parse what [`PrState::encode`] made; empty input is the state of a
    /// LU nobody has registered with. `None` for anything malformed.
    pub(crate) fn decode(b: &[u8]) -> Option<PrState> {
        struct Rd<'a>(&'a [u8]);
        impl<'a> Rd<'a> {
            fn take(&mut self, n: usize) -> Option<&'a [u8]> {
                if self.0.len() < n {
                    return None;
                }
                let (h, t) = self.0.split_at(n);
                self.0 = t;
                Some(h)
            }
            fn u8(&mut self) -> Option<u8> {
                Some(self.take(1)?[0])
            }
            fn u16(&mut self) -> Option<u16> {
                Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
            }
            fn u32(&mut self) -> Option<u32> {
                Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
            }
            fn u64(&mut self) -> Option<u64> {
                Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
            }
            fn nexus(&mut self) -> Option<Nexus> {
                let rel = self.u16()?;
                let len = usize::from(self.u16()?);
                if len > MAX_PORT_NAME {
                    return None;
                }
                let port = std::str::from_utf8(self.take(len)?).ok()?.to_string();
                Some(Nexus { port, rel })
            }
        }
        if b.is_empty() {
            return Some(PrState::default());
        }
        let mut r = Rd(b);
        if r.take(4)? != ENCODING {
            return None;
        }
        let mut pr = PrState {
            // A state at the last `seq` could never be followed by a newer
            // one: only damage puts it there (found by fuzzing).
            seq: r.u64().filter(|s| *s <= LAST_SEQ)?,
            generation: r.u32()?,
            ..PrState::default()
        };
        let nregs = r.u32()? as usize;
        if nregs > MAX_REGISTRATIONS {
            return None;
        }
        for _ in 0..nregs {
            let key = r.u64()?;
            pr.regs.push((r.nexus()?, key));
        }
        let typ = r.u8()?;
        if typ != 0 {
            pr.res = Some(Reservation {
                typ: PrType::from_code(typ)?,
                holder: r.nexus()?,
            });
        }
        pr.spc2 = match r.u8()? {
            0 => None,
            1 => Some(r.nexus()?),
            _ => return None,
        };
        pr.aptpl = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let nevents = r.u32()? as usize;
        if nevents > MAX_EVENTS {
            return None;
        }
        for _ in 0..nevents {
            let seq = r.u64()?;
            let code = (r.u8()?, r.u8()?);
            pr.events.push_back(Event {
                seq,
                code,
                to: r.nexus()?,
            });
        }
        r.0.is_empty().then_some(pr)
    }
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
