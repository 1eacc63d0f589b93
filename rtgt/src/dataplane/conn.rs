//! One connection in the full feature phase, on its target's loop: decode
//! PDUs, order commands through the session window, collect write data
//! (immediate, unsolicited, R2T), run SCSI, and queue the answers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use iscsi::pdu::{self, Bhs, Itt, Opcode, Pdu, PduError, RejectReason, Ttt, RESERVED_TAG};
use iscsi::transfer::{BurstLimits, WriteTransfer};
use iscsi::{Digests, TextExchange, TextHost, TextStep};
use scsi::{LunId, Outcome, Request, Response, SimpleIo, Status};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

use super::pool::Pooled;
use super::session::{Queued, Session};
use super::writer::{OutData, OutPdu, Sender, Stamp};
use super::TargetCtx;
use crate::stats::Counters;

/// Negotiated values of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnParams {
    pub digests: Digests,
    /// Largest data segment we accept (our MaxRecvDataSegmentLength).
    pub max_recv: u32,
    /// Largest data segment we may send (the initiator's).
    pub max_xmit: u32,
    pub limits: BurstLimits,
}

/// Most bytes of write commands still collecting Data-Out on one
/// connection (four maximum-size commands).
const WRITE_BUDGET: u64 = 4 * scsi::MAX_TRANSFER_BYTES;
/// Most bytes of reads in flight on one connection.
const IO_BUDGET: u64 = 4 * scsi::MAX_TRANSFER_BYTES;

/// Bytes charged to a connection's budget until dropped (the command
/// answered, aborted, or its connection gone).
struct Charge {
    budget: Rc<Cell<u64>>,
    n: u64,
}

impl Charge {
    fn new(budget: &Rc<Cell<u64>>, n: u64) -> Charge {
        budget.set(budget.get() + n);
        Charge {
            budget: budget.clone(),
            n,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.set(self.budget.get() - self.n);
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// The peer broke the protocol; a Reject may already be queued.
    Protocol(&'static str),
    /// Logout done, or asked to close.
    Done,
}

/// The parts of a SCSI Command PDU the answer needs.
#[derive(Clone)]
struct CmdInfo {
    itt: Itt,
    lun_raw: u64,
    lun: LunId,
    cdb: Cdb,
    edtl: u32,
    read: bool,
    write: bool,
    /// The LUN's store and counters, looked up once per command.
    io: Option<super::LunIo>,
}

/// A command's CDB: the 16 bytes of the header, or a longer one with an
/// extended-CDB AHS (only those allocate).
#[derive(Debug, Clone)]
enum Cdb {
    Short([u8; 16]),
    Long(Vec<u8>),
}

impl Cdb {
    fn as_slice(&self) -> &[u8] {
        match self {
            Cdb::Short(c) => c,
            Cdb::Long(c) => c,
        }
    }
}

/// A command whose I/O runs on a worker: its LUN, and a flag set when it is
/// aborted so its completion sends nothing.
type Running = (LunId, Rc<Cell<bool>>);

struct PendingWrite {
    info: CmdInfo,
    buf: Vec<u8>,
    xfer: WriteTransfer,
}

pub struct Conn {
    pub cid: u16,
    pub peer: SocketAddr,
    pub session: Rc<Session>,
    target: Rc<TargetCtx>,
    tx: Sender,
    params: ConnParams,
    writes: RefCell<HashMap<u32, PendingWrite>>,
    /// Commands whose I/O is running, by ITT, with their "aborted" flag.
    running: RefCell<HashMap<u32, Running>>,
    next_ttt: Cell<u32>,
    closing: Notify,
    closed: Cell<bool>,
    nop_outstanding: Cell<u32>,
    rx_activity: Cell<bool>,
    /// This connection's and its session's counters (`tgtadm --op stat`).
    stats: (Arc<Counters>, Arc<Counters>),
    /// The address the initiator reached us on.
    local: SocketAddr,
    /// Bytes of reads in flight (see [`IO_BUDGET`]).
    read_inflight: Rc<Cell<u64>>,
    /// Text Request / Response exchanges (SendTargets, continuation).
    text: RefCell<TextExchange>,
}

/// What a Text exchange in a normal session may list: this target.
struct ThisTarget<'a>(&'a TargetCtx, SocketAddr);

impl TextHost for ThisTarget<'_> {
    fn targets(&mut self) -> Vec<iscsi::TargetEntry> {
        self.0.shared.listing(self.1)
    }
}

/// Decode the LUN field (SAM-5 §4.7: peripheral and flat addressing, as
/// Linux and tgt use them). Anything else maps to a LUN that never exists.
pub fn decode_lun(raw: u64) -> LunId {
    let b = raw.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return LunId(u64::MAX);
    }
    match b[0] >> 6 {
        0 if b[0] == 0 => LunId(b[1] as u64),
        1 => LunId((((b[0] & 0x3f) as u64) << 8) | b[1] as u64),
        _ => LunId(u64::MAX),
    }
}

/// One io_uring operation on a LUN ended (or was not started).
fn ring_done(gate: &super::LunGate) {
    if gate.ring_inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
        gate.ring_idle.notify_waiters();
    }
}

/// Fixed-format sense for errors the transport itself raises.
fn transport_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

impl Conn {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cid: u16,
        peer: SocketAddr,
        local: SocketAddr,
        session: Rc<Session>,
        target: Rc<TargetCtx>,
        tx: Sender,
        params: ConnParams,
        negotiated: &iscsi::SessionParams,
    ) -> Rc<Conn> {
        let stats = target.shared.stats.conn(session.setup.tsih, cid);
        Rc::new(Conn {
            stats,
            local,
            read_inflight: Rc::new(Cell::new(0)),
            text: RefCell::new(TextExchange::new(negotiated)),
            cid,
            peer,
            session,
            target,
            tx,
            params,
            writes: RefCell::new(HashMap::new()),
            running: RefCell::new(HashMap::new()),
            next_ttt: Cell::new(1),
            closing: Notify::new(),
            closed: Cell::new(false),
            nop_outstanding: Cell::new(0),
            rx_activity: Cell::new(true),
        })
    }

    /// Ask the connection to end (logout of the session, reinstatement,
    /// management delete).
    pub fn close(&self) {
        self.closed.set(true);
        self.closing.notify_one();
    }

    fn send(&self, p: Pdu) {
        self.tx.send(OutPdu::response(p));
    }

    fn reject(&self, reason: RejectReason, bad: &Bhs) {
        self.send(pdu::reject(reason, bad));
    }

    /// Read and handle PDUs until the connection ends.
    pub async fn run(self: &Rc<Self>, mut rd: OwnedReadHalf, mut rbuf: Vec<u8>) {
        let mut start = 0usize;
        let knobs = self.target.shared.knobs();
        let nop_every = Duration::from_secs(knobs.nop_interval.max(1) as u64);
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + nop_every, nop_every);
        let poll = self.target.poll;
        let mut last_work = std::time::Instant::now();
        // PDUs per read, a moving average in 1/16ths: about one at queue
        // depth 1, many when the initiator keeps a deep queue.
        let mut per_read16: u32 = 16;
        let reason = 'conn: loop {
            let mut got = 0u32;
            // Handle every whole PDU already buffered.
            loop {
                match pdu::decode_view(
                    &rbuf[start..],
                    self.params.digests,
                    self.params.max_recv as usize,
                ) {
                    Ok(Some((v, n))) => {
                        got += 1;
                        let frame = &rbuf[start..start + n];
                        start += n;
                        self.rx_activity.set(true);
                        // Data-Out goes from the receive buffer straight
                        // into its command's buffer: one copy, no allocation.
                        let r = if v.bhs.opcode() == Some(Opcode::DataOut) {
                            self.data_out(&v.bhs, &frame[v.data.clone()])
                        } else {
                            self.handle(v.to_pdu(frame))
                        };
                        if let Err(c) = r {
                            break 'conn c;
                        }
                    }
                    Ok(None) => break,
                    Err(PduError::DataDigest) => {
                        // RFC 7143 §7.8: discard the PDU and answer Reject; at
                        // ERL0 the initiator then recovers at session level.
                        let bhs = Bhs(rbuf[start..start + pdu::BHS_LEN].try_into().unwrap());
                        let n = pdu::frame_len(
                            &bhs,
                            self.params.digests,
                            self.params.max_recv as usize,
                        )
                        .unwrap_or(0);
                        start += n;
                        self.reject(RejectReason::DataDigestError, &bhs);
                    }
                    Err(e) => {
                        if rbuf.len() - start >= pdu::BHS_LEN
                            && !matches!(e, PduError::HeaderDigest)
                        {
                            let bhs = Bhs(rbuf[start..start + pdu::BHS_LEN].try_into().unwrap());
                            self.reject(RejectReason::ProtocolError, &bhs);
                        }
                        break 'conn Close::Protocol("undecodable PDU");
                    }
                }
            }
            if self.closed.get() {
                break Close::Done;
            }
            if got > 0 {
                last_work = std::time::Instant::now();
                per_read16 = per_read16 - per_read16 / 8 + got.min(1024) * 2;
            }
            // Move a partial PDU to the front only when room runs out, so a
            // large PDU arriving in pieces is not shifted on every read.
            if start == rbuf.len() {
                rbuf.clear();
                start = 0;
            } else if start > 0 && rbuf.capacity() - rbuf.len() < 64 * 1024 {
                rbuf.drain(..start);
                start = 0;
            }
            if rbuf.capacity() - rbuf.len() < 64 * 1024 {
                rbuf.reserve(256 * 1024);
            }
            // Adaptive polling: for a bounded time after the last work,
            // look at the socket again instead of sleeping in the kernel,
            // yielding in between so the writer and I/O completions run
            // (tokio polls its driver without blocking before resuming a
            // yielded task). Only at low queue depth (about one PDU per
            // read) and with every command answered: then the initiator
            // acts next, and its next command finds the loop awake. At
            // deep queues sleeping lets PDUs gather into large reads and
            // batched writes, and spinning would only take CPU from the
            // initiator or other loops (measured on two shared cores:
            // polling at QD64 cost up to a sixth of the rate). An idle
            // connection stops polling after `poll` and costs nothing.
            if !poll.is_zero()
                && per_read16 < 2 * 16
                && last_work.elapsed() < poll
                && self.session.in_flight() == 0
            {
                match rd.try_read_buf(&mut rbuf) {
                    Ok(0) => break Close::Done,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(_) => break Close::Done,
                }
            }
            tokio::select! {
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) | Err(_) => break Close::Done,
                    Ok(_) => {}
                },
                _ = self.closing.notified() => break Close::Done,
                _ = ticker.tick(), if knobs.nop_interval > 0 => {
                    if let Err(c) = self.nop_tick(knobs.nop_count) {
                        break c;
                    }
                }
            }
        };
        if let Close::Protocol(why) = reason {
            tracing::info!(peer = %self.peer, cid = self.cid, why, "connection dropped");
        }
        self.teardown();
    }

    /// Target-initiated NOP-In when the line is idle (RFC 7143 §11.19);
    /// too many unanswered ones mean the initiator is gone.
    fn nop_tick(&self, max_missed: u32) -> Result<(), Close> {
        if self.rx_activity.replace(false) {
            self.nop_outstanding.set(0);
            return Ok(());
        }
        let missed = self.nop_outstanding.get();
        if max_missed > 0 && missed >= max_missed {
            return Err(Close::Protocol("initiator stopped answering NOP-In"));
        }
        self.nop_outstanding.set(missed + 1);
        let ttt = self.alloc_ttt();
        self.tx.send(OutPdu::peek(pdu::nop_in(
            Itt(RESERVED_TAG),
            ttt,
            0,
            Vec::new(),
        )));
        Ok(())
    }

    fn alloc_ttt(&self) -> Ttt {
        let mut t = self.next_ttt.get();
        if t == RESERVED_TAG {
            t = 1;
        }
        self.next_ttt.set(t + 1);
        Ttt(t)
    }

    /// Abandon everything in flight on this connection and leave the session.
    fn teardown(self: &Rc<Self>) {
        self.closed.set(true);
        let writes: Vec<_> = self.writes.borrow_mut().drain().collect();
        for _ in writes {
            self.session.complete();
        }
        for (_, (_, flag)) in self.running.borrow_mut().drain() {
            flag.set(true);
            self.session.complete();
        }
        self.tx.close();
        self.target.conn_closed(self);
    }

    fn handle(self: &Rc<Self>, p: Pdu) -> Result<(), Close> {
        let op = match p.bhs.opcode() {
            Some(op) => op,
            None => {
                self.reject(RejectReason::CommandNotSupported, &p.bhs);
                return Ok(());
            }
        };
        match op {
            Opcode::DataOut => self.data_out(&p.bhs, &p.data),
            Opcode::ScsiCommand
            | Opcode::TaskMgmtRequest
            | Opcode::TextRequest
            | Opcode::LogoutRequest => {
                self.admit(p);
                Ok(())
            }
            Opcode::NopOut => {
                if p.bhs.itt().0 == RESERVED_TAG {
                    // An answer to our ping (TTT ours, I bit set): nothing to send.
                    self.nop_outstanding.set(0);
                    return Ok(());
                }
                self.admit(p);
                Ok(())
            }
            Opcode::Snack => {
                // SNACK needs ErrorRecoveryLevel > 0 (RFC 7143 §11.16).
                self.reject(RejectReason::CommandNotSupported, &p.bhs);
                Ok(())
            }
            Opcode::LoginRequest => {
                self.reject(RejectReason::ProtocolError, &p.bhs);
                Err(Close::Protocol("login request in full feature phase"))
            }
            _ => {
                // A target opcode from the initiator.
                self.reject(RejectReason::ProtocolError, &p.bhs);
                Err(Close::Protocol("target opcode from initiator"))
            }
        }
    }

    /// Pass a request through the session's CmdSN window and run whatever
    /// it releases.
    fn admit(self: &Rc<Self>, p: Pdu) {
        let sn = p.bhs.cmd_sn();
        let imm = p.bhs.immediate();
        self.session.admit(
            sn,
            imm,
            Queued {
                conn: Rc::downgrade(self),
                pdu: p,
            },
        );
        self.run_ready();
    }

    /// Run the commands the window released, in CmdSN order.
    fn run_ready(&self) {
        while let Some(q) = self.session.next_ready() {
            match q.conn.upgrade() {
                Some(conn) if !conn.closed.get() => conn.dispatch(q.pdu),
                // Its connection is gone: the CmdSN is used, nothing runs.
                _ => self.session.complete(),
            }
        }
    }

    /// Whether a task with this ITT is active anywhere in the session
    /// (collecting Data-Out or running).
    fn task_active(&self, itt: u32) -> bool {
        self.session
            .conns
            .borrow()
            .iter()
            .any(|c| c.writes.borrow().contains_key(&itt) || c.running.borrow().contains_key(&itt))
    }

    fn dispatch(self: &Rc<Self>, p: Pdu) {
        match p.bhs.opcode() {
            Some(Opcode::ScsiCommand) => self.scsi_command(p),
            Some(Opcode::NopOut) => {
                // Echo the ping's data (RFC 7143 §11.18.5).
                let mut data = p.data;
                data.truncate(self.params.max_xmit as usize);
                self.session.complete();
                self.send(pdu::nop_in(
                    p.bhs.itt(),
                    Ttt(RESERVED_TAG),
                    p.bhs.lun_raw(),
                    data,
                ));
            }
            Some(Opcode::TaskMgmtRequest) => self.task_mgmt(&p),
            Some(Opcode::TextRequest) => self.text(&p),
            Some(Opcode::LogoutRequest) => self.logout(&p),
            _ => self.session.complete(),
        }
    }

    fn scsi_command(self: &Rc<Self>, p: Pdu) {
        let b = &p.bhs;
        if self.task_active(b.itt().0) {
            // RFC 7143 §11.17.1: a new command may not take the tag of a
            // task still in progress. The first task goes on; this one's
            // CmdSN is used and its slot given back at once.
            self.reject(RejectReason::TaskInProgress, b);
            self.session.complete();
            return;
        }
        let mut cdb = Cdb::Short(b.cdb().try_into().unwrap());
        // Extended CDB AHS (type 1, RFC 7143 §11.2.2.3) carries bytes 16.. of a long CDB.
        let mut ahs = &p.ahs[..];
        while ahs.len() >= 4 {
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let ty = ahs[2];
            let total = (3 + len + 3) & !3;
            if ahs.len() < 3 + len {
                break;
            }
            if ty == 1 && len > 1 {
                let mut long = cdb.as_slice().to_vec();
                long.extend_from_slice(&ahs[4..3 + len]);
                cdb = Cdb::Long(long);
            }
            ahs = &ahs[total.min(ahs.len())..];
        }
        let lun = decode_lun(b.lun_raw());
        let info = CmdInfo {
            itt: b.itt(),
            lun_raw: b.lun_raw(),
            lun,
            cdb,
            edtl: b.expected_data_len(),
            read: b.cmd_read(),
            write: b.cmd_write(),
            io: self.target.shared.device(lun),
        };
        if b.cmd_read() && b.cmd_write() {
            // Bidirectional commands are not supported by any LU type here.
            self.finish_check(&info, transport_sense(0x05, 0x24, 0x00));
            return;
        }
        if info.edtl as u64 > scsi::MAX_TRANSFER_BYTES {
            // Refuse before allocating; Data-Out that follows finds no task
            // and is ignored.
            self.finish_check(&info, transport_sense(0x05, 0x24, 0x00));
            return;
        }
        if !b.cmd_write() {
            if !p.data.is_empty() {
                self.reject(RejectReason::ProtocolError, &p.bhs);
                self.session.complete();
                return;
            }
            self.execute(info, self.target.pool.take());
            return;
        }
        let imm = p.data.len() as u32;
        if imm > info.edtl {
            self.reject(RejectReason::ProtocolError, &p.bhs);
            self.session.complete();
            return;
        }
        let xfer = match WriteTransfer::new(info.edtl, imm, b.final_bit(), self.params.limits) {
            Ok(x) => x,
            Err(_) => {
                self.reject(RejectReason::ProtocolError, &p.bhs);
                self.session.complete();
                return;
            }
        };
        // Bound the memory one connection can pin in half-received writes:
        // past the budget a new write waits its turn (SAM-5 TASK SET FULL,
        // the initiator retries), unless it is the only one.
        let pending: u64 = self
            .writes
            .borrow()
            .values()
            .map(|w| w.info.edtl as u64)
            .sum();
        if pending > 0 && pending + info.edtl as u64 > WRITE_BUDGET {
            let full = Response {
                status: Status::TaskSetFull,
                sense: Vec::new(),
                data_len: 0,
                wanted: 0,
            };
            self.finish(&info, full, Vec::new());
            return;
        }
        // The immediate data becomes the start of the command's buffer
        // (no copy when it is all the data); Data-Out appends the rest.
        let mut buf = if imm == info.edtl {
            p.data
        } else {
            let mut b = self.target.pool.take();
            b.extend_from_slice(&p.data);
            b
        };
        buf.reserve(info.edtl as usize - buf.len());
        let mut pw = PendingWrite { info, buf, xfer };
        if pw.xfer.complete() {
            self.execute(pw.info, pw.buf);
            return;
        }
        self.send_r2ts(&mut pw);
        self.writes.borrow_mut().insert(pw.info.itt.0, pw);
    }

    fn send_r2ts(&self, pw: &mut PendingWrite) {
        for r in pw.xfer.next_r2ts(|| self.alloc_ttt()) {
            self.tx.send(OutPdu::peek(pdu::r2t(
                pw.info.itt,
                pw.info.lun_raw,
                r.ttt,
                r.r2t_sn,
                r.offset,
                r.len,
            )));
        }
    }

    fn data_out(self: &Rc<Self>, bhs: &Bhs, data: &[u8]) -> Result<(), Close> {
        let itt = bhs.itt().0;
        let mut writes = self.writes.borrow_mut();
        let Some(pw) = writes.get_mut(&itt) else {
            // Data for a command already answered (refused up front, failed
            // on bad Data-Out, or aborted): RFC 7143 §11.7 lets the target
            // discard it.
            return Ok(());
        };
        let offset = bhs.buffer_offset();
        let len = data.len() as u32;
        if let Err(e) = pw
            .xfer
            .on_data_out(bhs.ttt(), bhs.data_sn(), offset, len, bhs.final_bit())
        {
            // A Data-Out out of sequence or outside what was solicited ends
            // the command, not the connection: the task gets CHECK
            // CONDITION, ABORTED COMMAND / DATA PHASE ERROR, and its
            // bytes never reach the buffer (an unknown TTT is the
            // initiator's bookkeeping error and gets a Reject too).
            let pw = writes.remove(&itt).unwrap();
            drop(writes);
            tracing::debug!(peer = %self.peer, error = %e, "bad data-out");
            if matches!(e, iscsi::transfer::TransferError::UnknownTtt) {
                self.reject(RejectReason::InvalidPduField, bhs);
            }
            self.finish_check(&pw.info, transport_sense(0x0b, 0x4b, 0x00));
            return Ok(());
        }
        // Data arrives in offset order (DataPDUInOrder / DataSequenceInOrder
        // = Yes), so the buffer mostly just grows; a gap is zero-filled.
        let (off, end) = (offset as usize, (offset + len) as usize);
        if off == pw.buf.len() {
            pw.buf.extend_from_slice(data);
        } else {
            if pw.buf.len() < end {
                pw.buf.resize(end, 0);
            }
            pw.buf[off..end].copy_from_slice(data);
        }
        if pw.xfer.complete() {
            let mut pw = writes.remove(&itt).unwrap();
            drop(writes);
            pw.buf.resize(pw.info.edtl as usize, 0);
            self.execute(pw.info, pw.buf);
        } else {
            self.send_r2ts(pw);
        }
        Ok(())
    }

    fn execute(self: &Rc<Self>, info: CmdInfo, mut buf: Vec<u8>) {
        let req = Request {
            cdb: info.cdb.as_slice(),
            nexus: self.session.setup.nexus,
            lun: info.lun,
            expected_len: info.edtl,
        };
        let outcome = self.target.shared.luns().execute(&req, &mut buf);
        match outcome {
            Outcome::Done(resp) => self.finish(&info, resp, buf),
            Outcome::Io(task) => {
                let io = info.io.as_ref().map(|d| (d.0.clone(), d.2.clone()));
                let Some((dev, gate)) = io else {
                    // The LU vanished between emulation and I/O.
                    self.finish_check(&info, transport_sense(0x05, 0x25, 0x00));
                    return;
                };
                if dev.is_nonblocking() {
                    // Nothing to wait for (null, memory): answer at once
                    // rather than paying for a trip through a worker.
                    let resp = task.run(&*dev, &mut buf);
                    self.finish(&info, resp, buf);
                    return;
                }
                // Reads in flight pin their buffers until answered: bound
                // them per connection like collecting writes (a hostile
                // initiator could otherwise queue 128 x 32 MiB reads).
                let need = if info.read { task.wanted() } else { 0 };
                let used = self.read_inflight.get();
                if need > 0 && used > 0 && used + need > IO_BUDGET {
                    let full = Response {
                        status: Status::TaskSetFull,
                        sense: Vec::new(),
                        data_len: 0,
                        wanted: 0,
                    };
                    self.finish(&info, full, buf);
                    return;
                }
                let charge = Charge::new(&self.read_inflight, need);
                let aborted = Rc::new(Cell::new(false));
                self.running
                    .borrow_mut()
                    .insert(info.itt.0, (info.lun, aborted.clone()));
                let me = self.clone();
                let ring = self.target.uring.clone();
                // Plain reads, writes and flushes go through the loop's
                // io_uring unless a read-modify-write command holds this
                // LU (the gate is per LUN: other LUNs are not disturbed).
                // Count ourselves in before looking at `exclusive`, and an
                // exclusive task counts itself in before waiting for the
                // rings to drain: whichever comes second sees the other
                // (SeqCst), so the two never overlap.
                let simple = match (ring.zip(dev.raw_fd()), task.simple(&buf)) {
                    (Some(rf), Some(simple)) => {
                        gate.ring_inflight.fetch_add(1, Ordering::SeqCst);
                        if gate.exclusive.load(Ordering::SeqCst) == 0 {
                            Some((rf, simple))
                        } else {
                            ring_done(&gate);
                            None
                        }
                    }
                    _ => None,
                };
                if let Some(((ring, fd), simple)) = simple {
                    tokio::task::spawn_local(async move {
                        let _charge = charge;
                        let (ok, mut buf) = match simple {
                            SimpleIo::Read { offset, len } => ring.read(fd, offset, buf, len).await,
                            SimpleIo::Write { offset, len, flush } => {
                                ring.write(fd, offset, buf, len, flush).await
                            }
                            SimpleIo::Flush => ring.fsync(fd, buf).await,
                        };
                        // The store stays open until the kernel is done.
                        drop(dev);
                        ring_done(&gate);
                        if aborted.get() {
                            return;
                        }
                        me.running.borrow_mut().remove(&info.itt.0);
                        let resp = task.complete(ok, &mut buf);
                        me.finish(&info, resp, buf);
                    });
                    return;
                }
                let exclusive = task.is_exclusive();
                if exclusive {
                    gate.exclusive.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::spawn_local(async move {
                    let _charge = charge;
                    if exclusive {
                        // Let every loop's ring I/O on this LUN finish so
                        // this command sees and overlaps none of it (SBC-3
                        // §5.2).
                        loop {
                            let idle = gate.ring_idle.notified();
                            if gate.ring_inflight.load(Ordering::SeqCst) == 0 {
                                break;
                            }
                            idle.await;
                        }
                    }
                    let joined = tokio::task::spawn_blocking(move || {
                        let r = task.run(&*dev, &mut buf);
                        (r, buf)
                    })
                    .await;
                    if exclusive {
                        gate.exclusive.fetch_sub(1, Ordering::SeqCst);
                    }
                    if aborted.get() {
                        return;
                    }
                    me.running.borrow_mut().remove(&info.itt.0);
                    match joined {
                        Ok((resp, buf)) => me.finish(&info, resp, buf),
                        Err(_) => me.finish_check(&info, transport_sense(0x04, 0x44, 0x00)),
                    }
                });
            }
        }
    }

    fn finish_check(&self, info: &CmdInfo, sense: Vec<u8>) {
        let resp = Response {
            status: Status::CheckCondition,
            sense,
            data_len: 0,
            wanted: 0,
        };
        self.finish(info, resp, Vec::new());
    }

    /// Queue the answer: Data-In (status in the last PDU when there is no
    /// sense, RFC 7143 §11.7.3) and/or a SCSI Response, with residuals
    /// (RFC 7143 §11.4.5).
    fn finish(&self, info: &CmdInfo, resp: Response, buf: Vec<u8>) {
        self.session.complete();
        if self.closed.get() {
            self.target.pool.give(buf);
            return;
        }
        let status = resp.status as u8;
        let edtl = info.edtl as u64;
        let ok = matches!(resp.status, Status::Good | Status::ConditionMet);
        let sent = if info.read && ok {
            (resp.data_len as u64).min(edtl).min(buf.len() as u64)
        } else {
            0
        };
        let written = if info.write { edtl } else { 0 };
        for c in [
            &self.stats.0,
            &self.stats.1,
            &self.target.shared.stats.total,
        ] {
            c.record(sent, written, !ok);
        }
        if let Some((_, c, _)) = &info.io {
            c.record(sent, written, !ok);
        }
        let residual = iscsi::datain::residual(iscsi::datain::Transfer {
            edtl: info.edtl,
            read: info.read,
            sent: sent as u32,
            wanted: resp.wanted,
        });
        if sent == 0 {
            self.target.pool.give(buf);
            self.send(pdu::scsi_response(info.itt, status, residual, &resp.sense));
            return;
        }
        let shared = Rc::new(Pooled::new(buf, self.target.pool.clone()));
        // Status rides on the last Data-In unless there is sense to send
        // (RFC 7143 §11.7.3).
        let collapse = resp.sense.is_empty();
        for d in iscsi::datain::data_in(
            info.itt,
            info.lun_raw,
            sent as usize,
            self.params.max_xmit,
            self.params.limits.max_burst,
            collapse.then_some((status, residual)),
        ) {
            self.tx.send(OutPdu {
                bhs: d.bhs,
                data: OutData::Shared(shared.clone(), d.data),
                stamp: if d.has_status {
                    Stamp::Advance
                } else {
                    Stamp::Peek
                },
            });
        }
        if !collapse {
            self.send(pdu::scsi_response(info.itt, status, residual, &resp.sense));
        }
    }

    /// Task management (RFC 7143 §11.5). Responses: 0 complete, 1 task does
    /// not exist, 2 LUN does not exist, 5 not supported.
    fn task_mgmt(self: &Rc<Self>, p: &Pdu) {
        let b = &p.bhs;
        let lun = decode_lun(b.lun_raw());
        let func = b.tmf_function();
        let lun_known = self.target.shared.luns().config(lun).is_some();
        let response = match func {
            1 => {
                // ABORT TASK
                let r = b.tmf_referenced_task().0;
                let ref_sn = b.tmf_ref_cmd_sn();
                if self.abort_itt(r) {
                    0
                } else if ref_sn.lt(b.cmd_sn())
                    && self
                        .session
                        .abort_unreceived(ref_sn, b.tmf_referenced_task())
                {
                    // Never received (or still waiting behind a gap): its
                    // CmdSN now counts as received, and the abort is
                    // complete (RFC 7143 §11.5.1).
                    0
                } else {
                    1
                }
            }
            2 | 3 => {
                // ABORT TASK SET / CLEAR TASK SET: this nexus's tasks on the LUN.
                if !lun_known {
                    2
                } else {
                    for c in self.session.conns.borrow().iter() {
                        c.abort_lun(Some(lun));
                    }
                    0
                }
            }
            5 => {
                // LOGICAL UNIT RESET: every nexus's tasks on the LUN.
                if !lun_known {
                    2
                } else {
                    self.target.abort_everywhere(Some(lun));
                    self.target
                        .shared
                        .luns()
                        .lun_reset(lun, self.session.setup.nexus);
                    0
                }
            }
            6 => {
                // TARGET WARM RESET
                self.target.abort_everywhere(None);
                self.target
                    .shared
                    .luns()
                    .target_reset(self.session.setup.nexus);
                0
            }
            _ => 5,
        };
        self.session.complete();
        // Commands a filled gap released are run by the `run_ready` loop
        // that dispatched this TMF.
        self.send(pdu::tmf_response(b.itt(), response));
    }

    /// Abort one task of this session; true if it existed.
    fn abort_itt(&self, itt: u32) -> bool {
        for c in self.session.conns.borrow().iter() {
            if c.writes.borrow_mut().remove(&itt).is_some() {
                c.session.complete();
                return true;
            }
            if let Some((_, flag)) = c.running.borrow_mut().remove(&itt) {
                flag.set(true);
                c.session.complete();
                return true;
            }
        }
        false
    }

    /// Abort this connection's tasks on one LUN (or all).
    pub fn abort_lun(&self, lun: Option<LunId>) {
        let matches = |l: LunId| lun.is_none_or(|x| x == l);
        let gone: Vec<u32> = self
            .writes
            .borrow()
            .iter()
            .filter(|(_, w)| matches(w.info.lun))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.writes.borrow_mut().remove(&k);
            self.session.complete();
        }
        let gone: Vec<u32> = self
            .running
            .borrow()
            .iter()
            .filter(|(_, r)| matches(r.0))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some((_, flag)) = self.running.borrow_mut().remove(&k) {
                flag.set(true);
                self.session.complete();
            }
        }
    }

    fn text(&self, p: &Pdu) {
        let step = self
            .text
            .borrow_mut()
            .handle_request(p, &mut ThisTarget(&self.target, self.local));
        self.session.complete();
        match step {
            TextStep::Respond(r) | TextStep::Reject(r) => self.send(r),
        }
    }

    /// Logout (RFC 7143 §11.14, §11.15): 0 closes the session, 1 a
    /// connection, 2 (recovery) needs ERL2 and is refused.
    fn logout(self: &Rc<Self>, p: &Pdu) {
        let b = &p.bhs;
        let setup = &self.session.setup;
        let (t2w, t2r) = (setup.time2wait, setup.time2retain);
        self.session.complete();
        match b.logout_reason() {
            0 => {
                self.send(pdu::logout_response(b.itt(), 0, t2w, t2r));
                let others: Vec<_> = self
                    .session
                    .conns
                    .borrow()
                    .iter()
                    .filter(|c| c.cid != self.cid)
                    .cloned()
                    .collect();
                for c in others {
                    c.close();
                }
                self.close();
            }
            1 => {
                let cid = b.logout_cid();
                if cid == self.cid {
                    self.send(pdu::logout_response(b.itt(), 0, t2w, t2r));
                    self.close();
                } else if let Some(c) = self.session.conn(cid) {
                    c.close();
                    self.send(pdu::logout_response(b.itt(), 0, t2w, t2r));
                } else {
                    self.send(pdu::logout_response(b.itt(), 1, t2w, t2r));
                }
            }
            2 => self.send(pdu::logout_response(b.itt(), 2, t2w, t2r)),
            _ => self.reject(RejectReason::InvalidPduField, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_decoding() {
        assert_eq!(decode_lun(0), LunId(0));
        assert_eq!(decode_lun(0x0001_0000_0000_0000), LunId(1));
        assert_eq!(decode_lun(0x4101_0000_0000_0000), LunId(0x101));
        assert_eq!(decode_lun(0x0001_0000_0000_0001), LunId(u64::MAX));
        assert_eq!(decode_lun(0x8000_0000_0000_0000), LunId(u64::MAX));
    }
}
