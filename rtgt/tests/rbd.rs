//! RBD LUNs against a real one-node Ceph cluster (tests/ceph/cluster.sh):
//! configured with the stock tgtadm, data checked against `rbd export`,
//! the offloads, a snapshot served read-only, and the faults (a fenced
//! client, a frozen OSD, an OSD killed and restarted mid-I/O).
//!
//! The tests skip when Ceph is not installed, unless `RTGT_REQUIRE_CEPH`
//! is set (the README's test command sets it, and `.ci/run` installs
//! Ceph), so a machine without Ceph still runs the rest.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{have, sparse_file, tempdir, Daemon};
use initiator::{Connection, LoginOptions, ScsiResult};

const BS: u32 = 512;

/// One cluster at a time: each OSD wants most of a core here.
static SERIAL: Mutex<()> = Mutex::new(());

struct Cluster {
    dir: PathBuf,
    conf: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ceph/cluster.sh")
}

impl Cluster {
    /// A fresh cluster, or `None` (test skipped) when Ceph is absent and
    /// not required.
    fn start(tag: &str, store: &str, auth: &str) -> Option<Cluster> {
        if !have("ceph-mon") || !have("ceph-osd") || !have("rbd") {
            assert!(
                std::env::var_os("RTGT_REQUIRE_CEPH").is_none(),
                "RTGT_REQUIRE_CEPH is set but ceph-mon, ceph-osd or rbd is missing"
            );
            eprintln!(
                "skipped: Ceph not installed (apt-get install ceph-mon ceph-osd ceph-common)"
            );
            return None;
        }
        let dir = tempdir(&format!("ceph-{tag}"));
        let o = Command::new(script())
            .args(["start", dir.to_str().unwrap(), store, auth])
            .output()
            .unwrap();
        // Built before the check so that a failed start is cleaned up.
        let c = Cluster {
            conf: dir.join("ceph.conf").to_str().unwrap().to_string(),
            dir,
        };
        assert!(
            o.status.success(),
            "cluster.sh start ({}): {}{}\nosd.0.stderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(c.dir.join("osd.0.stderr")).unwrap_or_default()
        );
        Some(c)
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        let o = Command::new(prog)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{prog} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    fn rbd(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.run("rbd", args).stdout).into_owned()
    }

    fn pid(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("run/{daemon}.pid")))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Send `sig` to `osd.0` or `mon.a`.
    fn signal(&self, daemon: &str, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid(daemon)])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// The image's contents as `rbd export` gives them.
    fn export(&self, image: &str) -> Vec<u8> {
        let out = self.dir.join(format!("{image}.export"));
        let _ = std::fs::remove_file(&out);
        self.rbd(&["export", &format!("rbd/{image}"), out.to_str().unwrap()]);
        std::fs::read(&out).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGCONT first: a frozen daemon ignores SIGKILL until resumed.
        for daemon in ["osd.0", "mon.a"] {
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid(daemon)])
                .status();
        }
        let _ = Command::new(script())
            .args(["stop", self.dir.to_str().unwrap()])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The stock tgtadm when installed (the interface users script), else ours.
fn tgtadm_bin() -> &'static str {
    if have("tgtadm") {
        "tgtadm"
    } else {
        env!("CARGO_BIN_EXE_rtgtadm")
    }
}

/// Run `tgtadm --lld iscsi ARGS...`, asserting success; its stdout.
fn tgtadm(d: &Daemon, args: &[&str]) -> String {
    d.must_with(tgtadm_bin(), &[&["--lld", "iscsi"], args].concat())
}

fn show_targets(d: &Daemon) -> String {
    tgtadm(d, &["--op", "show", "--mode", "target"])
}

fn new_target(d: &Daemon, tid: u32, iqn: &str) {
    let t = tid.to_string();
    tgtadm(
        d,
        &["--op", "new", "--mode", "target", "--tid", &t, "-T", iqn],
    );
    tgtadm(
        d,
        &["--op", "bind", "--mode", "target", "--tid", &t, "-I", "ALL"],
    );
}

/// `tgtadm --op new --mode logicalunit ... --bstype rbd`: the arguments.
fn rbd_lun_args(tid: u32, lun: u64, path: &str, bsopts: &str) -> Vec<String> {
    let args = [
        "--lld",
        "iscsi",
        "--op",
        "new",
        "--mode",
        "logicalunit",
        "--tid",
        &tid.to_string(),
        "--lun",
        &lun.to_string(),
        "--bstype",
        "rbd",
        "-b",
        path,
        "--bsopts",
        bsopts,
    ];
    args.iter().map(|a| a.to_string()).collect()
}

fn rbd_lun(d: &Daemon, tid: u32, lun: u64, path: &str, bsopts: &str) {
    let args = rbd_lun_args(tid, lun, path, bsopts);
    tgtadm(d, &args[2..].iter().map(String::as_str).collect::<Vec<_>>());
}

/// A fresh rtgtd with target `iqn` (tid 1) serving `rbd/<image>` as LUN 1,
/// and a session to it.
fn gateway(tag: &str, iqn: &str, image: &str, bsopts: &str) -> (Daemon, Connection) {
    let d = Daemon::start(tag);
    new_target(&d, 1, iqn);
    rbd_lun(&d, 1, 1, &format!("rbd/{image}"), bsopts);
    let c = login(&d, iqn);
    (d, c)
}

fn login(d: &Daemon, iqn: &str) -> Connection {
    let o = LoginOptions {
        target_name: Some(iqn.into()),
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let (mut c, _) = Connection::login(d.portal, &o).expect("login");
    // Clear the power-on unit attentions.
    for lun in 0..4 {
        for _ in 0..4 {
            if c.test_unit_ready(lun).unwrap().is_good() {
                break;
            }
        }
    }
    c
}

/// SIGTERM, as systemd stops a service; it must exit cleanly.
fn stop_gracefully(mut d: Daemon) {
    let st = Command::new("kill")
        .args(["-TERM", &d.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(d.child.wait().unwrap().success(), "{}", d.log());
}

/// VPD 83's designators with this association (0: the LU, 1: the target
/// port; SPC-4 §7.8.6.1), whole.
fn designators(page: &[u8], association: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 4;
    while at + 4 <= page.len() {
        let len = page[at + 3] as usize;
        let end = (at + 4 + len).min(page.len());
        if (page[at + 1] >> 4) & 3 == association {
            out.push(page[at..end].to_vec());
        }
        at += 4 + len;
    }
    out
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cdb16(op: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write_cmd(c: &mut Connection, lun: u64, lba: u64, data: &[u8]) -> ScsiResult {
    c.scsi(lun, &cdb16(0x8a, lba, data.len() as u32 / BS), data, 0)
        .unwrap()
}

fn read(c: &mut Connection, lun: u64, lba: u64, len: usize) -> Vec<u8> {
    c.read(lun, lba, (len / BS as usize) as u32, BS).unwrap()
}

/// Write, retrying while the LU answers NOT READY (as initiators do),
/// up to `limit`; an ASYMMETRIC ACCESS STATE CHANGED unit attention (the
/// image's lock moved between gateways) is retried too.
fn write_retrying(c: &mut Connection, lun: u64, lba: u64, data: &[u8], limit: Duration) {
    let t0 = Instant::now();
    loop {
        let r = write_cmd(c, lun, lba, data);
        if r.is_good() {
            return;
        }
        let sense = r.sense_key();
        assert!(
            sense == Some((0x02, 0x04, 0x01)) || sense == Some((0x06, 0x2a, 0x06)),
            "only NOT READY, BECOMING READY or an ALUA change may interrupt the writes: {sense:?}"
        );
        assert!(
            t0.elapsed() < limit,
            "the LU stayed NOT READY for {limit:?}"
        );
    }
}

#[test]
fn rbd_lun_serves_the_image_and_survives_faults() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // cephx, as production clusters run, and a gateway client with only
    // `profile rbd` rights and its own keyring.
    let Some(cl) = Cluster::start("main", "memstore", "cephx") else {
        return;
    };
    cl.rbd(&["create", "--size", "128M", "rbd/disk1"]);
    let d = Daemon::start("rbd");
    let iqn = "iqn.2026-11.io.rtgt:rbd";
    new_target(&d, 1, iqn);
    let keyring = cl.dir.join("iscsi.keyring");
    cl.run(
        "ceph",
        &[
            "auth",
            "get-or-create",
            "client.iscsi",
            "mon",
            "profile rbd",
            "osd",
            "profile rbd pool=rbd",
            "-o",
            keyring.to_str().unwrap(),
        ],
    );
    let opts = format!(
        "conf={};id=iscsi;cluster=ceph;keyring={};rados_osd_op_timeout=3",
        cl.conf,
        keyring.display()
    );
    rbd_lun(&d, 1, 1, "rbd/disk1", &opts);

    // A client the cluster does not know is refused, at once.
    let args = rbd_lun_args(1, 9, "rbd/disk1", &format!("conf={};id=nobody", cl.conf));
    let o = d.adm_with(
        tgtadm_bin(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        !o.status.success(),
        "an unknown cephx client must be refused"
    );

    // `show` as tgt prints an rbd LUN (thin: the image allocates on write).
    let show = show_targets(&d);
    for want in [
        "Size: 134 MB, Block size: 512",
        "Thin-provisioning: Yes",
        "Backing store type: rbd",
        "Backing store path: rbd/disk1",
    ] {
        assert!(show.contains(want), "{want} not in\n{show}");
    }

    // 64 MiB through a real client, found in the image.
    let data = pattern(1, 64 << 20);
    let url = format!("iscsi://{}/{iqn}/1", d.portal);
    if have("qemu-img") {
        let src = d.dir.join("src.img");
        std::fs::write(&src, &data).unwrap();
        let st = Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&url)
            .status()
            .unwrap();
        assert!(st.success(), "qemu-img write failed: {}", d.log());
    } else {
        let mut c = login(&d, iqn);
        for (i, chunk) in data.chunks(256 << 10).enumerate() {
            assert!(write_cmd(&mut c, 1, (i * 512) as u64, chunk).is_good());
        }
    }
    let img = cl.export("disk1");
    assert!(
        img[..64 << 20] == data[..],
        "the image differs from what was written"
    );
    assert!(img[64 << 20..].iter().all(|&b| b == 0));

    let mut c = login(&d, iqn);
    assert_eq!(read(&mut c, 1, 2048, 1 << 20), data[1 << 20..2 << 20]);

    // GET LBA STATUS (SBC-3 §5.6): written blocks mapped, the rest of the
    // image deallocated.
    let mut gls = [0u8; 16];
    gls[0] = 0x9e;
    gls[1] = 0x12;
    gls[10..14].copy_from_slice(&64u32.to_be_bytes());
    let lba_status = |c: &mut Connection, lba: u64| {
        let mut g = gls;
        g[2..10].copy_from_slice(&lba.to_be_bytes());
        let r = c.scsi_ok(1, &g, &[], 64).unwrap();
        r[8 + 12] & 0x0f
    };
    assert_eq!(lba_status(&mut c, 0), 0, "written data reads as mapped");
    assert_eq!(
        lba_status(&mut c, 100 << 11),
        1,
        "never-written space reads as deallocated"
    );

    // UNMAP (SBC-3 §5.28): the range reads back as zeros (LBPRZ).
    let mut unmap = [0u8; 10];
    unmap[0] = 0x42;
    unmap[8] = 24;
    let mut param = vec![0u8; 24];
    param[0..2].copy_from_slice(&22u16.to_be_bytes());
    param[2..4].copy_from_slice(&16u16.to_be_bytes());
    param[8..16].copy_from_slice(&8u64.to_be_bytes());
    param[16..20].copy_from_slice(&16u32.to_be_bytes());
    c.scsi_ok(1, &unmap, &param, 0).unwrap();
    let back = read(&mut c, 1, 0, 32 * BS as usize);
    assert_eq!(back[..8 * 512], data[..8 * 512]);
    assert!(
        back[8 * 512..24 * 512].iter().all(|&b| b == 0),
        "unmapped blocks must read as zeros"
    );
    assert_eq!(back[24 * 512..], data[24 * 512..32 * 512]);

    // WRITE SAME (16) with a pattern, and with zeros.
    let block = pattern(7, 512);
    c.scsi_ok(1, &cdb16(0x93, 4096, 16), &block, 0).unwrap();
    let back = read(&mut c, 1, 4096, 16 * 512);
    assert!(back.chunks(512).all(|b| b == block.as_slice()));
    c.scsi_ok(1, &cdb16(0x93, 4096, 8), &[0u8; 512], 0).unwrap();
    let back = read(&mut c, 1, 4096, 16 * 512);
    assert!(back[..8 * 512].iter().all(|&b| b == 0));
    assert!(back[8 * 512..].chunks(512).all(|b| b == block.as_slice()));

    // COMPARE AND WRITE (SBC-3 §5.2): one block natively, eight through
    // the serialized path; a difference answers MISCOMPARE at its offset.
    for blocks in [1u8, 8] {
        let n = blocks as usize * 512;
        let lba = 8192u64;
        let old = pattern(u64::from(blocks) + 20, n);
        let new = pattern(u64::from(blocks) + 40, n);
        c.write(1, lba, &old, BS).unwrap();
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[2..10].copy_from_slice(&lba.to_be_bytes());
        caw[13] = blocks;
        let mut both = old.clone();
        both.extend_from_slice(&new);
        c.scsi_ok(1, &caw, &both, 0).unwrap();
        assert_eq!(read(&mut c, 1, lba, n), new);
        // Compare against stale data: byte 100 differs.
        let r = c.scsi(1, &caw, &both, 0).unwrap();
        assert_eq!(r.sense_key(), Some((0x0e, 0x1d, 0x00)), "{blocks} blocks");
        let info = u32::from_be_bytes(r.sense[3..7].try_into().unwrap());
        let first = old.iter().zip(&new).position(|(a, b)| a != b).unwrap();
        assert_eq!(info as usize, first, "MISCOMPARE's INFORMATION");
        assert_eq!(read(&mut c, 1, lba, n), new, "a miscompare writes nothing");
    }

    // A snapshot is served read-only, with the data as it was.
    cl.rbd(&["snap", "create", "rbd/disk1@snap1"]);
    rbd_lun(&d, 1, 2, "rbd/disk1@snap1", &opts);
    let show = show_targets(&d);
    let lun2 = &show[show.find("LUN: 2").unwrap()..];
    assert!(lun2.contains("Readonly: Yes"), "{lun2}");
    drop(c);
    let mut c = login(&d, iqn);
    let r = write_cmd(&mut c, 2, 0, &[1u8; 512]);
    assert_eq!(r.sense_key(), Some((0x07, 0x27, 0x00)), "DATA PROTECT");
    assert_eq!(read(&mut c, 2, 2048, 4096), data[1 << 20..(1 << 20) + 4096]);

    // A second gateway serving the same image under another tid and lun
    // reports the same LU (VPD 83 LU designators, VPD 80 serial), as
    // multipath initiators need; the snapshot is another LU.
    let d2 = Daemon::start_with("rbd-gw2", &["--port-group", "2"]);
    let iqn_gw2 = "iqn.2026-11.io.rtgt:gw2";
    new_target(&d2, 7, iqn_gw2);
    rbd_lun(&d2, 7, 3, "rbd/disk1", &opts);
    let mut c2 = login(&d2, iqn_gw2);
    let ids = |c: &mut Connection, lun: u64| {
        let vpd83 = c.inquiry_vpd(lun, 0x83).unwrap();
        let serial = c.inquiry_vpd(lun, 0x80).unwrap();
        (designators(&vpd83, 0), serial)
    };
    let (gw1, gw2, snap) = (ids(&mut c, 1), ids(&mut c2, 3), ids(&mut c, 2));
    assert_eq!(gw1.0.len(), 3, "T10 vendor, NAA 3 and NAA 6 designators");
    assert_eq!(gw1, gw2, "one image, one identity on every gateway");
    assert_ne!(gw1.0, snap.0, "a snapshot is another LU");
    assert_ne!(gw1.1, snap.1);
    // ... through distinct target ports, one per gateway (`--port-group`).
    // Relative target port designators (type 4): 1 here, 2 there.
    let relative_port = |c: &mut Connection, lun: u64| {
        designators(&c.inquiry_vpd(lun, 0x83).unwrap(), 1)
            .into_iter()
            .find(|d| d[1] & 0x0f == 4)
            .map(|d| d[4..].to_vec())
    };
    assert_eq!(relative_port(&mut c, 1), Some(vec![0, 0, 0, 1]));
    assert_eq!(relative_port(&mut c2, 3), Some(vec![0, 0, 0, 2]));
    drop(c2);
    stop_gracefully(d2);

    // targets.conf's `bs-type rbd`, through rtgt-admin (tgt-admin's
    // grammar).
    let conf = d.dir.join("targets.conf");
    std::fs::write(
        &conf,
        format!(
            "<target iqn.2026-11.io.rtgt:conf>\n    bs-type rbd\n    bsopts \"conf={}\"\n    \
             backing-store rbd/disk1@snap1\n</target>\n",
            cl.conf
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rtgt-admin"))
        .args(["-C", &d.control_port.to_string(), "-e", "-c"])
        .arg(&conf)
        .env("TGT_IPC_SOCKET", d.dir.join("socket"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let show = show_targets(&d);
    let t = &show[show.find("iqn.2026-11.io.rtgt:conf").unwrap()..];
    assert!(
        t.contains("Backing store type: rbd") && t.contains("rbd/disk1@snap1"),
        "{t}"
    );

    // A second target on a file keeps working while the cluster is away.
    let fdir = tempdir("rbd-file");
    let file = sparse_file(&fdir, "f.img", 16 << 20);
    let iqn2 = "iqn.2026-11.io.rtgt:file";
    d.file_target(5, iqn2, &file, false);
    let mut f = login(&d, iqn2);

    // Fenced: the cluster blocklists our client. Commands get NOT READY
    // (retried) until the image is reopened on a fresh client, then
    // succeed.
    let status = cl.rbd(&["status", "rbd/disk1"]);
    let watcher = status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("watcher="))
        .expect("rtgtd watches its image")
        .to_string();
    cl.run("ceph", &["osd", "blocklist", "add", &watcher]);
    let w = pattern(3, 64 << 10);
    write_retrying(&mut c, 1, 30_000, &w, Duration::from_secs(60));
    assert_eq!(read(&mut c, 1, 30_000, w.len()), w);
    let status = cl.rbd(&["status", "rbd/disk1"]);
    assert!(
        !status.contains(&watcher),
        "still the fenced client:\n{status}"
    );

    // A frozen monitor: a LUN added meanwhile is refused once its
    // connection times out (here 3 s, `client_mount_timeout`), and
    // management answers in the meantime; the open images go on working
    // (I/O needs only the OSDs).
    cl.signal("mon.a", "-STOP");
    let args = rbd_lun_args(
        1,
        8,
        "rbd/disk1",
        &format!("{opts};client_mount_timeout=3;rados_mon_op_timeout=3"),
    );
    let (port, dir) = (d.control_port, d.dir.clone());
    let t0 = Instant::now();
    let adding = std::thread::spawn(move || {
        Command::new(tgtadm_bin())
            .arg("-C")
            .arg(port.to_string())
            .args(&args)
            .env("TGT_IPC_SOCKET", dir.join("socket"))
            .output()
            .unwrap()
    });
    // Management keeps answering (and the open image keeps serving) for
    // as long as the open hangs.
    let mut answered = 0;
    while !adding.is_finished() {
        assert!(show_targets(&d).contains(iqn2));
        answered += 1;
    }
    assert!(
        answered > 1,
        "management answered {answered} times during the open"
    );
    let w = pattern(6, 4096);
    write_retrying(&mut c, 1, 50_000, &w, Duration::from_secs(10));
    let o = adding.join().unwrap();
    assert!(
        !o.status.success(),
        "an open against a frozen monitor must fail"
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(20), "the open took {took:?}");
    cl.signal("mon.a", "-CONT");

    // A frozen OSD: the command ends NOT READY within the configured
    // timeout (3 s here, not minutes), while the other target and the
    // management plane answer meanwhile.
    cl.signal("osd.0", "-STOP");
    let t0 = Instant::now();
    let itt = c
        .submit(1, &cdb16(0x8a, 40_000, 8), &pattern(4, 4096), 0)
        .unwrap();
    f.write(1, 0, &[9u8; 4096], BS).unwrap();
    assert_eq!(f.read(1, 0, 8, BS).unwrap(), vec![9u8; 4096]);
    let show = show_targets(&d);
    assert!(show.contains(iqn2));
    let r = c.wait_for(itt).unwrap();
    let took = t0.elapsed();
    assert_eq!(
        r.sense_key(),
        Some((0x02, 0x04, 0x01)),
        "NOT READY, retryable"
    );
    assert!(
        took < Duration::from_secs(20),
        "a frozen cluster held the command {took:?}"
    );
    cl.signal("osd.0", "-CONT");
    let w = pattern(5, 4096);
    write_retrying(&mut c, 1, 40_000, &w, Duration::from_secs(60));
    assert_eq!(read(&mut c, 1, 40_000, 4096), w);
    let img = cl.export("disk1");
    assert_eq!(img[40_000 * 512..40_000 * 512 + 4096], w[..]);

    // `disksize=auto` re-reads the image's size after `rbd resize`, and
    // the initiator hears CAPACITY DATA HAS CHANGED (SBC-3 §4.10).
    cl.rbd(&["resize", "--size", "192M", "rbd/disk1"]);
    tgtadm(
        &d,
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            "disksize=auto",
        ],
    );
    let r = c.test_unit_ready(1).unwrap();
    assert_eq!(r.sense_key(), Some((0x06, 0x2a, 0x09)));
    assert_eq!(c.read_capacity16(1).unwrap(), (192 << 11, BS));
    // Shrunk underneath (the LU still says 192 MiB): a read past the
    // image's new end fails, never returning bytes librbd did not fill.
    cl.rbd(&["resize", "--size", "160M", "--allow-shrink", "rbd/disk1"]);
    for lba in [170 << 11, (160 << 11) - 4] {
        let r = c.scsi(1, &cdb16(0x88, lba, 8), &[], 4096).unwrap();
        assert_eq!(r.status, 2, "a read past the image's end must fail ({lba})");
        assert_eq!(r.sense_key().map(|k| k.0), Some(0x03), "MEDIUM ERROR");
    }
    drop(c);
    drop(f);

    // A stopped rtgtd closes its images: no watch and no exclusive lock
    // is left for the cluster to time out before the next gateway writes.
    stop_gracefully(d);
    let status = cl.rbd(&["status", "rbd/disk1"]);
    assert!(!status.contains("watcher="), "{status}");
    assert_eq!(cl.rbd(&["lock", "ls", "rbd/disk1"]).trim(), "");
    let _ = std::fs::remove_dir_all(&fdir);
}

/// An OSD killed (SIGKILL) and started again while writes flow: they
/// resume, and every acknowledged write is in the image. The cluster keeps
/// its data in a bluestore file so the OSD's restart keeps it.
#[test]
fn osd_and_gateway_restarts_mid_io_lose_nothing_acknowledged() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cl) = Cluster::start("restart", "bluestore", "none") else {
        return;
    };
    cl.rbd(&["create", "--size", "64M", "rbd/disk2"]);
    let iqn = "iqn.2026-11.io.rtgt:restart";
    let opts = format!("conf={};rados_osd_op_timeout=10", cl.conf);
    let (d, mut c) = gateway("rbd-restart", iqn, "disk2", &opts);
    let chunk = 64 << 10;
    let writes = 240;
    let mut restarter = None;
    for i in 0..writes {
        if i == writes / 3 {
            let dir = cl.dir.clone();
            restarter = Some(std::thread::spawn(move || {
                Command::new(script())
                    .args(["osd-restart", dir.to_str().unwrap()])
                    .output()
                    .unwrap()
            }));
        }
        let lba = (i * chunk / BS as usize) as u64;
        write_retrying(
            &mut c,
            1,
            lba,
            &pattern(100 + i as u64, chunk),
            Duration::from_secs(120),
        );
    }
    let o = restarter.unwrap().join().unwrap();
    assert!(
        o.status.success(),
        "osd-restart: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    c.sync_cache(1).unwrap();
    let img = cl.export("disk2");
    for i in 0..writes {
        let at = i * chunk;
        assert!(
            img[at..at + chunk] == pattern(100 + i as u64, chunk)[..],
            "acknowledged write {i} is not in the image"
        );
    }

    // The gateway itself killed (SIGKILL) with writes in flight: what it
    // acknowledged is in the image, and a new rtgtd on the same image
    // writes again once librbd has broken the dead client's exclusive
    // lock (the cluster waits out the dead client's watch, about 30 s).
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let acked = acked.clone();
        let mut c = c;
        std::thread::spawn(move || {
            for i in 0..writes {
                let lba = (i * chunk / BS as usize) as u64;
                let data = pattern(1000 + i as u64, chunk);
                match c.scsi(1, &cdb16(0x8a, lba, (chunk / BS as usize) as u32), &data, 0) {
                    Ok(r) if r.is_good() => acked.store(i + 1, Ordering::SeqCst),
                    _ => return,
                }
            }
        })
    };
    while acked.load(Ordering::SeqCst) < writes / 4 {
        std::thread::yield_now();
    }
    drop(d);
    writer.join().unwrap();
    let done = acked.load(Ordering::SeqCst);
    assert!(done < writes, "the daemon died before the writer finished");
    let img = cl.export("disk2");
    for i in 0..done {
        let at = i * chunk;
        assert!(
            img[at..at + chunk] == pattern(1000 + i as u64, chunk)[..],
            "write {i}, acknowledged before the gateway died, is not in the image"
        );
    }
    let (_d, mut c) = gateway("rbd-restart2", iqn, "disk2", &opts);
    let t0 = Instant::now();
    write_retrying(&mut c, 1, 0, &pattern(7, chunk), Duration::from_secs(90));
    eprintln!(
        "first write after the gateway's crash took {:?}",
        t0.elapsed()
    );
    assert_eq!(read(&mut c, 1, 0, chunk), pattern(7, chunk));
}

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
fn prout(c: &mut Connection, sa: u8, typ: u8, key: u64, sark: u64) -> ScsiResult {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    c.scsi(1, &[0x5f, sa, typ, 0, 0, 0, 0, 0, 24, 0], &p, 0)
        .unwrap()
}

/// PERSISTENT RESERVE IN: (PRGENERATION, keys) for READ KEYS.
fn read_keys(c: &mut Connection) -> (u32, Vec<u64>) {
    let r = c
        .scsi(1, &[0x5e, 0, 0, 0, 0, 0, 0, 1, 0, 0], &[], 256)
        .unwrap();
    assert!(r.is_good(), "{r:?}");
    let generation = u32::from_be_bytes(r.data[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    let keys = r.data[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect();
    (generation, keys)
}

fn login_as(d: &Daemon, iqn: &str, initiator: &str) -> Connection {
    let o = LoginOptions {
        target_name: Some(iqn.into()),
        initiator_name: initiator.into(),
        timeout: Duration::from_secs(60),
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

/// Two gateways (one target IQN, port groups 1 and 2) on one image: a
/// reservation taken through one holds through the other, a PREEMPT
/// through the other reaches the first gateway's initiator as a unit
/// attention before it is answered, and a gateway started later finds the
/// state in the cluster.
#[test]
fn persistent_reservations_hold_across_gateways() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cl) = Cluster::start("pr", "memstore", "none") else {
        return;
    };
    cl.rbd(&["create", "--size", "64M", "rbd/prdisk"]);
    let opts = format!("conf={}", cl.conf);
    let iqn = "iqn.2026-12.io.rtgt:shared";
    let serve = |d: &Daemon| {
        new_target(d, 1, iqn);
        rbd_lun(d, 1, 1, "rbd/prdisk", &opts);
    };
    let d1 = Daemon::start("pr-gw1");
    serve(&d1);
    let d2 = Daemon::start_with("pr-gw2", &["--port-group", "2"]);
    serve(&d2);
    let mut x = login_as(&d1, iqn, "iqn.2026-12.test:x");
    let mut y = login_as(&d2, iqn, "iqn.2026-12.test:y");

    // X registers and reserves WRITE EXCLUSIVE through gateway 1.
    assert!(prout(&mut x, 0, 0, 0, 0xa1).is_good());
    assert!(prout(&mut x, 1, 1, 0xa1, 0).is_good());
    // Gateway 2 reports it and enforces it on Y.
    assert_eq!(read_keys(&mut y), (1, vec![0xa1]));
    let w = write_cmd(&mut y, 1, 0, &[7u8; 512]);
    assert_eq!(w.status, 0x18, "RESERVATION CONFLICT through gateway 2");
    assert!(c_read_good(&mut y), "WRITE EXCLUSIVE lets others read");
    assert!(write_cmd(&mut x, 1, 0, &[1u8; 512]).is_good());

    // Y registers and preempts X through gateway 2.
    assert!(prout(&mut y, 0, 0, 0, 0xb2).is_good());
    assert!(prout(&mut y, 4, 1, 0xb2, 0xa1).is_good());
    assert!(write_cmd(&mut y, 1, 0, &[2u8; 512]).is_good());
    // X, on gateway 1, already knows.
    let ua = x.test_unit_ready(1).unwrap();
    assert_eq!(
        ua.sense_key(),
        Some((0x06, 0x2a, 0x05)),
        "REGISTRATIONS PREEMPTED"
    );
    let w = write_cmd(&mut x, 1, 0, &[3u8; 512]);
    assert_eq!(w.status, 0x18, "X lost its access with its registration");
    assert_eq!(read(&mut x, 1, 0, 512), vec![2u8; 512]);

    // Registrations race through both gateways: none is lost.
    let mut z = login_as(&d1, iqn, "iqn.2026-12.test:z");
    let mut w2 = login_as(&d2, iqn, "iqn.2026-12.test:w");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| (0..10).all(|i| prout(&mut z, 6, 0, 0, 0xc00 + i).is_good()));
        let b = s.spawn(|| (0..10).all(|i| prout(&mut w2, 6, 0, 0, 0xd00 + i).is_good()));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a && b);
    let (generation, keys) = read_keys(&mut x);
    // Two REGISTERs, the PREEMPT, then the twenty (SPC-4 §6.15.2).
    assert_eq!(generation, 3 + 20, "every registration counted once");
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, vec![0xb2, 0xc09, 0xd09]);

    // A gateway started afresh finds the state in the cluster.
    drop((x, z));
    stop_gracefully(d1);
    let d1 = Daemon::start("pr-gw1b");
    serve(&d1);
    let mut x = login_as(&d1, iqn, "iqn.2026-12.test:x");
    assert_eq!(read_keys(&mut x).1.len(), 3);
    assert_eq!(write_cmd(&mut x, 1, 0, &[4u8; 512]).status, 0x18);
    // CLEAR through gateway 2 frees it for everyone.
    assert!(prout(&mut y, 3, 0, 0xb2, 0).is_good());
    assert_eq!(read_keys(&mut x).1, Vec::<u64>::new());
    assert!(write_cmd(&mut x, 1, 0, &[5u8; 512]).is_good());

    // COMPARE AND WRITE wider than one sector (librbd's own is atomic only
    // within 512 bytes) is atomic across gateways: two initiators add to
    // one 4 KiB counter through different gateways, each by reading it and
    // swapping in the sum; none of their additions is lost.
    let lba = 4096;
    assert!(write_cmd(&mut x, 1, lba, &[0u8; 4096]).is_good());
    let adds = 25;
    std::thread::scope(|s| {
        for c in [&mut x, &mut y] {
            s.spawn(move || caw_add(c, lba, adds));
        }
    });
    let v = read(&mut x, 1, lba, 4096);
    let total = u64::from_le_bytes(v[..8].try_into().unwrap());
    assert_eq!(total, 2 * adds, "COMPARE AND WRITE lost an update");
    assert!(v[8..].iter().all(|&b| b == total as u8), "torn counter");
    drop((x, y, w2));
    stop_gracefully(d1);
    stop_gracefully(d2);
}

/// Add 1 to the 4 KiB counter at `lba`, `n` times, each by COMPARE AND
/// WRITE of what was read, again on a miscompare (someone else added
/// first) or a retryable answer. The counter's first 8 bytes hold it, the
/// rest repeat its low byte (so a torn write shows).
fn caw_add(c: &mut Connection, lba: u64, n: u64) {
    let mut done = 0;
    let t0 = Instant::now();
    while done < n {
        assert!(t0.elapsed() < Duration::from_secs(120), "CAW loop stuck");
        let cur = read(c, 1, lba, 4096);
        let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
        let mut next = vec![(v + 1) as u8; 4096];
        next[..8].copy_from_slice(&(v + 1).to_le_bytes());
        let both = [cur, next].concat();
        let r = c.scsi(1, &cdb16(0x89, lba, 8), &both, 0).unwrap();
        match r.sense_key() {
            _ if r.is_good() => done += 1,
            Some((0x0e, 0x1d, 0x00)) | Some((0x02, 0x04, 0x01)) | Some((0x06, _, _)) => {}
            other => panic!("COMPARE AND WRITE: {other:?} {r:?}"),
        }
    }
}

fn c_read_good(c: &mut Connection) -> bool {
    c.scsi(1, &cdb16(0x88, 0, 1), &[], 512).unwrap().is_good()
}

/// Two gateways on one image, one initiator with a session to each (as
/// dm-multipath keeps): the gateway it writes through is killed
/// (SIGKILL) with writes in flight, and the writes go on through the
/// other, re-sending the one that was not answered, as multipath does.
/// Everything acknowledged by either gateway is in the image.
#[test]
fn a_gateway_killed_mid_write_fails_over_to_the_other() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(cl) = Cluster::start("failover", "memstore", "none") else {
        return;
    };
    cl.rbd(&["create", "--size", "64M", "rbd/fo"]);
    let opts = format!("conf={}", cl.conf);
    let iqn = "iqn.2026-12.io.rtgt:failover";
    let serve = |d: &Daemon| {
        new_target(d, 1, iqn);
        rbd_lun(d, 1, 1, "rbd/fo", &opts);
    };
    let d1 = Daemon::start("fo-gw1");
    serve(&d1);
    let d2 = Daemon::start_with("fo-gw2", &["--port-group", "2"]);
    serve(&d2);
    let host = "iqn.2026-12.test:host";
    let mut c1 = login_as(&d1, iqn, host);
    let mut c2 = login_as(&d2, iqn, host);
    // Implicit ALUA, the same answer through both gateways: the lowest
    // live port group is active/optimized, the other active/non-optimized,
    // wherever the image's lock is (writes down either path move it).
    let std = c1.inquiry(1).unwrap();
    assert_eq!(std[5] & 0x30, 0x30, "TPGS: implicit and explicit ALUA");
    let both = |c1: &mut Connection, c2: &mut Connection| {
        let (a, b) = (rtpg(c1), rtpg(c2));
        assert_eq!(a, b, "REPORT TARGET PORT GROUPS differs between gateways");
        a
    };
    assert_eq!(both(&mut c1, &mut c2), vec![(1, 0, 1), (2, 1, 2)]);
    assert!(write_cmd(&mut c2, 1, 0, &[9u8; 512]).is_good());
    assert!(write_cmd(&mut c1, 1, 0, &[9u8; 512]).is_good());
    assert_eq!(both(&mut c1, &mut c2), vec![(1, 0, 1), (2, 1, 2)]);
    // Explicit ALUA: SET TARGET PORT GROUPS through gateway 1 makes group 2
    // the optimized one everywhere, and back.
    let stpg = |c: &mut Connection, group: u8| {
        let cdb = [0xa4, 0x0a, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
        let r = scsi_past_alua_ua(c, &cdb, &[0, 0, 0, 0, 0, 0, 0, group], 0);
        assert!(r.is_good(), "{r:?}");
    };
    stpg(&mut c1, 2);
    assert_eq!(both(&mut c1, &mut c2), vec![(1, 1, 1), (2, 0, 2)]);
    stpg(&mut c2, 1);
    assert_eq!(both(&mut c1, &mut c2), vec![(1, 0, 1), (2, 1, 2)]);
    let chunk = 64 << 10;
    let writes = 160;
    let blocks = (chunk / BS as usize) as u32;
    let lba = move |i: usize| (i * chunk / BS as usize) as u64;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let acked = acked.clone();
        let mut c = c1;
        std::thread::spawn(move || {
            for i in 0..writes {
                let data = pattern(500 + i as u64, chunk);
                let cdb = cdb16(0x8a, lba(i), blocks);
                match c.scsi(1, &cdb, &data, 0) {
                    Ok(r) if r.is_good() => acked.store(i + 1, Ordering::SeqCst),
                    // The ALUA states changed (the explicit switches above):
                    // sent again, as initiators do.
                    Ok(r) if r.sense_key() == Some((0x06, 0x2a, 0x06)) => {
                        match c.scsi(1, &cdb, &data, 0) {
                            Ok(r) if r.is_good() => acked.store(i + 1, Ordering::SeqCst),
                            _ => return,
                        }
                    }
                    _ => return,
                }
            }
        })
    };
    while acked.load(Ordering::SeqCst) < writes / 4 {
        std::thread::yield_now();
    }
    drop(d1);
    writer.join().unwrap();
    let done = acked.load(Ordering::SeqCst);
    assert!(done < writes, "the gateway died before the writer finished");
    // The path failed: the rest (from the unanswered write on) goes
    // through gateway 2, which finds gateway 1 silent in its roll calls,
    // becomes the preferred path and breaks the dead gateway's lock
    // (rather than wait ~30 s for the cluster to drop its watch).
    let t0 = Instant::now();
    for i in done..writes {
        write_retrying(
            &mut c2,
            1,
            lba(i),
            &pattern(500 + i as u64, chunk),
            Duration::from_secs(90),
        );
        if i == done {
            let took = t0.elapsed();
            eprintln!("failover: first write through gateway 2 after {took:?}");
            assert!(took < Duration::from_secs(20), "takeover took {took:?}");
        }
    }
    c2.sync_cache(1).unwrap();
    // Gateway 2 is the preferred path now; the dead one, still
    // registered, is unavailable.
    assert_eq!(rtpg(&mut c2), vec![(1, 3, 1), (2, 0, 2)]);
    for i in (0..writes).step_by(7) {
        assert_eq!(
            read(&mut c2, 1, lba(i), chunk),
            pattern(500 + i as u64, chunk)
        );
    }
    drop(c2);
    stop_gracefully(d2);
    let img = cl.export("fo");
    for i in 0..writes {
        let at = i * chunk;
        assert!(
            img[at..at + chunk] == pattern(500 + i as u64, chunk)[..],
            "write {i} (acknowledged by gateway {}) is not in the image",
            if i < done { 1 } else { 2 }
        );
    }
}

/// REPORT TARGET PORT GROUPS: (group, access state, relative port) for
/// each group of one port.
fn rtpg(c: &mut Connection) -> Vec<(u16, u8, u16)> {
    let cdb = [0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0];
    let r = scsi_past_alua_ua(c, &cdb, &[], 1024);
    assert!(r.is_good(), "{r:?}");
    let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    let mut at = 4;
    while at + 8 <= 4 + len {
        let d = &r.data[at..];
        let ports = d[7] as usize;
        assert_eq!(ports, 1);
        out.push((
            u16::from_be_bytes([d[2], d[3]]),
            d[0] & 0x0f,
            u16::from_be_bytes([d[10], d[11]]),
        ));
        at += 8 + 4 * ports;
    }
    out
}

/// A command, sent again after ASYMMETRIC ACCESS STATE CHANGED unit
/// attentions (which initiators retry: the ALUA states just changed).
fn scsi_past_alua_ua(c: &mut Connection, cdb: &[u8], dout: &[u8], din: usize) -> ScsiResult {
    for _ in 0..8 {
        let r = c.scsi(1, cdb, dout, din as u32).unwrap();
        if r.sense_key() != Some((0x06, 0x2a, 0x06)) {
            return r;
        }
    }
    panic!("unit attentions without end");
}
