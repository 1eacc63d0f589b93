//! One iSCSI connection in the full feature phase: framing, sequence-number
//! bookkeeping (RFC 7143 §4.2.2), the SCSI read and write paths (§7, §13)
//! and the small request/response exchanges (NOP, TMF, Text, Logout).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use iscsi::pdu::{self, RESERVED_TAG};
use iscsi::{Bhs, CmdSn, Digests, Itt, Opcode, Pdu, Residual, StatSn};

use crate::cdb;
use crate::error::Error;
use crate::text;

/// The outcome of one SCSI command. A CHECK CONDITION is a value here, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScsiResult {
    /// iSCSI Response field (0 = command completed at target, RFC 7143 §11.4.3).
    pub response: u8,
    /// SCSI status byte (0 GOOD, 2 CHECK CONDITION, 8 BUSY, 0x18 RESERVATION CONFLICT...).
    pub status: u8,
    /// Sense data without the 2-byte SenseLength prefix; empty when none.
    pub sense: Vec<u8>,
    /// Data-In, placed by buffer offset; truncated by an underflow residual.
    pub data: Vec<u8>,
    /// Residual the target reported (RFC 7143 §11.4.5).
    pub residual: Residual,
}

impl ScsiResult {
    /// GOOD status and a completed response.
    pub fn is_good(&self) -> bool {
        self.response == 0 && self.status == 0
    }
    /// Sense key, ASC and ASCQ of fixed or descriptor format sense (SPC-4 §4.5).
    pub fn sense_key(&self) -> Option<(u8, u8, u8)> {
        let s = &self.sense;
        match s.first()? & 0x7f {
            0x70 | 0x71 if s.len() >= 14 => Some((s[2] & 0x0f, s[12], s[13])),
            0x72 | 0x73 if s.len() >= 4 => Some((s[1] & 0x0f, s[2], s[3])),
            _ => None,
        }
    }
}

/// The operational parameters in force on this connection's session, as
/// negotiated at login (RFC 7143 §13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// True for a discovery session (only Text, NOP and Logout allowed).
    pub discovery: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    /// What we declared we receive (limit on every incoming data segment).
    pub our_max_recv_data_segment_length: u32,
    /// What the target declared: our Data-Out, immediate data and text
    /// segments are split at this size.
    pub target_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
}

impl Default for SessionParams {
    /// RFC 7143 defaults (§13.12-13.19), before any negotiation.
    fn default() -> Self {
        SessionParams {
            discovery: false,
            header_digest: false,
            data_digest: false,
            our_max_recv_data_segment_length: 8192,
            target_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: true,
            max_outstanding_r2t: 1,
        }
    }
}

/// A SCSI command in flight.
struct Task {
    lun_raw: u64,
    cmd_sn: CmdSn,
    data_out: Vec<u8>,
    read_buf: Vec<u8>,
    /// DataSN expected on the next Data-In (RFC 7143 §11.7.5).
    next_data_sn: u32,
    /// R2TSN expected on the next R2T (RFC 7143 §11.8.4).
    next_r2t_sn: u32,
}

/// One iSCSI connection (single-connection session) in full feature phase.
/// See the crate documentation for an example.
pub struct Connection {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    pub(crate) digests: Digests,
    pub(crate) timeout: Duration,
    /// Limit on incoming data segments.
    pub(crate) max_recv: usize,
    pub(crate) params: SessionParams,
    pub(crate) isid: [u8; 6],
    pub(crate) tsih: u16,
    pub(crate) cid: u16,
    pub(crate) cmd_sn: CmdSn,
    pub(crate) exp_stat_sn: StatSn,
    pub(crate) exp_cmd_sn: CmdSn,
    pub(crate) max_cmd_sn: CmdSn,
    next_itt: u32,
    tasks: HashMap<u32, Task>,
    done: VecDeque<(u32, ScsiResult)>,
    failed: VecDeque<(u32, Error)>,
    /// Responses to non-SCSI requests (NOP-In, TMF, Text, Logout, Reject of those).
    replies: VecDeque<Pdu>,
    aborted: HashSet<u32>,
    /// Asynchronous Messages received (RFC 7143 §11.9), oldest first.
    pub async_messages: Vec<Pdu>,
    /// Target-initiated NOP-Ins answered so far.
    pub pings_answered: u64,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.stream.peer_addr().ok())
            .field("tsih", &self.tsih)
            .field("cmd_sn", &self.cmd_sn)
            .field("exp_stat_sn", &self.exp_stat_sn)
            .field("outstanding", &self.tasks.len())
            .finish()
    }
}

/// Append one PDU to `out`: header (+digest), data (+padding, +digest).
fn queue(out: &mut Vec<u8>, dg: Digests, bhs: &Bhs, data: &[u8]) {
    let mut b = *bhs;
    b.set_data_len(data.len());
    pdu::encode_header(&b, &[], dg, out);
    pdu::encode_data(data, dg, out);
}

/// Residual from a SCSI Response or final Data-In (flags O/U, count at byte 44).
fn residual_of(bhs: &Bhs) -> Residual {
    let f = bhs.flags();
    if f & 0x04 != 0 {
        Residual::Overflow(bhs.u32_at(44))
    } else if f & 0x02 != 0 {
        Residual::Underflow(bhs.u32_at(44))
    } else {
        Residual::None
    }
}

impl Connection {
    /// Open the TCP connection (no login). Used by [`Connection::login`] and
    /// by tests that want to drive a login by hand with [`Connection::send_raw`].
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection, Error> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(Error::from_io)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            rbuf: vec![0; 256 * 1024],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(256 * 1024),
            digests: Digests::default(),
            timeout,
            max_recv: 8192,
            params: SessionParams::default(),
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            cmd_sn: CmdSn(1),
            exp_stat_sn: StatSn(0),
            exp_cmd_sn: CmdSn(1),
            max_cmd_sn: CmdSn(1),
            next_itt: 1,
            tasks: HashMap::new(),
            done: VecDeque::new(),
            failed: VecDeque::new(),
            replies: VecDeque::new(),
            aborted: HashSet::new(),
            async_messages: Vec::new(),
            pings_answered: 0,
        })
    }

    // ------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------

    /// Negotiated session parameters.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }
    /// The session's TSIH (assigned by the target at login).
    pub fn tsih(&self) -> u16 {
        self.tsih
    }
    /// The ISID this session logged in with.
    pub fn isid(&self) -> [u8; 6] {
        self.isid
    }
    /// CmdSN the next non-immediate command will carry.
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn.0
    }
    /// ExpStatSN we will send next.
    pub fn exp_stat_sn(&self) -> u32 {
        self.exp_stat_sn.0
    }
    /// The target's (ExpCmdSN, MaxCmdSN) as last seen.
    pub fn cmd_window(&self) -> (u32, u32) {
        (self.exp_cmd_sn.0, self.max_cmd_sn.0)
    }
    /// SCSI commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }
    /// Change the per-wait timeout (and the socket's).
    pub fn set_timeout(&mut self, t: Duration) -> Result<(), Error> {
        self.timeout = t;
        self.stream.set_read_timeout(Some(t))?;
        self.stream.set_write_timeout(Some(t))?;
        Ok(())
    }
    /// Digests in force (for hand-built PDUs in hostile tests).
    pub fn digests(&self) -> Digests {
        self.digests
    }
    /// The underlying socket (e.g. to shut it down half-way in a test).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    // ------------------------------------------------------------------
    // Raw I/O
    // ------------------------------------------------------------------

    /// Write bytes exactly as given (hostile-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).map_err(Error::from_io)
    }

    /// Encode and send one PDU as-is with the connection's digests; the
    /// DataSegmentLength is set from `pdu.data`. No sequence numbers are stamped.
    pub fn send_pdu(&mut self, p: &Pdu) -> Result<(), Error> {
        let mut b = p.bhs;
        b.set_data_len(p.data.len());
        let wire = Pdu {
            bhs: b,
            ahs: p.ahs.clone(),
            data: p.data.clone(),
        }
        .encode(self.digests);
        self.send_raw(&wire)
    }

    /// Receive the next PDU as it is. Sequence numbers (ExpStatSN, the command
    /// window) are updated from it, but nothing else is done: a target NOP-In
    /// is not answered, a Data-In is not matched to a task.
    pub fn recv_pdu(&mut self) -> Result<Pdu, Error> {
        let p = self.recv_one()?;
        self.update_sn(&p);
        Ok(p)
    }

    fn flush(&mut self) -> Result<(), Error> {
        if !self.wbuf.is_empty() {
            let r = self.stream.write_all(&self.wbuf).map_err(Error::from_io);
            self.wbuf.clear();
            r?;
        }
        Ok(())
    }

    pub(crate) fn send_one(&mut self, bhs: &Bhs, data: &[u8]) -> Result<(), Error> {
        queue(&mut self.wbuf, self.digests, bhs, data);
        self.flush()
    }

    /// Read until one whole PDU is buffered, then decode it. Fails with
    /// [`Error::Timeout`] when no complete PDU arrives within the timeout.
    pub(crate) fn recv_one(&mut self) -> Result<Pdu, Error> {
        let start = Instant::now();
        loop {
            let avail = &self.rbuf[self.rstart..self.rend];
            if avail.len() >= pdu::BHS_LEN {
                if let Some((p, n)) = pdu::decode(avail, self.digests, self.max_recv)? {
                    self.rstart += n;
                    if self.rstart == self.rend {
                        self.rstart = 0;
                        self.rend = 0;
                    }
                    return Ok(p);
                }
                // Make sure the whole frame fits in the buffer.
                let bhs = Bhs(avail[..pdu::BHS_LEN].try_into().unwrap());
                let need = pdu::frame_len(&bhs, self.digests, self.max_recv)?;
                if need > self.rbuf.len() - self.rstart {
                    self.compact();
                    if need > self.rbuf.len() {
                        self.rbuf.resize(need.next_power_of_two(), 0);
                    }
                }
            }
            if self.rend == self.rbuf.len() {
                self.compact();
            }
            if start.elapsed() > self.timeout {
                return Err(Error::Timeout);
            }
            match self.stream.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => self.rend += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_io(e)),
            }
        }
    }

    fn compact(&mut self) {
        if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
    }

    // ------------------------------------------------------------------
    // Sequence numbers (RFC 7143 §4.2.2)
    // ------------------------------------------------------------------

    fn update_sn(&mut self, p: &Pdu) {
        let b = &p.bhs;
        let Some(op) = b.opcode() else { return };
        // PDUs whose StatSN field is a real, advancing status number.
        let carries_status = match op {
            Opcode::ScsiResponse
            | Opcode::TaskMgmtResponse
            | Opcode::TextResponse
            | Opcode::LogoutResponse
            | Opcode::LoginResponse
            | Opcode::Reject
            | Opcode::AsyncMessage => true,
            Opcode::DataIn => b.flags() & 0x01 != 0,
            // A target ping (ITT reserved) carries StatSN without advancing it (§11.19).
            Opcode::NopIn => b.itt().0 != RESERVED_TAG,
            _ => false,
        };
        if carries_status && self.exp_stat_sn.le(b.stat_sn()) {
            self.exp_stat_sn = b.stat_sn().next();
        }
        // Every target PDU carries ExpCmdSN/MaxCmdSN, Data-In and R2T
        // included (§11.7.6, §11.8).
        let (exp, max) = (b.exp_cmd_sn(), b.max_cmd_sn());
        // §4.2.2.1: ignore the pair when MaxCmdSN < ExpCmdSN - 1.
        if CmdSn(exp.0.wrapping_sub(1)).le(max) {
            if self.exp_cmd_sn.lt(exp) {
                self.exp_cmd_sn = exp;
            }
            if self.max_cmd_sn.lt(max) {
                self.max_cmd_sn = max;
            }
        }
    }

    fn window_open(&self) -> bool {
        self.cmd_sn.le(self.max_cmd_sn)
    }

    /// Process incoming PDUs until the target's MaxCmdSN admits our next CmdSN.
    fn wait_window(&mut self) -> Result<(), Error> {
        while !self.window_open() {
            let p = self.recv_one()?;
            self.dispatch(p)?;
        }
        Ok(())
    }

    fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.tasks.contains_key(&itt) {
                return itt;
            }
        }
    }

    // ------------------------------------------------------------------
    // Incoming PDU dispatch
    // ------------------------------------------------------------------

    fn dispatch(&mut self, p: Pdu) -> Result<(), Error> {
        self.update_sn(&p);
        let op = p.bhs.opcode().ok_or_else(|| {
            Error::Protocol(format!("unknown opcode {:#04x}", p.bhs.raw_opcode()))
        })?;
        match op {
            Opcode::DataIn => self.on_data_in(p),
            Opcode::R2t => self.on_r2t(p),
            Opcode::ScsiResponse => self.on_scsi_response(p),
            Opcode::NopIn if p.bhs.itt().0 == RESERVED_TAG => self.answer_ping(&p),
            Opcode::NopIn
            | Opcode::TaskMgmtResponse
            | Opcode::TextResponse
            | Opcode::LogoutResponse => {
                self.replies.push_back(p);
                Ok(())
            }
            Opcode::Reject => {
                let itt = if p.data.len() >= pdu::BHS_LEN {
                    u32::from_be_bytes(p.data[16..20].try_into().unwrap())
                } else {
                    RESERVED_TAG
                };
                let reason = p.bhs.0[2];
                if self.tasks.remove(&itt).is_some() {
                    self.failed
                        .push_back((itt, Error::Rejected { reason, itt }));
                    Ok(())
                } else if itt != RESERVED_TAG {
                    self.replies.push_back(p);
                    Ok(())
                } else {
                    Err(Error::Rejected { reason, itt })
                }
            }
            Opcode::AsyncMessage => {
                self.async_messages.push(p);
                Ok(())
            }
            _ => Err(Error::Protocol(format!(
                "unexpected {op:?} in full feature phase"
            ))),
        }
    }

    /// Answer a target-initiated NOP-In (RFC 7143 §11.18/§11.19): NOP-Out,
    /// immediate, ITT reserved, the target's TTT and LUN, ping data echoed.
    fn answer_ping(&mut self, p: &Pdu) -> Result<(), Error> {
        let ttt = p.bhs.u32_at(20);
        if ttt == RESERVED_TAG {
            return Ok(()); // unsolicited NOP-In that wants no answer
        }
        let mut b = Bhs::new(Opcode::NopOut);
        b.0[0] |= 0x40;
        b.set_flags(0x80);
        b.set_lun_raw(p.bhs.lun_raw());
        b.set_itt(Itt(RESERVED_TAG));
        b.set_u32_at(20, ttt);
        b.set_u32_at(24, self.cmd_sn.0);
        b.set_u32_at(28, self.exp_stat_sn.0);
        let n = p
            .data
            .len()
            .min(self.params.target_max_recv_data_segment_length as usize);
        let data = p.data[..n].to_vec();
        self.pings_answered += 1;
        self.send_one(&b, &data)
    }

    /// A PDU for an ITT we do not track: ignored if we aborted that task,
    /// a protocol error otherwise.
    fn unknown_itt(&self, itt: u32, what: &str) -> Result<(), Error> {
        if self.aborted.contains(&itt) {
            Ok(())
        } else {
            Err(Error::Protocol(format!("{what} for unknown ITT {itt:#x}")))
        }
    }

    fn on_data_in(&mut self, p: Pdu) -> Result<(), Error> {
        let itt = p.bhs.itt().0;
        if !self.tasks.contains_key(&itt) {
            return self.unknown_itt(itt, "Data-In");
        }
        let t = self.tasks.get_mut(&itt).unwrap();
        let data_sn = p.bhs.u32_at(36);
        if data_sn != t.next_data_sn {
            return Err(Error::Protocol(format!(
                "Data-In DataSN {data_sn}, expected {} (ITT {itt:#x})",
                t.next_data_sn
            )));
        }
        t.next_data_sn += 1;
        let off = p.bhs.u32_at(40) as usize;
        let end = off + p.data.len();
        if end > t.read_buf.len() {
            return Err(Error::Protocol(format!(
                "Data-In [{off}, {end}) beyond the {}-byte read buffer",
                t.read_buf.len()
            )));
        }
        t.read_buf[off..end].copy_from_slice(&p.data);
        let flags = p.bhs.flags();
        if flags & 0x01 != 0 {
            // S bit: status in this final Data-In (§11.7.4); it needs F.
            if flags & 0x80 == 0 {
                return Err(Error::Protocol("Data-In with S but not F".into()));
            }
            let t = self.tasks.remove(&itt).unwrap();
            let res = ScsiResult {
                response: 0,
                status: p.bhs.0[3],
                sense: Vec::new(),
                data: t.read_buf,
                residual: residual_of(&p.bhs),
            };
            self.finish(itt, res);
        }
        Ok(())
    }

    fn finish(&mut self, itt: u32, mut res: ScsiResult) {
        if let Residual::Underflow(n) = res.residual {
            let keep = res.data.len().saturating_sub(n as usize);
            res.data.truncate(keep);
        }
        self.done.push_back((itt, res));
    }

    fn on_r2t(&mut self, p: Pdu) -> Result<(), Error> {
        let itt = p.bhs.itt().0;
        let mbl = self.params.max_burst_length as usize;
        let seg = self.params.target_max_recv_data_segment_length as usize;
        if !self.tasks.contains_key(&itt) {
            return self.unknown_itt(itt, "R2T");
        }
        let exp_stat_sn = self.exp_stat_sn.0;
        let dg = self.digests;
        let t = self.tasks.get_mut(&itt).unwrap();
        let r2t_sn = p.bhs.u32_at(36);
        if r2t_sn != t.next_r2t_sn {
            return Err(Error::Protocol(format!(
                "R2TSN {r2t_sn}, expected {}",
                t.next_r2t_sn
            )));
        }
        t.next_r2t_sn += 1;
        let ttt = p.bhs.u32_at(20);
        let off = p.bhs.u32_at(40) as usize;
        let len = p.bhs.u32_at(44) as usize;
        if len == 0 || off + len > t.data_out.len() {
            return Err(Error::Protocol(format!(
                "R2T for [{off}, +{len}) of a {}-byte write",
                t.data_out.len()
            )));
        }
        if len > mbl {
            return Err(Error::Protocol(format!(
                "R2T asks {len} bytes > MaxBurstLength {mbl}"
            )));
        }
        // Answer with one sequence of Data-Out PDUs, each at most the target's
        // MaxRecvDataSegmentLength, DataSN from 0, F on the last (§13.13, §11.7).
        let mut data_sn = 0u32;
        let mut at = off;
        let end = off + len;
        while at < end {
            let n = seg.min(end - at);
            let mut b = Bhs::new(Opcode::DataOut);
            b.set_flags(if at + n == end { 0x80 } else { 0 });
            b.set_lun_raw(t.lun_raw);
            b.set_itt(Itt(itt));
            b.set_u32_at(20, ttt);
            b.set_u32_at(28, exp_stat_sn);
            b.set_u32_at(36, data_sn);
            b.set_u32_at(40, at as u32);
            queue(&mut self.wbuf, dg, &b, &t.data_out[at..at + n]);
            data_sn += 1;
            at += n;
        }
        self.flush()
    }

    fn on_scsi_response(&mut self, p: Pdu) -> Result<(), Error> {
        let itt = p.bhs.itt().0;
        let Some(t) = self.tasks.remove(&itt) else {
            if self.aborted.contains(&itt) {
                return Ok(());
            }
            return Err(Error::Protocol(format!(
                "SCSI Response for unknown ITT {itt:#x}"
            )));
        };
        let sense = if p.data.len() >= 2 {
            let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
            p.data[2..(2 + n).min(p.data.len())].to_vec()
        } else {
            Vec::new()
        };
        let response = p.bhs.0[2];
        // ExpDataSN counts the Data-In (reads) or R2T (writes) PDUs sent (§11.4.8).
        let exp_data_sn = p.bhs.u32_at(36);
        let sent = if t.data_out.is_empty() {
            t.next_data_sn
        } else {
            t.next_r2t_sn
        };
        if response == 0 && exp_data_sn != sent && exp_data_sn != 0 {
            return Err(Error::Protocol(format!(
                "SCSI Response ExpDataSN {exp_data_sn}, but {sent} Data-In/R2T PDUs received"
            )));
        }
        let res = ScsiResult {
            response,
            status: p.bhs.0[3],
            sense,
            data: t.read_buf,
            residual: residual_of(&p.bhs),
        };
        self.finish(itt, res);
        Ok(())
    }

    /// Wait for a reply (NOP-In, TMF, Text, Logout Response, or a Reject of
    /// the request) to the request with `itt`, processing everything else.
    fn wait_reply(&mut self, itt: u32) -> Result<Pdu, Error> {
        loop {
            if let Some(i) = self.replies.iter().position(|p| {
                if p.bhs.opcode() == Some(Opcode::Reject) {
                    p.data.len() >= 20 && p.data[16..20] == itt.to_be_bytes()
                } else {
                    p.bhs.itt().0 == itt
                }
            }) {
                let p = self.replies.remove(i).unwrap();
                if p.bhs.opcode() == Some(Opcode::Reject) {
                    return Err(Error::Rejected {
                        reason: p.bhs.0[2],
                        itt,
                    });
                }
                return Ok(p);
            }
            let p = self.recv_one()?;
            self.dispatch(p)?;
        }
    }

    // ------------------------------------------------------------------
    // SCSI commands
    // ------------------------------------------------------------------

    /// Send a SCSI command without waiting for it (pipelining). `lun` is a
    /// LUN number (encoded with [`cdb::lun_to_raw`]). With `data_out` the
    /// command is a WRITE-type: immediate data and unsolicited Data-Out go
    /// out now, R2Ts are answered whenever PDUs are processed. Waits only
    /// while the target's command window is closed. Returns the ITT.
    pub fn submit(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> Result<u32, Error> {
        if self.params.discovery {
            return Err(Error::Usage("SCSI commands on a discovery session"));
        }
        if cdb.len() > 16 {
            return Err(Error::Unsupported("CDBs longer than 16 bytes"));
        }
        if !data_out.is_empty() && read_len > 0 {
            return Err(Error::Unsupported("bidirectional commands"));
        }
        self.wait_window()?;
        let itt = self.alloc_itt();
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = cmd_sn.next();
        let lun_raw = cdb::lun_to_raw(lun);
        let p = self.params.clone();
        let len = data_out.len();
        let write = len > 0;
        // Immediate data (§13.11) and unsolicited Data-Out (§13.10) together
        // make up at most FirstBurstLength.
        let unsolicited_end = if write && !p.initial_r2t {
            len.min(p.first_burst_length as usize)
        } else {
            0
        };
        let imm = if write && p.immediate_data {
            len.min(p.first_burst_length as usize)
                .min(p.target_max_recv_data_segment_length as usize)
        } else {
            0
        };
        let more_unsolicited = unsolicited_end > imm;

        let mut b = Bhs::new(Opcode::ScsiCommand);
        let mut flags = 0x01; // ATTR = SIMPLE
        if !more_unsolicited {
            flags |= 0x80;
        }
        if read_len > 0 {
            flags |= 0x40;
        }
        if write {
            flags |= 0x20;
        }
        b.set_flags(flags);
        b.set_lun_raw(lun_raw);
        b.set_itt(Itt(itt));
        b.set_u32_at(20, if write { len as u32 } else { read_len });
        b.set_u32_at(24, cmd_sn.0);
        b.set_u32_at(28, self.exp_stat_sn.0);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        queue(&mut self.wbuf, self.digests, &b, &data_out[..imm]);

        if more_unsolicited {
            let seg = p.target_max_recv_data_segment_length as usize;
            let mut at = imm;
            let mut data_sn = 0;
            while at < unsolicited_end {
                let n = seg.min(unsolicited_end - at);
                let mut d = Bhs::new(Opcode::DataOut);
                d.set_flags(if at + n == unsolicited_end { 0x80 } else { 0 });
                d.set_lun_raw(lun_raw);
                d.set_itt(Itt(itt));
                d.set_u32_at(20, RESERVED_TAG);
                d.set_u32_at(28, self.exp_stat_sn.0);
                d.set_u32_at(36, data_sn);
                d.set_u32_at(40, at as u32);
                queue(&mut self.wbuf, self.digests, &d, &data_out[at..at + n]);
                data_sn += 1;
                at += n;
            }
        }
        self.tasks.insert(
            itt,
            Task {
                lun_raw,
                cmd_sn,
                data_out: data_out.to_vec(),
                read_buf: vec![0; read_len as usize],
                next_data_sn: 0,
                next_r2t_sn: 0,
            },
        );
        self.flush()?;
        Ok(itt)
    }

    /// Wait for any submitted command to complete; returns its ITT and result.
    /// A command the target rejected comes back as `Err(Error::Rejected)`.
    pub fn complete(&mut self) -> Result<(u32, ScsiResult), Error> {
        loop {
            if let Some((_, e)) = self.failed.pop_front() {
                return Err(e);
            }
            if let Some(r) = self.done.pop_front() {
                return Ok(r);
            }
            if self.tasks.is_empty() {
                return Err(Error::Usage("complete() with no command outstanding"));
            }
            let p = self.recv_one()?;
            self.dispatch(p)?;
        }
    }

    /// Wait for the command with `itt` to complete (other completions are
    /// kept for later [`Connection::complete`] calls).
    pub fn wait_for(&mut self, itt: u32) -> Result<ScsiResult, Error> {
        loop {
            if let Some(i) = self.failed.iter().position(|(i, _)| *i == itt) {
                return Err(self.failed.remove(i).unwrap().1);
            }
            if let Some(i) = self.done.iter().position(|(i, _)| *i == itt) {
                return Ok(self.done.remove(i).unwrap().1);
            }
            if !self.tasks.contains_key(&itt) {
                return Err(Error::Usage("wait_for() an ITT that is not outstanding"));
            }
            let p = self.recv_one()?;
            self.dispatch(p)?;
        }
    }

    /// Run one SCSI command to completion. A non-GOOD status is a value.
    pub fn scsi(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> Result<ScsiResult, Error> {
        let itt = self.submit(lun, cdb, data_out, read_len)?;
        self.wait_for(itt)
    }

    /// Like [`Connection::scsi`], but a non-GOOD outcome becomes an error.
    pub fn scsi_ok(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        read_len: u32,
    ) -> Result<Vec<u8>, Error> {
        let r = self.scsi(lun, cdb, data_out, read_len)?;
        if r.response != 0 {
            return Err(Error::ServiceResponse(r.response));
        }
        if r.status != 0 {
            return Err(Error::CheckCondition {
                status: r.status,
                sense: r.sense,
            });
        }
        Ok(r.data)
    }

    /// READ(16) of `blocks` blocks at `lba`.
    pub fn read(
        &mut self,
        lun: u64,
        lba: u64,
        blocks: u32,
        block_size: u32,
    ) -> Result<Vec<u8>, Error> {
        self.scsi_ok(lun, &cdb::read16(lba, blocks), &[], blocks * block_size)
    }

    /// WRITE(16) of `data` (a whole number of blocks) at `lba`.
    pub fn write(&mut self, lun: u64, lba: u64, data: &[u8], block_size: u32) -> Result<(), Error> {
        if !data.len().is_multiple_of(block_size as usize) {
            return Err(Error::Usage(
                "write length is not a multiple of the block size",
            ));
        }
        let blocks = (data.len() / block_size as usize) as u32;
        self.scsi_ok(lun, &cdb::write16(lba, blocks), data, 0)
            .map(drop)
    }

    /// Standard INQUIRY data (up to 255 bytes).
    pub fn inquiry(&mut self, lun: u64) -> Result<Vec<u8>, Error> {
        self.scsi_ok(lun, &cdb::inquiry(None, 255), &[], 255)
    }

    /// INQUIRY of a VPD page.
    pub fn inquiry_vpd(&mut self, lun: u64, page: u8) -> Result<Vec<u8>, Error> {
        self.scsi_ok(lun, &cdb::inquiry(Some(page), 4096), &[], 4096)
    }

    /// READ CAPACITY(16): (number of blocks, block size).
    pub fn read_capacity16(&mut self, lun: u64) -> Result<(u64, u32), Error> {
        let d = self.scsi_ok(lun, &cdb::read_capacity16(32), &[], 32)?;
        if d.len() < 12 {
            return Err(Error::Protocol(format!(
                "READ CAPACITY(16) returned {} bytes",
                d.len()
            )));
        }
        let last = u64::from_be_bytes(d[0..8].try_into().unwrap());
        let bs = u32::from_be_bytes(d[8..12].try_into().unwrap());
        Ok((last + 1, bs))
    }

    /// TEST UNIT READY; the result is returned as a value (a unit attention is normal).
    pub fn test_unit_ready(&mut self, lun: u64) -> Result<ScsiResult, Error> {
        self.scsi(lun, &cdb::test_unit_ready(), &[], 0)
    }

    /// SYNCHRONIZE CACHE(10) of the whole LU.
    pub fn sync_cache(&mut self, lun: u64) -> Result<(), Error> {
        self.scsi_ok(lun, &cdb::sync_cache10(), &[], 0).map(drop)
    }

    // ------------------------------------------------------------------
    // NOP, TMF, Text, Logout
    // ------------------------------------------------------------------

    /// NOP-Out ping (immediate, §11.18) and wait for its NOP-In.
    pub fn nop(&mut self) -> Result<(), Error> {
        self.nop_data(&[]).map(drop)
    }

    /// NOP-Out carrying ping data; returns the data the target echoed.
    pub fn nop_data(&mut self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(Opcode::NopOut);
        b.0[0] |= 0x40;
        b.set_flags(0x80);
        b.set_itt(Itt(itt));
        b.set_u32_at(20, RESERVED_TAG);
        b.set_u32_at(24, self.cmd_sn.0);
        b.set_u32_at(28, self.exp_stat_sn.0);
        self.send_one(&b, data)?;
        let r = self.wait_reply(itt)?;
        if r.bhs.opcode() != Some(Opcode::NopIn) {
            return Err(Error::Protocol(format!(
                "{:?} answered a NOP-Out",
                r.bhs.opcode()
            )));
        }
        Ok(r.data)
    }

    /// Task management request (immediate, §11.5); returns the Response
    /// field (0 = function complete, 1 = task does not exist, 5 = not supported...).
    /// Tasks the function aborted are forgotten (their late PDUs are ignored).
    pub fn task_mgmt(&mut self, function: u8, lun: u64, ref_itt: u32) -> Result<u8, Error> {
        let itt = self.alloc_itt();
        let lun_raw = cdb::lun_to_raw(lun);
        let mut b = Bhs::new(Opcode::TaskMgmtRequest);
        b.0[0] |= 0x40;
        b.set_flags(0x80 | (function & 0x7f));
        b.set_lun_raw(lun_raw);
        b.set_itt(Itt(itt));
        b.set_u32_at(20, ref_itt);
        b.set_u32_at(24, self.cmd_sn.0);
        b.set_u32_at(28, self.exp_stat_sn.0);
        let ref_cmd_sn = self
            .tasks
            .get(&ref_itt)
            .map(|t| t.cmd_sn.0)
            .unwrap_or(self.cmd_sn.0);
        b.set_u32_at(32, ref_cmd_sn);
        self.send_one(&b, &[])?;
        let r = self.wait_reply(itt)?;
        if r.bhs.opcode() != Some(Opcode::TaskMgmtResponse) {
            return Err(Error::Protocol(format!(
                "{:?} answered a TMF request",
                r.bhs.opcode()
            )));
        }
        let response = r.bhs.0[2];
        if response == 0 {
            // Tasks affected complete without a response (RFC 7143 §4.2.3.x / SAM).
            let gone: Vec<u32> = match function {
                crate::tmf::ABORT_TASK => vec![ref_itt],
                crate::tmf::ABORT_TASK_SET
                | crate::tmf::CLEAR_TASK_SET
                | crate::tmf::LOGICAL_UNIT_RESET => self
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.lun_raw == lun_raw)
                    .map(|(i, _)| *i)
                    .collect(),
                crate::tmf::TARGET_WARM_RESET | crate::tmf::TARGET_COLD_RESET => {
                    self.tasks.keys().copied().collect()
                }
                _ => Vec::new(),
            };
            for i in gone {
                if self.tasks.remove(&i).is_some() {
                    self.aborted.insert(i);
                }
            }
        }
        Ok(response)
    }

    /// Text request/response exchange (§11.10), following continuation
    /// (C bit, the target's TTT) until the final response. Non-immediate, so
    /// it takes a CmdSN.
    pub fn text_request(
        &mut self,
        pairs: &[(String, String)],
    ) -> Result<Vec<(String, String)>, Error> {
        let payload = text::encode(pairs);
        if payload.len() > self.params.target_max_recv_data_segment_length as usize {
            return Err(Error::Unsupported("text requests longer than one PDU"));
        }
        let itt = self.alloc_itt();
        let mut ttt = RESERVED_TAG;
        let mut data = Vec::new();
        let mut first = true;
        for _ in 0..10_000 {
            self.wait_window()?;
            let mut b = Bhs::new(Opcode::TextRequest);
            b.set_flags(0x80);
            b.set_itt(Itt(itt));
            b.set_u32_at(20, ttt);
            b.set_u32_at(24, self.cmd_sn.0);
            b.set_u32_at(28, self.exp_stat_sn.0);
            self.cmd_sn = self.cmd_sn.next();
            let body: &[u8] = if first { &payload } else { &[] };
            first = false;
            self.send_one(&b, body)?;
            let r = self.wait_reply(itt)?;
            if r.bhs.opcode() != Some(Opcode::TextResponse) {
                return Err(Error::Protocol(format!(
                    "{:?} answered a Text request",
                    r.bhs.opcode()
                )));
            }
            data.extend_from_slice(&r.data);
            let (fin, cont) = (r.bhs.flags() & 0x80 != 0, r.bhs.flags() & 0x40 != 0);
            if fin && cont {
                return Err(Error::Protocol("Text Response with both F and C".into()));
            }
            if fin {
                return Ok(text::parse(&data));
            }
            ttt = r.bhs.u32_at(20);
            if ttt == RESERVED_TAG {
                return Err(Error::Protocol(
                    "non-final Text Response with TTT 0xffffffff".into(),
                ));
            }
        }
        Err(Error::Protocol("endless Text Response continuation".into()))
    }

    /// SendTargets (RFC 7143 Appendix C): `what` is `All`, a target name or
    /// empty. Returns (TargetName, [TargetAddress...]) in the target's order.
    pub fn send_targets(&mut self, what: &str) -> Result<Vec<(String, Vec<String>)>, Error> {
        let pairs = self.text_request(&[("SendTargets".to_string(), what.to_string())])?;
        Ok(text::group_send_targets(&pairs))
    }

    /// Logout request (immediate, §11.14) with `reason`
    /// ([`crate::logout_reason`]); returns the Logout Response's Response field.
    pub fn logout(&mut self, reason: u8) -> Result<u8, Error> {
        let itt = self.alloc_itt();
        let mut b = Bhs::new(Opcode::LogoutRequest);
        b.0[0] |= 0x40;
        b.set_flags(0x80 | (reason & 0x7f));
        b.set_itt(Itt(itt));
        b.set_u16_at(20, self.cid);
        b.set_u32_at(24, self.cmd_sn.0);
        b.set_u32_at(28, self.exp_stat_sn.0);
        self.send_one(&b, &[])?;
        let r = self.wait_reply(itt)?;
        if r.bhs.opcode() != Some(Opcode::LogoutResponse) {
            return Err(Error::Protocol(format!(
                "{:?} answered a Logout request",
                r.bhs.opcode()
            )));
        }
        Ok(r.bhs.0[2])
    }
}
