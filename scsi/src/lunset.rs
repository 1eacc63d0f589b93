//! The logical units of one target and their per-I_T-nexus state: unit
//! attentions (SAM-5 §5.14), SPC-2 reservations, persistent reservations
//! (SPC-4 §5.13, in [`crate::pr`]), medium-removal prevention.
//! [`LunSet::execute`] runs the checks every command goes through in the
//! order SAM-5 §5.8 / SPC-4 give them, then hands off to a handler.

use std::collections::BTreeMap;

use crate::cdb::{self, op};
use crate::config::{LunConfig, TargetPort};
use crate::io::IoTask;
use crate::lu::{Ctx, HandlerResult, Lun, Reply};
use crate::opcodes;
use crate::pr::{self, Names};
use crate::sense::{asc, Sense, SenseFormat};
use crate::{inquiry, mode, odx, sanitize, sbc, spc, xcopy};
use crate::{LunId, NexusId, Outcome, Request, Response, Status};

/// All LUNs of one target plus the I_T nexus state.
#[derive(Debug, Clone)]
pub struct LunSet {
    tid: u32,
    port: TargetPort,
    luns: BTreeMap<LunId, Lun>,
    /// The I_T nexuses and their SCSI initiator port names.
    nexuses: Names,
    /// Changes the stores' shared state owes to nexus losses and resets,
    /// for the transport to apply ([`LunSet::take_shared_changes`]).
    shared_changes: Vec<pr::SharedChange>,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS (and ROD
    /// token operations' for RECEIVE ROD TOKEN INFORMATION).
    copies: xcopy::HeldCopies,
    /// ROD tokens (POPULATE TOKEN), shared by the loops' copies.
    tokens: std::sync::Arc<odx::RodTokens>,
}

impl LunSet {
    /// An empty target; LUN 0 answers as tgt's controller until one is inserted.
    pub fn new(tid: u32, port: TargetPort) -> LunSet {
        let mut set = LunSet {
            tid,
            port,
            luns: BTreeMap::new(),
            nexuses: Names::new(),
            shared_changes: Vec::new(),
            copies: xcopy::HeldCopies::default(),
            tokens: Default::default(),
        };
        set.put_implicit_lun0();
        set
    }

    fn put_implicit_lun0(&mut self) {
        let mut lun = Lun::new(LunConfig::tgt_controller(self.tid));
        lun.implicit = true;
        self.luns.insert(LunId(0), lun);
    }

    /// Add or replace a LU. A new LU raises REPORTED LUNS DATA HAS CHANGED
    /// on the other LUs for every nexus (SPC-4 §6.33), and POWER ON on the
    /// new one.
    pub fn insert(&mut self, id: LunId, cfg: LunConfig) {
        self.tokens.forget_lun(id);
        let replaced_real = self.luns.get(&id).is_some_and(|l| !l.implicit);
        let mut lun = Lun::new(cfg);
        for &n in self.nexuses.keys() {
            lun.add_ua(n, asc::POWER_ON_RESET);
        }
        self.luns.insert(id, lun);
        if !replaced_real {
            self.raise_luns_changed(id);
        }
    }

    fn raise_luns_changed(&mut self, except: LunId) {
        let nexuses: Vec<NexusId> = self.nexuses.keys().copied().collect();
        for (lid, lun) in self.luns.iter_mut() {
            if *lid != except {
                for &n in &nexuses {
                    lun.add_ua(n, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
                }
            }
        }
    }

    /// Remove a LU; LUN 0 falls back to the implicit controller.
    pub fn remove(&mut self, id: LunId) -> bool {
        self.tokens.forget_lun(id);
        let Some(old) = self.luns.remove(&id) else {
            return false;
        };
        if id == LunId(0) {
            self.put_implicit_lun0();
        }
        if !old.implicit {
            self.raise_luns_changed(id);
        }
        !old.implicit
    }

    pub fn config(&self, id: LunId) -> Option<&LunConfig> {
        self.luns.get(&id).map(|l| &l.cfg)
    }

    pub fn ids(&self) -> Vec<LunId> {
        self.luns.keys().copied().collect()
    }

    /// Change a LU's settings. A new size raises CAPACITY DATA HAS CHANGED
    /// (SBC-3 §4.6), a change to anything MODE SENSE shows raises MODE
    /// PARAMETERS CHANGED (SPC-4 §7.5), for every nexus.
    pub fn update(&mut self, id: LunId, f: impl FnOnce(&mut LunConfig)) -> bool {
        let Some(lun) = self.luns.get_mut(&id) else {
            return false;
        };
        let before = lun.cfg.clone();
        f(&mut lun.cfg);
        // The management does not decide this: the store does.
        lun.cfg.alua = lun.shared_pr;
        let after = &lun.cfg;
        let size_changed =
            before.size_bytes != after.size_bytes || before.block_size != after.block_size;
        let mode_changed = before.write_cache != after.write_cache
            || before.sense_format != after.sense_format
            || before.readonly != after.readonly
            || before.block_size != after.block_size
            || before.rotation_rate != after.rotation_rate
            || before.soft_threshold_pct != after.soft_threshold_pct;
        let nexuses: Vec<NexusId> = self.nexuses.keys().copied().collect();
        for n in nexuses {
            if size_changed {
                lun.add_ua(n, asc::CAPACITY_DATA_HAS_CHANGED);
            }
            if mode_changed {
                lun.add_ua(n, asc::MODE_PARAMETERS_CHANGED);
            }
        }
        lun.implicit = false;
        true
    }

    /// A new I_T nexus: POWER ON, RESET, OR BUS DEVICE RESET OCCURRED on every LU.
    /// Its initiator port name is made up from `n`; transports that know
    /// the real one call [`LunSet::add_nexus_named`] instead.
    pub fn add_nexus(&mut self, n: NexusId) {
        self.add_nexus_named(n, &pr::anonymous_port_name(n));
    }

    /// A new I_T nexus whose SCSI initiator port name is `port_name` (for
    /// iSCSI `<InitiatorName>,i,0x<ISID>`, see
    /// [`crate::iscsi_initiator_port_name`]). Persistent reservation
    /// registrations belong to the port name, so a nexus that comes back
    /// under the same name finds its registrations and reservation again
    /// (SPC-4 §5.13.1). Otherwise as [`LunSet::add_nexus`].
    pub fn add_nexus_named(&mut self, n: NexusId, port_name: &str) {
        self.nexuses.insert(n, port_name.to_string());
        for lun in self.luns.values_mut() {
            lun.ua.remove(&n);
            lun.add_ua(n, asc::POWER_ON_RESET);
            if lun.shared_pr {
                pr::local_spc2_holder(lun, &self.nexuses, self.port.relative_port);
            }
        }
    }

    /// The releases nexus `n`'s loss will owe the stores' shared state,
    /// for a transport that makes them before it lets the nexus go (a
    /// Logout Response waits for them); what they change comes back
    /// through [`LunSet::install_shared_pr`].
    pub fn spc2_changes_for(&self, n: NexusId) -> Vec<pr::SharedChange> {
        let Some(port) = self.nexuses.get(&n) else {
            return Vec::new();
        };
        self.luns
            .iter()
            .filter(|(_, l)| l.shared_pr && l.reserved_by == Some(n))
            .map(|(id, _)| {
                let holder = pr::Nexus {
                    port: port.clone(),
                    rel: self.port.relative_port,
                };
                pr::SharedChange::release(*id, holder)
            })
            .collect()
    }

    /// Changes owed to the state stores keep for several gateways: SPC-2
    /// reservations released by nexus loss and resets (SPC-2 §5.5.1), and
    /// resets other gateways' nexuses must hear of; only the store can
    /// change that state, so the transport applies each with the LU's
    /// [`crate::SharedState::update`], off its event loop.
    pub fn take_shared_changes(&mut self) -> Vec<pr::SharedChange> {
        std::mem::take(&mut self.shared_changes)
    }

    /// I_T nexus loss: its UAs go, its SPC-2 reservations and preventions
    /// are released; persistent reservations stay (SPC-4 §5.13.1).
    pub fn remove_nexus(&mut self, n: NexusId) {
        let owed = self.spc2_changes_for(n);
        self.shared_changes.extend(owed);
        self.nexuses.remove(&n);
        self.copies.forget(n);
        for lun in self.luns.values_mut() {
            lun.ua.remove(&n);
            lun.prevent.remove(&n);
            if lun.reserved_by == Some(n) {
                lun.reserved_by = None;
            }
        }
    }

    /// LOGICAL UNIT RESET (SAM-5 §7.7): SPC-2 reservations and preventions
    /// are cleared (persistent reservations are kept, SPC-4 §5.13.1), and
    /// every nexus, the one that asked included, gets BUS DEVICE RESET
    /// FUNCTION OCCURRED (SAM-5 §6.3.3).
    pub fn lun_reset(&mut self, lun: LunId, by: NexusId) {
        let nexuses: Vec<NexusId> = self.nexuses.keys().copied().collect();
        if let Some(l) = self.luns.get_mut(&lun) {
            Self::reset_one(l, &nexuses, by);
            if l.shared_pr {
                let rel = self.port.relative_port;
                self.shared_changes.push(pr::SharedChange::reset(lun, rel));
            }
        }
    }

    /// The tasks PREEMPT AND ABORT owes aborts to: each LU and a nexus
    /// whose tasks on it the transport must abort (SPC-4 §5.13.11.2.5).
    pub fn take_task_aborts(&mut self) -> Vec<(LunId, NexusId)> {
        let mut out = Vec::new();
        for (id, lun) in self.luns.iter_mut() {
            out.extend(lun.task_aborts.drain(..).map(|n| (*id, n)));
        }
        out
    }

    /// Restore LU `id`'s persistent reservations from its APTPL state
    /// file's contents (see `LunConfig::pr_file`); false when there is
    /// nothing to restore (another medium's file, APTPL not set, a file
    /// that does not parse).
    pub fn restore_pr(&mut self, id: LunId, file: &[u8]) -> bool {
        self.luns
            .get_mut(&id)
            .is_some_and(|lun| pr::restore(lun, file))
    }

    /// The store behind thin LU `id` crossed its soft threshold (SBC-4
    /// §4.7.3.8.3): THIN PROVISIONING SOFT THRESHOLD REACHED for every
    /// nexus, as SITUA 0 in the logical block provisioning mode page says.
    /// Returns false for an LU that has no soft threshold.
    pub fn soft_threshold_reached(&mut self, id: LunId) -> bool {
        let Some(lun) = self.luns.get_mut(&id) else {
            return false;
        };
        if lun.cfg.soft_threshold_sets().is_none() {
            return false;
        }
        for &n in self.nexuses.keys() {
            lun.add_ua(n, asc::THIN_PROVISIONING_SOFT_THRESHOLD_REACHED);
        }
        true
    }

    /// TARGET RESET / I_T nexus-wide reset: a LUN reset of every LU.
    pub fn target_reset(&mut self, by: NexusId) {
        let nexuses: Vec<NexusId> = self.nexuses.keys().copied().collect();
        for (id, l) in self.luns.iter_mut() {
            Self::reset_one(l, &nexuses, by);
            if l.shared_pr {
                let rel = self.port.relative_port;
                self.shared_changes.push(pr::SharedChange::reset(*id, rel));
            }
        }
    }

    fn reset_one(l: &mut Lun, nexuses: &[NexusId], _by: NexusId) {
        l.reserved_by = None;
        l.prevent.clear();
        for &n in nexuses {
            l.add_ua(n, asc::BUS_DEVICE_RESET_FUNCTION);
        }
    }

    /// Install PR state the store keeps for every gateway (see
    /// [`crate::SharedState`]) on LU `id`: from now on its PERSISTENT
    /// RESERVE OUT goes to the store. A state no newer than the one held
    /// is ignored; a newer one replaces it, and the unit attentions it owes
    /// to this target's nexuses are queued. Returns whether anything
    /// changed; `false` also for a state that does not parse (which still
    /// makes PERSISTENT RESERVE OUT go to the store, and fail there).
    pub fn install_shared_pr(&mut self, id: LunId, state: &[u8]) -> bool {
        let Some(lun) = self.luns.get_mut(&id) else {
            return false;
        };
        let first = !lun.shared_pr;
        // Even a state that does not parse is the store's: PERSISTENT
        // RESERVE OUT then fails there rather than going on here alone.
        lun.shared_pr = true;
        // Each gateway is a target port group of its own.
        lun.cfg.alua = true;
        let Some(pr) = pr::PrState::decode(state) else {
            return false;
        };
        if !first && pr.seq <= lun.pr.seq {
            return false;
        }
        let rel = self.port.relative_port;
        if first {
            // What was owed before we served the LU is not ours to deliver.
            lun.pr_seen = pr.seq;
            // An SPC-2 reservation held through our port is a nexus's
            // that did not survive our restart: it goes (SPC-2 §5.5.1).
            if let Some(h) = pr.spc2.as_ref().filter(|h| h.rel == rel) {
                self.shared_changes
                    .push(pr::SharedChange::release(id, h.clone()));
            }
        }
        lun.pr = pr;
        pr::deliver_events(lun, &self.nexuses, rel);
        pr::local_spc2_holder(lun, &self.nexuses, rel);
        true
    }

    /// A copy of LU `id`'s PR state (tests).
    #[cfg(test)]
    pub(crate) fn pr_state(&self, id: LunId) -> Option<pr::PrState> {
        self.luns.get(&id).map(|l| l.pr.clone())
    }

    /// Run one command. See the crate documentation for the buffer contract.
    pub fn execute(&mut self, req: &Request<'_>, buf: &mut Vec<u8>) -> Outcome {
        let dout = std::mem::take(buf);
        let (result, format) = self.dispatch(req, &dout, buf);
        self.outcome(req, result, format, dout, buf)
    }

    /// [`execute`](LunSet::execute), also saying whether the command may
    /// have changed state that [`execute_shared`](LunSet::execute_shared)
    /// reads: a unit attention reported or cleared, or a command outside
    /// the read-only set (MODE SELECT, RESERVE, PERSISTENT RESERVE OUT,
    /// START STOP UNIT, ...). A caller keeping copies of the state for the
    /// shared path need not refresh them after the others (TEST UNIT
    /// READY, INQUIRY and media commands on the exclusive path).
    pub fn execute_tracked(&mut self, req: &Request<'_>, buf: &mut Vec<u8>) -> (Outcome, bool) {
        let before = self.pending_uas(req.nexus);
        let out = self.execute(req, buf);
        let changed = !leaves_state_alone(req.cdb) || self.pending_uas(req.nexus) != before;
        (out, changed)
    }

    /// Unit attentions waiting for a nexus, on every LU.
    fn pending_uas(&self, n: NexusId) -> usize {
        self.luns
            .values()
            .map(|l| l.ua.get(&n).map_or(0, |q| q.len()))
            .sum()
    }

    /// The common path on a shared reference, so that a target's loops
    /// need not take turns: the SBC commands (READ, WRITE, VERIFY, WRITE
    /// SAME, UNMAP, COMPARE AND WRITE, SYNCHRONIZE CACHE, READ CAPACITY,
    /// ...), which change no SCSI state, on a LU where nothing pending can
    /// change their outcome for this nexus. `None`, with `buf` untouched,
    /// when the command needs [`execute`](LunSet::execute): another kind
    /// of command, a unit attention pending for the nexus (SAM-5 §5.14),
    /// an SPC-2 reservation held by another nexus, a persistent
    /// reservation it conflicts with (SPC-4 §5.13.1), an unknown LUN,
    /// opcode or nexus. Same answers as `execute` otherwise.
    pub fn execute_shared(&self, req: &Request<'_>, buf: &mut Vec<u8>) -> Option<Outcome> {
        cdb::check_length(req.cdb).ok()?;
        let cdb = req.cdb;
        let lun = self.luns.get(&req.lun)?;
        if lun.ua.get(&req.nexus).is_some_and(|q| !q.is_empty()) {
            return None;
        }
        if lun.reserved_by.is_some_and(|h| h != req.nexus) {
            return None;
        }
        let info = opcodes::lookup(&lun.cfg, cdb[0], cdb::service_action(cdb))?;
        if !matches!(info.handler, opcodes::Handler::Sbc) {
            return None;
        }
        let initiator = self.nexuses.get(&req.nexus)?;
        if lun
            .pr
            .check_access(initiator, self.port.relative_port, cdb)
            .is_err()
        {
            return None;
        }
        let ctx = command_ctx(req, &self.port, &self.nexuses, initiator);
        let dout = std::mem::take(buf);
        let r = sbc::execute(lun, &ctx, &dout, buf);
        Some(self.outcome(req, r, lun.sense_format(), dout, buf))
    }

    /// A handler's result as the command's outcome.
    fn outcome(
        &self,
        req: &Request<'_>,
        result: HandlerResult,
        format: SenseFormat,
        dout: Vec<u8>,
        buf: &mut Vec<u8>,
    ) -> Outcome {
        match result {
            Ok(Reply::Good { wanted }) => Outcome::Done(Response {
                status: Status::Good,
                sense: Vec::new(),
                data_len: buf.len(),
                wanted,
            }),
            Ok(Reply::Conflict) => {
                buf.clear();
                Outcome::Done(Response {
                    status: Status::ReservationConflict,
                    sense: Vec::new(),
                    data_len: 0,
                    wanted: 0,
                })
            }
            Ok(Reply::Io { op, wanted }) => {
                *buf = dout;
                let lu = self.luns.get(&req.lun);
                let lock = lu.map(|l| l.io_lock.clone());
                let block = lu.map_or(512, |l| l.cfg.bs());
                let task = IoTask::new(req.lun, op, format, wanted, block, lock);
                // A write revokes the ROD tokens standing for its blocks
                // before it runs (see `odx`); with no token alive, this
                // is one atomic load (the common path allocates nothing).
                if self.tokens.any() {
                    for (lun, o, l) in task.writes() {
                        self.tokens.written(lun, &[(o, l)]);
                    }
                }
                Outcome::Io(task)
            }
            Err(sense) => {
                buf.clear();
                Outcome::Done(Response {
                    status: Status::CheckCondition,
                    sense: sense.to_bytes(format),
                    data_len: 0,
                    wanted: 0,
                })
            }
        }
    }

    fn dispatch(
        &mut self,
        req: &Request<'_>,
        dout: &[u8],
        din: &mut Vec<u8>,
    ) -> (HandlerResult, SenseFormat) {
        let default_format = self
            .luns
            .get(&req.lun)
            .map_or(SenseFormat::Fixed, |l| l.sense_format());
        if let Err(s) = cdb::check_length(req.cdb) {
            return (Err(s), default_format);
        }
        let cdb = req.cdb;
        let opcode = cdb[0];
        let anonymous;
        let initiator: &str = match self.nexuses.get(&req.nexus) {
            Some(name) => name,
            None => {
                anonymous = pr::anonymous_port_name(req.nexus);
                &anonymous
            }
        };
        let ctx = command_ctx(req, &self.port, &self.nexuses, initiator);

        if opcode == op::REPORT_LUNS {
            // SPC-4 §6.33: REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED.
            for lun in self.luns.values_mut() {
                lun.clear_ua(req.nexus, asc::REPORTED_LUNS_DATA_HAS_CHANGED);
            }
            let ids = self.ids();
            return (spc::report_luns(&ctx, &ids, din), default_format);
        }

        let Some(lun) = self.luns.get_mut(&req.lun) else {
            // SPC-4 §4.6.2 (incorrect logical unit selection).
            let r = match opcode {
                op::INQUIRY => inquiry::no_lun(&ctx, din),
                op::REQUEST_SENSE => spc::request_sense_with(
                    &ctx,
                    Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED),
                    din,
                ),
                _ => Err(Sense::illegal(asc::LOGICAL_UNIT_NOT_SUPPORTED)),
            };
            return (r, SenseFormat::Fixed);
        };
        let format = lun.sense_format();

        // SAM-5 §5.14: a pending UA preempts every command but INQUIRY,
        // REPORT LUNS and REQUEST SENSE (which reports it as its data).
        if opcode != op::INQUIRY && opcode != op::REQUEST_SENSE {
            if let Some(code) = lun.pop_ua(req.nexus) {
                return (Err(Sense::unit_attention(code)), format);
            }
        }

        // SBC-4 §4.11.2: while a SANITIZE runs, the LU answers only these.
        if !matches!(opcode, op::INQUIRY | op::REQUEST_SENSE) {
            if let Some(s) = crate::lu::sanitizing(lun) {
                return (Err(s), format);
            }
        }

        // SPC-2 §5.5.1: a reservation held by another nexus conflicts with
        // all but the commands listed there.
        if lun.reserved_by.is_some_and(|h| h != req.nexus) && conflicts_with_reservation(cdb) {
            return (Ok(Reply::Conflict), format);
        }

        // SPC-4 §5.13.1 table 46: persistent reservation conflicts.
        if lun
            .pr
            .check_access(ctx.initiator, ctx.port.relative_port, cdb)
            .is_err()
        {
            return (Ok(Reply::Conflict), format);
        }

        let Some(info) = opcodes::lookup(&lun.cfg, opcode, cdb::service_action(cdb)) else {
            // An operation code we support with a service action we do
            // not: INVALID FIELD IN CDB (SPC-4 §4.5.2.4.2), not an
            // unsupported operation code.
            if opcodes::supports_opcode(&lun.cfg, opcode) {
                return (Err(Sense::invalid_cdb(1, Some(4))), format);
            }
            return (Err(Sense::invalid_opcode()), format);
        };
        let r = match info.handler {
            opcodes::Handler::Spc => spc::execute(lun, &ctx, dout, din),
            opcodes::Handler::Inquiry => inquiry::execute(lun, &ctx, din),
            opcodes::Handler::Mode => mode::execute(lun, &ctx, dout, din),
            opcodes::Handler::Sbc => sbc::execute(lun, &ctx, dout, din),
            opcodes::Handler::Pr => pr::execute(lun, &ctx, dout, din),
            opcodes::Handler::ThirdPartyCopy => {
                let bs = lun.cfg.bs();
                match (opcode, cdb::service_action(cdb)) {
                    (op::EXTENDED_COPY, 0x00) => {
                        xcopy::extended_copy(&self.luns, &mut self.copies, &ctx, dout)
                    }
                    (op::EXTENDED_COPY, _) => odx::execute(
                        &self.luns,
                        req.lun,
                        &self.tokens,
                        &mut self.copies,
                        &ctx,
                        dout,
                    ),
                    (_, 0x07) => odx::receive_rod_token_information(&self.copies, &ctx, bs, din),
                    _ => xcopy::receive_copy_results(&self.copies, &ctx, din),
                }
            }
            opcodes::Handler::Sanitize => sanitize::execute(lun, &ctx, dout),
        };
        let r = match r {
            Ok(Reply::Good { .. }) if mode::is_select(opcode) => {
                // MODE PARAMETERS CHANGED for the other nexuses (SPC-4 §7.5.1).
                let others: Vec<NexusId> = self
                    .nexuses
                    .keys()
                    .copied()
                    .filter(|n| *n != req.nexus)
                    .collect();
                if let Some(lun) = self.luns.get_mut(&req.lun) {
                    for n in others {
                        lun.add_ua(n, asc::MODE_PARAMETERS_CHANGED);
                    }
                }
                r
            }
            other => other,
        };
        let format = self.luns.get(&req.lun).map_or(format, |l| l.sense_format());
        (r, format)
    }
}

/// What a handler sees of one command (taking the set's fields one by
/// one, so the dispatcher may still change its LUNs).
fn command_ctx<'a>(
    req: &Request<'a>,
    port: &'a TargetPort,
    names: &'a Names,
    initiator: &'a str,
) -> Ctx<'a> {
    Ctx {
        cdb: req.cdb,
        nexus: req.nexus,
        port,
        expected_len: req.expected_len,
        initiator,
        names,
    }
}

/// Commands that change no SCSI state beyond unit attentions (counted
/// separately): reads of state, and media commands, whose data is not LU
/// state. Anything not listed may change it.
fn leaves_state_alone(cdb: &[u8]) -> bool {
    matches!(
        cdb.first().copied().unwrap_or(0xff),
        op::TEST_UNIT_READY
            | op::REQUEST_SENSE
            | op::INQUIRY
            | op::MODE_SENSE_6
            | op::MODE_SENSE_10
            | op::READ_CAPACITY_10
            | op::SERVICE_ACTION_IN_16
            | op::REPORT_LUNS
            | op::MAINTENANCE_IN
            | op::PERSISTENT_RESERVE_IN
            | op::READ_6
            | op::READ_10
            | op::READ_12
            | op::READ_16
            | op::WRITE_6
            | op::WRITE_10
            | op::WRITE_12
            | op::WRITE_16
            | op::WRITE_AND_VERIFY_10
            | op::WRITE_AND_VERIFY_12
            | op::WRITE_AND_VERIFY_16
            | op::VERIFY_10
            | op::VERIFY_12
            | op::VERIFY_16
            | op::PRE_FETCH_10
            | op::PRE_FETCH_16
            | op::SYNCHRONIZE_CACHE_10
            | op::SYNCHRONIZE_CACHE_16
            | op::WRITE_SAME_10
            | op::WRITE_SAME_16
            | op::UNMAP
            | op::COMPARE_AND_WRITE
            | op::ORWRITE_16
    )
}

/// SPC-2 §5.5.1 table: commands allowed from a nexus that does not hold
/// the LU's reservation.
fn conflicts_with_reservation(cdb: &[u8]) -> bool {
    match cdb[0] {
        op::INQUIRY
        | op::REQUEST_SENSE
        | op::REPORT_LUNS
        | op::RELEASE_6
        | op::RELEASE_10
        | op::MAINTENANCE_IN => false,
        op::READ_CAPACITY_10 => false,
        op::SERVICE_ACTION_IN_16 => cdb::service_action(cdb) != crate::cdb::sa::READ_CAPACITY_16,
        op::PREVENT_ALLOW => cdb::byte(cdb, 4) & 0x03 != 0,
        _ => true,
    }
}
