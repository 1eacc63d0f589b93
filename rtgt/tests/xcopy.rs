//! EXTENDED COPY (VMware's Full Copy offload) between LUNs of a running
//! rtgtd, driven by our initiator: copy targets named by the VPD 83h
//! designators each LUN reports, data checked afterwards, and the copy's
//! status read back with RECEIVE COPY RESULTS.

mod common;

use std::time::Duration;

use common::{sparse_file, Daemon};
use initiator::{Connection, LoginOptions};

const IQN: &str = "iqn.2026-12.io.rtgt:xcopy";

fn login(d: &Daemon) -> Connection {
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:xcopy-test".into(),
        target_name: Some(IQN.into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut c, _) = Connection::login(d.portal, &o).expect("login");
    for lun in [1, 2] {
        for _ in 0..4 {
            if c.test_unit_ready(lun).unwrap().is_good() {
                break;
            }
        }
    }
    c
}

/// The NAA designator (type 3, LU association) of a LUN's VPD 83h, as a
/// 20-byte designation descriptor for an identification target
/// descriptor.
fn naa_designator(c: &mut Connection, lun: u64) -> Vec<u8> {
    let page = c.inquiry_vpd(lun, 0x83).unwrap();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = usize::from(page[at + 3]);
        if page[at + 1] == 0x03 {
            let mut d = page[at..at + 4 + len].to_vec();
            d.resize(20, 0);
            return d;
        }
        at += 4 + len;
    }
    panic!("LUN {lun} reports no NAA designator: {page:02x?}");
}

/// An EXTENDED COPY (LID1) parameter list: one identification target
/// descriptor per designator, block-to-block segments `(src index, dst
/// index, blocks, src lba, dst lba)`.
fn copy_list(list_id: u8, targets: &[&[u8]], segs: &[(u16, u16, u16, u64, u64)]) -> Vec<u8> {
    let mut p = vec![0u8; 16];
    p[0] = list_id;
    p[2..4].copy_from_slice(&((targets.len() * 32) as u16).to_be_bytes());
    p[8..12].copy_from_slice(&((segs.len() * 28) as u32).to_be_bytes());
    for t in targets {
        let mut d = vec![0xe4, 0, 0, 0];
        d.extend_from_slice(t);
        d.resize(32, 0);
        d[29..32].copy_from_slice(&[0, 2, 0]); // 512-byte blocks
        p.extend_from_slice(&d);
    }
    for &(src, dst, blocks, src_lba, dst_lba) in segs {
        let mut d = vec![0x02, 0, 0, 0x18];
        d.extend_from_slice(&src.to_be_bytes());
        d.extend_from_slice(&dst.to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&blocks.to_be_bytes());
        d.extend_from_slice(&src_lba.to_be_bytes());
        d.extend_from_slice(&dst_lba.to_be_bytes());
        p.extend_from_slice(&d);
    }
    p
}

fn xcopy(c: &mut Connection, lun: u64, p: &[u8]) -> initiator::ScsiResult {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(p.len() as u32).to_be_bytes());
    c.scsi(lun, &cdb, p, 0).unwrap()
}

/// A daemon with one target of two file LUNs of `size` bytes.
fn two_luns(tag: &str, size: u64) -> (Daemon, std::path::PathBuf, std::path::PathBuf) {
    let d = Daemon::start(tag);
    let a = sparse_file(&d.dir, "a.img", size);
    let b = sparse_file(&d.dir, "b.img", size);
    d.file_target(1, IQN, &a, false);
    assert!(d
        .lu("new", 1, 2, &["-b", b.to_str().unwrap()])
        .status
        .success());
    (d, a, b)
}

#[test]
fn extended_copy_between_two_luns_leaves_identical_data() {
    let (d, _a, b) = two_luns("xcopy", 64 << 20);
    let mut c = login(&d);
    // 16 MiB of pseudo-random data on LUN 1.
    let mut data = vec![0u8; 16 << 20];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    for (i, mib) in data.chunks(1 << 20).enumerate() {
        c.write(1, i as u64 * 2048, mib, 512).unwrap();
    }
    let (da, db) = (naa_designator(&mut c, 1), naa_designator(&mut c, 2));
    assert_ne!(da, db, "two LUNs, two names");
    // LUN 1 -> LUN 2 at an offset, in four segments of 4 MiB (8192
    // blocks), sent to LUN 2.
    let segs: Vec<_> = (0..4u64)
        .map(|i| (0, 1, 8192, i * 8192, 4096 + i * 8192))
        .collect();
    let r = xcopy(&mut c, 2, &copy_list(7, &[&da, &db], &segs));
    assert!(r.is_good(), "{r:?}");
    for (i, mib) in data.chunks(1 << 20).enumerate() {
        let back = c.read(2, 4096 + i as u64 * 2048, 2048, 512).unwrap();
        assert!(back == mib, "MiB {i} differs after the copy");
    }
    assert_eq!(
        c.read(2, 0, 8, 512).unwrap(),
        vec![0; 4096],
        "before the copy's range"
    );
    // The copy's status, held under its list identifier: completed, four
    // segments, 16 MiB.
    let mut rcr = [0u8; 16];
    rcr[0] = 0x84;
    rcr[2] = 7;
    rcr[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = c.scsi(2, &rcr, &[], 1024).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data[4], 1, "completed successfully");
    assert_eq!(&r.data[5..7], &4u16.to_be_bytes());
    assert_eq!(&r.data[8..12], &(16u32 << 20).to_be_bytes());
    // Within one LUN too (LUN 2 onto itself, sent to LUN 1).
    let r = xcopy(&mut c, 1, &copy_list(8, &[&db], &[(0, 0, 2048, 4096, 0)]));
    assert!(r.is_good(), "{r:?}");
    assert!(c.read(2, 0, 2048, 512).unwrap() == data[..1 << 20]);
    // A copy past the end of its destination stops with COPY ABORTED and
    // writes nothing; a read-only destination refuses it.
    let r = xcopy(
        &mut c,
        1,
        &copy_list(9, &[&da, &db], &[(0, 1, 16, 0, (64 << 11) - 8)]),
    );
    assert_eq!(r.sense_key().map(|k| k.0), Some(0x0a), "{r:?}");
    assert!(d
        .lu("update", 1, 2, &["--params", "readonly=1"])
        .status
        .success());
    let _ = c.test_unit_ready(2); // the mode change's unit attention
    let r = xcopy(&mut c, 1, &copy_list(10, &[&da, &db], &[(0, 1, 8, 0, 0)]));
    assert_eq!(r.sense_key(), Some((0x07, 0x27, 0x00)), "{r:?}");
    // The files agree with what was copied.
    let file_b = std::fs::read(&b).unwrap();
    assert!(file_b[..1 << 20] == data[..1 << 20]);
    assert!(file_b[4096 * 512..4096 * 512 + (16 << 20)] == data[..]);
}

/// ODX through the daemon: POPULATE TOKEN on LUN 1, RECEIVE ROD TOKEN
/// INFORMATION for the token, WRITE USING TOKEN into LUN 2; the data
/// arrives, and a write to the source revokes the token.
#[test]
fn odx_token_copies_between_two_luns() {
    let (d, _a, _b) = two_luns("odx", 16 << 20);
    let mut c = login(&d);
    let data: Vec<u8> = (0..(4 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    c.write(1, 2048, &data, 512).unwrap();
    let tpc = |sa: u8, list: u32, plen: usize| {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x83;
        cdb[1] = sa;
        cdb[6..10].copy_from_slice(&list.to_be_bytes());
        cdb[10..14].copy_from_slice(&(plen as u32).to_be_bytes());
        cdb
    };
    let range = |lba: u64, n: u32| [&lba.to_be_bytes()[..], &n.to_be_bytes(), &[0; 4]].concat();
    let mut p = vec![0u8; 16];
    p[14..16].copy_from_slice(&16u16.to_be_bytes());
    p.extend_from_slice(&range(2048, 8192));
    let r = c.scsi(1, &tpc(0x10, 1, p.len()), &p, 0).unwrap();
    assert!(r.is_good(), "POPULATE TOKEN: {r:?}");
    let mut rrti = [0u8; 16];
    rrti[0] = 0x84;
    rrti[1] = 0x07;
    rrti[2..6].copy_from_slice(&1u32.to_be_bytes());
    rrti[10..14].copy_from_slice(&1024u32.to_be_bytes());
    let r = c.scsi(1, &rrti, &[], 1024).unwrap();
    assert!(r.is_good(), "{r:?}");
    let token = r.data[38..38 + 512].to_vec();
    let wut = |list: u32| {
        let mut p = vec![0u8; 536];
        p[16..528].copy_from_slice(&token);
        p[534..536].copy_from_slice(&16u16.to_be_bytes());
        p.extend_from_slice(&range(0, 8192));
        (tpc(0x11, list, p.len()), p)
    };
    let (cdb, p) = wut(2);
    let r = c.scsi(2, &cdb, &p, 0).unwrap();
    assert!(r.is_good(), "WRITE USING TOKEN: {r:?}");
    assert!(c.read(2, 0, 8192, 512).unwrap() == data);
    // The source changes: the token is revoked, and says so.
    c.write(1, 4000, &[1u8; 512], 512).unwrap();
    let (cdb, p) = wut(3);
    let r = c.scsi(2, &cdb, &p, 0).unwrap();
    assert_eq!(r.sense_key(), Some((0x05, 0x23, 0x06)), "{r:?}");
}
