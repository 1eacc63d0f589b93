//! End-to-end tests of the management socket: `serve` on a current-thread
//! runtime with a fake daemon behind it, driven by our `rtgtadm` and, when
//! installed, by the stock `/usr/sbin/tgtadm`; every answer is compared
//! with what a real tgtd 1.0.85 answered to the same commands.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use rtgt::mgmt::ipc::TgtadmError;
use rtgt::mgmt::table::{BackingStoreInfo, DeviceType, OpenFlags, SystemInfo};
use rtgt::mgmt::{self, BackingInfo, Effect, Live, LunSpec, SessionInfo, TargetTable};

const TGTADM: &str = "/usr/sbin/tgtadm";

/// A daemon without target loops: backing stores are checked on disk.
struct FakeLive;

impl Live for FakeLive {
    fn open_backing(&mut self, _tid: u32, spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        let p = spec.path.as_deref().ok_or(TgtadmError::InvalidRequest)?;
        let md = std::fs::metadata(p).map_err(|_| TgtadmError::InvalidRequest)?;
        if !md.is_file() {
            return Err(TgtadmError::InvalidRequest);
        }
        Ok(BackingInfo {
            size_bytes: md.len(),
            readonly: false,
            physical_block_size: 0,
            identity: None,
        })
    }
    fn sessions(&self, _tid: u32) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn apply(&mut self, _effect: Effect) {}
}

/// What tgtd 1.0.85 (Debian 12, with tgt-rbd) lists in `system show`.
fn tgt_system_info() -> SystemInfo {
    let sd = OpenFlags {
        sync: true,
        direct: true,
    };
    let bs = |name: &str, oflags: OpenFlags| BackingStoreInfo {
        name: name.into(),
        oflags,
        needs_file: name != "null",
        thin: name == "rbd",
    };
    let none = OpenFlags::default();
    SystemInfo {
        llds: vec![
            ("iscsi".into(), "ready".into()),
            ("iser".into(), "error".into()),
        ],
        backing_stores: vec![
            bs("rbd", sd),
            bs("sheepdog", none),
            bs("bsg", none),
            bs("sg", none),
            bs("null", none),
            bs("ssc", none),
            bs("smc", sd),
            bs("mmc", sd),
            bs("rdwr", sd),
            bs("aio", none),
        ],
        device_types: vec![
            DeviceType::Disk,
            DeviceType::Cd,
            DeviceType::Osd,
            DeviceType::Controller,
            DeviceType::Changer,
            DeviceType::Tape,
            DeviceType::Passthrough,
        ],
    }
}

struct Daemon {
    prefix: PathBuf,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

impl Daemon {
    fn start() -> Daemon {
        let n: u32 = rand::random();
        let dir = std::env::temp_dir().join(format!("rtgt-mgmt-{}-{n:08x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let prefix = dir.join("socket");
        // tgtadm parses the control port into a signed short.
        let port = 20000 + (n % 12000) as u16;
        let (listener, guard) = mgmt::socket::bind_prefix(&prefix, port).unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let mut table = TargetTable::new();
                table.info = tgt_system_info();
                table.add_portal("127.0.0.1:13264".parse::<SocketAddr>().unwrap(), 1);
                let table = Rc::new(RefCell::new(table));
                let live: Rc<RefCell<dyn Live>> = Rc::new(RefCell::new(FakeLive));
                mgmt::serve(listener, table, live).await.unwrap();
            });
            drop(guard);
        });
        Daemon {
            prefix,
            port,
            thread: Some(thread),
            dir,
        }
    }

    fn run(&self, client: &str, args: &[&str]) -> (String, String, i32) {
        let out = Command::new(client)
            .env("TGT_IPC_SOCKET", &self.prefix)
            .arg("-C")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    /// `system delete` and wait for `serve` to return.
    fn stop(mut self, client: &str) {
        let (o, e, rc) = self.run(client, &["--op", "delete", "--mode", "system"]);
        assert_eq!((o.as_str(), e.as_str(), rc), ("", "", 0));
        self.thread.take().unwrap().join().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn make_images() {
    let d = Path::new("/tmp/rtgt-golden");
    std::fs::create_dir_all(d).unwrap();
    for (name, size) in [("disk1.img", 100u64 << 20), ("disk2.img", 1 << 30)] {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(d.join(name))
            .unwrap();
        f.set_len(size).unwrap();
    }
}

fn run_scenario(client: &str) {
    make_images();
    let d = Daemon::start();
    for (args, out, err, rc) in SCENARIO {
        let got = d.run(client, args);
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2),
            (*out, *err, *rc),
            "{client} {}",
            args.join(" ")
        );
    }
    d.stop(client);
}

#[test]
fn scenario_with_rtgtadm() {
    run_scenario(env!("CARGO_BIN_EXE_rtgtadm"));
}

#[test]
fn scenario_with_stock_tgtadm() {
    if !Path::new(TGTADM).exists() {
        eprintln!("{TGTADM} not installed: skipped");
        return;
    }
    run_scenario(TGTADM);
}

#[test]
fn system_delete_refused_while_targets_exist() {
    let d = Daemon::start();
    let c = env!("CARGO_BIN_EXE_rtgtadm");
    let r = d.run(
        c,
        &[
            "--op", "new", "--mode", "target", "--tid", "4", "-T", "iqn.x:y",
        ],
    );
    assert_eq!(r.2, 0);
    let r = d.run(c, &["--op", "delete", "--mode", "system"]);
    assert_eq!(r, (String::new(), "tgtadm: invalid request\n".into(), 22));
    let r = d.run(c, &["--op", "delete", "--mode", "target", "--tid", "4"]);
    assert_eq!(r.2, 0);
    d.stop(c);
}

#[test]
fn lock_refuses_a_second_daemon() {
    let n: u32 = rand::random();
    let dir = std::env::temp_dir().join(format!("rtgt-mgmt-lock-{n:08x}"));
    let prefix = dir.join("socket");
    let (_l, g) = mgmt::socket::bind_prefix(&prefix, 7001).unwrap();
    assert!(g.lock_path().ends_with("socket.7001.lock"));
    let md = std::fs::metadata(g.socket_path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let e = mgmt::socket::bind_prefix(&prefix, 7001).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains("socket.7001.lock"), "{e}");
    drop(g);
    // Released with the guard. Other tests of this binary spawn processes
    // concurrently, and a child between fork and exec briefly shares the
    // lock file's descriptor (closed at exec, CLOEXEC): allow for that.
    let mut again = mgmt::socket::bind_prefix(&prefix, 7001);
    for _ in 0..50 {
        if again.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        again = mgmt::socket::bind_prefix(&prefix, 7001);
    }
    again.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that records the raw request bytes and answers success.
fn recorder() -> (PathBuf, u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let n: u32 = rand::random();
    let dir = std::env::temp_dir().join(format!("rtgt-mgmt-rec-{n:08x}"));
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("socket");
    let port = 20000 + (n % 12000) as u16;
    let l = StdListener::bind(mgmt::socket::socket_path(&prefix, port)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut hdr = [0u8; 120];
            s.read_exact(&mut hdr).unwrap();
            let len = u32::from_ne_bytes(hdr[72..76].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 120];
            s.read_exact(&mut body).unwrap();
            let mut all = hdr.to_vec();
            all.extend_from_slice(&body);
            s2.lock().unwrap().push(all);
            s.write_all(&[0, 0, 0, 0, 8, 0, 0, 0]).unwrap();
        }
    });
    (prefix, port, seen)
}

#[test]
fn rtgtadm_sends_the_same_bytes_as_tgtadm() {
    if !Path::new(TGTADM).exists() {
        eprintln!("{TGTADM} not installed: skipped");
        return;
    }
    let cases: &[&[&str]] = &[
        &[
            "--op", "new", "--mode", "target", "--tid", "1", "-T", "iqn.a:b",
        ],
        &["-o", "delete", "-m", "tgt", "-t", "1", "-F", "x"],
        &[
            "--op", "delete", "--mode", "target", "--tid", "1", "--force",
        ],
        &["--lld", "iscsi", "--op", "show", "--mode", "target"],
        &["--op", "show", "--mode", "target", "--tid=0x2"],
        &[
            "--op", "new", "--mode", "lu", "--tid", "1", "--lun", "3", "-b", "/x", "-E", "rdwr",
            "-y", "4096", "-f", "direct", "-S", "opt",
        ],
        &[
            "--op", "new", "--mode", "lu", "--tid", "1", "--lun", "3", "-Y", "tape",
        ],
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
            "thin_provisioning=1,readonly=1",
        ],
        &[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL", "-Q", "iqn.x",
        ],
        &[
            "--op",
            "unbind",
            "--mode",
            "target",
            "--tid",
            "1",
            "--initiator-address",
            "10.0.0.0/8",
        ],
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "u",
            "--password",
            "p,w",
        ],
        &[
            "--op",
            "bind",
            "--mode",
            "account",
            "--user",
            "u",
            "--outgoing",
        ],
        &[
            "--op", "bind", "--mode", "account", "--tid", "2", "--user", "u", "-O", "x",
        ],
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "MaxRecvDataSegmentLength",
            "-v",
            "65536",
        ],
        &[
            "--op", "update", "--mode", "system", "--name", "State", "--value", "offline",
        ],
        &["--op", "new", "--mode", "portal", "-P", "portal=[::1]:3261"],
        &["-m", "portal", "-P", "portal=1.2.3.4", "-o", "delete"],
        &[
            "--op", "delete", "--mode", "conn", "--tid", "1", "--sid", "7", "--cid", "2",
        ],
        &[
            "--op",
            "show",
            "--mode",
            "session",
            "--tid",
            "1",
            "--sid",
            "18446744073709551614",
        ],
        &["--op", "start", "--mode", "lld", "--lld", "iser"],
        &["--mode", "target", "--op", "show", "--targ", "x"],
    ];
    let (prefix, port, seen) = recorder();
    let run = |client: &str, args: &[&str]| {
        let out = Command::new(client)
            .env("TGT_IPC_SOCKET", &prefix)
            .arg("-C")
            .arg(port.to_string())
            .args(args)
            .output()
            .unwrap();
        (out.stdout, out.stderr, out.status.code())
    };
    for args in cases {
        let before = seen.lock().unwrap().len();
        let a = run(TGTADM, args);
        let mid = seen.lock().unwrap().len();
        let b = run(env!("CARGO_BIN_EXE_rtgtadm"), args);
        let after = seen.lock().unwrap().len();
        assert_eq!(
            (String::from_utf8_lossy(&a.1), a.2),
            (String::from_utf8_lossy(&b.1), b.2),
            "{args:?}"
        );
        assert_eq!(mid - before, after - mid, "{args:?}");
        if mid > before {
            let s = seen.lock().unwrap();
            assert_eq!(s[before], s[mid], "request bytes differ for {args:?}");
        }
    }
}

/// Command-line errors are the client's own: compare with tgtadm without a
/// daemon.
#[test]
fn rtgtadm_command_line_errors_match_tgtadm() {
    if !Path::new(TGTADM).exists() {
        eprintln!("{TGTADM} not installed: skipped");
        return;
    }
    let cases: &[&[&str]] = &[
        &["--help"],
        &["-V"],
        &["--op", "show"],
        &["--mode", "target"],
        &["--mode", "target", "--op", "show", "-Z"],
        &["--mode", "target", "--op", "new", "-T", "x"],
        &["--mode", "target", "--op", "new", "--tid", "0", "-T", "x"],
        &["--mode", "target", "--op", "new", "--tid", "1"],
        &["--mode", "foo", "--op", "new"],
        &["--mode", "target", "--op", "frob"],
        &["--mode", "lu", "--op", "new", "--tid", "1"],
        &["--mode", "target", "--op", "new", "--tid", "abc", "-T", "x"],
        &["--mode", "target", "--op", "new", "--tid", "-2", "-T", "x"],
        &[
            "--mode", "target", "--op", "new", "--tid", "1", "-T", "x", "-I", "foo",
        ],
        &["--mode", "target", "--op", "show", "extra"],
        &["--mode", "target", "--op", "show", "--t", "1"],
        &["--mode", "target", "--op", "show", "--bogus"],
        &["--mode", "target", "--op", "show", "--force=1"],
        &["--mode", "target", "--op", "show", "--tid"],
        &["--mode", "account", "--op", "unbind", "--user", "a", "-O"],
        &["--mode", "account", "--op", "new", "--user", "a"],
        &["--mode", "target", "--op", "bind", "--tid", "1"],
        &[
            "--mode", "target", "--op", "update", "--tid", "1", "-n", "x",
        ],
        &["--mode", "system", "--op", "new"],
        &[
            "--mode", "system", "--op", "update", "-t", "1", "-n", "a", "-v", "b",
        ],
        &[
            "--mode", "lu", "--op", "new", "--tid", "1", "--lun", "1", "-Y", "pt",
        ],
        &[
            "--mode", "lu", "--op", "new", "--tid", "1", "--lun", "1", "-Y", "weird",
        ],
        &[
            "--mode", "lu", "--op", "update", "--tid", "1", "--lun", "1", "-b", "x",
        ],
        &["--mode", "portal", "--op", "new"],
        &["--mode", "portal", "--op", "show", "-t", "1"],
        &["--mode", "lld", "--op", "new"],
        &["-C", "40000", "--mode", "lld", "--op", "show"],
        &["-C", "1", "--mode", "system", "--op", "show"],
    ];
    let n: u32 = rand::random();
    let prefix = std::env::temp_dir().join(format!("rtgt-mgmt-none-{n:08x}/socket"));
    for args in cases {
        let run = |client: &str| {
            let o = Command::new(client)
                .env("TGT_IPC_SOCKET", &prefix)
                .args(*args)
                .output()
                .unwrap();
            (
                String::from_utf8_lossy(&o.stdout).into_owned(),
                // getopt's messages name argv[0].
                String::from_utf8_lossy(&o.stderr).replace(client, "PROG"),
                o.status.code(),
            )
        };
        assert_eq!(run(env!("CARGO_BIN_EXE_rtgtadm")), run(TGTADM), "{args:?}");
    }
}

/// (arguments, stdout, stderr, exit code) captured from tgtd 1.0.85 driven by
/// the stock tgtadm (Debian 12), started as `tgtd -f -C N --iscsi portal=127.0.0.1:13264`.
pub const SCENARIO: &[(&[&str], &str, &str, i32)] = &[
    (
        &["--op", "show", "--mode", "system"],
        r#"System:
    State: ready
    debug: off
LLDs:
    iscsi: ready
    iser: error
Backing stores:
    rbd (bsoflags sync:direct)
    sheepdog
    bsg
    sg
    null
    ssc
    smc (bsoflags sync:direct)
    mmc (bsoflags sync:direct)
    rdwr (bsoflags sync:direct)
    aio
Device types:
    disk
    cd/dvd
    osd
    controller
    changer
    tape
    passthrough
iSNS:
    iSNS=Off
    iSNSServerIP=
    iSNSServerPort=3205
    iSNSAccessControl=Off
"#,
        r#""#,
        0,
    ),
    (&["--op", "show", "--mode", "target"], r#""#, r#""#, 0),
    (
        &[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            "iqn.2024-01.com.example:t1",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            "iqn.2024-01.com.example:other",
        ],
        r#""#,
        r#"tgtadm: this target already exists
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "2",
            "-T",
            "iqn.2024-01.com.example:t1",
        ],
        r#""#,
        r#"tgtadm: this target already exists
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "3",
            "-T",
            "iqn.bad_name",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "3",
            "--targetname",
            "iqn.2024-01.com.example:t3",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target"],
        r#"Target 1: iqn.2024-01.com.example:t1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
    Account information:
    ACL information:
Target 3: iqn.2024-01.com.example:t3
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00030000
            SCSI SN: beaf30
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
    Account information:
    ACL information:
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target", "--tid", "1"],
        r#"nop_interval=0
nop_count=0
MaxRecvDataSegmentLength=8192
HeaderDigest=None
DataDigest=None
InitialR2T=Yes
MaxOutstandingR2T=1
ImmediateData=Yes
FirstBurstLength=65536
MaxBurstLength=262144
DataPDUInOrder=Yes
DataSequenceInOrder=Yes
ErrorRecoveryLevel=0
IFMarker=No
OFMarker=No
DefaultTime2Wait=2
DefaultTime2Retain=20
OFMarkInt=Reject
IFMarkInt=Reject
MaxConnections=1
RDMAExtensions=Yes
TargetRecvDataSegmentLength=262144
InitiatorRecvDataSegmentLength=262144
MaxOutstandingUnexpectedPDUs=0
MaxXmitDataSegmentLength=8192
MaxQueueCmd=128
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target", "--tid", "9"],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "2",
            "-b",
            "/tmp/rtgt-golden/disk2.img",
            "-E",
            "rdwr",
            "-y",
            "4096",
            "-f",
            "direct",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "1",
            "-E",
            "null",
            "-b",
            "nullpath",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "4",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "5",
            "-E",
            "aio",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "6",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
            "-y",
            "1000",
            "-f",
            "sync:direct",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "7",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
            "-f",
            "bogus",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "8",
            "-E",
            "null",
            "-b",
            "x",
            "-f",
            "sync",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "9",
            "-b",
            "/tmp",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "5",
            "-b",
            "/tmp/rtgt-golden/nonexist.img",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
        ],
        r#""#,
        r#"tgtadm: this logical unit number already exists
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "9",
            "--lun",
            "1",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
        ],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "6",
            "-b",
            "/tmp/rtgt-golden/disk1.img",
            "-E",
            "foo",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
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
            "thin_provisioning=1,vendor_id=ACME,product_id=Widget,scsi_sn=SN123,scsi_id=ID123",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
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
            "bogus=1",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "2",
            "--params",
            "readonly=1,removable=1",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "9",
            "--lun",
            "2",
            "--params",
            "readonly=1",
        ],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "7",
            "--params",
            "readonly=1",
        ],
        r#""#,
        r#"tgtadm: can't find the logical unit
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "1",
            "--params",
            "online=0",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "4",
            "--params",
            "path=/tmp/rtgt-golden/disk2.img",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "5",
            "--params",
            "mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "3",
            "--lun",
            "5",
            "--params",
            "mode_page=8:0:1:1:2:3",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "bind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-I",
            "192.168.1.0/24",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ],
        r#""#,
        r#"tgtadm: this access control rule already exists
"#,
        22,
    ),
    (
        &[
            "--op",
            "bind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-I",
            "[fe80::1]/64",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "bind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-Q",
            "iqn.1993-08.org.debian:01:abc",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "bind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-Q",
            "iqn.1993-08.org.debian:01:abc",
        ],
        r#""#,
        r#"tgtadm: this access control rule already exists
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "target", "--tid", "9", "-I", "ALL",
        ],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "10.0.0.1",
        ],
        r#""#,
        r#"tgtadm: this access control rule does not exist
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "target", "--tid", "3", "-I", "10.1.1.1",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "unbind", "--mode", "target", "--tid", "3", "-I", "10.1.1.1",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "alice",
            "--password",
            "secret12345",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "bob",
            "--password",
            "secret67890",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "carol",
            "--password",
            "secretcarol",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "alice",
            "--password",
            "x",
        ],
        r#""#,
        r#"tgtadm: this account already exists
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice",
        ],
        r#""#,
        r#"tgtadm: this account already exists
"#,
        22,
    ),
    (
        &[
            "--op",
            "bind",
            "--mode",
            "account",
            "--tid",
            "1",
            "--user",
            "bob",
            "--outgoing",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "bind",
            "--mode",
            "account",
            "--tid",
            "1",
            "--user",
            "alice",
            "--outgoing",
        ],
        r#""#,
        r#"tgtadm: this target already has an outgoing account
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", "zed",
        ],
        r#""#,
        r#"tgtadm: can't find the account
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "account", "--tid", "9", "--user", "alice",
        ],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op", "bind", "--mode", "account", "--tid", "3", "--user", "carol",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "bind", "--mode", "account", "--user", "carol"],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "account"],
        r#"Account list:
    carol
    bob
    alice
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "MaxRecvDataSegmentLength",
            "-v",
            "65536",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "MaxRecvDataSegmentLength",
            "-v",
            "1",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "headerdigest",
            "-v",
            "CRC32C,None",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "InitialR2T",
            "-v",
            "No",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "MaxQueueCmd",
            "-v",
            "600",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "MaxQueueCmd",
            "-v",
            "256",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "update", "--mode", "target", "--tid", "1", "-n", "Foo", "-v", "1",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "9",
            "-n",
            "MaxQueueCmd",
            "-v",
            "1",
        ],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op", "update", "--mode", "target", "--tid", "3", "-n", "state", "-v", "offline",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "update", "--mode", "target", "--tid", "3", "-n", "state", "-v", "weird",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "nop_interval",
            "-v",
            "5",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "nop_count",
            "-v",
            "3",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target"],
        r#"Target 1: iqn.2024-01.com.example:t1
    System information:
        Driver: iscsi
        State: ready
        Nop interval: 5
        Nop count: 3
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: ID123
            SCSI SN: SN123
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: Yes
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: 
        LUN: 2
            Type: disk
            SCSI ID: IET     00010002
            SCSI SN: beaf12
            Size: 1074 MB, Block size: 4096
            Online: Yes
            Removable media: Yes
            Prevent removal: No
            Readonly: Yes
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk2.img
            Backing store flags: direct
    Account information:
        alice
        bob (outgoing)
    ACL information:
        ALL
        192.168.1.0/24
        [fe80::1]/64
        iqn.1993-08.org.debian:01:abc
Target 3: iqn.2024-01.com.example:t3
    System information:
        Driver: iscsi
        State: offline
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00030000
            SCSI SN: beaf30
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00030001
            SCSI SN: beaf31
            Size: 1099512 MB, Block size: 512
            Online: No
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: nullpath
            Backing store flags: 
        LUN: 4
            Type: disk
            SCSI ID: IET     00030004
            SCSI SN: beaf34
            Size: 1074 MB, Block size: 512
            Online: Yes
            Removable media: Yes
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk2.img
            Backing store flags: 
        LUN: 5
            Type: disk
            SCSI ID: IET     00030005
            SCSI SN: beaf35
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: aio
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: 
        LUN: 6
            Type: disk
            SCSI ID: IET     00030006
            SCSI SN: beaf36
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: sync:direct
    Account information:
        carol
    ACL information:
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target", "--tid", "1"],
        r#"nop_interval=5
nop_count=3
MaxRecvDataSegmentLength=65536
HeaderDigest=CRC32C
DataDigest=None
InitialR2T=No
MaxOutstandingR2T=1
ImmediateData=Yes
FirstBurstLength=65536
MaxBurstLength=262144
DataPDUInOrder=Yes
DataSequenceInOrder=Yes
ErrorRecoveryLevel=0
IFMarker=No
OFMarker=No
DefaultTime2Wait=2
DefaultTime2Retain=20
OFMarkInt=Reject
IFMarkInt=Reject
MaxConnections=1
RDMAExtensions=Yes
TargetRecvDataSegmentLength=262144
InitiatorRecvDataSegmentLength=262144
MaxOutstandingUnexpectedPDUs=0
MaxXmitDataSegmentLength=8192
MaxQueueCmd=256
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target", "--tid", "3"],
        r#"nop_interval=0
nop_count=0
MaxRecvDataSegmentLength=8192
HeaderDigest=None
DataDigest=None
InitialR2T=Yes
MaxOutstandingR2T=1
ImmediateData=Yes
FirstBurstLength=65536
MaxBurstLength=262144
DataPDUInOrder=Yes
DataSequenceInOrder=Yes
ErrorRecoveryLevel=0
IFMarker=No
OFMarker=No
DefaultTime2Wait=2
DefaultTime2Retain=20
OFMarkInt=Reject
IFMarkInt=Reject
MaxConnections=1
RDMAExtensions=Yes
TargetRecvDataSegmentLength=262144
InitiatorRecvDataSegmentLength=262144
MaxOutstandingUnexpectedPDUs=0
MaxXmitDataSegmentLength=8192
MaxQueueCmd=128
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "portal"],
        r#"Portal: 127.0.0.1:13264,1
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "lld"],
        r#"LLDs:
    iscsi: ready
        Target 1: iqn.2024-01.com.example:t1
        Target 3: iqn.2024-01.com.example:t3
    iser: error
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "conn", "--tid", "1"],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "conn", "--tid", "9"],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &["--op", "show", "--mode", "session", "--tid", "1"],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op", "delete", "--mode", "conn", "--tid", "1", "--sid", "1", "--cid", "0",
        ],
        r#""#,
        r#"tgtadm: can't find the session
"#,
        22,
    ),
    (
        &["--op", "delete", "--mode", "system"],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "0",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "9",
        ],
        r#""#,
        r#"tgtadm: can't find the logical unit
"#,
        22,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "9",
            "--lun",
            "1",
        ],
        r#""#,
        r#"tgtadm: can't find the logical unit
"#,
        22,
    ),
    (
        &["--op", "delete", "--mode", "target", "--tid", "9"],
        r#""#,
        r#"tgtadm: can't find the target
"#,
        22,
    ),
    (
        &[
            "--op", "update", "--mode", "system", "-n", "State", "-v", "offline",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "system"],
        r#"System:
    State: offline
    debug: off
LLDs:
    iscsi: ready
    iser: error
Backing stores:
    rbd (bsoflags sync:direct)
    sheepdog
    bsg
    sg
    null
    ssc
    smc (bsoflags sync:direct)
    mmc (bsoflags sync:direct)
    rdwr (bsoflags sync:direct)
    aio
Device types:
    disk
    cd/dvd
    osd
    controller
    changer
    tape
    passthrough
    Account information:

    carol
iSNS:
    iSNS=Off
    iSNSServerIP=
    iSNSServerPort=3205
    iSNSAccessControl=Off
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "update", "--mode", "system", "-n", "State", "-v", "weird",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &[
            "--op", "update", "--mode", "system", "-n", "debug", "-v", "on",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "update", "--mode", "system", "-n", "Foo", "-v", "on",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &["--op", "show", "--mode", "system"],
        r#"System:
    State: offline
    debug: on
LLDs:
    iscsi: ready
    iser: error
Backing stores:
    rbd (bsoflags sync:direct)
    sheepdog
    bsg
    sg
    null
    ssc
    smc (bsoflags sync:direct)
    mmc (bsoflags sync:direct)
    rdwr (bsoflags sync:direct)
    aio
Device types:
    disk
    cd/dvd
    osd
    controller
    changer
    tape
    passthrough
    Account information:

    carol
iSNS:
    iSNS=Off
    iSNSServerIP=
    iSNSServerPort=3205
    iSNSAccessControl=Off
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "update", "--mode", "system", "-n", "State", "-v", "ready",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "update", "--mode", "system", "-n", "debug", "-v", "off",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "unbind", "--mode", "account", "--tid", "1", "--user", "alice",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "unbind", "--mode", "account", "--tid", "1", "--user", "alice",
        ],
        r#""#,
        r#"tgtadm: can't find the account
"#,
        22,
    ),
    (
        &[
            "--op",
            "unbind",
            "--mode",
            "account",
            "--tid",
            "1",
            "--user",
            "bob",
            "--outgoing",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "delete", "--mode", "account", "--user", "carol"],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "delete", "--mode", "account", "--user", "zed"],
        r#""#,
        r#"tgtadm: can't find the account
"#,
        22,
    ),
    (
        &["--op", "show", "--mode", "account"],
        r#"Account list:
    bob
    alice
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "unbind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-Q",
            "iqn.1993-08.org.debian:01:abc",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "target"],
        r#"Target 1: iqn.2024-01.com.example:t1
    System information:
        Driver: iscsi
        State: ready
        Nop interval: 5
        Nop count: 3
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 2
            Type: disk
            SCSI ID: IET     00010002
            SCSI SN: beaf12
            Size: 1074 MB, Block size: 4096
            Online: Yes
            Removable media: Yes
            Prevent removal: No
            Readonly: Yes
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk2.img
            Backing store flags: direct
    Account information:
    ACL information:
        192.168.1.0/24
        [fe80::1]/64
Target 3: iqn.2024-01.com.example:t3
    System information:
        Driver: iscsi
        State: offline
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00030000
            SCSI SN: beaf30
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00030001
            SCSI SN: beaf31
            Size: 1099512 MB, Block size: 512
            Online: No
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: nullpath
            Backing store flags: 
        LUN: 4
            Type: disk
            SCSI ID: IET     00030004
            SCSI SN: beaf34
            Size: 1074 MB, Block size: 512
            Online: Yes
            Removable media: Yes
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk2.img
            Backing store flags: 
        LUN: 5
            Type: disk
            SCSI ID: IET     00030005
            SCSI SN: beaf35
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: aio
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: 
        LUN: 6
            Type: disk
            SCSI ID: IET     00030006
            SCSI SN: beaf36
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: sync:direct
    Account information:
    ACL information:
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "portal",
            "-P",
            "portal=127.0.0.1:13265",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "portal",
            "-P",
            "portal=[::1]:13266",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "portal",
            "-P",
            "portal=127.0.0.1:13265",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &["--op", "show", "--mode", "portal"],
        r#"Portal: [::1]:13266,1
Portal: 127.0.0.1:13265,1
Portal: 127.0.0.1:13264,1
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "portal",
            "-P",
            "portal=127.0.0.1:13265",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "portal",
            "-P",
            "portal=127.0.0.1:13299",
        ],
        r#""#,
        r#"tgtadm: invalid request
"#,
        22,
    ),
    (
        &["--op", "show", "--mode", "portal"],
        r#"Portal: [::1]:13266,1
Portal: 127.0.0.1:13264,1
"#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "delete",
            "--mode",
            "portal",
            "-P",
            "portal=[::1]:13266",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "2",
            "-T",
            "iqn.2024-01.com.example:t2",
        ],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "show", "--mode", "lld"],
        r#"LLDs:
    iscsi: ready
        Target 1: iqn.2024-01.com.example:t1
        Target 3: iqn.2024-01.com.example:t3
        Target 2: iqn.2024-01.com.example:t2
    iser: error
"#,
        r#""#,
        0,
    ),
    (
        &["--op", "delete", "--mode", "target", "--tid", "1"],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "delete", "--mode", "target", "--tid", "2"],
        r#""#,
        r#""#,
        0,
    ),
    (
        &["--op", "delete", "--mode", "target", "--tid", "3"],
        r#""#,
        r#""#,
        0,
    ),
    (&["--op", "show", "--mode", "target"], r#""#, r#""#, 0),
    (
        &["-L", "iser", "--op", "show", "--mode", "target"],
        r#""#,
        r#"tgtadm: can't find the driver
"#,
        22,
    ),
    (
        &["-L", "foo", "--op", "show", "--mode", "target"],
        r#""#,
        r#"tgtadm: can't find the driver
"#,
        22,
    ),
];

#[test]
fn stock_tgt_admin_drives_us() {
    let tgt_admin = "/usr/sbin/tgt-admin";
    if !Path::new(tgt_admin).exists() || !Path::new(TGTADM).exists() {
        eprintln!("tgt-admin not installed: skipped");
        return;
    }
    make_images();
    let d = Daemon::start();
    let conf = d.dir.join("targets.conf");
    std::fs::write(&conf, TA_CONF).unwrap();
    let admin = |args: &[&str]| {
        let o = Command::new(tgt_admin)
            .env("TGT_IPC_SOCKET", &d.prefix)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(args)
            .arg("-C")
            .arg(d.port.to_string())
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
            o.status.code(),
        )
    };
    let r = admin(&["-e", "-c", conf.to_str().unwrap()]);
    assert_eq!((r.1.as_str(), r.2), ("", Some(0)), "{r:?}");
    let show = |args: &[&str]| d.run(TGTADM, args).0;
    assert_eq!(show(&["--op", "show", "--mode", "target"]), TA_SHOW);
    assert_eq!(
        show(&["--op", "show", "--mode", "target", "--tid", "2"]),
        TA_SHOW_TID2
    );
    assert_eq!(show(&["--op", "show", "--mode", "account"]), TA_ACCOUNTS);
    assert_eq!(admin(&["-s"]).0, TA_S);
    // tgt-admin walks a Perl hash: the target blocks come in any order.
    let blocks = |s: &str| {
        let mut v: Vec<String> = s.split("\n\n").map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(blocks(&admin(&["--dump"]).0), blocks(TA_DUMP));
    let r = admin(&["--delete", "ALL"]);
    assert_eq!(r.2, Some(0), "{r:?}");
    assert_eq!(show(&["--op", "show", "--mode", "target"]), "");
    d.stop(TGTADM);
}

/// A targets.conf applied with the stock tgt-admin, and what tgtd 1.0.85
/// showed afterwards.
const TA_CONF: &str = r#"<target iqn.2024-03.org.rtgt:ta1>
    backing-store /tmp/rtgt-golden/disk1.img
    initiator-address 192.168.0.0/16
    incominguser joe secretsecret1
    vendor_id RTGT
</target>
<target iqn.2024-03.org.rtgt:ta2>
    <backing-store /tmp/rtgt-golden/disk2.img>
        lun 3
        thin_provisioning 1
        block-size 4096
    </backing-store>
    MaxRecvDataSegmentLength 65536
</target>
"#;
const TA_SHOW: &str = r#"Target 1: iqn.2024-03.org.rtgt:ta1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: 
    Account information:
        joe
    ACL information:
        192.168.0.0/16
Target 2: iqn.2024-03.org.rtgt:ta2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00020000
            SCSI SN: beaf20
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 3
            Type: disk
            SCSI ID: IET     00020003
            SCSI SN: beaf23
            Size: 1074 MB, Block size: 4096
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk2.img
            Backing store flags: 
    Account information:
    ACL information:
        ALL
"#;
const TA_SHOW_TID2: &str = r#"nop_interval=0
nop_count=0
MaxRecvDataSegmentLength=65536
HeaderDigest=None
DataDigest=None
InitialR2T=Yes
MaxOutstandingR2T=1
ImmediateData=Yes
FirstBurstLength=65536
MaxBurstLength=262144
DataPDUInOrder=Yes
DataSequenceInOrder=Yes
ErrorRecoveryLevel=0
IFMarker=No
OFMarker=No
DefaultTime2Wait=2
DefaultTime2Retain=20
OFMarkInt=Reject
IFMarkInt=Reject
MaxConnections=1
RDMAExtensions=Yes
TargetRecvDataSegmentLength=262144
InitiatorRecvDataSegmentLength=262144
MaxOutstandingUnexpectedPDUs=0
MaxXmitDataSegmentLength=8192
MaxQueueCmd=128
"#;
const TA_ACCOUNTS: &str = r#"Account list:
    joe
"#;
const TA_S: &str = r#"Target 1: iqn.2024-03.org.rtgt:ta1
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: IET     00010001
            SCSI SN: beaf11
            Size: 105 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk1.img
            Backing store flags: 
    Account information:
        joe
    ACL information:
        192.168.0.0/16
Target 2: iqn.2024-03.org.rtgt:ta2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00020000
            SCSI SN: beaf20
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 3
            Type: disk
            SCSI ID: IET     00020003
            SCSI SN: beaf23
            Size: 1074 MB, Block size: 4096
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/rtgt-golden/disk2.img
            Backing store flags: 
    Account information:
    ACL information:
        ALL
"#;
const TA_DUMP: &str = r#"default-driver iscsi

<target iqn.2024-03.org.rtgt:ta1>
	backing-store /tmp/rtgt-golden/disk1.img
	incominguser joe PLEASE_CORRECT_THE_PASSWORD
	initiator-name 192.168.0.0/16
</target>

<target iqn.2024-03.org.rtgt:ta2>
	backing-store /tmp/rtgt-golden/disk2.img
</target>

"#;
