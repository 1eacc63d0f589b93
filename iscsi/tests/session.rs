//! The full feature phase in memory: an initiator's PDUs in as bytes, the
//! session's PDUs out, SCSI played by the test, time passed in by hand.
//! Each scenario is one the RFC fixes and a driver over TCP used to get
//! wrong or could only test with a live socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use iscsi::params::{SessionParams, SessionType};
use iscsi::pdu::{self, Bhs, Opcode, Pdu, RESERVED_TAG};
use iscsi::session::{
    Close, ConnConfig, ConnId, Reset, Session, SessionConfig, SessionHost, Token,
};
use iscsi::transfer::BurstLimits;
use iscsi::{CmdSn, Digests, StatSn, TargetEntry};

const TARGET: &str = "iqn.2026-11.io.rtgt:mem";

#[derive(Default)]
struct Host {
    resets: Vec<Reset>,
}

impl SessionHost for Host {
    fn lun_exists(&mut self, lun: u64) -> bool {
        lun <= 1
    }
    fn targets(&mut self) -> Vec<TargetEntry> {
        let a: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        vec![(TARGET.to_string(), vec![(a, 1)])]
    }
    fn reset(&mut self, what: Reset) {
        self.resets.push(what);
    }
}

fn negotiated() -> SessionParams {
    SessionParams {
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 1,
        max_xmit_data_segment_length: 4096,
        max_burst_length: 16384,
        first_burst_length: 16384,
        initial_r2t: false,
        max_outstanding_r2t: 2,
        ..SessionParams::rfc_defaults(
            SessionType::Normal,
            "iqn.2026-11.io.rtgt:test",
            Some(TARGET),
        )
    }
}

fn limits() -> BurstLimits {
    BurstLimits {
        immediate_data: true,
        initial_r2t: false,
        first_burst: 16384,
        max_burst: 16384,
        max_outstanding_r2t: 2,
    }
}

fn conn_cfg(cid: u16) -> ConnConfig {
    ConnConfig {
        cid,
        digests: Digests::default(),
        max_recv: 8192,
        max_xmit: 4096,
        limits: limits(),
        stat_sn: StatSn(100),
        nop_interval: Duration::from_secs(5),
        nop_count: 2,
    }
}

struct T {
    s: Session,
    c: ConnId,
    host: Host,
    now: Instant,
}

fn start(exp: u32, depth: u32) -> T {
    let mut s = Session::new(SessionConfig {
        exp_cmd_sn: CmdSn(exp),
        queue_depth: depth,
        time2wait: 2,
        time2retain: 20,
        max_transfer: 1 << 20,
        write_budget: 4 << 20,
        discovery: false,
    });
    let now = Instant::now();
    let (c, old) = s.add_conn(conn_cfg(0), &negotiated(), now);
    assert!(old.is_none());
    T {
        s,
        c,
        host: Host::default(),
        now,
    }
}

/// One PDU out: its header and data.
#[derive(Debug)]
struct Out {
    bhs: Bhs,
    data: Vec<u8>,
}

impl Out {
    fn op(&self) -> Opcode {
        self.bhs.opcode().unwrap()
    }
}

impl T {
    fn send(&mut self, p: &Pdu) -> Result<usize, Close> {
        let bytes = p.encode(Digests::default());
        let r = self.s.receive(self.c, &bytes, &mut self.host);
        if let Ok(n) = r {
            assert_eq!(n, bytes.len(), "a whole PDU is taken at once");
        }
        r
    }
    fn send_ok(&mut self, p: &Pdu) {
        self.send(p).expect("connection stays up");
    }
    /// Everything queued for the wire, written and handed back.
    fn out(&mut self) -> Vec<Out> {
        let mut v = Vec::new();
        while let Some(t) = self.s.poll_transmit(self.c) {
            let data = self.s.payload(&t).to_vec();
            assert_eq!(t.bhs.data_len(), data.len());
            v.push(Out { bhs: t.bhs, data });
            self.s.release(t);
        }
        v
    }
    /// Commands ready for SCSI: token, first CDB byte, the buffer.
    fn scsi(&mut self) -> Vec<(Token, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some((cmd, buf)) = self.s.poll_scsi() {
            v.push((cmd.token, cmd.cdb[0], cmd.edtl, buf));
        }
        v
    }
    /// Answer a read with `n` bytes of pattern.
    fn read_done(&mut self, tok: Token, mut buf: Vec<u8>, n: usize, wanted: u64) -> bool {
        buf.clear();
        buf.extend((0..n).map(|i| i as u8));
        self.s
            .handle_scsi_done(tok, 0, &[], n, wanted, buf)
            .is_some()
    }
}

fn bhs(op: Opcode, itt: u32, sn: u32) -> Bhs {
    let mut b = Bhs::new(op);
    b.set_itt(pdu::Itt(itt));
    b.set_u32_at(24, sn);
    b
}

fn read_cmd(itt: u32, sn: u32, edtl: u32) -> Pdu {
    let mut b = bhs(Opcode::ScsiCommand, itt, sn);
    b.set_flags(0x80 | 0x40);
    b.set_u32_at(20, edtl);
    b.0[32] = 0x88; // READ(16)
    Pdu::new(b)
}

fn write_cmd(itt: u32, sn: u32, edtl: u32, imm: &[u8], fin: bool) -> Pdu {
    let mut b = bhs(Opcode::ScsiCommand, itt, sn);
    b.set_flags(if fin { 0x80 } else { 0 } | 0x20);
    b.set_u32_at(20, edtl);
    b.0[32] = 0x8a; // WRITE(16)
    Pdu::with_data(b, imm.to_vec())
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, data: &[u8], fin: bool) -> Pdu {
    let mut b = Bhs::new(Opcode::DataOut);
    b.set_flags(if fin { 0x80 } else { 0 });
    b.set_itt(pdu::Itt(itt));
    b.set_u32_at(20, ttt);
    b.set_u32_at(36, data_sn);
    b.set_u32_at(40, offset);
    Pdu::with_data(b, data.to_vec())
}

fn nop_out(itt: u32, sn: u32) -> Pdu {
    let mut b = bhs(Opcode::NopOut, itt, sn);
    b.set_flags(0x80);
    b.set_u32_at(20, RESERVED_TAG);
    Pdu::with_data(b, b"ping".to_vec())
}

fn tmf(itt: u32, sn: u32, func: u8, lun: u64, ref_itt: u32, ref_sn: u32) -> Pdu {
    let mut b = bhs(Opcode::TaskMgmtRequest, itt, sn);
    b.0[0] |= 0x40; // immediate
    b.set_flags(0x80 | func);
    b.set_lun_raw(lun << 48);
    b.set_u32_at(20, ref_itt);
    b.set_u32_at(32, ref_sn);
    Pdu::new(b)
}

fn text(itt: u32, sn: u32, ttt: u32, kv: &[u8]) -> Pdu {
    let mut b = bhs(Opcode::TextRequest, itt, sn);
    b.set_flags(0x80);
    b.set_u32_at(20, ttt);
    Pdu::with_data(b, kv.to_vec())
}

fn logout(itt: u32, sn: u32, reason: u8) -> Pdu {
    let mut b = bhs(Opcode::LogoutRequest, itt, sn);
    b.set_flags(0x80 | reason);
    Pdu::new(b)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn write_with_immediate_unsolicited_and_solicited_data() {
    let mut t = start(1, 16);
    let all = pattern(65536);
    // 8 KiB immediate, F=0: unsolicited Data-Out may follow up to
    // FirstBurstLength (16 KiB).
    t.send_ok(&write_cmd(1, 1, 65536, &all[..8192], false));
    assert!(t.out().is_empty(), "no R2T while unsolicited data is open");
    t.send_ok(&data_out(1, RESERVED_TAG, 0, 8192, &all[8192..16384], true));
    // Then R2Ts of MaxBurstLength, two outstanding at most.
    let r2ts = t.out();
    assert_eq!(r2ts.len(), 2);
    let offs: Vec<_> = r2ts.iter().map(|o| o.bhs.buffer_offset()).collect();
    assert_eq!(offs, [16384, 32768]);
    for (i, r) in r2ts.iter().enumerate() {
        assert_eq!(r.op(), Opcode::R2t);
        assert_eq!(r.bhs.u32_at(36), i as u32, "R2TSN");
        assert_eq!(r.bhs.u32_at(44), 16384, "desired length");
        // R2T carries StatSN without consuming it.
        assert_eq!(r.bhs.stat_sn(), StatSn(100));
    }
    let ttt0 = r2ts[0].bhs.ttt().0;
    let ttt1 = r2ts[1].bhs.ttt().0;
    assert_ne!(ttt0, ttt1);
    // Two Data-Out per R2T (MaxRecvDataSegmentLength 8 KiB).
    t.send_ok(&data_out(1, ttt0, 0, 16384, &all[16384..24576], false));
    t.send_ok(&data_out(1, ttt0, 1, 24576, &all[24576..32768], true));
    let third = t.out();
    assert_eq!(third.len(), 1, "a finished R2T makes room for the next");
    assert_eq!(third[0].bhs.buffer_offset(), 49152);
    assert_eq!(third[0].bhs.u32_at(36), 2);
    t.send_ok(&data_out(1, ttt1, 0, 32768, &all[32768..40960], false));
    t.send_ok(&data_out(1, ttt1, 1, 40960, &all[40960..49152], true));
    assert!(t.scsi().is_empty(), "not before the last byte");
    let ttt2 = third[0].bhs.ttt().0;
    t.send_ok(&data_out(1, ttt2, 0, 49152, &all[49152..57344], false));
    t.send_ok(&data_out(1, ttt2, 1, 57344, &all[57344..], true));
    let mut ready = t.scsi();
    assert_eq!(ready.len(), 1);
    let (tok, op, edtl, buf) = ready.pop().unwrap();
    assert_eq!((op, edtl), (0x8a, 65536));
    assert!(buf == all, "the buffer holds every byte at its offset");
    let a = t.s.handle_scsi_done(tok, 0, &[], 0, 65536, buf).unwrap();
    assert_eq!((a.written, a.read, a.ok), (65536, 0, true));
    let resp = t.out();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].op(), Opcode::ScsiResponse);
    assert_eq!(resp[0].bhs.stat_sn(), StatSn(100));
    assert_eq!(t.s.in_flight(), 0);
    assert_eq!(t.s.tasks_live(), 0);
}

#[test]
fn data_out_outside_the_r2t_fails_the_command_not_the_connection() {
    let mut t = start(1, 16);
    t.send_ok(&write_cmd(1, 1, 32768, &[], true));
    let r2ts = t.out();
    assert_eq!(r2ts.len(), 2);
    // Offset beyond what the first R2T solicited.
    t.send_ok(&data_out(
        1,
        r2ts[0].bhs.ttt().0,
        0,
        20000,
        &[0u8; 512],
        false,
    ));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].op(), Opcode::ScsiResponse);
    assert_eq!(o[0].bhs.0[3], 0x02, "CHECK CONDITION");
    assert_eq!(o[0].data[2 + 2] & 0x0f, 0x0b, "ABORTED COMMAND");
    assert_eq!(o[0].data[2 + 12], 0x4b, "DATA PHASE ERROR");
    assert!(t.scsi().is_empty());
    assert_eq!(t.s.in_flight(), 0);
}

#[test]
fn data_in_collapses_status_and_counts_residuals() {
    let mut t = start(1, 16);
    // Underflow: 10000 expected, 8192 returned; two Data-In of 4096
    // (MaxRecvDataSegmentLength of the initiator), status on the last.
    t.send_ok(&read_cmd(1, 1, 10000));
    let (tok, _, _, buf) = t.scsi().pop().unwrap();
    assert!(t.read_done(tok, buf, 8192, 8192));
    let o = t.out();
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|p| p.op() == Opcode::DataIn));
    assert_eq!(o[0].bhs.flags() & 0x01, 0, "no status on the first");
    assert_eq!(o[0].bhs.u32_at(36), 0);
    assert_eq!(o[1].bhs.u32_at(36), 1, "DataSN");
    assert_eq!(o[1].bhs.buffer_offset(), 4096);
    assert_eq!(o[1].bhs.flags() & 0x81, 0x81, "F and S on the last");
    assert_eq!(o[1].bhs.flags() & 0x02, 0x02, "U: underflow");
    assert_eq!(o[1].bhs.u32_at(44), 10000 - 8192);
    // Only the PDU with status consumes a StatSN.
    assert_eq!(o[0].bhs.stat_sn(), StatSn(100));
    assert_eq!(o[1].bhs.stat_sn(), StatSn(100));
    assert_eq!(o[0].data, (0..4096).map(|i| i as u8).collect::<Vec<_>>());
    // Overflow: the command asks 8192, the initiator expects 4096.
    t.send_ok(&read_cmd(2, 2, 4096));
    let (tok, _, _, buf) = t.scsi().pop().unwrap();
    assert!(t.read_done(tok, buf, 8192, 8192));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].data.len(), 4096);
    assert_eq!(o[0].bhs.flags() & 0x04, 0x04, "O: overflow");
    assert_eq!(o[0].bhs.u32_at(44), 4096);
    assert_eq!(o[0].bhs.stat_sn(), StatSn(101));
    // With sense the status goes in a SCSI Response, not on Data-In
    // (RFC 7143 §11.7.3 forbids collapse then).
    t.send_ok(&read_cmd(3, 3, 512));
    let (tok, _, _, mut buf) = t.scsi().pop().unwrap();
    buf.resize(512, 0);
    let sense = [
        0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0,
    ];
    assert!(t
        .s
        .handle_scsi_done(tok, 2, &sense, 512, 512, buf)
        .is_some());
    let o = t.out();
    assert_eq!(o.len(), 1, "no data with CHECK CONDITION");
    assert_eq!(o[0].op(), Opcode::ScsiResponse);
    assert_eq!(&o[0].data[2..], &sense);
    assert_eq!(t.s.tasks_live(), 0, "Data-In buffers are released");
}

#[test]
fn abort_task_of_a_write_waiting_for_data_out() {
    let mut t = start(1, 16);
    t.send_ok(&write_cmd(5, 1, 32768, &[], true));
    let r2ts = t.out();
    assert_eq!(r2ts.len(), 2);
    assert_eq!(t.s.in_flight(), 1);
    t.send_ok(&tmf(9, 2, 1, 0, 5, 1));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].op(), Opcode::TaskMgmtResponse);
    assert_eq!(o[0].bhs.0[2], 0, "function complete");
    assert_eq!(t.s.in_flight(), 0, "the aborted task gave back its slot");
    // The Data-Out the initiator had already sent finds no task: ignored.
    t.send_ok(&data_out(5, r2ts[0].bhs.ttt().0, 0, 0, &[1u8; 8192], false));
    t.send_ok(&data_out(
        5,
        r2ts[0].bhs.ttt().0,
        1,
        8192,
        &[1u8; 8192],
        true,
    ));
    assert!(t.out().is_empty());
    assert!(t.scsi().is_empty());
    assert_eq!(t.s.tasks_live(), 0);
    // And the ITT can be used again.
    t.send_ok(&read_cmd(5, 2, 512));
    assert_eq!(t.scsi().len(), 1);
}

#[test]
fn lun_reset_with_commands_in_flight() {
    let mut t = start(1, 16);
    t.send_ok(&read_cmd(1, 1, 512));
    t.send_ok(&read_cmd(2, 2, 512));
    let running = t.scsi();
    assert_eq!(running.len(), 2);
    t.send_ok(&write_cmd(3, 3, 16384, &[], true));
    assert_eq!(t.out().len(), 1, "one R2T");
    assert_eq!(t.s.in_flight(), 3);
    t.send_ok(&tmf(9, 4, 5, 0, RESERVED_TAG, 0));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].bhs.0[2], 0);
    assert_eq!(t.host.resets, [Reset::Lun(0)]);
    assert_eq!(t.s.in_flight(), 0);
    // Completions arriving after the reset send nothing.
    for (tok, _, _, buf) in running {
        assert!(!t.read_done(tok, buf, 512, 512));
    }
    assert!(t.out().is_empty());
    assert_eq!(t.s.tasks_live(), 0);
    // A reset of a LUN that does not exist answers 2.
    t.send_ok(&tmf(10, 4, 5, 7, RESERVED_TAG, 0));
    assert_eq!(t.out()[0].bhs.0[2], 2);
}

/// TARGET COLD RESET (RFC 7143 §11.5.1): tasks aborted, the target
/// reset, the response queued, and then the connection closes; before
/// this function answered 5 (not supported).
#[test]
fn target_cold_reset_answers_then_closes() {
    let mut t = start(1, 16);
    t.send_ok(&read_cmd(1, 1, 512));
    assert_eq!(t.scsi().len(), 1);
    assert!(!t.s.is_closing(t.c));
    t.send_ok(&tmf(9, 2, 7, 0, RESERVED_TAG, 0));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].bhs.opcode(), Some(Opcode::TaskMgmtResponse));
    assert_eq!(o[0].bhs.0[2], 0, "function complete");
    assert_eq!(t.host.resets, [Reset::TargetCold]);
    assert_eq!(t.s.in_flight(), 0);
    assert!(t.s.is_closing(t.c));
}

#[test]
fn unanswered_pings_end_the_connection() {
    let mut t = start(1, 16);
    let t0 = t.now;
    assert_eq!(t.s.poll_timeout(t.c), Some(t0 + Duration::from_secs(5)));
    // Login traffic counts as activity: the first interval sends nothing.
    t.s.handle_timeout(t.c, t0 + Duration::from_secs(5))
        .unwrap();
    assert!(t.out().is_empty());
    t.s.handle_timeout(t.c, t0 + Duration::from_secs(10))
        .unwrap();
    let ping = t.out();
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].op(), Opcode::NopIn);
    assert_eq!(ping[0].bhs.itt().0, RESERVED_TAG);
    assert_ne!(ping[0].bhs.ttt().0, RESERVED_TAG);
    t.s.handle_timeout(t.c, t0 + Duration::from_secs(15))
        .unwrap();
    assert_eq!(t.out().len(), 1);
    let r = t.s.handle_timeout(t.c, t0 + Duration::from_secs(20));
    assert!(matches!(r, Err(Close::Protocol(_))));
}

#[test]
fn a_logout_request_asks_then_closes_if_unheeded() {
    // RFC 7143 §11.9.1: AsyncEvent 1, Parameter3 the seconds to log out in.
    let mut t = start(1, 16);
    let t0 = t.now;
    assert!(t.s.request_logout(0, Duration::from_secs(3), t0));
    assert!(
        !t.s.request_logout(9, Duration::from_secs(3), t0),
        "no CID 9"
    );
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].op(), Opcode::AsyncMessage);
    assert_eq!(o[0].bhs.0[36], 1, "AsyncEvent 1: logout requested");
    assert_eq!(u16::from_be_bytes([o[0].bhs.0[42], o[0].bhs.0[43]]), 3);
    assert_eq!(o[0].bhs.itt().0, RESERVED_TAG);
    // It takes a StatSN: the next response carries the one after.
    let stat_sn = o[0].bhs.u32_at(24);
    t.send_ok(&nop_out(1, 1));
    assert_eq!(t.out()[0].bhs.u32_at(24), stat_sn.wrapping_add(1));
    // The deadline is the earlier of the ping and the logout.
    assert_eq!(t.s.poll_timeout(t.c), Some(t0 + Duration::from_secs(3)));
    let r = t.s.handle_timeout(t.c, t0 + Duration::from_secs(3));
    assert!(matches!(r, Err(Close::Protocol(_))));

    // Heeded: the initiator logs out and the connection ends cleanly.
    let mut t = start(1, 16);
    assert!(t.s.request_logout(0, Duration::from_secs(30), t.now));
    t.out();
    t.send_ok(&logout(1, 1, 0));
    let o = t.out();
    assert_eq!(o[0].op(), Opcode::LogoutResponse);
    assert!(t.s.is_closing(t.c));
}

#[test]
fn an_answered_ping_keeps_the_connection() {
    let mut t = start(1, 16);
    let t0 = t.now;
    for i in 1..10u64 {
        let now = t0 + Duration::from_secs(5 * i);
        t.s.handle_timeout(t.c, now).unwrap();
        for p in t.out() {
            // The initiator answers our ping: ITT reserved, our TTT.
            let mut b = Bhs::new(Opcode::NopOut);
            b.0[0] |= 0x40;
            b.set_flags(0x80);
            b.set_itt(pdu::Itt(RESERVED_TAG));
            b.set_u32_at(20, p.bhs.ttt().0);
            b.set_u32_at(24, 1);
            t.send_ok(&Pdu::new(b));
            assert!(t.out().is_empty(), "a ping answer is not answered");
        }
    }
}

#[test]
fn logout_with_commands_in_flight() {
    let mut t = start(1, 16);
    t.send_ok(&read_cmd(1, 1, 4096));
    let running = t.scsi();
    t.send_ok(&logout(2, 2, 0));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].op(), Opcode::LogoutResponse);
    assert_eq!(o[0].bhs.0[2], 0);
    assert_eq!(o[0].bhs.u16_at(40), 2, "Time2Wait");
    assert!(t.s.is_closing(t.c));
    // The driver closes the socket: the connection leaves, its last
    // command ends without an answer, and nothing of it stays.
    assert_eq!(t.s.remove_conn(t.c), Some(true));
    for (tok, _, _, buf) in running {
        assert!(!t.read_done(tok, buf, 4096, 4096));
    }
    assert_eq!(t.s.tasks_live(), 0);
    assert_eq!(t.s.in_flight(), 0);
    assert!(matches!(t.send(&nop_out(3, 3)), Err(Close::Gone)));
}

#[test]
fn cmdsn_wraps_past_2_pow_32() {
    let mut t = start(u32::MAX - 2, 8);
    for i in 0..6u32 {
        let sn = (u32::MAX - 2).wrapping_add(i);
        t.send_ok(&nop_out(i + 1, sn));
        let o = t.out();
        assert_eq!(o.len(), 1, "NOP-Out {i} (CmdSN {sn:#x}) answered");
        assert_eq!(o[0].data, b"ping");
        assert_eq!(o[0].bhs.exp_cmd_sn(), CmdSn(sn.wrapping_add(1)));
        assert_eq!(o[0].bhs.max_cmd_sn(), CmdSn(sn.wrapping_add(8)));
        assert_eq!(o[0].bhs.stat_sn(), StatSn(100 + i));
    }
}

#[test]
fn a_full_window_ignores_what_lies_beyond_it() {
    let mut t = start(10, 4);
    for i in 0..4 {
        t.send_ok(&read_cmd(i + 1, 10 + i, 512));
    }
    let running = t.scsi();
    assert_eq!(running.len(), 4);
    let (exp, max) = t.s.window_numbers();
    assert_eq!(exp, CmdSn(14));
    assert_eq!(max, CmdSn(13), "closed: MaxCmdSN = ExpCmdSN - 1");
    // An initiator that ignores MaxCmdSN: nothing runs, nothing is held.
    for i in 0..1000 {
        t.send_ok(&read_cmd(100 + i, 14 + i, 512));
    }
    assert!(t.scsi().is_empty());
    assert!(t.out().is_empty());
    assert_eq!(t.s.held(), 0);
    assert_eq!(t.s.in_flight(), 4);
    // Answers open the window again.
    for (tok, _, _, buf) in running {
        assert!(t.read_done(tok, buf, 512, 512));
    }
    let o = t.out();
    assert_eq!(o.last().unwrap().bhs.max_cmd_sn(), CmdSn(17));
    t.send_ok(&read_cmd(2000, 14, 512));
    assert_eq!(t.scsi().len(), 1);
}

#[test]
fn a_reused_active_itt_is_rejected() {
    let mut t = start(1, 16);
    t.send_ok(&read_cmd(7, 1, 512));
    let mut first = t.scsi();
    t.send_ok(&read_cmd(7, 2, 512));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].op(), Opcode::Reject);
    assert_eq!(o[0].bhs.0[2], 0x07, "task in progress");
    assert!(t.scsi().is_empty());
    assert_eq!(t.s.in_flight(), 1, "the refused command's slot is back");
    assert_eq!(t.s.window_numbers().0, CmdSn(3), "its CmdSN is used");
    let (tok, _, _, buf) = first.pop().unwrap();
    assert!(t.read_done(tok, buf, 512, 512));
    assert_eq!(t.out()[0].bhs.itt().0, 7);
}

#[test]
fn abort_task_of_a_command_never_received_fills_the_gap() {
    let mut t = start(1, 16);
    // CmdSN 1 is lost on the way; 2 waits behind the gap.
    t.send_ok(&read_cmd(2, 2, 512));
    assert!(t.scsi().is_empty());
    assert_eq!(t.s.held(), 1);
    // ABORT TASK for ITT 1, RefCmdSN 1 (immediate, CmdSN 3).
    t.send_ok(&tmf(9, 3, 1, 0, 1, 1));
    let o = t.out();
    assert_eq!(o[0].op(), Opcode::TaskMgmtResponse);
    assert_eq!(o[0].bhs.0[2], 0, "function complete (§11.5.1)");
    assert_eq!(t.scsi().len(), 1, "the command behind the gap runs");
    assert_eq!(t.s.held(), 0);
    // An ABORT TASK for a tag never seen and a CmdSN long done: 1.
    t.send_ok(&tmf(10, 3, 1, 0, 77, 0));
    assert_eq!(t.out()[0].bhs.0[2], 1, "task does not exist");
}

#[test]
fn commands_held_behind_a_gap_leave_with_their_connection() {
    let mut t = start(1, 64);
    for i in 0..50 {
        t.send_ok(&write_cmd(i + 1, 2 + i, 512, &[7u8; 512], true));
    }
    assert_eq!(t.s.held(), 50);
    assert_eq!(t.s.remove_conn(t.c), Some(true));
    assert_eq!(t.s.held(), 0, "nothing outlives the session");
    assert_eq!(t.s.tasks_live(), 0);
}

#[test]
fn text_in_a_normal_session() {
    let mut t = start(1, 16);
    // SendTargets with an empty value: this session's target.
    t.send_ok(&text(1, 1, RESERVED_TAG, b"SendTargets=\0"));
    let o = t.out();
    assert_eq!(o[0].op(), Opcode::TextResponse);
    let body = String::from_utf8(o[0].data.clone()).unwrap();
    assert!(body.contains(&format!("TargetName={TARGET}")), "{body}");
    assert!(body.contains("TargetAddress=127.0.0.1:3260,1"), "{body}");
    // An unknown key: NotUnderstood, and the next request is answered too.
    t.send_ok(&text(2, 2, RESERVED_TAG, b"SendTargetsPlease=All\0"));
    let o = t.out();
    let body = String::from_utf8(o[0].data.clone()).unwrap();
    assert!(body.contains("SendTargetsPlease=NotUnderstood"), "{body}");
    t.send_ok(&text(3, 3, RESERVED_TAG, b"SendTargets=All\0"));
    let o = t.out();
    assert_eq!(o.len(), 1, "every Text request is answered");
    let body = String::from_utf8(o[0].data.clone()).unwrap();
    assert!(body.contains("SendTargets=Reject"), "{body}");
    assert_eq!(t.s.in_flight(), 0);
}

#[test]
fn a_restarted_text_exchange_starts_over() {
    let mut t = start(1, 16);
    // A request in two PDUs (C bit), then the same ITT with TTT 0xffffffff:
    // the initiator abandoned the first and starts again (§11.10).
    let mut first = text(4, 1, RESERVED_TAG, b"SendTarg");
    first.bhs.set_flags(0x40);
    t.send_ok(&first);
    let o = t.out();
    assert_eq!(o.len(), 1, "the partial request is acknowledged");
    let ttt = o[0].bhs.ttt().0;
    assert_ne!(ttt, RESERVED_TAG);
    t.send_ok(&text(4, 2, RESERVED_TAG, b"SendTargets=\0"));
    let o = t.out();
    let body = String::from_utf8(o[0].data.clone()).unwrap();
    assert!(
        body.starts_with("TargetName="),
        "not glued to the old piece: {body}"
    );
}

#[test]
fn a_data_digest_error_is_rejected_and_the_pdu_dropped() {
    let mut s = Session::new(SessionConfig {
        exp_cmd_sn: CmdSn(1),
        queue_depth: 16,
        time2wait: 2,
        time2retain: 20,
        max_transfer: 1 << 20,
        write_budget: 4 << 20,
        discovery: false,
    });
    let mut cfg = conn_cfg(0);
    cfg.digests = Digests {
        header: true,
        data: true,
    };
    let (c, _) = s.add_conn(cfg, &negotiated(), Instant::now());
    let mut host = Host::default();
    let dg = cfg.digests;
    let mut bytes = nop_out(1, 1).encode(dg);
    let n = bytes.len();
    bytes[n - 6] ^= 1; // inside the data segment
    bytes.extend_from_slice(&nop_out(2, 1).encode(dg));
    assert_eq!(s.receive(c, &bytes, &mut host), Ok(bytes.len()));
    let mut ops = Vec::new();
    while let Some(t) = s.poll_transmit(c) {
        ops.push((t.bhs.opcode().unwrap(), t.bhs.0[2]));
        s.release(t);
    }
    assert_eq!(
        ops,
        [(Opcode::Reject, 0x02), (Opcode::NopIn, 0)],
        "the damaged ping is refused, the next one answered"
    );
}

#[test]
fn a_second_connection_with_the_same_cid_replaces_the_first() {
    let mut t = start(1, 16);
    t.send_ok(&read_cmd(1, 1, 512));
    let running = t.scsi();
    let (c2, old) = t.s.add_conn(conn_cfg(0), &negotiated(), t.now);
    assert_eq!(old, Some(t.c));
    assert_eq!(t.s.remove_conn(t.c), None, "already gone");
    for (tok, _, _, buf) in running {
        assert!(!t.read_done(tok, buf, 512, 512));
    }
    assert_eq!(t.s.in_flight(), 0);
    t.c = c2;
    t.send_ok(&read_cmd(1, 2, 512));
    assert_eq!(t.scsi().len(), 1);
}

#[test]
fn a_login_pdu_in_full_feature_phase_ends_the_connection() {
    let mut t = start(1, 16);
    let b = Bhs::new(Opcode::LoginRequest);
    assert!(matches!(t.send(&Pdu::new(b)), Err(Close::Protocol(_))));
    let o = t.out();
    assert_eq!(o[0].op(), Opcode::Reject);
}

#[test]
fn a_discovery_session_takes_text_nop_and_logout_only() {
    let mut s = Session::new(SessionConfig {
        exp_cmd_sn: CmdSn(1),
        queue_depth: 1,
        time2wait: 0,
        time2retain: 0,
        max_transfer: 0,
        write_budget: 0,
        discovery: true,
    });
    let mut p = negotiated();
    p.session_type = SessionType::Discovery;
    let (c, _) = s.add_conn(conn_cfg(0), &p, Instant::now());
    let mut t = T {
        s,
        c,
        host: Host::default(),
        now: Instant::now(),
    };
    t.send_ok(&nop_out(1, 1));
    assert_eq!(t.out()[0].op(), Opcode::NopIn);
    t.send_ok(&text(2, 2, RESERVED_TAG, b"SendTargets=All\0"));
    let body = String::from_utf8(t.out()[0].data.clone()).unwrap();
    assert!(body.contains(&format!("TargetName={TARGET}")), "{body}");
    assert!(matches!(
        t.send(&read_cmd(3, 3, 512)),
        Err(Close::Protocol(_))
    ));
    let o = t.out();
    assert_eq!(o[0].op(), Opcode::Reject);
    assert_eq!(o[0].bhs.0[2], 0x04, "protocol error");
    assert!(t.scsi().is_empty());
}

#[test]
fn immediate_commands_cannot_overrun_the_queue() {
    // Immediate delivery bypasses CmdSN order, not the queue's depth: an
    // initiator marking every SCSI command immediate would otherwise pin
    // unbounded tasks and buffers. RFC 7143 §11.17.1: Reject reason 0x06.
    let mut t = start(1, 4);
    for i in 0..100 {
        let mut p = read_cmd(i + 1, 1, 512);
        p.bhs.0[0] |= 0x40;
        t.send_ok(&p);
    }
    let running = t.scsi();
    assert_eq!(running.len(), 4);
    let o = t.out();
    assert_eq!(o.len(), 96);
    assert!(o
        .iter()
        .all(|p| p.op() == Opcode::Reject && p.bhs.0[2] == 0x06));
    assert_eq!(t.s.in_flight(), 4);
    // Immediate task management still gets through a full queue.
    t.send_ok(&tmf(200, 1, 1, 0, 1, 0));
    assert_eq!(t.out()[0].bhs.0[2], 0);
}

#[test]
fn a_data_out_sequence_ending_early_fails_the_command() {
    // The R2T asked for 16 KiB; the initiator sets F after 8 KiB. Nothing
    // would ever ask for the rest: the command ends with a data phase
    // error instead of waiting forever with its window slot.
    let mut t = start(1, 16);
    t.send_ok(&write_cmd(1, 1, 16384, &[], true));
    let r2t = t.out();
    assert_eq!(r2t.len(), 1);
    let ttt = r2t[0].bhs.ttt().0;
    t.send_ok(&data_out(1, ttt, 0, 0, &[5u8; 8192], true));
    let o = t.out();
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].op(), Opcode::ScsiResponse);
    assert_eq!(o[0].bhs.0[3], 0x02);
    assert_eq!(o[0].data[2 + 12], 0x4b, "DATA PHASE ERROR");
    assert!(t.scsi().is_empty());
    assert_eq!(t.s.in_flight(), 0);
    assert_eq!(t.s.tasks_live(), 0);
}

#[test]
fn a_replaced_connection_keeps_its_unwritten_data_in_until_it_ends() {
    // The driver of the old connection may hold Data-In it has started to
    // write when a login with the same CID replaces it: those PDUs must
    // stay whole until that driver ends the connection itself.
    let mut t = start(1, 16);
    t.send_ok(&read_cmd(1, 1, 8192));
    let (tok, _, _, buf) = t.scsi().pop().unwrap();
    assert!(t.read_done(tok, buf, 8192, 8192));
    let held: Vec<_> = std::iter::from_fn(|| t.s.poll_transmit(t.c)).collect();
    assert_eq!(held.len(), 2);
    let (c2, old) = t.s.add_conn(conn_cfg(0), &negotiated(), t.now);
    assert_eq!(old, Some(t.c));
    assert!(t.s.is_closing(t.c));
    assert!(!t.s.is_closing(c2));
    for h in &held {
        assert_eq!(t.s.payload(h).len(), 4096, "Data-In freed under its writer");
    }
    for h in held {
        t.s.release(h);
    }
    // Its end does not count as the new connection's.
    assert_eq!(t.s.remove_conn(t.c), None);
    assert_eq!(t.s.conn_count(), 1);
    assert_eq!(t.s.close_cid(0), Some(c2));
    assert_eq!(t.s.tasks_live(), 0);
}
