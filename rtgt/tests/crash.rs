//! Crash consistency on file LUNs: rtgtd killed outright (SIGKILL) in the
//! middle of random writes from several sessions, then started again on
//! the same file; every write it acknowledged with GOOD must read back,
//! and a write it had not answered reads back either old or new, sector
//! by sector. With the write cache on and off (tgt-admin's `write-cache
//! off` mode page), on the temporary directory's file system (ext4 here)
//! and on tmpfs (`/dev/shm`).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{sparse_file, tempdir, Daemon};
use initiator::{Connection, LoginOptions};

const IQN: &str = "iqn.2026-12.io.rtgt:crash";
const SECTOR: usize = 512;
/// One write: 4 KiB.
const WRITE: usize = 4096;
const SESSIONS: usize = 4;
/// Slots (4 KiB each) per session, each session writing only its own.
const SLOTS: usize = 64;

/// What a session knows of each of its slots.
#[derive(Clone, Copy, Default)]
struct Slot {
    /// The last write answered GOOD.
    acked: Option<u64>,
    /// A write sent and not answered.
    pending: Option<u64>,
}

/// The contents of one write: every sector names the session, the slot,
/// the write's sequence number and the sector, then filler made from them.
fn data(session: usize, slot: usize, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(WRITE);
    for s in 0..WRITE / SECTOR {
        let mut sector = [0u8; SECTOR];
        let head = [session as u64, slot as u64, seq, s as u64];
        for (i, h) in head.iter().enumerate() {
            sector[i * 8..i * 8 + 8].copy_from_slice(&h.to_le_bytes());
        }
        let mut x = (seq << 20) ^ ((session as u64) << 12) ^ (slot as u64) ^ 0x9e37_79b9;
        for b in sector[32..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        out.extend_from_slice(&sector);
    }
    out
}

fn login(d: &Daemon, isid: u8) -> Connection {
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:crash-test".into(),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(10),
        isid: [0x80, 0, 0, 0, 0, isid],
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

fn lba(session: usize, slot: usize) -> u64 {
    ((session * SLOTS + slot) * WRITE / SECTOR) as u64
}

fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn serve(d: &Daemon, file: &Path, write_cache: bool) {
    d.file_target(1, IQN, file, false);
    if !write_cache {
        let o = d.lu(
            "update",
            1,
            1,
            &[
                "--params",
                "mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0",
            ],
        );
        assert!(o.status.success(), "{o:?}");
    }
}

/// How the daemon ends mid-write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM, as systemd stops it: it must exit cleanly, promptly.
    Term,
}

/// One run: write until `kill_after` writes are acknowledged, end the
/// daemon, restart it, verify.
fn crash_run(dir: &Path, write_cache: bool, kill_after: usize) {
    run(dir, write_cache, kill_after, End::Kill)
}

fn run(dir: &Path, write_cache: bool, kill_after: usize, end: End) {
    let file = sparse_file(dir, "disk.img", 16 << 20);
    let d = Daemon::start("crash");
    serve(&d, &file, write_cache);
    let acked = Arc::new(AtomicUsize::new(0));
    let states: Vec<Arc<Mutex<Vec<Slot>>>> = (0..SESSIONS)
        .map(|_| Arc::new(Mutex::new(vec![Slot::default(); SLOTS])))
        .collect();
    let writers: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let mut c = login(&d, s as u8 + 1);
            let state = states[s].clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (s as u64 + 1);
                for seq in 1u64.. {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let slot = (x % SLOTS as u64) as usize;
                    state.lock().unwrap()[slot].pending = Some(seq);
                    let cdb = write16(lba(s, slot), (WRITE / SECTOR) as u32);
                    match c.scsi(1, &cdb, &data(s, slot, seq), 0) {
                        Ok(r) if r.is_good() => {
                            let mut st = state.lock().unwrap();
                            st[slot] = Slot {
                                acked: Some(seq),
                                pending: None,
                            };
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        // The daemon is gone: this write stays pending.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    while acked.load(Ordering::SeqCst) < kill_after {
        std::thread::yield_now();
    }
    match end {
        End::Kill => drop(d), // writes in flight
        End::Term => {
            let mut d = d;
            let st = std::process::Command::new("kill")
                .args(["-TERM", &d.child.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            let t0 = std::time::Instant::now();
            let status = loop {
                if let Some(s) = d.child.try_wait().unwrap() {
                    break s;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "rtgtd still running 30 s after SIGTERM"
                );
                std::thread::yield_now();
            };
            assert!(
                status.success(),
                "rtgtd after SIGTERM: {status}\n{}",
                d.log()
            );
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    let total = acked.load(Ordering::SeqCst);

    let d = Daemon::start("crash-after");
    serve(&d, &file, write_cache);
    let mut c = login(&d, 0x7f);
    let mut pending_seen = 0;
    for (s, state) in states.iter().enumerate() {
        let state = state.lock().unwrap();
        for (slot, st) in state.iter().enumerate() {
            let got = c
                .read(1, lba(s, slot), (WRITE / SECTOR) as u32, SECTOR as u32)
                .unwrap();
            let acked_data = st.acked.map(|q| data(s, slot, q));
            let pending_data = st.pending.map(|q| data(s, slot, q));
            for (i, sector) in got.chunks(SECTOR).enumerate() {
                let range = i * SECTOR..(i + 1) * SECTOR;
                let old_ok = match &acked_data {
                    Some(a) => sector == &a[range.clone()],
                    None => sector.iter().all(|&b| b == 0),
                };
                let new_ok = pending_data
                    .as_ref()
                    .is_some_and(|p| sector == &p[range.clone()]);
                if new_ok && !old_ok {
                    pending_seen += 1;
                }
                assert!(
                    old_ok || new_ok,
                    "session {s} slot {slot} sector {i}: neither the acknowledged write \
                     {:?} nor the one in flight {:?} (write cache {write_cache}, {} writes \
                     acknowledged)",
                    st.acked,
                    st.pending,
                    total
                );
            }
        }
    }
    eprintln!(
        "{end:?} ({}, write cache {write_cache}): {total} writes acknowledged and found; \
         {pending_seen} sectors of unanswered writes landed",
        dir.display()
    );
}

#[test]
fn acknowledged_writes_survive_a_killed_daemon_on_ext4() {
    let dir = tempdir("crash-disk");
    crash_run(&dir, true, 2000);
    let dir = tempdir("crash-disk-wt");
    crash_run(&dir, false, 300);
}

#[test]
fn acknowledged_writes_survive_a_killed_daemon_on_tmpfs() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    for (wce, n) in [(true, 2000), (false, 300)] {
        let dir = shm.join(format!("rtgt-crash-{}-{wce}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        crash_run(&dir, wce, n);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn sigterm_mid_write_exits_cleanly_with_every_acknowledged_write() {
    let dir = tempdir("crash-term");
    run(&dir, true, 1000, End::Term);
}
