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
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:full-test".into(),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut c, _) = Connection::login(d.portal, &o).expect("login");
    for _ in 0..4 {
        if c.test_unit_ready(1).unwrap().is_good() {
            break;
        }
    }
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
