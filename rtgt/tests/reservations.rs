//! Persistent reservations with APTPL through a restart of rtgtd: a
//! registration and reservation made with APTPL set come back when a new
//! daemon (same --data-dir) serves the same LUN on the same medium, after
//! a SIGKILL; without APTPL they do not.

mod common;

use std::time::Duration;

use common::{sparse_file, Daemon};
use initiator::{Connection, LoginOptions};

const IQN: &str = "iqn.2026-12.io.rtgt:aptpl";

fn login(d: &Daemon, who: &str) -> Connection {
    let o = LoginOptions {
        initiator_name: format!("iqn.2026-12.io.rtgt:{who}"),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(10),
        // A fixed ISID: registrations belong to name and ISID (SPC-4
        // §5.13.1), and the holder must come back as itself.
        isid: [0x80, 0, 0, 0, 0x5a, who.len() as u8],
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

fn prout(
    c: &mut Connection,
    sa: u8,
    typ: u8,
    key: u64,
    sark: u64,
    aptpl: bool,
) -> initiator::ScsiResult {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = u8::from(aptpl);
    c.scsi(1, &[0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .unwrap()
}

/// READ KEYS: the registered keys.
fn keys(c: &mut Connection) -> Vec<u64> {
    let r = c
        .scsi(1, &[0x5e, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[], 1024)
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize / 8;
    (0..n)
        .map(|i| u64::from_be_bytes(r.data[8 + 8 * i..16 + 8 * i].try_into().unwrap()))
        .collect()
}

fn write1(c: &mut Connection) -> initiator::ScsiResult {
    c.scsi(1, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0u8; 512], 0)
        .unwrap()
}

#[test]
fn an_aptpl_reservation_survives_a_killed_daemon() {
    let data = common::tempdir("aptpl-data");
    let disk = sparse_file(&data, "disk.img", 16 << 20);
    let dd = data.join("state");
    let args = ["--data-dir", dd.to_str().unwrap()];
    let mut d = Daemon::start_with("aptpl", &args);
    d.file_target(1, IQN, &disk, false);
    let mut a = login(&d, "holder");
    // PTPL_C is offered.
    let caps = a
        .scsi(1, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], &[], 8)
        .unwrap();
    assert!(caps.is_good(), "{caps:?}");
    assert_eq!(caps.data[2] & 0x01, 1, "PTPL_C");
    assert!(prout(&mut a, 0, 0, 0, 0x1111, true).is_good());
    assert!(prout(&mut a, 1, 3, 0x1111, 0, false).is_good()); // RESERVE, exclusive access
    let mut b = login(&d, "other");
    assert_eq!(write1(&mut b).status, 0x18, "reservation conflict");
    drop((a, b));
    // SIGKILL: nothing flushed on the way out.
    let _ = d.child.kill();
    let _ = d.child.wait();

    let d = Daemon::start_with("aptpl2", &args);
    d.file_target(1, IQN, &disk, false);
    let mut b = login(&d, "other");
    assert_eq!(keys(&mut b), vec![0x1111]);
    assert_eq!(write1(&mut b).status, 0x18, "the reservation came back");
    let caps = b
        .scsi(1, &[0x5e, 2, 0, 0, 0, 0, 0, 0, 8, 0], &[], 8)
        .unwrap();
    assert_eq!(caps.data[3] & 0x01, 1, "PTPL_A");
    let mut a = login(&d, "holder");
    let w = write1(&mut a);
    assert!(w.is_good(), "the holder writes again: {w:?}");
    // Unregister with APTPL clear: the next daemon starts clean.
    assert!(prout(&mut a, 0, 0, 0x1111, 0, false).is_good());
    drop((a, b));
    drop(d);
    let d = Daemon::start_with("aptpl3", &args);
    d.file_target(1, IQN, &disk, false);
    let mut b = login(&d, "other");
    assert_eq!(keys(&mut b), Vec::<u64>::new());
    assert!(write1(&mut b).is_good());
}

#[test]
fn without_aptpl_a_restart_forgets_registrations() {
    let data = common::tempdir("noaptpl-data");
    let disk = sparse_file(&data, "disk.img", 16 << 20);
    let dd = data.join("state");
    let args = ["--data-dir", dd.to_str().unwrap()];
    let d = Daemon::start_with("noaptpl", &args);
    d.file_target(1, IQN, &disk, false);
    let mut a = login(&d, "holder");
    assert!(prout(&mut a, 0, 0, 0, 0x2222, false).is_good());
    assert_eq!(keys(&mut a), vec![0x2222]);
    drop(a);
    drop(d);
    let d = Daemon::start_with("noaptpl2", &args);
    d.file_target(1, IQN, &disk, false);
    let mut a = login(&d, "holder");
    assert_eq!(keys(&mut a), Vec::<u64>::new());
}
