//! Test harness: a target to test the initiator (and later rtgtd) against.
//!
//! [`TargetUnderTest::start`] gives, in order of preference:
//! 1. an external target named by `RTGT_TEST_PORTAL` (IP:PORT) and
//!    `RTGT_TEST_TARGET` (IQN), LUN `RTGT_TEST_LUN` (default 1), which must
//!    have at least [`DISK_MIB`] MiB with 512-byte blocks, or
//! 2. a private tgtd (`/usr/sbin/tgtd`, or the tgtd-compatible daemon named
//!    by `RTGT_TEST_DAEMON`, e.g. rtgtd) on a free loopback port and a free
//!    control port, configured with the stock tgtadm and killed on drop, or
//! 3. `None`: the caller prints "skipped: no tgtd" and returns.
//!
//! Only this setup differs between targets; the tests themselves only see a
//! portal, a target name and a LUN.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use initiator::{Connection, LoginOptions, Negotiated};

pub const TGTD: &str = "/usr/sbin/tgtd";

/// The daemon the private target runs: `RTGT_TEST_DAEMON` (rtgtd takes
/// tgtd's options and socket) or Debian's tgtd.
pub fn daemon_binary() -> String {
    std::env::var("RTGT_TEST_DAEMON").unwrap_or_else(|_| TGTD.to_string())
}
pub const TGTADM: &str = "/usr/sbin/tgtadm";
/// Target-side parameters the tests expect (set on a private tgtd; an
/// external target should be configured the same way).
/// tgt's defaults would force InitialR2T=Yes and MaxOutstandingR2T=1.
pub const TARGET_PARAMS: &[(&str, &str)] = &[("InitialR2T", "No"), ("MaxOutstandingR2T", "8")];
/// Parameters of the digest target (`<target>-digest`).
pub const DIGEST_TARGET_PARAMS: &[(&str, &str)] = &[
    ("HeaderDigest", "CRC32C"),
    ("DataDigest", "CRC32C"),
    ("InitialR2T", "No"),
    ("MaxOutstandingR2T", "8"),
];
/// Size of the test LU.
pub const DISK_MIB: u64 = 64;

/// A running target: where to connect and what to log in to.
pub struct TargetUnderTest {
    pub portal: SocketAddr,
    pub target: String,
    pub lun: u64,
    /// A target on the same portal that accepts (or requires) CRC32C
    /// digests; for an external target `RTGT_TEST_DIGEST_TARGET`, else `target`.
    pub digest_target: String,
    /// Keeps a private tgtd alive; `None` for an external target.
    guard: Option<Tgtd>,
}

impl TargetUnderTest {
    /// See the module documentation. `label` names the temporary directory.
    pub fn start(label: &str) -> Option<TargetUnderTest> {
        if let (Ok(p), Ok(t)) = (
            std::env::var("RTGT_TEST_PORTAL"),
            std::env::var("RTGT_TEST_TARGET"),
        ) {
            let lun = std::env::var("RTGT_TEST_LUN")
                .ok()
                .and_then(|l| l.parse().ok())
                .unwrap_or(1);
            return Some(TargetUnderTest {
                portal: p.parse().expect("RTGT_TEST_PORTAL"),
                digest_target: std::env::var("RTGT_TEST_DIGEST_TARGET")
                    .unwrap_or_else(|_| t.clone()),
                target: t,
                lun,
                guard: None,
            });
        }
        if !Path::new(&daemon_binary()).exists() || !Path::new(TGTADM).exists() {
            return None;
        }
        let target = format!("iqn.2026-11.rs.rtgt.test:{label}");
        for attempt in 0..8 {
            match Tgtd::spawn(label, attempt, &target) {
                Ok(g) => {
                    return Some(TargetUnderTest {
                        portal: g.portal,
                        digest_target: format!("{target}-digest"),
                        target,
                        lun: 1,
                        guard: Some(g),
                    })
                }
                Err(e) => eprintln!("tgtd attempt {attempt} failed: {e}"),
            }
        }
        panic!("could not start tgtd");
    }

    /// Default options for a normal session on this target.
    pub fn opts(&self) -> LoginOptions {
        LoginOptions {
            initiator_name: "iqn.2026-11.rs.rtgt:test-initiator".into(),
            target_name: Some(self.target.clone()),
            timeout: Duration::from_secs(10),
            ..Default::default()
        }
    }

    /// Options for a discovery session.
    pub fn discovery_opts(&self) -> LoginOptions {
        LoginOptions {
            target_name: None,
            ..self.opts()
        }
    }

    pub fn login(&self) -> (Connection, Negotiated) {
        self.login_with(&self.opts())
    }

    /// Log in and, on a normal session, consume the unit attention a new
    /// I_T nexus may see first (SPC-4 §6.37: POWER ON OCCURRED, 29/00).
    pub fn login_with(&self, o: &LoginOptions) -> (Connection, Negotiated) {
        let (mut c, n) = Connection::login(self.portal, o)
            .unwrap_or_else(|e| panic!("login to {}: {e}", self.portal));
        if o.target_name.is_some() {
            for _ in 0..5 {
                if c.test_unit_ready(self.lun)
                    .expect("TEST UNIT READY")
                    .is_good()
                {
                    break;
                }
            }
        }
        (c, n)
    }

    /// tgtd's log so far (empty for an external target), for failure messages.
    pub fn log(&self) -> String {
        self.guard
            .as_ref()
            .map(|g| std::fs::read_to_string(g.dir.join("tgtd.log")).unwrap_or_default())
            .unwrap_or_default()
    }
}

/// A private tgtd process; deleting the system and killing it on drop.
struct Tgtd {
    child: Child,
    control_port: u16,
    portal: SocketAddr,
    dir: PathBuf,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A control port whose unix socket path is unused (tgtd's control "port"
/// only names /var/run/tgtd/socket.N and its lock file; tgtd refuses values
/// above 32767).
fn free_control_port() -> u16 {
    for _ in 0..1000u32 {
        let p: u16 = rand::random::<u16>() % 22_000 + 10_000;
        if !Path::new(&format!("/var/run/tgtd/socket.{p}")).exists()
            && !Path::new(&format!("/var/run/tgtd/socket.{p}.lock")).exists()
        {
            return p;
        }
    }
    panic!("no free tgtd control port");
}

fn tgtadm(control: u16, args: &[&str]) -> Result<(), String> {
    let out = Command::new(TGTADM)
        .arg("-C")
        .arg(control.to_string())
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tgtadm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Tgtd {
    fn spawn(label: &str, attempt: u32, target: &str) -> Result<Tgtd, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "rtgt-itest-{}-{label}-{attempt}-{seq}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let disk = dir.join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(DISK_MIB << 20))
            .map_err(|e| e.to_string())?;
        let port = free_tcp_port();
        let control = free_control_port();
        let portal: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.join("tgtd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(daemon_binary())
            .args([
                "-f",
                "-C",
                &control.to_string(),
                "--iscsi",
                &format!("portal={portal}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut g = Tgtd {
            child,
            control_port: control,
            portal,
            dir,
        };
        // Ready when both the portal and the control socket answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = g.child.try_wait() {
                let log = std::fs::read_to_string(g.dir.join("tgtd.log")).unwrap_or_default();
                return Err(format!("tgtd exited: {st}: {log}"));
            }
            let sock = Path::new(&format!("/var/run/tgtd/socket.{control}")).exists();
            if sock && TcpStream::connect_timeout(&portal, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err("tgtd did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // tid 1: the plain target; tid 2: the same with digests required
        // (tgt answers HeaderDigest=None to every offer unless the target's
        // value is exactly CRC32C, and then it insists on CRC32C).
        let digest_disk = g.dir.join("digest.img");
        std::fs::File::create(&digest_disk)
            .and_then(|f| f.set_len(DISK_MIB << 20))
            .map_err(|e| e.to_string())?;
        let digest_target = format!("{target}-digest");
        for (tid, name, disk, params) in [
            ("1", target, &disk, TARGET_PARAMS),
            (
                "2",
                digest_target.as_str(),
                &digest_disk,
                DIGEST_TARGET_PARAMS,
            ),
        ] {
            let iscsi = ["--lld", "iscsi", "--tid", tid];
            tgtadm(
                control,
                &[&iscsi[..], &["--op", "new", "--mode", "target", "-T", name]].concat(),
            )?;
            let lu = [
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--lun",
                "1",
                "-b",
                disk.to_str().unwrap(),
            ];
            tgtadm(control, &[&iscsi[..], &lu].concat())?;
            tgtadm(
                control,
                &[
                    &iscsi[..],
                    &["--op", "bind", "--mode", "target", "-I", "ALL"],
                ]
                .concat(),
            )?;
            for (k, v) in params {
                tgtadm(
                    control,
                    &[
                        &iscsi[..],
                        &["--op", "update", "--mode", "target", "-n", k, "-v", v],
                    ]
                    .concat(),
                )?;
            }
        }
        Ok(g)
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM while targets exist (and this tgtadm refuses
        // `--op delete --mode system`): SIGKILL is the dependable way.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed tgtd leaves its control socket and lock file behind.
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}", self.control_port));
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}.lock", self.control_port));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure reproduces.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Start a target or print "skipped: no tgtd" and return from the test.
#[macro_export]
macro_rules! target_or_skip {
    ($label:expr) => {
        match common::TargetUnderTest::start($label) {
            Some(t) => t,
            None => {
                eprintln!("skipped: no tgtd");
                return;
            }
        }
    };
}
