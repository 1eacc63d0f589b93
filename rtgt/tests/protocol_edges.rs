//! Protocol edge cases found with held-out clients, each driven PDU by PDU
//! against rtgtd with the in-repo initiator: the CmdSN window when it is
//! closed, an Initiator Task Tag reused while its task runs, ABORT TASK of
//! a command that never arrived, Text exchanges in a normal session, and
//! memory held by commands waiting behind a CmdSN gap.
//!
//! No test here waits on time: "nothing was answered" is shown by a
//! NOP-Out ping whose NOP-In comes back after anything the target would
//! have sent for the earlier PDUs (one connection answers in order).

mod common;

use std::time::Duration;

use common::{sparse_file, Daemon};
use initiator::{cdb, Connection, LoginOptions};
use iscsi::pdu::{Bhs, Itt, Opcode, Pdu, RESERVED_TAG};

const IQN: &str = "iqn.2026-11.io.rtgt.test:edges";
const BS: u32 = 512;
/// The session's command window (tgt's MaxQueueCmd default).
const DEPTH: u32 = 128;

fn setup(tag: &str) -> Daemon {
    let d = Daemon::start(tag);
    let img = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &img, false);
    d
}

/// A logged-in session with the power-on unit attention cleared.
/// InitialR2T=Yes, so a WRITE without immediate data waits for an R2T.
fn login(d: &Daemon) -> Connection {
    login_with(d, false)
}

fn login_with(d: &Daemon, immediate_data: bool) -> Connection {
    let o = LoginOptions {
        target_name: Some(IQN.into()),
        initial_r2t: true,
        immediate_data,
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut c, _) = Connection::login(d.portal, &o).expect("login");
    for _ in 0..4 {
        if c.test_unit_ready(1).unwrap().is_good() {
            break;
        }
    }
    c
}

/// A SCSI Command PDU as the tests want it, sequence numbers included.
fn command(c: &Connection, itt: u32, cmd_sn: u32, cdb: &[u8], write_len: u32) -> Pdu {
    let mut b = Bhs::new(Opcode::ScsiCommand);
    b.set_flags(0x80 | 0x01 | if write_len > 0 { 0x20 } else { 0 });
    b.set_lun_raw(cdb::lun_to_raw(1));
    b.set_itt(Itt(itt));
    b.set_u32_at(20, write_len);
    b.set_u32_at(24, cmd_sn);
    b.set_u32_at(28, c.exp_stat_sn());
    b.0[32..32 + cdb.len()].copy_from_slice(cdb);
    Pdu::new(b)
}

fn tur(c: &Connection, itt: u32, cmd_sn: u32) -> Pdu {
    command(c, itt, cmd_sn, &cdb::test_unit_ready(), 0)
}

fn write1(c: &Connection, itt: u32, cmd_sn: u32, lba: u64) -> Pdu {
    command(c, itt, cmd_sn, &cdb::write16(lba, 1), BS)
}

/// The Data-Out answering an R2T with all `len` bytes.
fn data_out(c: &Connection, r2t: &Pdu, fill: u8) -> Pdu {
    let mut b = Bhs::new(Opcode::DataOut);
    b.set_flags(0x80);
    b.set_lun_raw(r2t.bhs.lun_raw());
    b.set_itt(r2t.bhs.itt());
    b.set_u32_at(20, r2t.bhs.u32_at(20));
    b.set_u32_at(28, c.exp_stat_sn());
    b.set_u32_at(36, 0);
    b.set_u32_at(40, r2t.bhs.u32_at(40));
    let len = r2t.bhs.u32_at(44) as usize;
    Pdu::with_data(b, vec![fill; len])
}

/// An immediate NOP-Out ping.
fn ping(c: &Connection, itt: u32) -> Pdu {
    let mut b = Bhs::new(Opcode::NopOut);
    b.0[0] |= 0x40;
    b.set_flags(0x80);
    b.set_itt(Itt(itt));
    b.set_u32_at(20, RESERVED_TAG);
    b.set_u32_at(24, c.cmd_sn());
    b.set_u32_at(28, c.exp_stat_sn());
    Pdu::new(b)
}

/// Receive PDUs until one matches; return it and everything before it.
fn recv_until(c: &mut Connection, want: impl Fn(&Pdu) -> bool) -> (Pdu, Vec<Pdu>) {
    let mut before = Vec::new();
    for _ in 0..100_000 {
        let p = match c.recv_pdu() {
            Ok(p) => p,
            Err(e) => panic!("target went silent: {e}"),
        };
        if want(&p) {
            return (p, before);
        }
        before.push(p);
    }
    panic!("no matching PDU");
}

fn is(op: Opcode, itt: u32) -> impl Fn(&Pdu) -> bool {
    move |p| p.bhs.opcode() == Some(op) && p.bhs.itt().0 == itt
}

/// Ping and collect everything the target sent before the NOP-In.
fn drain_with_ping(c: &mut Connection, itt: u32) -> Vec<Pdu> {
    let p = ping(c, itt);
    c.send_pdu(&p).unwrap();
    recv_until(c, is(Opcode::NopIn, itt)).1
}

/// Fill the whole window with WRITEs that wait for their data; returns
/// their R2Ts by ITT order (ITT 100 + i).
fn fill_window(c: &mut Connection, first_sn: u32) -> Vec<Pdu> {
    for i in 0..DEPTH {
        let p = write1(c, 100 + i, first_sn.wrapping_add(i), i as u64);
        c.send_pdu(&p).unwrap();
    }
    let mut r2ts = Vec::new();
    while r2ts.len() < DEPTH as usize {
        let p = c.recv_pdu().unwrap();
        assert_eq!(p.bhs.opcode(), Some(Opcode::R2t), "{p:?}");
        r2ts.push(p);
    }
    r2ts.sort_by_key(|p| p.bhs.itt().0);
    r2ts
}

fn rss_kib(d: &Daemon) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// RFC 7143 §4.2.2.1: with every slot taken MaxCmdSN = ExpCmdSN - 1 and
/// the window holds nothing; a command at ExpCmdSN is ignored, so the
/// initiator may send it again once the window opens.
#[test]
fn closed_window_ignores_commands() {
    let d = setup("closedwin");
    let mut c = login(&d);
    let sn = c.cmd_sn();
    let r2ts = fill_window(&mut c, sn);
    let exp = sn.wrapping_add(DEPTH);
    let seen = drain_with_ping(&mut c, 1);
    assert!(seen.is_empty(), "{seen:?}");
    let (e, m) = c.cmd_window();
    assert_eq!((e, m), (exp, exp.wrapping_sub(1)), "window closed");
    // Outside the closed window: ignored, never run.
    c.send_pdu(&tur(&c, 1000, exp)).unwrap();
    let seen = drain_with_ping(&mut c, 2);
    assert!(
        !seen.iter().any(|p| p.bhs.itt().0 == 1000),
        "a command outside the closed window was run: {seen:?}"
    );
    // One write gets its data: one slot opens, and the same CmdSN is new.
    c.send_pdu(&data_out(&c, &r2ts[0], 0xab)).unwrap();
    let (resp, _) = recv_until(&mut c, is(Opcode::ScsiResponse, 100));
    assert_eq!(resp.bhs.0[3], 0, "status");
    assert_eq!(resp.bhs.max_cmd_sn().0, exp);
    c.send_pdu(&tur(&c, 1001, exp)).unwrap();
    let (resp, _) = recv_until(&mut c, is(Opcode::ScsiResponse, 1001));
    assert_eq!(resp.bhs.0[3], 0, "status");
}

/// Commands far ahead of a closed window must not be queued: memory
/// stays flat however many arrive.
#[test]
fn closed_window_does_not_grow_memory() {
    let d = setup("winmem");
    let mut c = login(&d);
    let sn = c.cmd_sn();
    let _r2ts = fill_window(&mut c, sn);
    drain_with_ping(&mut c, 1);
    let before = rss_kib(&d);
    let exp = sn.wrapping_add(DEPTH);
    let mut wire = Vec::new();
    for i in 0..200_000u32 {
        let p = tur(&c, 10_000 + i, exp.wrapping_add(1 + i % 100_000));
        wire.extend_from_slice(&p.encode(c.digests()));
        if wire.len() > 1 << 20 {
            c.send_raw(&wire).unwrap();
            wire.clear();
        }
    }
    c.send_raw(&wire).unwrap();
    let seen = drain_with_ping(&mut c, 2);
    assert!(seen.is_empty(), "{} PDUs answered", seen.len());
    let after = rss_kib(&d);
    assert!(
        after < before + 8 * 1024,
        "rtgtd grew from {before} KiB to {after} KiB"
    );
}

/// RFC 7143 §11.17.1: a new command with the ITT of a task still running
/// is rejected (Task in progress); the first task goes on, and the window
/// keeps its full width.
#[test]
fn active_itt_is_rejected_not_replaced() {
    let d = setup("dupitt");
    let mut c = login(&d);
    let sn = c.cmd_sn();
    c.send_pdu(&write1(&c, 7, sn, 3)).unwrap();
    let (r2t, _) = recv_until(&mut c, is(Opcode::R2t, 7));
    for k in 0..3u32 {
        c.send_pdu(&tur(&c, 7, sn + 1 + k)).unwrap();
        let (rej, _) = recv_until(&mut c, |p| p.bhs.opcode() == Some(Opcode::Reject));
        assert_eq!(rej.bhs.0[2], 0x07, "reason: task in progress");
        assert_eq!(&rej.data[..24], &tur(&c, 7, sn + 1 + k).bhs.0[..24]);
    }
    c.send_pdu(&data_out(&c, &r2t, 0x5c)).unwrap();
    let (resp, _) = recv_until(&mut c, is(Opcode::ScsiResponse, 7));
    assert_eq!(resp.bhs.0[3], 0, "the first task completes");
    c.send_pdu(&tur(&c, 8, sn + 4)).unwrap();
    let (resp, _) = recv_until(&mut c, is(Opcode::ScsiResponse, 8));
    let (exp, max) = (resp.bhs.exp_cmd_sn().0, resp.bhs.max_cmd_sn().0);
    assert_eq!(exp, sn + 5);
    assert_eq!(max.wrapping_sub(exp), DEPTH - 1, "every slot came back");
    // The data reached the disk.
    let mut other = login(&d);
    assert_eq!(other.read(1, 3, 1, BS).unwrap(), vec![0x5c; BS as usize]);
}

/// RFC 7143 §11.5.1: ABORT TASK for a task never received whose RefCmdSN
/// is inside the window: the CmdSN counts as received, the answer is
/// "function complete", and the commands after it run.
#[test]
fn abort_of_command_never_received_fills_the_gap() {
    let d = setup("abortgap");
    let mut c = login(&d);
    let sn = c.cmd_sn();
    // CmdSN sn never arrives; sn + 1 waits behind it.
    c.send_pdu(&tur(&c, 50, sn + 1)).unwrap();
    let mut b = Bhs::new(Opcode::TaskMgmtRequest);
    b.0[0] |= 0x40;
    b.set_flags(0x80 | 1);
    b.set_lun_raw(cdb::lun_to_raw(1));
    b.set_itt(Itt(60));
    b.set_u32_at(20, 49); // the task that was never sent
    b.set_u32_at(24, sn + 2);
    b.set_u32_at(28, c.exp_stat_sn());
    b.set_u32_at(32, sn); // its RefCmdSN
    c.send_pdu(&Pdu::new(b)).unwrap();
    let (tmf, _) = recv_until(&mut c, is(Opcode::TaskMgmtResponse, 60));
    assert_eq!(tmf.bhs.0[2], 0, "function complete");
    let (resp, _) = recv_until(&mut c, is(Opcode::ScsiResponse, 50));
    assert_eq!(resp.bhs.0[3], 0);
    // A RefCmdSN outside the window: task does not exist.
    b.set_itt(Itt(61));
    b.set_u32_at(24, sn + 2);
    b.set_u32_at(32, sn.wrapping_sub(5));
    c.send_pdu(&Pdu::new(b)).unwrap();
    let (tmf, _) = recv_until(&mut c, is(Opcode::TaskMgmtResponse, 61));
    assert_eq!(tmf.bhs.0[2], 1, "task does not exist");
    c.send_pdu(&tur(&c, 51, sn + 2)).unwrap();
    recv_until(&mut c, is(Opcode::ScsiResponse, 51));
}

fn text_pdu(
    c: &Connection,
    itt: u32,
    ttt: u32,
    cmd_sn: u32,
    f: bool,
    cont: bool,
    data: &[u8],
) -> Pdu {
    let mut b = Bhs::new(Opcode::TextRequest);
    b.set_flags(if f { 0x80 } else { 0 } | if cont { 0x40 } else { 0 });
    b.set_itt(Itt(itt));
    b.set_u32_at(20, ttt);
    b.set_u32_at(24, cmd_sn);
    b.set_u32_at(28, c.exp_stat_sn());
    Pdu::with_data(b, data.to_vec())
}

fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Every Text Request in a normal session gets an answer: unknown keys
/// NotUnderstood, an unknown SendTargets value an empty list, an empty
/// value the session's own target (RFC 7143 §11.10, Appendix C).
#[test]
fn text_requests_in_a_normal_session() {
    let d = setup("text");
    let mut c = login(&d);
    let r = c
        .text_request(&[kv("SendTargetsPlease", "All")])
        .expect("answer to an unknown key");
    assert_eq!(r, vec![kv("SendTargetsPlease", "NotUnderstood")]);
    let r = c
        .text_request(&[kv("SendTargets", "Alle")])
        .expect("answer after an unknown key");
    assert!(r.is_empty(), "{r:?}");
    let t = c.send_targets("").expect("own target");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].0, IQN);
    assert_eq!(t[0].1, vec![format!("{},1", d.portal)]);
    let r = c.text_request(&[kv("SendTargets", "All")]).unwrap();
    assert_eq!(r, vec![kv("SendTargets", "Reject")]);
    // Still a working session.
    assert!(c.test_unit_ready(1).unwrap().is_good());
}

/// A Text Request with TTT 0xffffffff starts a new exchange, even with
/// the ITT of one left unfinished (RFC 7143 §11.10.4): nothing of the old
/// request is glued to it.
#[test]
fn restarted_text_exchange_starts_over() {
    let d = setup("textrestart");
    let mut c = login(&d);
    let sn = c.cmd_sn();
    c.send_pdu(&text_pdu(
        &c,
        70,
        RESERVED_TAG,
        sn,
        false,
        true,
        b"X-junk=1\0SendTarg",
    ))
    .unwrap();
    let (ack, _) = recv_until(&mut c, is(Opcode::TextResponse, 70));
    assert!(ack.data.is_empty());
    assert_ne!(ack.bhs.ttt().0, RESERVED_TAG);
    c.send_pdu(&text_pdu(
        &c,
        70,
        RESERVED_TAG,
        sn + 1,
        true,
        false,
        b"SendTargets=\0",
    ))
    .unwrap();
    let (r, _) = recv_until(&mut c, is(Opcode::TextResponse, 70));
    assert_eq!(r.bhs.flags() & 0xc0, 0x80, "final");
    let text = String::from_utf8_lossy(&r.data).into_owned();
    assert!(
        text.starts_with(&format!("TargetName={IQN}\0")),
        "glued to the abandoned request: {text:?}"
    );
    // A continuation naming a tag that is no longer open is refused.
    c.send_pdu(&text_pdu(&c, 70, ack.bhs.ttt().0, sn + 2, true, false, b""))
        .unwrap();
    let (rej, _) = recv_until(&mut c, |p| p.bhs.opcode() == Some(Opcode::Reject));
    assert_eq!(rej.bhs.0[2], 0x09);
}

/// Commands held behind a CmdSN gap when the connection closes must not
/// keep the connection and its session alive.
#[test]
fn held_commands_do_not_outlive_their_connection() {
    let d = setup("heldmem");
    // Warm up: the first session's allocations stay in the allocator.
    let mut rss = Vec::new();
    for round in 0..8 {
        let mut c = login_with(&d, true);
        let sn = c.cmd_sn();
        // sn never arrives; 127 WRITEs with 8 KiB of immediate data each
        // wait behind it.
        let mut wire = Vec::new();
        for i in 1..DEPTH {
            let mut p = command(&c, 200 + i, sn + i, &cdb::write16(0, 16), 16 * BS);
            p.data = vec![round as u8; 8192];
            p.bhs.set_data_len(p.data.len());
            wire.extend_from_slice(&p.encode(c.digests()));
        }
        c.send_raw(&wire).unwrap();
        drain_with_ping(&mut c, 1);
        drop(c);
        // A new session sees the old one gone (management is told when
        // the connection's loop drops it).
        let mut probe = login(&d);
        probe.nop().unwrap();
        drop(probe);
        rss.push(rss_kib(&d));
    }
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    eprintln!("RSS per round (KiB): {rss:?}");
    // Each round leaked at least its 127 x 8 KiB of held data before.
    assert!(
        rss[7] < rss[2] + 2 * 1024,
        "RSS per round (KiB): {rss:?}\n{show}"
    );
}

/// Large data segments (256 KiB immediate data, 256 KiB Data-Out) are read
/// from the socket straight into the command's buffer: the bytes must
/// land exactly, with and without digests, and a damaged data digest on
/// such a PDU must get Reject (RFC 7143 §7.8) without disturbing the
/// connection.
#[test]
fn large_pdus_arrive_whole() {
    let d = setup("large");
    d.target_params(
        1,
        &[
            ("MaxRecvDataSegmentLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxBurstLength", "262144"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
        ],
    );
    for digests in [false, true] {
        let o = LoginOptions {
            target_name: Some(IQN.into()),
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment_length: 262_144,
            first_burst_length: 262_144,
            max_burst_length: 262_144,
            header_digest: digests,
            data_digest: digests,
            timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let (mut c, _) = Connection::login(d.portal, &o).expect("login");
        assert_eq!(c.params().target_max_recv_data_segment_length, 262_144);
        assert_eq!(c.digests().data, digests);
        for _ in 0..4 {
            if c.test_unit_ready(1).unwrap().is_good() {
                break;
            }
        }
        // 256 KiB in the command PDU; 1 MiB as 256 KiB immediate + R2Ts
        // for 256 KiB Data-Out PDUs.
        for (lba, len) in [(0u64, 256 << 10), (1024, 1 << 20), (4096, 200 << 10)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + lba as usize) as u8).collect();
            c.write(1, lba, &data, BS).expect("write");
            let back = c
                .read(1, lba, (len / BS as usize) as u32, BS)
                .expect("read");
            assert!(back == data, "{len} bytes at {lba} came back changed");
        }
        if digests {
            // A 128 KiB immediate write whose data digest is wrong.
            let sn = c.cmd_sn();
            let mut p = command(&c, 0x5000, sn, &cdb::write16(8192, 256), 128 << 10);
            p.data = vec![0xee; 128 << 10];
            p.bhs.set_data_len(p.data.len());
            let mut wire = p.encode(c.digests());
            let n = wire.len();
            wire[n - 100] ^= 0x01;
            c.send_raw(&wire).unwrap();
            let (rej, _) = recv_until(&mut c, |p| p.bhs.opcode() == Some(Opcode::Reject));
            assert_eq!(rej.bhs.0[2], 0x02, "data digest error");
            // Nothing was written, and the connection goes on.
            let before = drain_with_ping(&mut c, 0x5001);
            assert!(before.is_empty(), "{before:?}");
            let back = c.read(1, 8192, 256, BS).expect("read");
            assert!(
                back.iter().all(|&b| b == 0),
                "the damaged write reached the disk"
            );
        }
    }
}

/// An initiator that keeps sending pings and never reads the answers must
/// not make the target buffer them without bound. Immediate NOP-Outs pass
/// the CmdSN window, and each asks for its data back (RFC 7143 §11.18.5);
/// once several MiB wait for the peer, the target stops taking its
/// requests (the peer's sends then block) and memory stays flat.
#[test]
fn a_peer_that_never_reads_cannot_grow_memory() {
    let d = setup("noread");
    let mut c = login(&d);
    c.set_timeout(Duration::from_secs(2)).unwrap();
    let before = rss_kib(&d);
    let mut sent = 0u32;
    // Up to 40000 pings of 8 KiB: 320 MiB of answers nobody reads.
    for i in 0..40_000u32 {
        let mut p = ping(&c, 0x9000 + i);
        p.data = vec![0x5a; 8192];
        p.bhs.set_data_len(p.data.len());
        if c.send_pdu(&p).is_err() {
            break;
        }
        sent += 1;
    }
    let grown = rss_kib(&d).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "rtgtd grew by {grown} KiB after {sent} unread 8 KiB pings"
    );
    assert!(sent < 40_000, "the target never stopped taking requests");
}
