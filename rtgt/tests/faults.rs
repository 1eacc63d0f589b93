//! Faults of the backing store seen from an initiator: a thin LUN whose
//! file system fills up. Needs to mount a small tmpfs (root, as CI runs);
//! skipped where mounting is not allowed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{sparse_file, tempdir, Daemon};
use initiator::{Connection, LoginOptions};

const IQN: &str = "iqn.2026-12.io.rtgt:full";

/// A tmpfs of `mib` MiB mounted on `dir` until dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: &Path, mib: u32) -> Option<SmallFs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn write16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Login options of a test initiator named `who`.
fn opts(who: &str) -> LoginOptions {
    LoginOptions {
        initiator_name: format!("iqn.2026-12.io.rtgt:{who}"),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Log in and take the power-on unit attentions of `luns`.
fn login(d: &Daemon, o: &LoginOptions, luns: &[u64]) -> Connection {
    let (mut c, _) = Connection::login(d.portal, o).expect("login");
    for &lun in luns {
        for _ in 0..4 {
            if c.test_unit_ready(lun).unwrap().is_good() {
                break;
            }
        }
    }
    c
}

/// UNMAP of one range (SBC-3 §5.28).
fn unmap(c: &mut Connection, lba: u64, blocks: u32) -> initiator::ScsiResult {
    let mut p = vec![0u8; 24];
    p[0..2].copy_from_slice(&22u16.to_be_bytes());
    p[2..4].copy_from_slice(&16u16.to_be_bytes());
    p[8..16].copy_from_slice(&lba.to_be_bytes());
    p[16..20].copy_from_slice(&blocks.to_be_bytes());
    c.scsi(1, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .unwrap()
}

/// A thin LUN larger than its file system: writes past the space end
/// with DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h,
/// SBC-4's answer for thin provisioning), everything else keeps working,
/// and space UNMAP gives back lets the writes go on.
#[test]
fn a_full_file_system_fails_writes_with_the_thin_provisioning_answer() {
    let mnt = tempdir("full-fs");
    let Some(_fs) = SmallFs::mount(&mnt, 8) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let file = sparse_file(&mnt, "thin.img", 64 << 20);
    let d = Daemon::start("full");
    d.file_target(1, IQN, &file, true);
    let o = opts("full-test");
    let mut c = login(&d, &o, &[1]);
    // 1 MiB writes until the 8 MiB file system is full.
    let chunk = 1 << 20;
    let blocks = (chunk / 512) as u32;
    let data = vec![0x5au8; chunk];
    let mut full_at = None;
    for i in 0..64u64 {
        let r = c
            .scsi(1, &write16(i * blocks as u64, blocks), &data, 0)
            .unwrap();
        if r.is_good() {
            continue;
        }
        assert_eq!(
            r.sense_key(),
            Some((0x07, 0x27, 0x07)),
            "DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT: {r:?}"
        );
        full_at = Some(i);
        break;
    }
    let full_at = full_at.expect("64 MiB of writes fit in an 8 MiB file system");
    assert!(full_at >= 4, "the file system filled after {full_at} MiB");
    // Everything else goes on: reads, TEST UNIT READY, management.
    assert!(c.test_unit_ready(1).unwrap().is_good());
    assert_eq!(c.read(1, 0, 8, 512).unwrap(), vec![0x5au8; 4096]);
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains(IQN), "{show}");
    // UNMAP gives space back (the file's blocks are punched out) ...
    let r = unmap(&mut c, 0, 4 * blocks);
    assert!(r.is_good(), "{r:?}");
    assert_eq!(c.read(1, 0, 8, 512).unwrap(), vec![0u8; 4096], "LBPRZ");
    // ... and the write that failed now succeeds.
    let r = c
        .scsi(1, &write16(full_at * blocks as u64, blocks), &data, 0)
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    drop(c);
    drop(d);
}

/// A soft threshold on a thin LUN (`thin_threshold=PCT`, SBC-4
/// §4.7.3.8): the write that takes the backing file's allocation past it
/// gives every nexus THIN PROVISIONING SOFT THRESHOLD REACHED (06h
/// 38h/07h) once; UNMAP under it re-arms it, and the next crossing is
/// told again. The threshold shows in the logical block provisioning
/// mode page.
#[test]
fn a_thin_lun_past_its_soft_threshold_tells_every_nexus() {
    let d = Daemon::start("threshold");
    let file = sparse_file(&d.dir, "thin.img", 16 << 20);
    d.file_target(1, IQN, &file, true);
    let lu = [
        "--lld",
        "iscsi",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
    ];
    let update = |p: &str| d.adm(&[&lu[..], &["--op", "update", "--params", p]].concat());
    assert!(!update("thin_threshold=101").status.success());
    assert!(update("thin_threshold=50").status.success());
    let mut c = login(&d, &opts("threshold-a"), &[1]);
    let mut c2 = login(
        &d,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 2, 1],
            ..opts("threshold-b")
        },
        &[1],
    );
    // The mode page's threshold count: 8 MiB of 512-byte blocks, in
    // sets of 2^0 blocks (VPD B2h's exponent).
    let r = c
        .scsi(1, &[0x5a, 0x08, 0x1c, 0x02, 0, 0, 0, 0, 255, 0], &[], 255)
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(&r.data[8 + 16..8 + 24], &[0x81, 0x02, 0, 0, 0, 0, 0x40, 0]);
    // Each step is one command, so the crossing is told on the command
    // after it (a unit attention answers the next command).
    let fill = |c: &mut Connection, from: u64, to: u64| {
        let data = vec![0x33u8; ((to - from) << 20) as usize];
        let r = c
            .scsi(
                1,
                &write16(from * 2048, ((to - from) * 2048) as u32),
                &data,
                0,
            )
            .unwrap();
        assert!(r.is_good(), "{r:?}");
    };
    let tur = |c: &mut Connection| c.test_unit_ready(1).unwrap().sense_key();
    fill(&mut c, 0, 6);
    assert_eq!(tur(&mut c), None, "6 of 16 MiB is under 50%");
    fill(&mut c, 6, 10);
    for conn in [&mut c, &mut c2] {
        assert_eq!(tur(conn), Some((0x06, 0x38, 0x07)));
        assert_eq!(tur(conn), None, "once per crossing");
    }
    // More writes past it say nothing new ...
    fill(&mut c, 10, 11);
    assert_eq!(tur(&mut c), None);
    // ... UNMAP under it re-arms it, and the next crossing is told.
    assert!(unmap(&mut c, 0, 8 * 2048).is_good());
    assert_eq!(tur(&mut c), None);
    fill(&mut c, 0, 4);
    assert_eq!(tur(&mut c), None, "7 MiB mapped");
    fill(&mut c, 4, 8);
    assert_eq!(tur(&mut c), Some((0x06, 0x38, 0x07)));
    assert_eq!(tur(&mut c2), Some((0x06, 0x38, 0x07)));
    // Turned off: nothing more.
    assert!(update("thin_threshold=0").status.success());
    let _ = tur(&mut c); // MODE PARAMETERS CHANGED
    assert!(unmap(&mut c, 0, 16 * 2048).is_good());
    fill(&mut c, 0, 12);
    assert_eq!(tur(&mut c), None);
}

/// A backing file truncated underneath the LUN: reads past its new end
/// fail with MEDIUM ERROR (UNRECOVERED READ ERROR, the LBA in INFORMATION)
/// rather than returning made-up data or crashing; reads before it and
/// writes anywhere go on, and so do other sessions and management.
#[test]
fn a_backing_file_truncated_underneath_gives_errors_not_a_crash() {
    let d = Daemon::start("truncate");
    let file = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &file, false);
    let o = opts("trunc-test");
    let mut c = login(&d, &o, &[1]);
    let data = vec![0x42u8; 1 << 20];
    for mib in [0u64, 8, 15] {
        let r = c.scsi(1, &write16(mib * 2048, 2048), &data, 0).unwrap();
        assert!(r.is_good(), "{r:?}");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    // Before the new end: as written.
    assert_eq!(c.read(1, 0, 8, 512).unwrap(), vec![0x42u8; 4096]);
    // Past it: an error naming the LBA.
    let mut read10 = [0x28u8, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    read10[2..6].copy_from_slice(&(8u32 * 2048).to_be_bytes());
    let r = c.scsi(1, &read10, &[], 4096).unwrap();
    assert_eq!(r.sense_key(), Some((0x03, 0x11, 0x00)), "{r:?}");
    assert_eq!(&r.sense[3..7], &(8u32 * 2048).to_be_bytes(), "INFORMATION");
    // Writes past it grow the file again, and read back.
    let r = c.scsi(1, &write16(12 * 2048, 2048), &data, 0).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(c.read(1, 12 * 2048, 8, 512).unwrap(), vec![0x42u8; 4096]);
    // The daemon, a new session and management are fine.
    assert!(c.test_unit_ready(1).unwrap().is_good());
    let (mut c2, _) = Connection::login(d.portal, &o).expect("second login");
    assert!(c2.nop().is_ok());
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains(IQN), "{show}");
}

/// A target deleted with `--force` while sessions write to it: their
/// connections end, the daemon and its management go on, and the target
/// can be made again and served at once.
#[test]
fn a_target_deleted_with_force_during_io_ends_its_sessions_cleanly() {
    let d = Daemon::start("force-delete");
    let file = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &file, false);
    let o = opts("force-test");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..3u8)
        .map(|i| {
            let o = LoginOptions {
                isid: [0x80, 0, 0, 0, 1, i],
                ..o.clone()
            };
            let (mut c, _) = Connection::login(d.portal, &o).expect("login");
            let done = done.clone();
            std::thread::spawn(move || {
                let data = vec![i; 64 << 10];
                for n in 0u64.. {
                    let lba = (n % 200) * 128;
                    match c.scsi(1, &write16(lba, 128), &data, 0) {
                        Ok(r) if r.is_good() || r.status == 2 => {
                            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        _ => return n,
                    }
                }
                unreachable!()
            })
        })
        .collect();
    while done.load(std::sync::atomic::Ordering::SeqCst) < 300 {
        std::thread::yield_now();
    }
    d.must(&[
        "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
    ]);
    for w in writers {
        let n = w.join().expect("a writer panicked");
        assert!(n > 0);
    }
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.is_empty(), "{show}");
    // Made again, served again.
    d.file_target(1, IQN, &file, false);
    let mut c = login(&d, &o, &[1]);
    assert!(c
        .scsi(1, &write16(0, 8), &[7u8; 4096], 0)
        .unwrap()
        .is_good());
    assert_eq!(c.read(1, 0, 8, 512).unwrap(), vec![7u8; 4096]);
}

/// A store that stops answering (`RTGT_FAULT_STALL_GATE`, see
/// rtgt/src/backend/fault.rs) holds only the commands sent to it: another
/// LUN of the same target and session, NOP-Out, management and a new
/// session go on, and ABORT TASK and LOGICAL UNIT RESET of the stuck
/// commands are answered at once (the store's late completions are
/// dropped); once the store answers again, the LUN serves normally.
#[test]
fn a_stalled_store_holds_only_its_own_commands() {
    let gate = tempdir("stall-gate").join("gate");
    std::fs::write(&gate, b"").unwrap();
    let d = Daemon::start_env(
        "stall",
        &[],
        &[("RTGT_FAULT_STALL_GATE", gate.to_str().unwrap())],
    );
    let stuck = sparse_file(&d.dir, "disk.stall", 16 << 20);
    let fine = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &stuck, false);
    let o = d.lu("new", 1, 2, &["-b", fine.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let o = opts("stall-test");
    let mut c = login(&d, &o, &[1, 2]);
    // Commands stuck in the store: more than the target has worker
    // threads.
    let w = c.submit(1, &write16(0, 8), &[1u8; 4096], 0).unwrap();
    let r = c
        .submit(1, &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0], &[], 4096)
        .unwrap();
    for i in 0..16u64 {
        c.submit(1, &write16(64 + 8 * i, 8), &[4u8; 4096], 0)
            .unwrap();
    }
    let t0 = std::time::Instant::now();
    // Everything else answers.
    let ok = c.scsi(2, &write16(0, 8), &[2u8; 4096], 0).unwrap();
    assert!(ok.is_good(), "{ok:?}");
    assert_eq!(c.read(2, 0, 8, 512).unwrap(), vec![2u8; 4096]);
    assert!(c.nop().is_ok());
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains("disk.stall"), "{show}");
    let (mut c2, _) = Connection::login(
        d.portal,
        &LoginOptions {
            isid: [0x80, 0, 0, 0, 2, 2],
            ..o.clone()
        },
    )
    .expect("second login");
    assert!(c2.nop().is_ok());
    // The stuck commands can be aborted, and the LU reset, at once.
    assert_eq!(
        c.task_mgmt(initiator::tmf::ABORT_TASK, 1, w).unwrap(),
        0,
        "ABORT TASK: function complete"
    );
    assert_eq!(
        c.task_mgmt(initiator::tmf::LOGICAL_UNIT_RESET, 1, 0)
            .unwrap(),
        0,
        "LOGICAL UNIT RESET: function complete"
    );
    let _ = r;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "answers behind a stalled store took {:?}",
        t0.elapsed()
    );
    // The store answers again: the LU serves (after the reset's unit
    // attention), and the stuck writes' late completions went nowhere.
    std::fs::remove_file(&gate).unwrap();
    let mut good = false;
    for _ in 0..4 {
        let r = c.scsi(1, &write16(8, 8), &[3u8; 4096], 0).unwrap();
        if r.is_good() {
            good = true;
            break;
        }
        assert_eq!(r.sense_key().map(|k| k.0), Some(0x06), "{r:?}");
    }
    assert!(good);
    assert_eq!(c.read(1, 8, 8, 512).unwrap(), vec![3u8; 4096]);
    assert!(c.nop().is_ok());
}

/// A store whose every transfer fails with EIO (`RTGT_FAULT_EIO`, a
/// `*.eio` backing file): reads answer MEDIUM ERROR, UNRECOVERED READ
/// ERROR and writes MEDIUM ERROR, WRITE ERROR (SBC-3), each with the
/// command's first LBA in INFORMATION; the LU and the session go on.
#[test]
fn an_eio_store_answers_medium_errors_with_the_lba() {
    let d = Daemon::start_env("eio", &[], &[("RTGT_FAULT_EIO", "1")]);
    let bad = sparse_file(&d.dir, "disk.eio", 16 << 20);
    d.file_target(1, IQN, &bad, false);
    let mut c = login(&d, &opts("eio-test"), &[1]);
    let r = c
        .scsi(1, &[0x28, 0, 0, 0, 0x12, 0x34, 0, 0, 8, 0], &[], 4096)
        .unwrap();
    assert_eq!(r.sense_key(), Some((0x03, 0x11, 0x00)), "{r:?}");
    assert_eq!(&r.sense[3..7], &0x1234u32.to_be_bytes(), "INFORMATION");
    let r = c.scsi(1, &write16(0x777, 8), &[1u8; 4096], 0).unwrap();
    assert_eq!(r.sense_key(), Some((0x03, 0x0c, 0x00)), "{r:?}");
    assert_eq!(&r.sense[3..7], &0x777u32.to_be_bytes(), "INFORMATION");
    assert!(c.test_unit_ready(1).unwrap().is_good());
    assert!(c.nop().is_ok());
}
