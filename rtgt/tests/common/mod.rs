//! A running rtgtd for integration tests: loopback portal on a free port,
//! a private management socket (TGT_IPC_SOCKET), killed on drop.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
    pub control_port: u16,
    pub portal: SocketAddr,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A control port: tgtadm reads -C as a signed short, so stay below 32768.
fn control_port() -> u16 {
    let seed = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    20000
        + (seed as u16)
            .wrapping_mul(31)
            .wrapping_add(n.wrapping_mul(7919))
            % 12000
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rtgt-it-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Daemon {
    pub fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, &[])
    }

    /// Start with extra rtgtd options.
    pub fn start_with(tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_env(tag, extra, &[])
    }

    /// Start with extra rtgtd options and environment.
    pub fn start_env(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        for _ in 0..5 {
            let dir = tempdir(tag);
            let control_port = control_port();
            let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            // Its own data directory (APTPL state), unless the test names
            // one to share between daemons.
            let data_dir = dir.join("data");
            let own_data: Vec<&std::ffi::OsStr> = if extra.contains(&"--data-dir") {
                Vec::new()
            } else {
                vec!["--data-dir".as_ref(), data_dir.as_os_str()]
            };
            let child = Command::new(env!("CARGO_BIN_EXE_rtgtd"))
                .args([
                    "-f",
                    "-C",
                    &control_port.to_string(),
                    "--iscsi",
                    &format!("portal={portal}"),
                ])
                .args(own_data)
                .args(extra)
                .envs(env.iter().copied())
                .env("TGT_IPC_SOCKET", dir.join("socket"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::File::create(dir.join("rtgtd.log")).unwrap(),
                ))
                .spawn()
                .expect("spawn rtgtd");
            let mut d = Daemon {
                child,
                dir,
                control_port,
                portal,
            };
            let sock = d.dir.join(format!("socket.{control_port}"));
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if sock.exists() && std::net::TcpStream::connect(portal).is_ok() {
                    return d;
                }
                if let Ok(Some(_)) = d.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.child.kill();
        }
        panic!("rtgtd did not start");
    }

    /// Run rtgtadm (or another tgtadm binary) against this daemon.
    pub fn adm_with(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .arg("-C")
            .arg(self.control_port.to_string())
            .args(args)
            .env("TGT_IPC_SOCKET", self.dir.join("socket"))
            .output()
            .expect("run tgtadm")
    }

    pub fn adm(&self, args: &[&str]) -> Output {
        self.adm_with(env!("CARGO_BIN_EXE_rtgtadm"), args)
    }

    /// Run rtgtadm, asserting success.
    pub fn must(&self, args: &[&str]) -> String {
        self.must_with(env!("CARGO_BIN_EXE_rtgtadm"), args)
    }

    /// Run `bin` (rtgtadm or the stock tgtadm), asserting success; its
    /// stdout.
    pub fn must_with(&self, bin: &str, args: &[&str]) -> String {
        let o = self.adm_with(bin, args);
        assert!(
            o.status.success(),
            "{bin} {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Set target parameters (`--op update --mode target -n K -v V`).
    pub fn target_params(&self, tid: u32, kv: &[(&str, &str)]) {
        let t = tid.to_string();
        for (k, v) in kv {
            self.must(&[
                "--lld", "iscsi", "--op", "update", "--mode", "target", "--tid", &t, "-n", k, "-v",
                v,
            ]);
        }
    }

    /// `--op OP --mode logicalunit` on a LUN, with more options.
    pub fn lu(&self, op: &str, tid: u32, lun: u64, extra: &[&str]) -> Output {
        let (t, l) = (tid.to_string(), lun.to_string());
        let mut args = vec![
            "--lld",
            "iscsi",
            "--op",
            op,
            "--mode",
            "logicalunit",
            "--tid",
            &t,
            "--lun",
            &l,
        ];
        args.extend_from_slice(extra);
        self.adm(&args)
    }

    /// A target with one file LUN, open to all initiators.
    pub fn file_target(&self, tid: u32, iqn: &str, path: &Path, thin: bool) {
        let t = tid.to_string();
        self.must(&[
            "--lld", "iscsi", "--op", "new", "--mode", "target", "--tid", &t, "-T", iqn,
        ]);
        self.must(&[
            "--lld",
            "iscsi",
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &t,
            "--lun",
            "1",
            "-b",
            path.to_str().unwrap(),
        ]);
        if thin {
            self.must(&[
                "--lld",
                "iscsi",
                "--op",
                "update",
                "--mode",
                "logicalunit",
                "--tid",
                &t,
                "--lun",
                "1",
                "--params",
                "thin_provisioning=1",
            ]);
        }
        self.must(&[
            "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", &t, "-I", "ALL",
        ]);
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rtgtd.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sparse file of `size` bytes.
pub fn sparse_file(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
