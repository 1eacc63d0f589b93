//! Session-level behaviour of rtgtd through the in-repo initiator: MC/S,
//! reinstatement, management views of live sessions, forced deletion, and
//! broken peers that must not disturb anyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{sparse_file, Daemon};
use initiator::{cdb, logout_reason, Connection, LoginOptions};
use iscsi::pdu::{Bhs, Itt, Opcode, Pdu, RESERVED_TAG};

const IQN: &str = "iqn.2026-11.io.rtgt.test:sessions";
const BS: u32 = 512;

fn opts(_d: &Daemon) -> LoginOptions {
    LoginOptions {
        initiator_name: "iqn.2026-11.io.rtgt:it".into(),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(5),
        isid: [0x80, 0, 0, 0x12, 0x34, 0x56],
        ..Default::default()
    }
}

fn setup(tag: &str) -> Daemon {
    let d = Daemon::start(tag);
    let img = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &img, true);
    d
}

/// Log in and clear the power-on unit attention.
fn login(d: &Daemon, o: &LoginOptions) -> Connection {
    let (mut c, _) = Connection::login(d.portal, o).expect("login");
    for _ in 0..4 {
        if c.test_unit_ready(1).unwrap().is_good() {
            break;
        }
    }
    c
}

#[test]
fn mcs_second_connection_needs_max_connections() {
    let d = setup("mcs");
    let o = opts(&d);
    let mut a = login(&d, &o);
    a.write(1, 10, &[0x5a; 4096], BS).unwrap();
    // tgt's default MaxConnections=1: a second connection is refused.
    let join = LoginOptions {
        tsih: a.tsih(),
        cid: 1,
        initial_cmd_sn: a.cmd_sn(),
        ..o.clone()
    };
    let r = Connection::login_raw(d.portal, &join).unwrap();
    assert_eq!((r.class, r.detail), (2, 6), "too many connections expected");
    // Allow four, and a new session may join with up to four connections.
    d.must(&[
        "--lld",
        "iscsi",
        "--op",
        "update",
        "--mode",
        "target",
        "--tid",
        "1",
        "-n",
        "MaxConnections",
        "-v",
        "4",
    ]);
    let o = LoginOptions {
        isid: [0x80, 0, 0, 0, 0, 9],
        max_connections: 4,
        ..o
    };
    let mut a = login(&d, &o);
    let join = LoginOptions {
        tsih: a.tsih(),
        cid: 1,
        initial_cmd_sn: a.cmd_sn(),
        ..o.clone()
    };
    let (mut b, nb) = Connection::login(d.portal, &join).expect("join session");
    assert_eq!(nb.tsih, a.tsih());
    // Commands on the new connection see the session's data.
    let got = b.read(1, 10, 8, BS).unwrap();
    assert_eq!(got, vec![0x5a; 4096]);
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert_eq!(show.matches("Connection: ").count(), 2, "{show}");
    // Logging the session out from one connection ends the other too.
    assert_eq!(b.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
    a.set_timeout(Duration::from_secs(2)).unwrap();
    assert!(a.nop().is_err(), "the other connection should be closed");
}

#[test]
fn same_isid_reinstates_the_session() {
    let d = setup("reinst");
    let o = opts(&d);
    let mut first = login(&d, &o);
    first.write(1, 0, &[1u8; 512], BS).unwrap();
    let mut second = login(&d, &o);
    assert_ne!(first.tsih(), second.tsih());
    first.set_timeout(Duration::from_secs(2)).unwrap();
    assert!(
        first.nop().is_err(),
        "reinstated session's connection must close"
    );
    assert_eq!(second.read(1, 0, 1, BS).unwrap(), vec![1u8; 512]);
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert_eq!(show.matches("I_T nexus: ").count(), 1, "{show}");
}

#[test]
fn busy_target_delete_needs_force() {
    let d = setup("delete");
    let mut c = login(&d, &opts(&d));
    let o = d.adm(&[
        "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1",
    ]);
    assert!(!o.status.success(), "deleting a busy target must fail");
    assert!(c.nop().is_ok());
    d.must(&[
        "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
    ]);
    // The loops stop on a thread of their own, after the delete has been
    // answered: a NOP sent at once may still be answered (on a loaded CI
    // machine it was); the connection must close soon after.
    c.set_timeout(Duration::from_secs(15)).unwrap();
    let t0 = std::time::Instant::now();
    let mut closed = false;
    while !closed && t0.elapsed() < Duration::from_secs(15) {
        closed = c.nop().is_err();
    }
    assert!(closed, "forced delete closes the session");
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.is_empty(), "{show}");
}

/// After each kind of garbage the daemon, a long-lived session and a fresh
/// session all still work.
#[test]
fn broken_peers_leave_others_working() {
    let mut d = setup("hostile");
    let o = opts(&d);
    let mut long = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 0, 1],
            ..o.clone()
        },
    );
    let cases: Vec<Vec<u8>> = vec![
        vec![0xff; 48],                              // unknown opcode before login
        vec![0x03, 0x87, 0, 0, 0, 0xff, 0xff, 0xff], // truncated login header with huge length
        {
            let mut b = vec![0u8; 48]; // a SCSI command before login
            b[0] = 0x01;
            b
        },
        {
            let mut b = vec![0u8; 48]; // login request with a 16 MiB data segment
            b[0] = 0x43;
            b[5] = 0xff;
            b[6] = 0xff;
            b[7] = 0xff;
            b
        },
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(d.portal).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(bytes);
        let mut sink = [0u8; 512];
        // The daemon answers or closes; either way it must not hang us.
        let _ = s.read(&mut sink);
        drop(s);
        assert!(d.alive(), "daemon died on case {i}: {}", d.log());
        long.nop()
            .unwrap_or_else(|e| panic!("long-lived session broken after case {i}: {e}"));
        let mut fresh = login(
            &d,
            &LoginOptions {
                isid: [0x80, 0, 0, 0, 1, i as u8],
                ..o.clone()
            },
        );
        fresh.read(1, 0, 1, BS).unwrap();
        fresh.logout(logout_reason::CLOSE_SESSION).unwrap();
    }
    // In the full feature phase: a Data-Out for an unknown task, a bogus
    // opcode, a CmdSN far outside the window; then a client vanishing mid-write.
    let mut bad = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 2, 0],
            ..o.clone()
        },
    );
    let mut dout = iscsi::Bhs::new(iscsi::Opcode::DataOut);
    dout.set_flags(0x80);
    dout.set_itt(iscsi::Itt(0xdead));
    dout.set_u32_at(20, 0x1234);
    bad.send_pdu(&iscsi::Pdu::with_data(dout, vec![0; 512]))
        .unwrap();
    let far = cdb::read16(0, 1);
    let mut cmd = iscsi::Bhs::new(iscsi::Opcode::ScsiCommand);
    cmd.set_flags(0xc0);
    cmd.set_lun_raw(cdb::lun_to_raw(1));
    cmd.set_itt(iscsi::Itt(77));
    cmd.set_u32_at(20, 512);
    cmd.set_u32_at(24, bad.cmd_sn().wrapping_add(100_000));
    cmd.0[32..32 + far.len()].copy_from_slice(&far);
    bad.send_pdu(&iscsi::Pdu::new(cmd)).unwrap();
    drop(bad);
    let mut w = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 3, 0],
            initial_r2t: true,
            immediate_data: false,
            ..o.clone()
        },
    );
    let itt = w.submit(1, &cdb::write16(0, 2048), &vec![7u8; 1 << 20], 0);
    drop(itt);
    drop(w);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.alive(), "{}", d.log());
    long.nop().unwrap();
    assert_eq!(long.read(1, 0, 1, BS).unwrap().len(), 512);
    // A SCSI command with a bad AHS (length past the PDU), a PDU cut off
    // mid-header before the client vanishes, and talk after logout.
    let mut ahs = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 5, 0],
            ..o.clone()
        },
    );
    let mut cmd = iscsi::Bhs::new(iscsi::Opcode::ScsiCommand);
    cmd.set_flags(0xc0);
    cmd.set_itt(iscsi::Itt(5));
    cmd.set_u32_at(24, ahs.cmd_sn());
    let mut raw = cmd.0.to_vec();
    raw[4] = 2; // TotalAHSLength: 8 bytes
    raw.extend_from_slice(&[0xff, 0xff, 0x01, 0x00, 1, 2, 3, 4]); // AHS claims 65535 bytes
    ahs.send_raw(&raw).unwrap();
    ahs.send_raw(&raw[..20]).unwrap();
    drop(ahs);
    let mut bye = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 6, 0],
            ..o.clone()
        },
    );
    assert_eq!(bye.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
    let _ = bye.send_raw(
        &iscsi::Pdu::new(iscsi::Bhs::new(iscsi::Opcode::NopOut)).encode(Default::default()),
    );
    drop(bye);
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.alive(), "{}", d.log());
    long.nop().unwrap();
    let mut fresh = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 4, 0],
            ..o
        },
    );
    fresh.read(1, 0, 8, BS).unwrap();
    long.read(1, 0, 8, BS).unwrap();
}

#[test]
fn text_in_a_normal_session_lists_this_target() {
    let d = setup("text");
    let mut c = login(&d, &opts(&d));
    let t = c.send_targets(IQN).expect("SendTargets");
    assert_eq!(t.len(), 1, "{t:?}");
    assert_eq!(t[0].0, IQN);
    assert!(
        t[0].1.iter().any(|a| a.starts_with(&d.portal.to_string())),
        "{t:?}"
    );
    // The session still works after the exchange.
    c.read(1, 0, 1, BS).unwrap();
}

/// Per-thread CPU time (utime + stime ticks) of every thread named `name`.
fn thread_cpu(pid: u32, name: &str) -> Option<u64> {
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        // Worker threads come and go: skip any that vanish mid-read.
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        return Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?);
    }
    None
}

/// Read from one session per option set, all at once, for 1.5 s.
fn read_load(portal: std::net::SocketAddr, sessions: Vec<LoginOptions>) {
    let workers: Vec<_> = sessions
        .into_iter()
        .map(|o| {
            std::thread::spawn(move || {
                let (mut c, _) = Connection::login(portal, &o).unwrap();
                let _ = c.test_unit_ready(1);
                let t0 = std::time::Instant::now();
                while t0.elapsed() < Duration::from_millis(1500) {
                    c.read(1, 0, 8, BS).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

/// Two targets loaded at once burn CPU on their own threads, tgt/1 and tgt/2.
#[test]
fn two_targets_run_on_their_own_threads() {
    let d = Daemon::start("threads");
    let iqn2 = "iqn.2026-11.io.rtgt.test:second";
    d.file_target(1, IQN, &sparse_file(&d.dir, "a.img", 8 << 20), false);
    d.file_target(2, iqn2, &sparse_file(&d.dir, "b.img", 8 << 20), false);
    let pid = d.child.id();
    std::thread::sleep(Duration::from_millis(200));
    let before = (
        thread_cpu(pid, "tgt/1").expect("thread tgt/1"),
        thread_cpu(pid, "tgt/2").expect("thread tgt/2"),
    );
    let per_target = [IQN, iqn2].map(|iqn| LoginOptions {
        target_name: Some(iqn.into()),
        ..opts(&d)
    });
    read_load(d.portal, per_target.to_vec());
    let after = (
        thread_cpu(pid, "tgt/1").unwrap(),
        thread_cpu(pid, "tgt/2").unwrap(),
    );
    assert!(
        after.0 > before.0,
        "tgt/1 burned no CPU: {before:?} -> {after:?}"
    );
    assert!(
        after.1 > before.1,
        "tgt/2 burned no CPU: {before:?} -> {after:?}"
    );
}

/// With several loops per target, its sessions spread over them: two
/// sessions of one target burn CPU on tgt/1 and tgt/1.1.
#[test]
fn one_target_spreads_sessions_over_its_loops() {
    let d = Daemon::start_with("loops", &["--target-loops", "2"]);
    d.file_target(1, IQN, &sparse_file(&d.dir, "a.img", 8 << 20), false);
    let pid = d.child.id();
    // A new thread names itself once it runs: give it a moment.
    std::thread::sleep(Duration::from_millis(200));
    let names = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
            .collect()
    };
    let before = (
        thread_cpu(pid, "tgt/1").unwrap_or_else(|| panic!("no tgt/1 in {:?}", names())),
        thread_cpu(pid, "tgt/1.1").unwrap_or_else(|| panic!("no tgt/1.1 in {:?}", names())),
    );
    let two = (0..2u8)
        .map(|i| LoginOptions {
            isid: [0x80, 0, 0, 0, 7, i],
            ..opts(&d)
        })
        .collect();
    read_load(d.portal, two);
    let after = (
        thread_cpu(pid, "tgt/1").unwrap(),
        thread_cpu(pid, "tgt/1.1").unwrap(),
    );
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "both loops must work: {before:?} -> {after:?}"
    );
}

/// Hundreds of idle connections that never log in neither stop a fresh
/// login nor disturb a running session; past the per-address cap they are
/// refused at once.
#[test]
fn hundreds_of_idle_connections() {
    let d = setup("idle");
    let o = opts(&d);
    let mut long = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 9, 1],
            ..o.clone()
        },
    );
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(d.portal).ok())
        .collect();
    assert!(idle.len() >= 64);
    std::thread::sleep(Duration::from_millis(300));
    long.nop().unwrap();
    long.read(1, 0, 1, BS).unwrap();
    // The address is over its cap now: a further connection is closed at
    // once (the read sees EOF) rather than left waiting.
    let mut extra = TcpStream::connect(d.portal).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        extra.read(&mut b).unwrap_or(0),
        0,
        "over-cap connection must be closed"
    );
    drop(idle);
    // Once the idle sockets are gone, the address may log in again.
    let t0 = std::time::Instant::now();
    let mut fresh = loop {
        match Connection::login(
            d.portal,
            &LoginOptions {
                isid: [0x80, 0, 0, 0, 9, 2],
                ..o.clone()
            },
        ) {
            Ok((c, _)) => break c,
            Err(e) if t0.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("no login after the idle connections closed: {e}"),
        }
    };
    let _ = fresh.test_unit_ready(1);
    fresh.read(1, 0, 8, BS).unwrap();
}

/// tgtadm's RedirectAddress/Port/Reason send logins elsewhere with
/// "target moved" and a TargetAddress (RFC 7143 §11.13.5).
#[test]
fn redirect_sends_the_initiator_elsewhere() {
    let d = setup("redirect");
    d.target_params(
        1,
        &[
            ("RedirectAddress", "10.1.2.3"),
            ("RedirectPort", "3261"),
            ("RedirectReason", "Temporary"),
        ],
    );
    let r = Connection::login_raw(d.portal, &opts(&d)).unwrap();
    assert_eq!((r.class, r.detail), (1, 1), "moved temporarily");
    let last = r.responses.last().unwrap();
    assert_eq!(last.data, b"TargetAddress=10.1.2.3:3261\0");
}

/// `show` lists a session's initiator with the alias its login sent, as
/// tgt does ("alias: none" without one).
#[test]
fn show_lists_initiator_alias() {
    let d = setup("alias");
    let o = LoginOptions {
        extra_keys: vec![("InitiatorAlias".into(), "client-7".into())],
        ..opts(&d)
    };
    let _c = login(&d, &o);
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(
        show.contains("Initiator: iqn.2026-11.io.rtgt:it alias: client-7"),
        "{show}"
    );
}

/// A backing store that takes long to open (a hung NFS server, a remote
/// image) must not stop the main thread: while the LUN's creation waits,
/// management requests and discovery sessions are still answered, and the
/// creation finishes once the store opens.
#[test]
fn a_slow_store_open_blocks_nobody_else() {
    let gate_dir = common::tempdir("gate");
    let gate = gate_dir.join("open");
    let d = Daemon::start_env(
        "slowopen",
        &[],
        &[("RTGT_FAULT_OPEN_GATE", gate.to_str().unwrap())],
    );
    let img = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.must(&[
        "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN,
    ]);
    d.must(&[
        "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ]);
    std::thread::scope(|s| {
        let creating = s.spawn(|| d.lu("new", 1, 1, &["-b", img.to_str().unwrap()]));
        // Wait until the open has started (the fault hook says so).
        let waiting = gate_dir.join("open.waiting");
        for _ in 0..2000 {
            if waiting.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(waiting.exists(), "the open never started");
        // The main thread answers management and discovery meanwhile.
        let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
        assert!(show.contains(IQN), "{show}");
        let o = LoginOptions {
            target_name: None,
            timeout: Duration::from_secs(5),
            ..opts(&d)
        };
        let (mut c, _) = Connection::login(d.portal, &o).expect("discovery login");
        let found = c.send_targets("All").expect("SendTargets");
        assert!(found.iter().any(|(n, _)| n == IQN), "{found:?}");
        assert!(!creating.is_finished(), "the store opened before the gate");
        std::fs::write(&gate, b"").unwrap();
        let out = creating.join().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains("LUN: 1"), "{show}");
    let _ = std::fs::remove_dir_all(gate_dir);
}

/// A loop caches each LUN's store; a LUN replaced under a live session
/// (deleted, then created again on another file) must be served from the
/// new file at once.
#[test]
fn a_replaced_lun_is_served_from_its_new_store() {
    let d = Daemon::start("relun");
    let a = d.dir.join("a.img");
    let b = d.dir.join("b.img");
    std::fs::write(&a, vec![0xaa; 1 << 20]).unwrap();
    std::fs::write(&b, vec![0xbb; 1 << 20]).unwrap();
    d.file_target(1, IQN, &a, false);
    let (mut c, _) = Connection::login(d.portal, &opts(&d)).expect("login");
    for _ in 0..4 {
        if c.test_unit_ready(1).unwrap().is_good() {
            break;
        }
    }
    assert!(c.read(1, 0, 8, BS).unwrap().iter().all(|&x| x == 0xaa));
    for (op, extra) in [("delete", vec![]), ("new", vec!["-b", b.to_str().unwrap()])] {
        assert!(d.lu(op, 1, 1, &extra).status.success());
    }
    // The new LU reports its arrival first (unit attention), then reads.
    let mut data = Vec::new();
    for _ in 0..4 {
        match c.read(1, 0, 8, BS) {
            Ok(v) => {
                data = v;
                break;
            }
            Err(_) => continue,
        }
    }
    assert!(
        !data.is_empty() && data.iter().all(|&x| x == 0xbb),
        "read {:x?}",
        &data[..data.len().min(8)]
    );
}

/// An initiator that stops answering NOP-In pings is dropped after
/// `nop_count` of them (RFC 7143 §11.19 leaves the policy to the target;
/// tgt's `nop_interval`/`nop_count`); one that answers keeps its session.
#[test]
fn unanswered_pings_drop_the_connection() {
    let d = setup("nop");
    d.target_params(1, &[("nop_interval", "1"), ("nop_count", "2")]);
    // This one answers every ping and is still served afterwards.
    let (mut good, _) = Connection::login(d.portal, &opts(&d)).expect("login");
    let mut answered = 0;
    while answered < 2 {
        let p = good.recv_pdu().expect("ping");
        assert_eq!(p.bhs.opcode(), Some(Opcode::NopIn), "{p:?}");
        assert_eq!(p.bhs.itt().0, RESERVED_TAG);
        let mut b = Bhs::new(Opcode::NopOut);
        b.0[0] |= 0x40;
        b.set_flags(0x80);
        b.set_itt(Itt(RESERVED_TAG));
        b.set_u32_at(20, p.bhs.ttt().0);
        b.set_u32_at(24, good.cmd_sn());
        b.set_u32_at(28, good.exp_stat_sn());
        good.send_pdu(&Pdu::new(b)).unwrap();
        answered += 1;
    }
    for _ in 0..4 {
        if good.test_unit_ready(1).unwrap().is_good() {
            break;
        }
    }
    assert!(good.test_unit_ready(1).unwrap().is_good());
    // This one reads the pings but never answers: after two the target
    // closes the connection.
    let o = LoginOptions {
        isid: [0x80, 0, 0, 0x12, 0x34, 0x57],
        ..opts(&d)
    };
    let (mut silent, _) = Connection::login(d.portal, &o).expect("login");
    let mut pings = 0;
    let end = loop {
        match silent.recv_pdu() {
            Ok(p) if p.bhs.opcode() == Some(Opcode::NopIn) => pings += 1,
            Ok(p) => panic!("unexpected {p:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(pings, 2, "dropped after {pings} pings ({end})");
    assert!(d.log().contains("initiator stopped answering NOP-In"));
}

/// With a target on two loops, two sessions land on different loops; the
/// common path of each runs on its loop's copy of the LUN state, which
/// must follow what the other loop changes: a reservation made through
/// one session conflicts at once with reads from the other, and its
/// release lets them through again.
#[test]
fn state_changed_on_one_loop_holds_on_the_other() {
    let d = Daemon::start_with("twoloops", &["--target-loops", "2"]);
    let img = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &img, false);
    let login = |isid_last: u8| {
        let o = LoginOptions {
            isid: [0x80, 0, 0, 0x12, 0x34, isid_last],
            ..opts(&d)
        };
        Connection::login(d.portal, &o).expect("login").0
    };
    // New sessions go to the loops in turn: these two run on different
    // ones. Both log in before either sends a command, so each loop's
    // first copy of the state already knows both.
    let mut a = login(1);
    let mut b = login(2);
    for c in [&mut a, &mut b] {
        for _ in 0..4 {
            if c.test_unit_ready(1).unwrap().is_good() {
                break;
            }
        }
    }
    let read = cdb::read16(0, 1);
    // Both read on their loop's common path (copies made and in use).
    for c in [&mut a, &mut b] {
        assert_eq!(c.scsi(1, &read, &[], BS).unwrap().status, 0);
    }
    // RESERVE(6) through A; B's next read conflicts.
    assert_eq!(a.scsi(1, &[0x16, 0, 0, 0, 0, 0], &[], 0).unwrap().status, 0);
    assert_eq!(b.scsi(1, &read, &[], BS).unwrap().status, 0x18);
    assert_eq!(a.scsi(1, &read, &[], BS).unwrap().status, 0);
    // RELEASE(6); B reads again.
    assert_eq!(a.scsi(1, &[0x17, 0, 0, 0, 0, 0], &[], 0).unwrap().status, 0);
    assert_eq!(b.scsi(1, &read, &[], BS).unwrap().status, 0);
}

/// `--port-group N` names this daemon's port: a gateway of several that
/// serve one LU has its own target portal group tag (portal listing,
/// SendTargets, login) and its own SCSI target port (VPD 83's relative
/// target port and target port group designators, SPC-4 §7.8.6.5-6, and
/// the port's SCSI name).
#[test]
fn port_group_names_the_gateway_port() {
    let d = Daemon::start_with("port-group", &["--port-group", "7"]);
    let img = sparse_file(&d.dir, "pg.img", 1 << 20);
    let iqn = "iqn.2026-11.io.rtgt:pg";
    d.file_target(1, iqn, &img, false);
    let portals = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "portal"]);
    assert_eq!(portals.trim(), format!("Portal: {},7", d.portal));
    let disc = LoginOptions {
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut c, _) = Connection::login(d.portal, &disc).unwrap();
    let targets = c.send_targets("All").unwrap();
    assert_eq!(
        targets,
        vec![(iqn.to_string(), vec![format!("{},7", d.portal)])]
    );
    let o = LoginOptions {
        target_name: Some(iqn.into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut c, neg) = Connection::login(d.portal, &o).unwrap();
    assert_eq!(neg.get("TargetPortalGroupTag"), Some("7"));
    // SendTargets in the normal session lists the same tag.
    let own = c.send_targets("").unwrap();
    assert_eq!(
        own,
        vec![(iqn.to_string(), vec![format!("{},7", d.portal)])]
    );
    let mut vpd = Vec::new();
    for _ in 0..3 {
        if let Ok(v) = c.inquiry_vpd(1, 0x83) {
            vpd = v;
            break;
        }
    }
    // Designators with target port association (01b), by type.
    let mut ports = Vec::new();
    let mut at = 4;
    while at + 4 <= vpd.len() {
        let len = vpd[at + 3] as usize;
        if (vpd[at + 1] >> 4) & 3 == 1 {
            ports.push((vpd[at + 1] & 0x0f, vpd[at + 4..at + 4 + len].to_vec()));
        }
        at += 4 + len;
    }
    assert!(
        ports.contains(&(4, vec![0, 0, 0, 7])),
        "relative target port 7: {ports:?}"
    );
    assert!(
        ports.contains(&(5, vec![0, 0, 0, 7])),
        "target port group 7: {ports:?}"
    );
    let name = ports.iter().find(|(t, _)| *t == 8).expect("port name");
    assert!(String::from_utf8_lossy(&name.1).starts_with(&format!("{iqn},t,0x0007")));
}

/// tgt-admin's `write-cache off` is a caching mode page with WCE clear
/// (`--params mode_page=8:0:18:0x10:...`); MODE SENSE then shows WCE 0,
/// and `on` (tgt's default page, 0x14) sets it again. It was stored but
/// not applied: writes went on being cached where the configuration said
/// they must not be.
#[test]
fn write_cache_off_from_tgt_admin_reaches_the_caching_page() {
    let d = setup("wce");
    let mut c = login(&d, &opts(&d));
    let wce = |c: &mut Connection| {
        let mut r = c.scsi(1, &[0x1a, 0, 0x08, 0, 255, 0], &[], 255).unwrap();
        if r.sense_key() == Some((0x06, 0x2a, 0x01)) {
            // MODE PARAMETERS CHANGED: the update is announced first.
            r = c.scsi(1, &[0x1a, 0, 0x08, 0, 255, 0], &[], 255).unwrap();
        }
        assert!(r.is_good(), "{r:?}");
        let page = &r.data[4 + r.data[3] as usize..];
        assert_eq!(page[0] & 0x3f, 8, "caching page");
        page[2] & 0x04 != 0
    };
    assert!(wce(&mut c), "tgt's default: write cache on");
    let page = |b2: &str| {
        format!("mode_page=8:0:18:{b2}:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0")
    };
    let o = d.lu("update", 1, 1, &["--params", &page("0x10")]);
    assert!(o.status.success(), "{o:?}");
    assert!(!wce(&mut c), "write-cache off");
    let o = d.lu("update", 1, 1, &["--params", &page("0x14")]);
    assert!(o.status.success(), "{o:?}");
    assert!(wce(&mut c), "write-cache on");
}
