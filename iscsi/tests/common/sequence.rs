//! Arbitrary PDU sequences against one session machine, with SCSI
//! completions, timeouts, connection churn and resets mixed in; shared by
//! the `session_sequence` fuzz target and a seeded test that runs it in CI.
//! Invariants: nothing panics, no more than the window's width is ever
//! held, StatSN only moves forward on a connection, and once every
//! connection is gone and every command handed to SCSI has come back,
//! no task and no window slot is left.

use std::time::{Duration, Instant};

use iscsi::params::{SessionParams, SessionType};
use iscsi::pdu::{self, Bhs, Opcode, Pdu, RESERVED_TAG};
use iscsi::session::{ConnConfig, ConnId, Reset, Session, SessionConfig, SessionHost, Token};
use iscsi::transfer::BurstLimits;
use iscsi::{CmdSn, Digests, StatSn, TargetEntry};

struct Host;
impl SessionHost for Host {
    fn lun_exists(&mut self, lun: u64) -> bool {
        lun == 0
    }
    fn targets(&mut self) -> Vec<TargetEntry> {
        vec![(
            "iqn.2026-11.io.rtgt:f".into(),
            vec![("127.0.0.1:3260".parse().unwrap(), 1)],
        )]
    }
    fn reset(&mut self, _: Reset) {}
}

struct Bytes<'a>(&'a [u8]);
impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn params() -> SessionParams {
    SessionParams {
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 1,
        max_recv_data_segment_length: 4096,
        max_xmit_data_segment_length: 1024,
        max_burst_length: 4096,
        first_burst_length: 2048,
        initial_r2t: false,
        max_outstanding_r2t: 2,
        max_connections: 2,
        ..SessionParams::rfc_defaults(
            SessionType::Normal,
            "iqn.2026-11.io.rtgt:i",
            Some("iqn.2026-11.io.rtgt:f"),
        )
    }
}

fn conn_cfg(cid: u16) -> ConnConfig {
    ConnConfig {
        cid,
        digests: Digests::default(),
        max_recv: 4096,
        max_xmit: 1024,
        limits: BurstLimits {
            immediate_data: true,
            initial_r2t: false,
            first_burst: 2048,
            max_burst: 4096,
            max_outstanding_r2t: 2,
        },
        stat_sn: StatSn(1),
        nop_interval: Duration::from_secs(5),
        nop_count: 2,
    }
}

struct Live {
    id: ConnId,
    stat_sn: Option<StatSn>,
}

/// What one sequence did, so a test can tell it was not vacuous.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    pub scsi: usize,
    pub pdus_out: usize,
    pub r2ts: usize,
}

/// Run one sequence.
pub fn run(data: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut b = Bytes(data);
    let depth = 1 + (b.u8().unwrap_or(0) % 16) as u32;
    let mut s = Session::new(SessionConfig {
        exp_cmd_sn: CmdSn(u32::MAX - 3),
        queue_depth: depth,
        time2wait: 2,
        time2retain: 20,
        max_transfer: 65536,
        write_budget: 16384,
        discovery: false,
    });
    let mut host = Host;
    let mut now = Instant::now();
    let p = params();
    let mut conns: Vec<Live> = Vec::new();
    let (id, _) = s.add_conn(conn_cfg(0), &p, now);
    conns.push(Live { id, stat_sn: None });
    let mut outstanding: Vec<(Token, Vec<u8>)> = Vec::new();
    let mut ttts: Vec<u32> = Vec::new();
    while let Some(op) = b.u8() {
        let pick = b.u8().unwrap_or(0) as usize;
        match op % 8 {
            0..=2 if !conns.is_empty() => {
                let c = conns[pick % conns.len()].id;
                let exp = s.window_numbers().0;
                let bytes = build(&mut b, exp, &ttts);
                if s.receive(c, &bytes, &mut host).is_err() {
                    s.remove_conn(c);
                    conns.retain(|l| l.id != c);
                }
            }
            3 if !conns.is_empty() => {
                let c = conns[pick % conns.len()].id;
                let n = b.u8().unwrap_or(0) as usize;
                let raw = b.take(n).to_vec();
                if s.receive(c, &raw, &mut host).is_err() {
                    s.remove_conn(c);
                    conns.retain(|l| l.id != c);
                }
            }
            4 if !outstanding.is_empty() => {
                let (tok, mut buf) = outstanding.swap_remove(pick % outstanding.len());
                let st = [0u8, 2, 0x28, 4][pick % 4];
                let n = b.u8().unwrap_or(0) as usize * 64;
                buf.resize(n, 0xab);
                let sense = if st == 2 {
                    vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0]
                } else {
                    Vec::new()
                };
                s.handle_scsi_done(tok, st, &sense, n, n as u64 + (pick % 3) as u64 * 512, buf);
            }
            5 => {
                now += Duration::from_secs((pick % 8) as u64);
                let ids: Vec<ConnId> = conns.iter().map(|l| l.id).collect();
                for c in ids {
                    if s.handle_timeout(c, now).is_err() {
                        s.remove_conn(c);
                        conns.retain(|l| l.id != c);
                    }
                }
            }
            6 => {
                if pick.is_multiple_of(2) && !conns.is_empty() {
                    let c = conns.remove(pick / 2 % conns.len()).id;
                    s.remove_conn(c);
                } else if conns.len() < 3 {
                    let cid = (pick % 3) as u16;
                    // A connection this replaces is closing; its driver
                    // ends it below, as any closing connection.
                    let (id, _) = s.add_conn(conn_cfg(cid), &p, now);
                    conns.push(Live { id, stat_sn: None });
                }
            }
            _ => s.abort_lun(if pick.is_multiple_of(2) {
                None
            } else {
                Some(0)
            }),
        }
        while let Some((cmd, buf)) = s.poll_scsi() {
            assert!(cmd.edtl <= 65536);
            seen.scsi += 1;
            outstanding.push((cmd.token, buf));
        }
        for l in conns.iter_mut() {
            drain(&mut s, l, &mut ttts, &mut seen);
        }
        // What a driver does with a connection that is closing (logged
        // out, replaced, asked to): send what is queued, then end it.
        conns.retain(|l| {
            if s.is_closing(l.id) {
                s.remove_conn(l.id);
                false
            } else {
                true
            }
        });
        assert!(
            s.held() <= depth as usize,
            "held {} > width {depth}",
            s.held()
        );
        // Delivered and unanswered stays bounded: the queue depth of
        // CmdSN-ordered commands the window granted, plus immediate ones
        // taken while fewer than the depth were in flight (commands
        // aborted while at SCSI have given their slot back).
        assert!(
            s.in_flight() <= 2 * depth,
            "in flight {} > twice the depth {depth}",
            s.in_flight()
        );
    }
    // Every connection goes, every command comes back: nothing may stay.
    for l in conns.drain(..) {
        s.remove_conn(l.id);
    }
    for (tok, buf) in outstanding.drain(..) {
        assert!(s.handle_scsi_done(tok, 0, &[], 0, 0, buf).is_none());
    }
    assert_eq!(s.in_flight(), 0, "a window slot was never given back");
    assert_eq!(s.tasks_live(), 0, "a task outlived its connection");
    assert_eq!(s.held(), 0);
    seen
}

fn drain(s: &mut Session, l: &mut Live, ttts: &mut Vec<u32>, seen: &mut Seen) {
    while let Some(t) = s.poll_transmit(l.id) {
        seen.pdus_out += 1;
        let sn = t.bhs.stat_sn();
        if let Some(prev) = l.stat_sn {
            assert!(prev.le(sn), "StatSN went back from {} to {}", prev.0, sn.0);
        }
        l.stat_sn = Some(sn);
        assert_eq!(t.bhs.data_len(), s.payload(&t).len());
        if t.bhs.opcode() == Some(Opcode::R2t) {
            seen.r2ts += 1;
            ttts.push(t.bhs.ttt().0);
            if ttts.len() > 8 {
                ttts.remove(0);
            }
        }
        s.release(t);
    }
}

/// A PDU of a kind an initiator sends, its fields from the input.
fn build(b: &mut Bytes, exp: CmdSn, ttts: &[u32]) -> Vec<u8> {
    let kind = b.u8().unwrap_or(0);
    let itt = (b.u8().unwrap_or(0) % 6) as u32;
    // Mostly the CmdSN expected; sometimes one behind, or a few ahead.
    let off = b.u8().unwrap_or(0) % 8;
    let sn = if off < 4 {
        exp.0
    } else {
        exp.0.wrapping_add(off as u32).wrapping_sub(5)
    };
    let flags = b.u8().unwrap_or(0x80);
    let len = (b.u8().unwrap_or(0) as u32) * 64;
    let d = b.u8().unwrap_or(0) as usize;
    let dlen = if d < 128 {
        0
    } else {
        ((d - 128) * 32).min(4096)
    };
    let data = vec![0x5a; dlen];
    let mut h = Bhs::new(Opcode::NopOut);
    h.set_itt(pdu::Itt(itt));
    h.set_u32_at(24, sn);
    h.set_flags(flags);
    if flags & 0x10 != 0 {
        h.0[0] |= 0x40; // immediate
    }
    match kind % 10 {
        0 | 1 => {
            h.0[0] = (h.0[0] & 0x40) | Opcode::ScsiCommand as u8;
            h.set_u32_at(20, len);
            // Mostly one direction, as real commands are; sometimes both.
            let both = flags & 0x60 == 0x60 && kind & 0x80 != 0;
            if !both {
                let w = flags & 0x20 != 0;
                h.set_flags(flags & !0x60 | if w { 0x20 } else { 0x40 });
            }
            h.0[32] = if flags & 0x20 != 0 { 0x8a } else { 0x88 };
        }
        2 | 3 => {
            h.0[0] = Opcode::DataOut as u8;
            let ttt = if ttts.is_empty() || flags & 1 != 0 {
                RESERVED_TAG
            } else {
                ttts[flags as usize % ttts.len()]
            };
            h.set_u32_at(20, ttt);
            h.set_u32_at(36, (flags >> 5) as u32 % 3);
            h.set_u32_at(40, len);
        }
        4 => {
            h.0[0] = (h.0[0] & 0x40) | Opcode::NopOut as u8;
            h.set_u32_at(20, if flags & 2 != 0 { 7 } else { RESERVED_TAG });
            if flags & 4 != 0 {
                h.set_itt(pdu::Itt(RESERVED_TAG));
            }
        }
        5 => {
            h.0[0] = 0x40 | Opcode::TaskMgmtRequest as u8;
            h.set_flags(0x80 | [1, 2, 3, 5, 6, 7][flags as usize % 6]);
            h.set_u32_at(20, len % 6);
            h.set_u32_at(32, exp.0.wrapping_add(len % 3));
        }
        6 => {
            h.0[0] = (h.0[0] & 0x40) | Opcode::TextRequest as u8;
            h.set_u32_at(20, if flags & 2 != 0 { 1 } else { RESERVED_TAG });
            let kv: &[u8] = match flags % 4 {
                0 => b"SendTargets=\0",
                1 => b"SendTargets=All\0",
                2 => b"Bogus=1\0",
                _ => b"MaxRecvDataSegmentLength=512\0",
            };
            return Pdu::with_data(h, kv.to_vec()).encode(Digests::default());
        }
        7 => {
            h.0[0] = (h.0[0] & 0x40) | Opcode::LogoutRequest as u8;
            h.set_flags(0x80 | (flags & 3));
            h.set_u16_at(8, (len % 3) as u16);
        }
        8 => h.0[0] = Opcode::Snack as u8,
        _ => h.0[0] = kind & 0x3f,
    }
    Pdu::with_data(h, data).encode(Digests::default())
}
