//! The initiator against a real target: a private tgtd by default, or the
//! target named by RTGT_TEST_PORTAL / RTGT_TEST_TARGET (see tests/common).
//! Skipped (with a message) when no tgtd is installed.

mod common;

use std::time::Duration;

use common::{pattern, DISK_MIB};
use initiator::{cdb, logout_reason, tmf, Connection, Error, LoginOptions};

const BS: u32 = 512;
const MIB: usize = 1 << 20;

/// Write `data` at block 0.. in pieces of the given sizes (cycled), then read
/// it back in other pieces and compare.
fn write_then_verify(
    c: &mut Connection,
    lun: u64,
    base_lba: u64,
    data: &[u8],
    wsizes: &[usize],
    rsizes: &[usize],
) {
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = wsizes[i % wsizes.len()].min(data.len() - at);
        c.write(
            lun,
            base_lba + (at / BS as usize) as u64,
            &data[at..at + n],
            BS,
        )
        .unwrap_or_else(|e| panic!("write of {n} bytes at {at}: {e}"));
        at += n;
        i += 1;
    }
    let mut back = Vec::with_capacity(data.len());
    let mut i = 0;
    while back.len() < data.len() {
        let n = rsizes[i % rsizes.len()].min(data.len() - back.len());
        let lba = base_lba + (back.len() / BS as usize) as u64;
        let d = c
            .read(lun, lba, (n / BS as usize) as u32, BS)
            .unwrap_or_else(|e| panic!("read of {n} at {lba}: {e}"));
        assert_eq!(d.len(), n);
        back.extend_from_slice(&d);
        i += 1;
    }
    if back != data {
        let first = back.iter().zip(data).position(|(a, b)| a != b).unwrap();
        panic!("data read back differs from data written, first at byte {first}");
    }
}

/// Sizes around the burst limits the options below set up: below, equal to
/// and above FirstBurstLength / MaxBurstLength, and odd block counts.
const WSIZES: &[usize] = &[
    512,
    4096,
    8192 + 512,
    16384,
    65536,
    65536 + 3 * 512,
    262_144,
    131_072 - 512,
];
const RSIZES: &[usize] = &[MIB / 4, 4096, 512, 65536 + 512, 7 * 512];

#[test]
fn discovery_lists_the_target() {
    let t = target_or_skip!("disc");
    let (mut c, neg) = Connection::login(t.portal, &t.discovery_opts()).expect("discovery login");
    assert!(c.params().discovery);
    let _ = neg;
    let targets = c.send_targets("All").expect("SendTargets");
    let (_, addrs) = targets
        .iter()
        .find(|(n, _)| *n == t.target)
        .unwrap_or_else(|| panic!("{} not in {targets:?}", t.target));
    assert!(!addrs.is_empty(), "no TargetAddress for {}", t.target);
    // A SCSI command on a discovery session is refused locally.
    assert!(matches!(
        c.submit(0, &cdb::test_unit_ready(), &[], 0),
        Err(Error::Usage(_))
    ));
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn login_inquiry_capacity_nop_logout() {
    let t = target_or_skip!("basic");
    let (mut c, neg) = t.login();
    assert_ne!(neg.tsih, 0, "target assigned no TSIH");
    assert!(neg.get("MaxBurstLength").is_some(), "keys: {:?}", neg.keys);
    let inq = c.inquiry(t.lun).expect("INQUIRY");
    assert!(inq.len() >= 36);
    assert_eq!(inq[0] & 0x1f, 0, "peripheral device type: disk");
    let (blocks, bs) = c.read_capacity16(t.lun).expect("READ CAPACITY(16)");
    assert_eq!(bs, BS);
    assert!(blocks * bs as u64 >= DISK_MIB << 20);
    let tur = c.test_unit_ready(t.lun).unwrap();
    // A power-on/reset unit attention is allowed first; the second must be good.
    if !tur.is_good() {
        assert_eq!(tur.sense_key().map(|s| s.0), Some(6), "{tur:?}");
        assert!(c.test_unit_ready(t.lun).unwrap().is_good());
    }
    c.nop().unwrap();
    assert_eq!(c.nop_data(b"ping data!").unwrap(), b"ping data!");
    c.sync_cache(t.lun).unwrap();
    // A bad LUN is a CHECK CONDITION value, not an error.
    let r = c.scsi(77, &cdb::read16(0, 1), &[], BS).unwrap();
    assert_ne!(r.status, 0);
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn write_read_1mib_burst_variants() {
    let t = target_or_skip!("rw");
    let data = pattern(1, MIB);
    // (immediate data, InitialR2T, FirstBurstLength, MaxBurstLength, MaxOutstandingR2T)
    let variants = [
        (true, false, 65536, 262_144, 1),
        (true, true, 65536, 262_144, 1),
        (false, true, 16384, 32768, 1),
        (false, false, 16384, 16384, 4),
        (true, false, 8192, 65536, 8),
    ];
    for (k, (imm, ir2t, fbl, mbl, mor2t)) in variants.into_iter().enumerate() {
        let o = LoginOptions {
            immediate_data: imm,
            initial_r2t: ir2t,
            first_burst_length: fbl,
            max_burst_length: mbl,
            max_outstanding_r2t: mor2t,
            ..t.opts()
        };
        let (mut c, neg) = t.login_with(&o);
        let p = c.params().clone();
        assert!(
            p.max_burst_length <= mbl && p.first_burst_length <= fbl,
            "{p:?}"
        );
        eprintln!("variant {k}: {p:?} (target keys {:?})", neg.keys);
        let data = pattern(k as u64 + 10, data.len());
        write_then_verify(&mut c, t.lun, (k * 4096) as u64, &data, WSIZES, RSIZES);
        assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
    }
}

#[test]
fn header_and_data_digests() {
    let t = target_or_skip!("digest");
    let o = LoginOptions {
        header_digest: true,
        data_digest: true,
        target_name: Some(t.digest_target.clone()),
        ..t.opts()
    };
    let (mut c, neg) = t.login_with(&o);
    assert_eq!(neg.get("HeaderDigest"), Some("CRC32C"));
    assert_eq!(neg.get("DataDigest"), Some("CRC32C"));
    assert!(c.params().header_digest && c.params().data_digest);
    let data = pattern(2, MIB);
    write_then_verify(&mut c, t.lun, 8192, &data, WSIZES, RSIZES);
    c.nop_data(b"abc").unwrap(); // odd length: padding is covered by the digest
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn queue_depth_8_pipelining() {
    let t = target_or_skip!("qd8");
    let o = LoginOptions {
        first_burst_length: 16384,
        max_burst_length: 32768,
        ..t.opts()
    };
    let (mut c, _) = t.login_with(&o);
    let chunk = 64 * 1024;
    let data = pattern(3, 64 * chunk);
    let base = 16384u64;
    let blocks = (chunk / BS as usize) as u32;
    // Writes, 8 in flight.
    let mut next = 0;
    let mut done = 0;
    let mut max_out = 0;
    while done < 64 {
        while next < 64 && c.outstanding() < 8 {
            let lba = base + (next * chunk / BS as usize) as u64;
            c.submit(
                t.lun,
                &cdb::write16(lba, blocks),
                &data[next * chunk..(next + 1) * chunk],
                0,
            )
            .unwrap();
            next += 1;
        }
        max_out = max_out.max(c.outstanding());
        let (_, r) = c.complete().unwrap();
        assert!(r.is_good(), "{r:?}");
        done += 1;
    }
    assert_eq!(max_out, 8);
    // Reads, 8 in flight, placed by ITT.
    let mut itts = std::collections::HashMap::new();
    let mut back = vec![0u8; data.len()];
    let (mut next, mut done) = (0, 0);
    while done < 64 {
        while next < 64 && c.outstanding() < 8 {
            let lba = base + (next * chunk / BS as usize) as u64;
            let itt = c
                .submit(t.lun, &cdb::read16(lba, blocks), &[], chunk as u32)
                .unwrap();
            itts.insert(itt, next);
            next += 1;
        }
        let (itt, r) = c.complete().unwrap();
        assert!(r.is_good(), "{r:?}");
        let i = itts
            .remove(&itt)
            .expect("completion for an ITT we did not send");
        back[i * chunk..(i + 1) * chunk].copy_from_slice(&r.data);
        done += 1;
    }
    assert!(back == data, "pipelined read-back differs");
    assert!(matches!(c.complete(), Err(Error::Usage(_))));
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn cmdsn_wraps_around() {
    let t = target_or_skip!("wrap");
    let o = LoginOptions {
        initial_cmd_sn: 0xffff_fff8,
        ..t.opts()
    };
    let (mut c, neg) = t.login_with(&o);
    assert_eq!(neg.exp_cmd_sn, 0xffff_fff8);
    for i in 0..32u64 {
        let d = pattern(100 + i, 4096);
        c.write(t.lun, 100 + i * 8, &d, BS).unwrap();
        assert_eq!(c.read(t.lun, 100 + i * 8, 8, BS).unwrap(), d);
    }
    assert!(c.cmd_sn() < 0x100);
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn task_management() {
    let t = target_or_skip!("tmf");
    let (mut c, _) = t.login();
    // Aborting a task that does not exist: "task does not exist" (1) or
    // "function complete" (0), RFC 7143 §11.6.1.
    let r = c.task_mgmt(tmf::ABORT_TASK, t.lun, 0x1234_5678).unwrap();
    assert!(r == 0 || r == 1, "ABORT TASK response {r}");
    assert_eq!(
        c.task_mgmt(tmf::LOGICAL_UNIT_RESET, t.lun, 0xffff_ffff)
            .unwrap(),
        0
    );
    // After the reset a unit attention may be reported once.
    for _ in 0..3 {
        if c.test_unit_ready(t.lun).unwrap().is_good() {
            break;
        }
    }
    assert!(c.test_unit_ready(t.lun).unwrap().is_good());
    c.nop().unwrap();
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn login_to_unknown_target_is_refused() {
    let t = target_or_skip!("refuse");
    let o = LoginOptions {
        target_name: Some("iqn.2026-11.invalid:nope".into()),
        ..t.opts()
    };
    let a = Connection::login_raw(t.portal, &o).unwrap();
    assert!(a.session.is_none());
    // Initiator error, "not found" (RFC 7143 §11.13.5).
    assert_eq!((a.class, a.detail), (2, 3));
    match Connection::login(t.portal, &o) {
        Err(Error::LoginFailed {
            class: 2,
            detail: 3,
        }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn login_straight_to_operational_stage() {
    let t = target_or_skip!("opstage");
    let o = LoginOptions {
        skip_security: true,
        max_recv_data_segment_length: 8192,
        ..t.opts()
    };
    let (mut c, _) = t.login_with(&o);
    // Reads larger than our MaxRecvDataSegmentLength arrive in several Data-In.
    let d = pattern(4, 65536);
    c.write(t.lun, 0, &d, BS).unwrap();
    assert_eq!(c.read(t.lun, 0, 128, BS).unwrap(), d);
    assert_eq!(c.logout(logout_reason::CLOSE_SESSION).unwrap(), 0);
}

#[test]
fn two_sessions_see_each_others_writes() {
    let t = target_or_skip!("twosess");
    let (mut a, na) = t.login();
    let (mut b, nb) = t.login();
    assert_ne!(na.tsih, nb.tsih);
    let d = pattern(5, 32768);
    a.write(t.lun, 50_000, &d, BS).unwrap();
    assert_eq!(b.read(t.lun, 50_000, 64, BS).unwrap(), d);
    a.logout(0).unwrap();
    b.logout(0).unwrap();
}

#[test]
fn load_generator_runs_and_stops() {
    let t = target_or_skip!("load");
    let exe = env!("CARGO_BIN_EXE_rtgt-load");
    for (rw, extra) in [
        ("randwrite", vec![]),
        ("randrw", vec!["--json"]),
        ("read", vec!["--threads", "1"]),
    ] {
        let out = std::process::Command::new(exe)
            .args([
                "--portal",
                &t.portal.to_string(),
                "--target",
                &t.target,
                "--lun",
                &t.lun.to_string(),
            ])
            .args([
                "--sessions",
                "2",
                "--qd",
                "4",
                "--bs",
                "8192",
                "--ios",
                "2000",
                "--seconds",
                "20",
            ])
            .args(["--rw", rw, "--size-mib", "16"])
            .args(extra)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{rw}: {s} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{s}");
        assert!(s.contains("iops"), "{s}");
        assert!(s.contains("ios=2000") || s.contains("\"ios\":2000"), "{s}");
    }
    // Let tgtd settle before the guard deletes the target.
    std::thread::sleep(Duration::from_millis(100));
}
