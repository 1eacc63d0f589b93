//! rtgtd against real initiators and tools on loopback: libiscsi's
//! utilities, qemu-img over libiscsi, and the stock tgtadm. Each test
//! skips (and says so) when its tool is not installed.

mod common;

use std::process::Command;

use common::{have, sparse_file, Daemon};

const IQN: &str = "iqn.2026-11.io.rtgt.test:interop";

#[test]
fn discovery_and_inquiry_through_libiscsi() {
    if !have("iscsi-ls") {
        eprintln!("skipped: iscsi-ls not installed");
        return;
    }
    let d = Daemon::start("ls");
    let img = sparse_file(&d.dir, "disk.img", 64 << 20);
    d.file_target(1, IQN, &img, false);
    let out = Command::new("iscsi-ls")
        .args(["-s", &format!("iscsi://{}", d.portal)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Target:{IQN} Portal:{},1", d.portal)),
        "{text}"
    );
    // iscsi-ls sizes from the last LBA, so 64 MiB shows as 63M (as with tgt).
    assert!(
        text.contains("Lun:1    Type:DIRECT_ACCESS (Size:63M)"),
        "{text}"
    );
    let out = Command::new("iscsi-inq")
        .arg(format!("iscsi://{}/{IQN}/1", d.portal))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Product:VIRTUAL-DISK"), "{text}");
}

fn qemu_has_iscsi() -> bool {
    Command::new("qemu-img")
        .arg("--help")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("iscsi"))
        .unwrap_or(false)
}

/// 64 MiB of random data written by one libiscsi client (qemu-img) reads
/// back identical through another session and lies in the backing file.
#[test]
fn qemu_img_writes_64mib_and_reads_back() {
    if !have("qemu-img") || !qemu_has_iscsi() {
        eprintln!("skipped: qemu-img with the iscsi driver not installed");
        return;
    }
    let d = Daemon::start("qemu");
    let size: usize = 64 << 20;
    let img = sparse_file(&d.dir, "disk.img", size as u64);
    d.file_target(1, IQN, &img, true);
    // Pseudo-random contents from a fixed xorshift seed.
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let src = d.dir.join("src.raw");
    std::fs::write(&src, &data).unwrap();
    let url = format!("iscsi://{}/{IQN}/1", d.portal);
    let st = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(&url)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img write failed: {}", d.log());
    let back = d.dir.join("back.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&url)
        .arg(&back)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img read failed: {}", d.log());
    assert!(
        std::fs::read(&back).unwrap() == data,
        "data read back differs"
    );
    assert!(std::fs::read(&img).unwrap() == data, "backing file differs");
}

/// The stock Debian tgtadm drives rtgtd unmodified.
#[test]
fn stock_tgtadm_configures_and_shows() {
    let tgtadm = "/usr/sbin/tgtadm";
    if !std::path::Path::new(tgtadm).exists() {
        eprintln!("skipped: tgtadm not installed");
        return;
    }
    let d = Daemon::start("tgtadm");
    let img = sparse_file(&d.dir, "disk.img", 32 << 20);
    let ok = |args: &[&str]| {
        let o = d.adm_with(tgtadm, args);
        assert!(
            o.status.success(),
            "tgtadm {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&[
        "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", "1", "-T", IQN,
    ]);
    ok(&[
        "--lld",
        "iscsi",
        "--op",
        "new",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "-b",
        img.to_str().unwrap(),
    ]);
    ok(&[
        "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ]);
    let show = ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains(&format!("Target 1: {IQN}")), "{show}");
    assert!(show.contains("Size: 34 MB, Block size: 512"), "{show}");
    // A bad request gets tgt's message and exit code, and changes nothing.
    let o = d.adm_with(
        tgtadm,
        &[
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            "iqn.x:dup",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("this target already exists"));
    let o = d.adm_with(
        tgtadm,
        &[
            "--lld",
            "iscsi",
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "9",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("can't find the logical unit"));
    assert_eq!(
        ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"]),
        show
    );
}

/// A second daemon on a control port in use refuses to start.
#[test]
fn second_daemon_on_same_control_port_refuses() {
    let d = Daemon::start("lock");
    let o = Command::new(env!("CARGO_BIN_EXE_rtgtd"))
        .args([
            "-f",
            "-C",
            &d.control_port.to_string(),
            "--iscsi",
            &format!("portal=127.0.0.1:{}", common::free_port()),
        ])
        .env("TGT_IPC_SOCKET", d.dir.join("socket"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("control port {}", d.control_port)),
        "{err}"
    );
}

/// `--mode lld --op stop` closes the portals (tgt shows `iscsi: stopped`),
/// start opens them again; stop is refused while targets exist.
#[test]
fn lld_stop_and_start() {
    let d = Daemon::start("lld");
    let show = || d.must(&["--op", "show", "--mode", "lld"]);
    assert!(show().contains("iscsi: ready"));
    d.must(&["--op", "stop", "--mode", "lld", "--lld", "iscsi"]);
    assert!(show().contains("iscsi: stopped"), "{}", show());
    assert!(
        std::net::TcpStream::connect(d.portal).is_err(),
        "portal still open"
    );
    d.must(&["--op", "start", "--mode", "lld", "--lld", "iscsi"]);
    assert!(show().contains("iscsi: ready"));
    assert!(
        std::net::TcpStream::connect(d.portal).is_ok(),
        "portal not reopened"
    );
    let img = sparse_file(&d.dir, "disk.img", 1 << 20);
    d.file_target(1, IQN, &img, false);
    let o = d.adm(&["--op", "stop", "--mode", "lld", "--lld", "iscsi"]);
    assert!(!o.status.success(), "stop with targets must fail");
}

/// IPv6 portals: discovery over [::1] lists every portal, IPv6 in brackets,
/// and a session over IPv6 works.
#[test]
fn ipv6_portal_and_discovery() {
    if !have("iscsi-ls") || std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no iscsi-ls or no IPv6 loopback");
        return;
    }
    let v6port = common::free_port();
    let d = Daemon::start_with("v6", &["--iscsi", &format!("portal=[::1]:{v6port}")]);
    let img = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &img, false);
    let out = Command::new("iscsi-ls")
        .arg(format!("iscsi://[::1]:{v6port}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Target:{IQN} Portal:[::1]:{v6port},1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Target:{IQN} Portal:{},1", d.portal)),
        "{text}"
    );
    let out = Command::new("iscsi-inq")
        .arg(format!("iscsi://[::1]:{v6port}/{IQN}/1"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Product:VIRTUAL-DISK"));
}
