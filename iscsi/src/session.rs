//! The full feature phase of one session, as a state machine without I/O
//! (quinn-proto's shape): bytes and events in, PDUs and SCSI work out.
//!
//! One machine holds a whole session because what RFC 7143 makes
//! session-wide (the CmdSN window, the task tags, task management) spans
//! its connections (MC/S); what is per connection (StatSN, transfer tags,
//! NOP timers, Text exchanges, connection allegiance of a task) lives in a
//! connection record inside it, named by a [`ConnId`].
//!
//! - In: [`receive`](Session::receive) (bytes read from a connection),
//!   [`handle_scsi_done`](Session::handle_scsi_done) (a command's result),
//!   [`handle_timeout`](Session::handle_timeout) (with the time, which the
//!   machine never reads itself).
//! - Out: [`poll_transmit`](Session::poll_transmit) (PDUs with StatSN,
//!   ExpCmdSN and MaxCmdSN stamped at the moment they are taken, so StatSN
//!   follows the wire's order, §4.2.2.2), [`poll_scsi`](Session::poll_scsi)
//!   (commands ready to execute, in CmdSN order), [`poll_timeout`],
//!   [`poll_wake`](Session::poll_wake) (connections with something new to
//!   send).
//!
//! Steady state allocates nothing: tasks live in a slab indexed by
//! [`Token`] and keep their buffers' capacity, command and data buffers
//! come from the session's own pool, and a read's Data-In PDUs point into
//! its task's buffer until the driver has written them and hands them back
//! with [`release`](Session::release).
//!
//! [`poll_timeout`]: Session::poll_timeout

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::datain::{self, Transfer};
use crate::discovery::{TargetEntry, TextExchange, TextHost, TextStep};
use crate::params::SessionParams;
use crate::pdu::{self, Bhs, Digests, Itt, Opcode, Pdu, PduError, RejectReason, Ttt};
use crate::pdu::{BHS_LEN, RESERVED_TAG};
use crate::serial::{CmdSn, StatSn};
use crate::transfer::{BurstLimits, TransferError, WriteTransfer};
use crate::window::{CmdWindow, Unreceived};

/// SCSI status values the session itself answers with (SAM-5 §5.3.1).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Largest buffer the pool keeps (a bigger one is freed: rare and large).
const MAX_POOLED_CAPACITY: usize = 1 << 20;
/// Most buffers the pool keeps idle.
const MAX_IDLE: usize = 256;
/// Most bytes of capacity the pool keeps idle: a session that once had
/// 128 reads of 1 MiB in flight keeps 16 of those buffers, not all (the
/// pool lives as long as its session), while 256 small ones fit.
const MAX_IDLE_BYTES: usize = 16 << 20;

/// Values negotiated for the whole session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// First CmdSN expected after login.
    pub exp_cmd_sn: CmdSn,
    /// Commands in flight at once (tgt's MaxQueueCmd): the window's width.
    pub queue_depth: u32,
    pub time2wait: u16,
    pub time2retain: u16,
    /// Largest ExpectedDataTransferLength accepted; longer commands get
    /// CHECK CONDITION before anything is allocated.
    pub max_transfer: u32,
    /// Most bytes of write commands collecting Data-Out on one connection;
    /// past it a new write gets TASK SET FULL unless it is the only one.
    pub write_budget: u64,
    /// A discovery session (RFC 7143 §4.3): only Text, NOP-Out and Logout
    /// belong in it; anything else is a protocol error.
    pub discovery: bool,
}

/// Values negotiated for one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    pub cid: u16,
    pub digests: Digests,
    /// Largest data segment we accept (our MaxRecvDataSegmentLength).
    pub max_recv: u32,
    /// Largest data segment we may send (the initiator's).
    pub max_xmit: u32,
    pub limits: BurstLimits,
    /// StatSN of the first response on this connection.
    pub stat_sn: StatSn,
    /// Silence before a NOP-In ping (RFC 7143 §11.19); zero: never ping.
    pub nop_interval: Duration,
    /// Unanswered pings before the connection is dropped; 0: never.
    pub nop_count: u32,
}

/// One connection of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(u32);

/// One task, as handed to SCSI and back: a slab slot and its generation, so
/// a late completion of an aborted task can never touch its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    slot: u32,
    gen: u32,
}

/// Why a connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The peer broke the protocol (a Reject may be queued: send it first).
    Protocol(&'static str),
    /// The connection is no longer part of the session.
    Gone,
}

/// A reset task management asks beyond this session (SAM-5 §7.6, §7.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// LOGICAL UNIT RESET: every nexus's tasks on this LUN, and its state.
    Lun(u64),
    /// TARGET WARM RESET: every task and every LUN.
    Target,
    /// TARGET COLD RESET: a warm reset, and then every connection of
    /// every session of the target ends (RFC 7143 §11.5.1); this
    /// session's own end after the response is sent.
    TargetCold,
}

/// What the session asks of the target around it.
pub trait SessionHost {
    /// Whether this LUN exists (task management answers 2 if not).
    fn lun_exists(&mut self, lun: u64) -> bool;
    /// The targets a Text `SendTargets` may list (this one).
    fn targets(&mut self) -> Vec<TargetEntry>;
    /// Abort other sessions' tasks and reset SCSI state; this session's
    /// own tasks are already aborted.
    fn reset(&mut self, what: Reset);
}

/// A data segment to send.
#[derive(Debug)]
pub enum Payload {
    None,
    /// Bytes owned by the PDU (responses, sense, Text, echoed pings).
    Owned(Vec<u8>),
    /// A range of a task's buffer: Data-In, sent without a copy.
    Task(Token, Range<usize>),
}

/// A PDU ready for the wire: header stamped, data segment by reference.
/// Hand it back with [`Session::release`] once written (or abandoned).
#[derive(Debug)]
pub struct Transmit {
    pub bhs: Bhs,
    pub data: Payload,
}

/// A SCSI command ready to execute, with its buffer (Data-Out received,
/// or empty for the read data).
#[derive(Debug)]
pub struct ScsiCmd<'a> {
    pub token: Token,
    pub conn: ConnId,
    /// The addressed LUN, decoded ([`pdu::decode_lun`]).
    pub lun: u64,
    pub cdb: &'a [u8],
    pub edtl: u32,
    pub read: bool,
    pub write: bool,
}

/// What a finished command moved, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    pub conn: ConnId,
    pub read: u64,
    pub written: u64,
    pub ok: bool,
}

/// How a queued PDU treats StatSN (RFC 7143 §11.7.4, §11.8.3, §11.19.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// Carries StatSN and consumes it (responses).
    Advance,
    /// Carries the next StatSN without consuming it (R2T, our ping,
    /// Data-In without status).
    Peek,
}

/// A request waiting for its turn in CmdSN order, with the connection it
/// arrived on (connection allegiance, §5.1). Named by id, not held: a
/// command waiting behind a gap keeps nothing of its connection alive.
#[derive(Debug)]
struct Queued {
    conn: ConnId,
    bhs: Bhs,
    ahs: Vec<u8>,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// A write collecting Data-Out.
    Collecting,
    /// Waiting for [`Session::poll_scsi`].
    Ready,
    /// Out at SCSI; `aborted` says whether its result still matters.
    Executing,
    /// Answered; this many Data-In PDUs still point into its buffer.
    Sending(u32),
}

#[derive(Debug)]
struct Task {
    gen: u32,
    state: State,
    aborted: bool,
    conn: ConnId,
    itt: Itt,
    lun: u64,
    lun_raw: u64,
    cdb: Vec<u8>,
    edtl: u32,
    read: bool,
    write: bool,
    buf: Vec<u8>,
    xfer: Option<WriteTransfer>,
}

impl Task {
    fn empty() -> Task {
        Task {
            gen: 0,
            state: State::Free,
            aborted: false,
            conn: ConnId(0),
            itt: Itt(RESERVED_TAG),
            lun: 0,
            lun_raw: 0,
            cdb: Vec::new(),
            edtl: 0,
            read: false,
            write: false,
            buf: Vec::new(),
            xfer: None,
        }
    }

    /// Still a task of the session (its tag may not be reused).
    fn active(&self) -> bool {
        match self.state {
            State::Collecting | State::Ready => true,
            State::Executing => !self.aborted,
            State::Free | State::Sending(_) => false,
        }
    }
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    cfg: ConnConfig,
    stat_sn: StatSn,
    tx: VecDeque<(Bhs, Payload, Stamp)>,
    /// Logged out or asked to close: send what is queued, then close.
    closing: bool,
    /// Something new to send since the driver last looked.
    wake: bool,
    next_ttt: u32,
    nop_deadline: Option<Instant>,
    /// Asked to log out (AsyncEvent 1): closed at this instant unless the
    /// initiator has logged out by then.
    logout_deadline: Option<Instant>,
    nop_missed: u32,
    rx_activity: bool,
    text: TextExchange,
    /// Bytes (ExpectedDataTransferLength) of writes collecting Data-Out.
    writes_pending: u64,
    /// Bytes queued in `tx` (headers and data): what the peer has not
    /// taken yet, for the driver's backpressure.
    tx_bytes: u64,
    /// A login with the same CID took this connection's place: it is
    /// closing, and its end must not touch what now belongs to the new one.
    replaced: bool,
}

/// A PDU's data segment: in the receive buffer, or already in a buffer
/// of its own (read there directly by the driver).
enum Data<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

/// The text host a normal session's Text exchange sees.
struct Targets<'a>(&'a mut dyn SessionHost);

impl TextHost for Targets<'_> {
    fn targets(&mut self) -> Vec<TargetEntry> {
        self.0.targets()
    }
}

/// Fixed-format sense data for errors the transport itself raises
/// (SPC-4 §4.5.3).
pub fn transport_sense(key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    let mut s = [0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// ILLEGAL REQUEST, INVALID FIELD IN CDB.
const INVALID_FIELD: [u8; 3] = [0x05, 0x24, 0x00];
/// ABORTED COMMAND, DATA PHASE ERROR.
const DATA_PHASE_ERROR: [u8; 3] = [0x0b, 0x4b, 0x00];

/// The full feature phase of one session (see the module documentation).
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    window: CmdWindow<Queued>,
    /// Requests the window released, not yet dispatched (reused).
    ready: VecDeque<Queued>,
    tasks: Vec<Task>,
    free: Vec<u32>,
    /// Active tasks by Initiator Task Tag.
    by_itt: HashMap<u32, u32>,
    /// Tasks ready for SCSI, in the order they became ready.
    scsi_q: VecDeque<Token>,
    conns: Vec<Conn>,
    next_conn: u32,
    pool: Vec<Vec<u8>>,
    /// Capacity of the buffers in `pool`.
    pool_bytes: usize,
    /// PDUs taken from the wire, all connections (the driver's measure of
    /// how deep the initiator's queue is).
    received: u64,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            window: CmdWindow::new(cfg.exp_cmd_sn, cfg.queue_depth),
            cfg,
            ready: VecDeque::new(),
            tasks: Vec::new(),
            free: Vec::new(),
            by_itt: HashMap::new(),
            scsi_q: VecDeque::new(),
            conns: Vec::new(),
            next_conn: 1,
            pool: Vec::new(),
            pool_bytes: 0,
            received: 0,
        }
    }

    /// Add a logged-in connection. A connection already using its CID is
    /// replaced (RFC 7143 §6.3.4: its tasks end) and returned, so the
    /// driver can close its socket.
    pub fn add_conn(
        &mut self,
        cfg: ConnConfig,
        negotiated: &SessionParams,
        now: Instant,
    ) -> (ConnId, Option<ConnId>) {
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1).max(1);
        let old = self
            .conns
            .iter()
            .find(|c| c.cfg.cid == cfg.cid && !c.replaced)
            .map(|c| c.id);
        self.conns.push(Conn {
            id,
            cfg,
            stat_sn: cfg.stat_sn,
            tx: VecDeque::new(),
            closing: false,
            wake: false,
            next_ttt: 1,
            nop_deadline: (!cfg.nop_interval.is_zero()).then(|| now + cfg.nop_interval),
            logout_deadline: None,
            nop_missed: 0,
            rx_activity: true,
            text: TextExchange::new(negotiated),
            writes_pending: 0,
            tx_bytes: 0,
            replaced: false,
        });
        if let Some(old) = old.and_then(|o| self.conn_index(o)) {
            // Its driver ends it (and may still hold PDUs pointing into
            // its tasks): mark it, and let that driver call `remove_conn`.
            let c = &mut self.conns[old];
            c.closing = true;
            c.replaced = true;
            c.wake = true;
        }
        (id, old)
    }

    fn conn_index(&self, c: ConnId) -> Option<usize> {
        self.conns.iter().position(|x| x.id == c)
    }

    /// Bytes of PDUs queued for the connection and not yet taken with
    /// [`poll_transmit`](Session::poll_transmit): the driver stops reading
    /// from a peer that does not read what it is sent.
    pub fn tx_bytes(&self, c: ConnId) -> u64 {
        self.conn_index(c).map_or(0, |i| self.conns[i].tx_bytes)
    }

    /// Connections in the session.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Commands delivered and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.window.in_flight()
    }

    /// PDUs received so far on all connections.
    pub fn pdus_received(&self) -> u64 {
        self.received
    }

    /// Commands held behind a CmdSN gap.
    pub fn held(&self) -> usize {
        self.window.held()
    }

    /// Tasks the session is tracking (active, at SCSI, or with Data-In
    /// not yet written).
    pub fn tasks_live(&self) -> usize {
        self.tasks.iter().filter(|t| t.state != State::Free).count()
    }

    /// ExpCmdSN and MaxCmdSN as the next PDU would carry them.
    pub fn window_numbers(&mut self) -> (CmdSn, CmdSn) {
        (self.window.exp_cmd_sn(), self.window.max_cmd_sn())
    }

    // ---------------------------------------------------------------- pool

    fn take_buf(&mut self) -> Vec<u8> {
        let b = self.pool.pop().unwrap_or_default();
        self.pool_bytes -= b.capacity();
        b
    }

    /// Keep a buffer for a later command (the driver gives back the ones
    /// it got from [`poll_scsi`](Session::poll_scsi) through
    /// [`handle_scsi_done`](Session::handle_scsi_done)).
    pub fn give_buf(&mut self, mut b: Vec<u8>) {
        let cap = b.capacity();
        if cap > 0
            && cap <= MAX_POOLED_CAPACITY
            && self.pool.len() < MAX_IDLE
            && self.pool_bytes + cap <= MAX_IDLE_BYTES
        {
            b.clear();
            self.pool_bytes += cap;
            self.pool.push(b);
        }
    }

    // ---------------------------------------------------------------- input

    /// Take the whole PDUs at the front of `buf`, read from connection `c`;
    /// returns how many bytes they used (a partial PDU stays for later).
    /// `Err` ends the connection: send what is queued, then close it.
    pub fn receive(
        &mut self,
        c: ConnId,
        buf: &[u8],
        host: &mut dyn SessionHost,
    ) -> Result<usize, Close> {
        let ci = self.conn_index(c).ok_or(Close::Gone)?;
        let (dg, max_recv) = (self.conns[ci].cfg.digests, self.conns[ci].cfg.max_recv);
        let mut at = 0;
        while !self.conns[ci].closing {
            match pdu::decode_view(&buf[at..], dg, max_recv as usize) {
                Ok(Some((v, n))) => {
                    let frame = &buf[at..at + n];
                    at += n;
                    self.conns[ci].rx_activity = true;
                    self.received += 1;
                    let data = Data::Borrowed(&frame[v.data.clone()]);
                    self.handle_pdu(ci, v.bhs, &frame[v.ahs.clone()], data, host)?;
                }
                Ok(None) => break,
                Err(PduError::DataDigest) => {
                    // RFC 7143 §7.8: discard the PDU and answer Reject; at
                    // ERL0 the initiator then recovers at session level.
                    let bhs = Bhs(buf[at..at + BHS_LEN].try_into().unwrap());
                    at += pdu::frame_len(&bhs, dg, max_recv as usize).unwrap_or(buf.len() - at);
                    self.reject(ci, RejectReason::DataDigestError, &bhs);
                }
                Err(e) => {
                    if buf.len() - at >= BHS_LEN && e != PduError::HeaderDigest {
                        let bhs = Bhs(buf[at..at + BHS_LEN].try_into().unwrap());
                        self.reject(ci, RejectReason::ProtocolError, &bhs);
                    }
                    return Err(Close::Protocol("undecodable PDU"));
                }
            }
        }
        Ok(at)
    }

    /// Take one PDU whose data segment the driver read straight into
    /// `data` (a buffer from [`buffer`](Session::buffer), exactly the
    /// segment: no padding, digest already checked), so a large write's
    /// data is never copied in user space. `header` holds the BHS and AHS.
    pub fn receive_pdu(
        &mut self,
        c: ConnId,
        header: &[u8],
        data: Vec<u8>,
        host: &mut dyn SessionHost,
    ) -> Result<(), Close> {
        let ci = self.conn_index(c).ok_or(Close::Gone)?;
        if self.conns[ci].closing || header.len() < BHS_LEN {
            self.give_buf(data);
            return Ok(());
        }
        let bhs = Bhs(header[..BHS_LEN].try_into().unwrap());
        let ahs_end = (BHS_LEN + bhs.ahs_len()).min(header.len());
        self.conns[ci].rx_activity = true;
        self.received += 1;
        self.handle_pdu(ci, bhs, &header[BHS_LEN..ahs_end], Data::Owned(data), host)
    }

    /// A PDU the driver read straight into a buffer failed its data
    /// digest: discard it and answer Reject (RFC 7143 §7.8).
    pub fn data_digest_error(&mut self, c: ConnId, header: &[u8], data: Vec<u8>) {
        self.give_buf(data);
        if header.len() < BHS_LEN {
            return;
        }
        let bhs = Bhs(header[..BHS_LEN].try_into().unwrap());
        if let Some(ci) = self.conn_index(c) {
            self.reject(ci, RejectReason::DataDigestError, &bhs);
        }
    }

    /// An empty buffer from the session's pool (for [`receive_pdu`]).
    ///
    /// [`receive_pdu`]: Session::receive_pdu
    pub fn buffer(&mut self) -> Vec<u8> {
        self.take_buf()
    }

    fn handle_pdu(
        &mut self,
        ci: usize,
        bhs: Bhs,
        ahs: &[u8],
        data: Data<'_>,
        host: &mut dyn SessionHost,
    ) -> Result<(), Close> {
        let Some(op) = bhs.opcode() else {
            self.reject(ci, RejectReason::CommandNotSupported, &bhs);
            self.give_data(data);
            return Ok(());
        };
        if self.cfg.discovery
            && !matches!(
                op,
                Opcode::TextRequest | Opcode::NopOut | Opcode::LogoutRequest
            )
        {
            self.reject(ci, RejectReason::ProtocolError, &bhs);
            self.give_data(data);
            return Err(Close::Protocol("not allowed in a discovery session"));
        }
        match op {
            // Data-Out goes from the receive buffer straight into its
            // command's buffer: one copy, no allocation.
            Opcode::DataOut => {
                match data {
                    Data::Borrowed(d) => self.data_out(ci, &bhs, d),
                    Data::Owned(d) => {
                        self.data_out(ci, &bhs, &d);
                        self.give_buf(d);
                    }
                }
                Ok(())
            }
            Opcode::NopOut if bhs.itt().0 == RESERVED_TAG => {
                // An answer to our ping (TTT ours, I bit set): nothing to send.
                self.conns[ci].nop_missed = 0;
                self.give_data(data);
                Ok(())
            }
            Opcode::ScsiCommand
                if bhs.immediate() && self.window.in_flight() >= self.cfg.queue_depth =>
            {
                // Immediate delivery skips CmdSN order, not the queue's
                // depth: past it the target may refuse them (RFC 7143
                // §3.2.2.1, Reject reason 0x06). Task management, pings,
                // Text and Logout answer at once and are always taken.
                self.reject(ci, RejectReason::ImmediateCommandReject, &bhs);
                self.give_data(data);
                Ok(())
            }
            Opcode::ScsiCommand
            | Opcode::TaskMgmtRequest
            | Opcode::TextRequest
            | Opcode::LogoutRequest
            | Opcode::NopOut => {
                let data = match data {
                    Data::Owned(d) => d,
                    Data::Borrowed([]) => Vec::new(),
                    Data::Borrowed(d) => {
                        let mut b = self.take_buf();
                        b.extend_from_slice(d);
                        b
                    }
                };
                let q = Queued {
                    conn: self.conns[ci].id,
                    bhs,
                    ahs: ahs.to_vec(),
                    data,
                };
                // Outside the window it is ignored (RFC 7143 §4.2.2.1).
                self.window
                    .admit_into(bhs.cmd_sn(), bhs.immediate(), q, &mut self.ready);
                self.run_ready(host);
                Ok(())
            }
            Opcode::Snack => {
                // SNACK needs ErrorRecoveryLevel > 0 (RFC 7143 §11.16).
                self.reject(ci, RejectReason::CommandNotSupported, &bhs);
                self.give_data(data);
                Ok(())
            }
            Opcode::LoginRequest => {
                self.reject(ci, RejectReason::ProtocolError, &bhs);
                self.give_data(data);
                Err(Close::Protocol("login request in full feature phase"))
            }
            _ => {
                self.reject(ci, RejectReason::ProtocolError, &bhs);
                self.give_data(data);
                Err(Close::Protocol("target opcode from initiator"))
            }
        }
    }

    fn give_data(&mut self, d: Data<'_>) {
        if let Data::Owned(v) = d {
            self.give_buf(v);
        }
    }

    /// Dispatch what the window released, in CmdSN order (a TMF that
    /// fills a gap releases more, which this loop also runs).
    fn run_ready(&mut self, host: &mut dyn SessionHost) {
        while let Some(q) = self.ready.pop_front() {
            let ci = match self.conn_index(q.conn) {
                Some(ci) if !self.conns[ci].closing => ci,
                _ => {
                    // Its connection is gone: the CmdSN is used, nothing runs.
                    self.window.complete();
                    self.give_buf(q.data);
                    continue;
                }
            };
            match q.bhs.opcode() {
                Some(Opcode::ScsiCommand) => self.scsi_command(ci, q),
                Some(Opcode::NopOut) => {
                    // Echo the ping's data (RFC 7143 §11.18.5).
                    let mut data = q.data;
                    data.truncate(self.conns[ci].cfg.max_xmit as usize);
                    self.window.complete();
                    let p =
                        pdu::nop_in(q.bhs.itt(), Ttt(RESERVED_TAG), q.bhs.lun_raw(), Vec::new());
                    self.queue(ci, p.bhs, Payload::Owned(data), Stamp::Advance);
                }
                Some(Opcode::TaskMgmtRequest) => {
                    self.give_buf(q.data);
                    self.task_mgmt(ci, &q.bhs, host);
                }
                Some(Opcode::TextRequest) => self.text(ci, q, host),
                Some(Opcode::LogoutRequest) => {
                    self.give_buf(q.data);
                    self.logout(ci, &q.bhs);
                }
                _ => {
                    self.window.complete();
                    self.give_buf(q.data);
                }
            }
        }
    }

    // ---------------------------------------------------------------- tasks

    fn alloc_task(&mut self) -> usize {
        if let Some(s) = self.free.pop() {
            return s as usize;
        }
        self.tasks.push(Task::empty());
        self.tasks.len() - 1
    }

    fn token(&self, slot: usize) -> Token {
        Token {
            slot: slot as u32,
            gen: self.tasks[slot].gen,
        }
    }

    fn slot_of(&self, t: Token) -> Option<usize> {
        let s = t.slot as usize;
        (self.tasks.get(s)?.gen == t.gen).then_some(s)
    }

    fn free_task(&mut self, slot: usize) {
        let buf = std::mem::take(&mut self.tasks[slot].buf);
        self.give_buf(buf);
        let t = &mut self.tasks[slot];
        t.gen = t.gen.wrapping_add(1);
        t.state = State::Free;
        t.aborted = false;
        self.free.push(slot as u32);
    }

    /// A write stops collecting Data-Out: its bytes leave the budget.
    fn leave_collecting(&mut self, slot: usize) {
        let (conn, edtl) = (self.tasks[slot].conn, self.tasks[slot].edtl as u64);
        if let Some(ci) = self.conn_index(conn) {
            let c = &mut self.conns[ci];
            c.writes_pending = c.writes_pending.saturating_sub(edtl);
        }
    }

    fn unmap_itt(&mut self, slot: usize) {
        let itt = self.tasks[slot].itt.0;
        if self.by_itt.get(&itt) == Some(&(slot as u32)) {
            self.by_itt.remove(&itt);
        }
    }

    fn scsi_command(&mut self, ci: usize, q: Queued) {
        let b = q.bhs;
        if self.by_itt.contains_key(&b.itt().0) {
            // RFC 7143 §11.17.1: a new command may not take the tag of a
            // task still in progress. The first task goes on; this one's
            // CmdSN is used and its slot given back at once.
            self.reject(ci, RejectReason::TaskInProgress, &b);
            self.window.complete();
            self.give_buf(q.data);
            return;
        }
        let slot = self.alloc_task();
        let conn = self.conns[ci].id;
        let t = &mut self.tasks[slot];
        t.state = State::Ready;
        t.aborted = false;
        t.conn = conn;
        t.itt = b.itt();
        t.lun_raw = b.lun_raw();
        t.lun = pdu::decode_lun(b.lun_raw());
        t.edtl = b.expected_data_len();
        t.read = b.cmd_read();
        t.write = b.cmd_write();
        t.cdb.clear();
        t.cdb.extend_from_slice(b.cdb());
        // Extended CDB AHS (type 1, RFC 7143 §11.2.2.3) carries bytes 16..
        // of a long CDB.
        let mut ahs = &q.ahs[..];
        while ahs.len() >= 4 {
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            if ahs.len() < 3 + len {
                break;
            }
            if ahs[2] == 1 && len > 1 {
                t.cdb.extend_from_slice(&ahs[4..3 + len]);
            }
            ahs = &ahs[((3 + len + 3) & !3).min(ahs.len())..];
        }
        let (edtl, read, write) = (t.edtl, t.read, t.write);
        if read && write {
            // No LU type here takes bidirectional commands.
            self.give_buf(q.data);
            self.answer_check(slot, INVALID_FIELD);
            return;
        }
        if edtl > self.cfg.max_transfer {
            // Refused before allocating; Data-Out that follows finds no
            // task and is ignored.
            self.give_buf(q.data);
            self.answer_check(slot, INVALID_FIELD);
            return;
        }
        if !write {
            if !q.data.is_empty() {
                self.give_buf(q.data);
                self.reject(ci, RejectReason::ProtocolError, &b);
                self.window.complete();
                self.free_task(slot);
                return;
            }
            self.tasks[slot].buf = self.take_buf();
            self.by_itt.insert(b.itt().0, slot as u32);
            let tok = self.token(slot);
            self.scsi_q.push_back(tok);
            return;
        }
        let imm = q.data.len() as u32;
        let limits = self.conns[ci].cfg.limits;
        let t = &mut self.tasks[slot];
        let started = if let Some(x) = t.xfer.as_mut() {
            x.restart(edtl, imm, b.final_bit(), limits)
        } else {
            WriteTransfer::new(edtl, imm, b.final_bit(), limits).map(|x| t.xfer = Some(x))
        };
        if imm > edtl || started.is_err() {
            self.give_buf(q.data);
            self.reject(ci, RejectReason::ProtocolError, &b);
            self.window.complete();
            self.free_task(slot);
            return;
        }
        // Bound the memory one connection can pin in half-received writes:
        // past the budget a new write waits its turn (SAM-5 TASK SET FULL,
        // the initiator retries), unless it is the only one.
        let pending = self.conns[ci].writes_pending;
        if pending > 0 && pending + edtl as u64 > self.cfg.write_budget {
            self.give_buf(q.data);
            self.answer(slot, status::TASK_SET_FULL, &[], 0, 0, Vec::new());
            return;
        }
        // The immediate data is the start of the command's buffer;
        // Data-Out appends the rest.
        let mut buf = q.data;
        if buf.capacity() == 0 {
            buf = self.take_buf();
        }
        buf.reserve(edtl as usize - buf.len());
        self.by_itt.insert(b.itt().0, slot as u32);
        let t = &mut self.tasks[slot];
        t.buf = buf;
        if t.xfer.as_ref().is_some_and(|x| x.complete()) {
            let tok = self.token(slot);
            self.scsi_q.push_back(tok);
            return;
        }
        t.state = State::Collecting;
        self.conns[ci].writes_pending += edtl as u64;
        self.send_r2ts(ci, slot);
    }

    fn send_r2ts(&mut self, ci: usize, slot: usize) {
        let t = &mut self.tasks[slot];
        let (itt, lun_raw) = (t.itt, t.lun_raw);
        let Some(x) = t.xfer.as_mut() else { return };
        let c = &mut self.conns[ci];
        let next_ttt = &mut c.next_ttt;
        let tx = &mut c.tx;
        let tx_bytes = &mut c.tx_bytes;
        x.each_r2t(
            || {
                let t = *next_ttt;
                *next_ttt = if t.wrapping_add(1) == RESERVED_TAG {
                    1
                } else {
                    t.wrapping_add(1)
                };
                Ttt(t)
            },
            |r| {
                let p = pdu::r2t(itt, lun_raw, r.ttt, r.r2t_sn, r.offset, r.len);
                *tx_bytes += BHS_LEN as u64;
                tx.push_back((p.bhs, Payload::None, Stamp::Peek));
            },
        );
        c.wake = true;
    }

    fn data_out(&mut self, ci: usize, bhs: &Bhs, data: &[u8]) {
        let itt = bhs.itt().0;
        let Some(&slot) = self.by_itt.get(&itt) else {
            // Data for a command already answered (refused up front, failed
            // on bad Data-Out, or aborted): RFC 7143 §11.7 lets the target
            // discard it.
            return;
        };
        let slot = slot as usize;
        let conn = self.conns[ci].id;
        let t = &mut self.tasks[slot];
        if t.state != State::Collecting || t.conn != conn {
            return;
        }
        let (offset, len) = (bhs.buffer_offset(), data.len() as u32);
        let Some(x) = t.xfer.as_mut() else { return };
        if let Err(e) = x.on_data_out(bhs.ttt(), bhs.data_sn(), offset, len, bhs.final_bit()) {
            // A Data-Out out of sequence or outside what was solicited ends
            // the command, not the connection: CHECK CONDITION, ABORTED
            // COMMAND / DATA PHASE ERROR, and its bytes never reach the
            // buffer (an unknown TTT is the initiator's bookkeeping error
            // and gets a Reject too).
            if e == TransferError::UnknownTtt {
                self.reject(ci, RejectReason::InvalidPduField, bhs);
            }
            self.leave_collecting(slot);
            self.answer_check(slot, DATA_PHASE_ERROR);
            return;
        }
        let complete = x.complete();
        // Data arrives in offset order (DataPDUInOrder = Yes), so the
        // buffer mostly just grows; a gap is zero-filled.
        let (off, end) = (offset as usize, (offset + len) as usize);
        if off == t.buf.len() {
            t.buf.extend_from_slice(data);
        } else {
            if t.buf.len() < end {
                t.buf.resize(end, 0);
            }
            t.buf[off..end].copy_from_slice(data);
        }
        if complete {
            let edtl = t.edtl as usize;
            t.buf.resize(edtl, 0);
            t.state = State::Ready;
            self.leave_collecting(slot);
            let tok = self.token(slot);
            self.scsi_q.push_back(tok);
        } else {
            self.send_r2ts(ci, slot);
        }
    }

    /// The next command to execute, with its buffer (Data-Out for a
    /// write; empty, to be filled, for a read). Give the buffer back with
    /// [`handle_scsi_done`](Session::handle_scsi_done).
    pub fn poll_scsi(&mut self) -> Option<(ScsiCmd<'_>, Vec<u8>)> {
        let slot = loop {
            let tok = self.scsi_q.pop_front()?;
            if let Some(s) = self.slot_of(tok) {
                if self.tasks[s].state == State::Ready {
                    break s;
                }
            }
        };
        let token = self.token(slot);
        let t = &mut self.tasks[slot];
        t.state = State::Executing;
        let buf = std::mem::take(&mut t.buf);
        Some((
            ScsiCmd {
                token,
                conn: t.conn,
                lun: t.lun,
                cdb: &t.cdb,
                edtl: t.edtl,
                read: t.read,
                write: t.write,
            },
            buf,
        ))
    }

    /// A command from [`poll_scsi`](Session::poll_scsi) finished with this
    /// status and sense; for a read, `data_len` bytes of `buf` are its data
    /// and `wanted` is what the command asked for (residuals, RFC 7143
    /// §11.4.5). `None` if the task was aborted meanwhile: nothing is sent.
    pub fn handle_scsi_done(
        &mut self,
        token: Token,
        status: u8,
        sense: &[u8],
        data_len: usize,
        wanted: u64,
        buf: Vec<u8>,
    ) -> Option<Accounting> {
        let Some(slot) = self
            .slot_of(token)
            .filter(|&s| self.tasks[s].state == State::Executing)
        else {
            self.give_buf(buf);
            return None;
        };
        if self.tasks[slot].aborted {
            self.give_buf(buf);
            self.free_task(slot);
            return None;
        }
        Some(self.answer(slot, status, sense, data_len, wanted, buf))
    }

    fn answer_check(&mut self, slot: usize, s: [u8; 3]) {
        let sense = transport_sense(s[0], s[1], s[2]);
        self.answer(slot, status::CHECK_CONDITION, &sense, 0, 0, Vec::new());
    }

    /// Queue a task's answer: Data-In (status in the last PDU when there
    /// is no sense, §11.7.3) and/or a SCSI Response, with residuals.
    fn answer(
        &mut self,
        slot: usize,
        status: u8,
        sense: &[u8],
        data_len: usize,
        wanted: u64,
        buf: Vec<u8>,
    ) -> Accounting {
        self.window.complete();
        self.unmap_itt(slot);
        let t = &self.tasks[slot];
        let ok = matches!(status, status::GOOD | status::CONDITION_MET);
        let sent = if t.read && ok {
            data_len.min(t.edtl as usize).min(buf.len())
        } else {
            0
        };
        let acct = Accounting {
            conn: t.conn,
            read: sent as u64,
            written: if t.write { t.edtl as u64 } else { 0 },
            ok,
        };
        let residual = datain::residual(Transfer {
            edtl: t.edtl,
            read: t.read,
            sent: sent as u32,
            wanted,
        });
        let (itt, lun_raw) = (t.itt, t.lun_raw);
        let Some(ci) = self.conn_index(t.conn) else {
            self.give_buf(buf);
            self.free_task(slot);
            return acct;
        };
        let response = |me: &mut Session| {
            let p = pdu::scsi_response(itt, status, residual, sense);
            me.queue(ci, p.bhs, Payload::Owned(p.data), Stamp::Advance);
        };
        if sent == 0 {
            self.give_buf(buf);
            self.free_task(slot);
            response(self);
            return acct;
        }
        self.tasks[slot].buf = buf;
        let token = self.token(slot);
        let c = &self.conns[ci].cfg;
        let collapse = sense.is_empty();
        let mut n = 0;
        for d in datain::data_in(
            itt,
            lun_raw,
            sent,
            c.max_xmit,
            c.limits.max_burst,
            collapse.then_some((status, residual)),
        ) {
            let stamp = if d.has_status {
                Stamp::Advance
            } else {
                Stamp::Peek
            };
            self.queue(ci, d.bhs, Payload::Task(token, d.data), stamp);
            n += 1;
        }
        self.tasks[slot].state = State::Sending(n);
        if !collapse {
            response(self);
        }
        acct
    }

    // ------------------------------------------------------- task management

    /// Task management (RFC 7143 §11.5). Responses: 0 complete, 1 task does
    /// not exist, 2 LUN does not exist, 5 not supported.
    fn task_mgmt(&mut self, ci: usize, b: &Bhs, host: &mut dyn SessionHost) {
        let lun = pdu::decode_lun(b.lun_raw());
        let response = match b.tmf_function() {
            1 => {
                // ABORT TASK
                let r = b.tmf_referenced_task();
                let ref_sn = b.tmf_ref_cmd_sn();
                if self.abort_itt(r.0) {
                    0
                } else if ref_sn.lt(b.cmd_sn()) && self.abort_unreceived(ref_sn, r) {
                    // Never received (or still waiting behind a gap): its
                    // CmdSN now counts as received, and the abort is
                    // complete (§11.5.1).
                    0
                } else {
                    1
                }
            }
            // ABORT TASK SET / CLEAR TASK SET: this nexus's tasks on the LUN.
            2 | 3 if !host.lun_exists(lun) => 2,
            2 | 3 => {
                self.abort_lun(Some(lun));
                0
            }
            // LOGICAL UNIT RESET: every nexus's tasks on the LUN.
            5 if !host.lun_exists(lun) => 2,
            5 => {
                self.abort_lun(Some(lun));
                host.reset(Reset::Lun(lun));
                0
            }
            6 => {
                // TARGET WARM RESET
                self.abort_lun(None);
                host.reset(Reset::Target);
                0
            }
            7 => {
                // TARGET COLD RESET
                self.abort_lun(None);
                host.reset(Reset::TargetCold);
                0
            }
            _ => 5,
        };
        self.window.complete();
        let p = pdu::tmf_response(b.itt(), response);
        self.queue(ci, p.bhs, Payload::None, Stamp::Advance);
        if b.tmf_function() == 7 {
            // The response goes out first, then the connections close
            // (§11.5.1: "MUST send the response before closing").
            self.close_all();
        }
    }

    fn abort_slot(&mut self, slot: usize) {
        self.unmap_itt(slot);
        match self.tasks[slot].state {
            State::Collecting => {
                self.leave_collecting(slot);
                self.window.complete();
                self.free_task(slot);
            }
            State::Ready => {
                self.window.complete();
                self.free_task(slot);
            }
            State::Executing if !self.tasks[slot].aborted => {
                // SCSI still has its buffer: the slot waits for the
                // completion, which then sends nothing.
                self.tasks[slot].aborted = true;
                self.window.complete();
            }
            _ => {}
        }
    }

    /// Abort one task of the session; true if it was active.
    fn abort_itt(&mut self, itt: u32) -> bool {
        match self.by_itt.get(&itt) {
            Some(&s) => {
                self.abort_slot(s as usize);
                true
            }
            None => false,
        }
    }

    /// Abort the session's tasks on one LUN (every LUN with `None`): a
    /// reset here or on another session, or a LUN removed.
    pub fn abort_lun(&mut self, lun: Option<u64>) {
        for s in 0..self.tasks.len() {
            if self.tasks[s].active() && lun.is_none_or(|l| l == self.tasks[s].lun) {
                self.abort_slot(s);
            }
        }
    }

    /// ABORT TASK named a task that is not active: if its RefCmdSN is in
    /// the window and not yet delivered, count it as received.
    fn abort_unreceived(&mut self, ref_sn: CmdSn, itt: Itt) -> bool {
        let r = self
            .window
            .abort_unreceived(ref_sn, |q| q.bhs.itt() == itt, &mut self.ready);
        match r {
            Unreceived::OutsideWindow => false,
            Unreceived::Filled => true,
            Unreceived::Removed(q) => {
                self.give_buf(q.data);
                true
            }
        }
    }

    // ------------------------------------------------------ text and logout

    fn text(&mut self, ci: usize, q: Queued, host: &mut dyn SessionHost) {
        let p = Pdu {
            bhs: q.bhs,
            ahs: q.ahs,
            data: q.data,
        };
        let c = &mut self.conns[ci];
        let step = c.text.handle_request(&p, &mut Targets(host));
        // The initiator may re-declare MaxRecvDataSegmentLength (§13.12).
        c.cfg.max_xmit = c.text.max_xmit_data_segment_length();
        self.give_buf(p.data);
        self.window.complete();
        let (TextStep::Respond(r) | TextStep::Reject(r)) = step;
        self.queue(ci, r.bhs, Payload::Owned(r.data), Stamp::Advance);
    }

    /// Logout (RFC 7143 §11.14, §11.15): 0 closes the session, 1 a
    /// connection, 2 (recovery) needs ERL2 and is refused.
    fn logout(&mut self, ci: usize, b: &Bhs) {
        let (t2w, t2r) = (self.cfg.time2wait, self.cfg.time2retain);
        self.window.complete();
        let respond = |me: &mut Session, code: u8| {
            let p = pdu::logout_response(b.itt(), code, t2w, t2r);
            me.queue(ci, p.bhs, Payload::None, Stamp::Advance);
        };
        match b.logout_reason() {
            0 => {
                respond(self, 0);
                self.close_all();
            }
            1 => {
                let cid = b.logout_cid();
                match self
                    .conns
                    .iter()
                    .position(|c| c.cfg.cid == cid && !c.replaced)
                {
                    Some(j) => {
                        respond(self, 0);
                        self.conns[j].closing = true;
                        self.conns[j].wake = true;
                    }
                    None => respond(self, 1),
                }
            }
            2 => respond(self, 2),
            _ => self.reject(ci, RejectReason::InvalidPduField, b),
        }
    }

    // --------------------------------------------------------------- timers

    /// When [`handle_timeout`](Session::handle_timeout) wants to run next
    /// for this connection.
    pub fn poll_timeout(&self, c: ConnId) -> Option<Instant> {
        let conn = &self.conns[self.conn_index(c)?];
        match (conn.nop_deadline, conn.logout_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: a NOP-In ping when the line was silent for an interval
    /// (RFC 7143 §11.19); too many unanswered ones mean the initiator is
    /// gone and the connection ends.
    pub fn handle_timeout(&mut self, c: ConnId, now: Instant) -> Result<(), Close> {
        let ci = self.conn_index(c).ok_or(Close::Gone)?;
        let conn = &mut self.conns[ci];
        if conn.logout_deadline.is_some_and(|d| now >= d) {
            // RFC 7143 §11.9.1: no Logout within Parameter3 seconds; the
            // target may simply end the transport connection.
            return Err(Close::Protocol("initiator did not log out when asked"));
        }
        let Some(due) = conn.nop_deadline else {
            return Ok(());
        };
        if now < due {
            return Ok(());
        }
        let every = conn.cfg.nop_interval;
        conn.nop_deadline = Some(if now - due >= every {
            now + every
        } else {
            due + every
        });
        if std::mem::replace(&mut conn.rx_activity, false) {
            conn.nop_missed = 0;
            return Ok(());
        }
        let max = conn.cfg.nop_count;
        if max > 0 && conn.nop_missed >= max {
            return Err(Close::Protocol("initiator stopped answering NOP-In"));
        }
        conn.nop_missed += 1;
        let ttt = conn.next_ttt;
        conn.next_ttt = if ttt.wrapping_add(1) == RESERVED_TAG {
            1
        } else {
            ttt.wrapping_add(1)
        };
        let p = pdu::nop_in(Itt(RESERVED_TAG), Ttt(ttt), 0, Vec::new());
        self.queue(ci, p.bhs, Payload::None, Stamp::Peek);
        Ok(())
    }

    // --------------------------------------------------------------- output

    fn queue(&mut self, ci: usize, mut bhs: Bhs, data: Payload, stamp: Stamp) {
        bhs.set_data_len(match &data {
            Payload::None => 0,
            Payload::Owned(v) => v.len(),
            Payload::Task(_, r) => r.len(),
        });
        let c = &mut self.conns[ci];
        c.tx_bytes += (BHS_LEN + bhs.data_len()) as u64;
        c.tx.push_back((bhs, data, stamp));
        c.wake = true;
    }

    fn reject(&mut self, ci: usize, reason: RejectReason, bad: &Bhs) {
        let p = pdu::reject(reason, bad);
        self.queue(ci, p.bhs, Payload::Owned(p.data), Stamp::Advance);
    }

    /// The next PDU to send on this connection, stamped now.
    pub fn poll_transmit(&mut self, c: ConnId) -> Option<Transmit> {
        let ci = self.conn_index(c)?;
        let (mut bhs, data, stamp) = self.conns[ci].tx.pop_front()?;
        let (exp, max) = (self.window.exp_cmd_sn(), self.window.max_cmd_sn());
        let conn = &mut self.conns[ci];
        conn.tx_bytes = conn
            .tx_bytes
            .saturating_sub((BHS_LEN + bhs.data_len()) as u64);
        bhs.set_stat_sn(conn.stat_sn);
        bhs.set_exp_cmd_sn(exp);
        bhs.set_max_cmd_sn(max);
        if stamp == Stamp::Advance {
            conn.stat_sn = conn.stat_sn.next();
        }
        Some(Transmit { bhs, data })
    }

    /// The data segment of a transmit.
    pub fn payload<'a>(&'a self, t: &'a Transmit) -> &'a [u8] {
        match &t.data {
            Payload::None => &[],
            Payload::Owned(v) => v,
            Payload::Task(tok, r) => match self.slot_of(*tok) {
                Some(s) if matches!(self.tasks[s].state, State::Sending(_)) => {
                    self.tasks[s].buf.get(r.clone()).unwrap_or(&[])
                }
                _ => &[],
            },
        }
    }

    /// A transmit was written (or will never be): its buffer may go back.
    pub fn release(&mut self, t: Transmit) {
        match t.data {
            Payload::None => {}
            Payload::Owned(v) => self.give_buf(v),
            Payload::Task(tok, _) => {
                if let Some(s) = self.slot_of(tok) {
                    if let State::Sending(n) = self.tasks[s].state {
                        if n <= 1 {
                            self.free_task(s);
                        } else {
                            self.tasks[s].state = State::Sending(n - 1);
                        }
                    }
                }
            }
        }
    }

    /// A connection other than `except` with something new to send (or
    /// asked to close): wake its driver.
    pub fn poll_wake(&mut self, except: Option<ConnId>) -> Option<ConnId> {
        for c in self.conns.iter_mut() {
            if std::mem::replace(&mut c.wake, false) && Some(c.id) != except {
                return Some(c.id);
            }
        }
        None
    }

    /// Whether the connection should close once its queue is empty
    /// (logged out, asked to, or no longer in the session).
    pub fn is_closing(&self, c: ConnId) -> bool {
        self.conn_index(c).is_none_or(|i| self.conns[i].closing)
    }

    /// Ask one connection (by CID) to close.
    pub fn close_cid(&mut self, cid: u16) -> Option<ConnId> {
        let c = self
            .conns
            .iter_mut()
            .find(|c| c.cfg.cid == cid && !c.replaced)?;
        c.closing = true;
        c.wake = true;
        Some(c.id)
    }

    /// Ask the initiator to log out the connection with this CID (RFC 7143
    /// §11.9.1, AsyncEvent 1 "target requests Logout") within `wait`
    /// (Parameter3, whole seconds); past that the connection is closed
    /// (see [`Session::handle_timeout`]). False when there is no such
    /// connection, or it is closing already.
    pub fn request_logout(&mut self, cid: u16, wait: std::time::Duration, now: Instant) -> bool {
        let Some(ci) = self
            .conns
            .iter()
            .position(|c| c.cfg.cid == cid && !c.replaced && !c.closing)
        else {
            return false;
        };
        let secs = wait.as_secs().min(u64::from(u16::MAX)) as u16;
        let p = pdu::async_message(1, 0, 0, secs);
        // An Async Message takes a StatSN, as a response does.
        self.queue(ci, p.bhs, Payload::None, Stamp::Advance);
        let c = &mut self.conns[ci];
        if c.logout_deadline.is_none() {
            c.logout_deadline = Some(now + std::time::Duration::from_secs(secs.into()));
        }
        true
    }

    /// Ask every connection to close (logout of the session,
    /// reinstatement, management).
    pub fn close_all(&mut self) {
        for c in self.conns.iter_mut() {
            c.closing = true;
            c.wake = true;
        }
    }

    /// The connection's socket is gone: abandon its tasks (each releases
    /// its window slot once) and what it had queued. `Some(true)` when it
    /// was the last connection: the session has ended and drops whatever
    /// still waits behind a gap, so nothing outlives it. `None` if the
    /// connection had already left (replaced by a login with its CID).
    pub fn remove_conn(&mut self, c: ConnId) -> Option<bool> {
        let ci = self.conn_index(c)?;
        let mut conn = self.conns.remove(ci);
        for (_, p, _) in conn.tx.drain(..) {
            if let Payload::Owned(v) = p {
                self.give_buf(v);
            }
        }
        for s in 0..self.tasks.len() {
            if self.tasks[s].conn != c {
                continue;
            }
            match self.tasks[s].state {
                State::Collecting | State::Ready | State::Executing => self.abort_slot(s),
                State::Sending(_) => self.free_task(s),
                State::Free => {}
            }
        }
        let ended = self.conns.is_empty();
        if conn.replaced && !ended {
            // Its CID, registry entry and counters are the new one's now.
            return None;
        }
        if ended {
            for q in self.window.drain_held() {
                self.give_buf(q.data);
            }
            while let Some(q) = self.ready.pop_front() {
                self.give_buf(q.data);
            }
        }
        Some(ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new(SessionConfig {
            exp_cmd_sn: CmdSn(1),
            queue_depth: 128,
            time2wait: 2,
            time2retain: 20,
            max_transfer: 1 << 20,
            write_budget: 4 << 20,
            discovery: false,
        })
    }

    /// Idle buffers are bounded in number and in bytes: a burst of large
    /// reads does not leave the session holding all their memory.
    #[test]
    fn the_pool_keeps_a_bounded_amount() {
        let mut s = session();
        for _ in 0..100 {
            s.give_buf(Vec::with_capacity(1 << 20));
        }
        assert!(s.pool_bytes <= MAX_IDLE_BYTES);
        assert_eq!(s.pool.len(), MAX_IDLE_BYTES >> 20);
        let mut s = session();
        for _ in 0..1000 {
            s.give_buf(Vec::with_capacity(4096));
        }
        assert_eq!(s.pool.len(), MAX_IDLE);
        // Too large to keep at all.
        let mut s = session();
        s.give_buf(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert!(s.pool.is_empty());
        let b = s.buffer();
        assert_eq!(s.pool_bytes, 0);
        drop(b);
    }
}
