//! The hot path allocates nothing in steady state: a session machine and
//! the SCSI layer, driven in memory through reads, writes with R2T,
//! aborts and pings, take no heap memory once warmed up. A counting
//! allocator watches this thread only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::params::{SessionParams, SessionType};
use iscsi::pdu::{self, Bhs, Opcode, Pdu, RESERVED_TAG};
use iscsi::session::{ConnConfig, Reset, Session, SessionConfig, SessionHost};
use iscsi::transfer::BurstLimits;
use iscsi::{CmdSn, Digests, StatSn, TargetEntry};
use scsi::{
    BlockDevice, LunConfig, LunId, LunSet, MemDevice, NexusId, Outcome, Request, TargetPort,
};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the bookkeeping touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

fn note() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

#[global_allocator]
static A: Counting = Counting;

struct Host;
impl SessionHost for Host {
    fn lun_exists(&mut self, lun: u64) -> bool {
        lun == 0
    }
    fn targets(&mut self) -> Vec<TargetEntry> {
        Vec::new()
    }
    fn reset(&mut self, _: Reset) {}
}

const NEXUS: NexusId = NexusId(1);
const ROUNDS: u32 = 64;

fn bhs(op: Opcode, itt: u32, sn: u32) -> Bhs {
    let mut b = Bhs::new(op);
    b.set_itt(pdu::Itt(itt));
    b.set_u32_at(24, sn);
    b
}

fn cdb16(b: &mut Bhs, op: u8, lba: u64, blocks: u32) {
    b.0[32] = op;
    b.0[34..42].copy_from_slice(&lba.to_be_bytes());
    b.0[42..46].copy_from_slice(&blocks.to_be_bytes());
}

/// One round's PDUs, encoded before counting starts. Returns the bytes
/// and the CmdSN after them. The write's Data-Out needs the TTTs of its
/// R2Ts, which the target numbers 1, 2, ... per connection.
fn round(r: u32, sn: &mut u32, ttt: &mut u32) -> Vec<Vec<u8>> {
    let dg = Digests::default();
    let itt = r * 16;
    let mut out = Vec::new();
    // READ(16) of 8 blocks.
    let mut b = bhs(Opcode::ScsiCommand, itt + 1, *sn);
    b.set_flags(0xc0);
    b.set_u32_at(20, 4096);
    cdb16(&mut b, 0x88, (r % 64) as u64 * 8, 8);
    out.push(Pdu::new(b).encode(dg));
    *sn += 1;
    // WRITE(16) of 64 blocks, all solicited: two R2Ts of 16 KiB.
    let mut b = bhs(Opcode::ScsiCommand, itt + 2, *sn);
    b.set_flags(0xa0);
    b.set_u32_at(20, 32768);
    cdb16(&mut b, 0x8a, 1024 + (r % 16) as u64 * 64, 64);
    out.push(Pdu::new(b).encode(dg));
    *sn += 1;
    for k in 0..2u32 {
        let t = *ttt;
        *ttt += 1;
        for j in 0..2u32 {
            let mut d = Bhs::new(Opcode::DataOut);
            d.set_flags(if j == 1 { 0x80 } else { 0 });
            d.set_itt(pdu::Itt(itt + 2));
            d.set_u32_at(20, t);
            d.set_u32_at(36, j);
            d.set_u32_at(40, k * 16384 + j * 8192);
            out.push(Pdu::with_data(d, vec![(r + k + j) as u8; 8192]).encode(dg));
        }
    }
    // A write left waiting for its data, then aborted.
    let mut b = bhs(Opcode::ScsiCommand, itt + 3, *sn);
    b.set_flags(0xa0);
    b.set_u32_at(20, 4096);
    cdb16(&mut b, 0x8a, 0, 8);
    out.push(Pdu::new(b).encode(dg));
    *ttt += 1;
    let mut b = bhs(Opcode::TaskMgmtRequest, itt + 4, *sn + 1);
    b.0[0] |= 0x40;
    b.set_flags(0x81);
    b.set_u32_at(20, itt + 3);
    b.set_u32_at(32, *sn);
    out.push(Pdu::new(b).encode(dg));
    *sn += 1;
    // A ping with data.
    let mut b = bhs(Opcode::NopOut, itt + 5, *sn);
    b.set_flags(0x80);
    b.set_u32_at(20, RESERVED_TAG);
    out.push(Pdu::with_data(b, vec![1; 48]).encode(dg));
    *sn += 1;
    out
}

#[test]
fn steady_state_allocates_nothing() {
    let mut s = Session::new(SessionConfig {
        exp_cmd_sn: CmdSn(1),
        queue_depth: 128,
        time2wait: 2,
        time2retain: 20,
        max_transfer: 1 << 20,
        write_budget: 4 << 20,
        discovery: false,
    });
    let params = SessionParams {
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 1,
        max_burst_length: 16384,
        first_burst_length: 16384,
        immediate_data: false,
        max_outstanding_r2t: 2,
        ..SessionParams::rfc_defaults(
            SessionType::Normal,
            "iqn.2026-11.io.rtgt:alloc",
            Some("iqn.2026-11.io.rtgt:t"),
        )
    };
    let (c, _) = s.add_conn(
        ConnConfig {
            cid: 0,
            digests: Digests::default(),
            max_recv: 8192,
            max_xmit: 8192,
            limits: BurstLimits {
                immediate_data: false,
                initial_r2t: true,
                first_burst: 16384,
                max_burst: 16384,
                max_outstanding_r2t: 2,
            },
            stat_sn: StatSn(1),
            nop_interval: Duration::from_secs(30),
            nop_count: 4,
        },
        &params,
        Instant::now(),
    );
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(4 << 20));
    let mut luns = LunSet::new(
        1,
        TargetPort {
            target_name: "iqn.2026-11.io.rtgt:t".into(),
            tpgt: 1,
            relative_port: 1,
        },
    );
    let mut cfg = LunConfig::tgt_defaults(1, LunId(0));
    cfg.size_bytes = 4 << 20;
    luns.insert(LunId(0), cfg);
    luns.add_nexus(NEXUS);
    let mut host = Host;

    let (mut sn, mut ttt) = (1u32, 1u32);
    let rounds: Vec<Vec<Vec<u8>>> = (0..2 * ROUNDS)
        .map(|r| round(r, &mut sn, &mut ttt))
        .collect();
    // Clear the power-on unit attention before counting.
    let mut answered = 0usize;
    let mut drive = |s: &mut Session, pdus: &[Vec<u8>], answered: &mut usize| {
        for p in pdus {
            assert_eq!(s.receive(c, p, &mut host), Ok(p.len()));
            while let Some((cmd, mut buf)) = s.poll_scsi() {
                let req = Request {
                    cdb: cmd.cdb,
                    nexus: NEXUS,
                    lun: LunId(cmd.lun),
                    expected_len: cmd.edtl,
                };
                let tok = cmd.token;
                let r = match luns.execute(&req, &mut buf) {
                    Outcome::Done(r) => r,
                    Outcome::Io(task) => task.run(&*dev, &mut buf),
                };
                s.handle_scsi_done(tok, r.status as u8, &r.sense, r.data_len, r.wanted, buf);
            }
            while let Some(t) = s.poll_transmit(c) {
                std::hint::black_box(s.payload(&t));
                if t.bhs.opcode() == Some(Opcode::ScsiResponse)
                    || (t.bhs.opcode() == Some(Opcode::DataIn) && t.bhs.flags() & 1 != 0)
                {
                    *answered += 1;
                }
                s.release(t);
            }
        }
    };
    for r in &rounds[..ROUNDS as usize] {
        drive(&mut s, r, &mut answered);
    }
    COUNTING.with(|f| f.set(true));
    for r in &rounds[ROUNDS as usize..] {
        drive(&mut s, r, &mut answered);
    }
    COUNTING.with(|f| f.set(false));
    let allocs = ALLOCS.with(|a| a.get());
    // Three answered commands per round (read, write, and the aborted
    // write answers nothing): the test really ran them.
    assert_eq!(answered, 2 * 2 * ROUNDS as usize);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(
        allocs, 0,
        "{allocs} allocations over {ROUNDS} rounds of read, R2T write, abort and ping"
    );
}
