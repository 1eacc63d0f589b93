//! The systemd units in systemd/, run without systemd: their Exec* lines,
//! in order, with the binaries, paths and ports of this build. For a
//! `Type=notify` unit the harness plays systemd's part of sd_notify: it
//! gives rtgtd a `NOTIFY_SOCKET` (and `WATCHDOG_USEC`), and runs the
//! ExecStartPost lines only once READY=1 has come.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, sparse_file, tempdir};
use tgt_admin::tgtadm::shell_words;

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../systemd")
            .join(name),
    )
    .unwrap()
}

/// The `key=value` lines of one kind (ExecStart, ExecStop...), in order.
fn exec_lines(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// A unit instance: what systemd would substitute.
struct Inst {
    dir: PathBuf,
    env: HashMap<String, String>,
    /// Replacements for absolute paths in the unit.
    paths: Vec<(String, String)>,
    child: Option<Child>,
    /// The notification socket, for a `Type=notify` unit.
    notify: Option<UnixDatagram>,
}

impl Inst {
    /// Wait (10 s at most) for a notification containing `what`; the
    /// messages seen on the way.
    fn expect_notify(&self, what: &str) -> Vec<String> {
        let sock = self.notify.as_ref().expect("a Type=notify unit");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what} from rtgtd ({e}); saw {seen:?}"));
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = m.lines().any(|l| l == what);
            seen.push(m);
            if hit {
                return seen;
            }
        }
    }

    fn expand(&self, line: &str) -> Vec<String> {
        let mut l = line.to_string();
        for (k, v) in &self.env {
            l = l.replace(&format!("${{{k}}}"), v);
        }
        for (a, b) in &self.paths {
            l = l.replace(a, b);
        }
        shell_words(l.trim_start_matches(['-', '@', '+']))
    }

    fn cmd(&self, words: &[String]) -> Command {
        let mut c = Command::new(&words[0]);
        c.args(&words[1..])
            .env("TGT_IPC_SOCKET", self.dir.join("socket"))
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        c
    }

    fn run(&mut self, unit_text: &str, key: &str) {
        // `Environment=` gives defaults an environment file may override.
        for kv in exec_lines(unit_text, "Environment") {
            if let Some((k, v)) = kv.split_once('=') {
                self.env
                    .entry(k.to_string())
                    .or_insert_with(|| v.to_string());
            }
        }
        for line in exec_lines(unit_text, key) {
            let w = self.expand(&line);
            if key == "ExecStart" {
                let log = std::fs::File::create(self.dir.join("rtgtd.log")).unwrap();
                let mut c = self.cmd(&w);
                let notify = unit_text.lines().any(|l| l == "Type=notify");
                if notify {
                    let path = self.dir.join("notify");
                    self.notify = Some(UnixDatagram::bind(&path).unwrap());
                    c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
                }
                self.child = Some(
                    c.stdout(Stdio::null())
                        .stderr(Stdio::from(log))
                        .spawn()
                        .unwrap(),
                );
                if notify {
                    // systemd runs ExecStartPost once the service is ready.
                    let seen = self.expect_notify("READY=1");
                    let pid = self.child.as_ref().unwrap().id();
                    assert!(
                        seen.iter().any(|m| m.contains(&format!("MAINPID={pid}"))),
                        "{seen:?}"
                    );
                }
                continue;
            }
            let o = self.cmd(&w).output().unwrap();
            assert!(
                o.status.success() || line.starts_with('-'),
                "{key}={line}\n{w:?}\n{}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    fn adm(&self, args: &[&str]) -> String {
        let port = self.env.get("CONTROL_PORT").cloned().unwrap_or("0".into());
        let o = Command::new(env!("CARGO_BIN_EXE_rtgtadm"))
            .args(["-C", &port])
            .args(args)
            .env("TGT_IPC_SOCKET", self.dir.join("socket"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn wait_exit(&mut self) -> bool {
        let c = self.child.as_mut().unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Inst {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bins() -> Vec<(String, String)> {
    vec![
        ("/usr/sbin/rtgtd".into(), env!("CARGO_BIN_EXE_rtgtd").into()),
        (
            "/usr/sbin/rtgtadm".into(),
            env!("CARGO_BIN_EXE_rtgtadm").into(),
        ),
        (
            "/usr/sbin/rtgt-admin".into(),
            env!("CARGO_BIN_EXE_rtgt-admin").into(),
        ),
    ]
}

fn control_port() -> u16 {
    // tgtadm's -C is a signed short.
    20000 + free_port() % 12000
}

fn login(portal: SocketAddr, iqn: &str) -> Result<initiator::Connection, initiator::Error> {
    let opts = initiator::LoginOptions {
        initiator_name: "iqn.2026-11.rs.rtgt:units-test".into(),
        target_name: Some(iqn.into()),
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    initiator::Connection::login(portal, &opts).map(|c| c.0)
}

fn targets_conf(dir: &Path, names: &[&str]) -> String {
    let mut s = String::new();
    for n in names {
        let f = sparse_file(dir, &format!("{}.img", n.replace(':', "_")), 8 << 20);
        s.push_str(&format!(
            "<target {n}>\n    backing-store {}\n</target>\n",
            f.display()
        ));
    }
    s
}

#[test]
fn rtgtd_service_start_reload_stop() {
    let text = unit("rtgtd.service");
    let dir = tempdir("unit-main");
    let conf = dir.join("targets.conf");
    std::fs::write(&conf, targets_conf(&dir, &["iqn.x:u.a", "iqn.x:u.b"])).unwrap();
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let paths_env = HashMap::from([("TARGETS_CONF".to_string(), conf.display().to_string())]);
    let mut paths = bins();
    // Never the real 3260: add a loopback portal to the daemon's line.
    paths.push((
        format!("{} -f", env!("CARGO_BIN_EXE_rtgtd")),
        format!("{} -f --iscsi portal={portal}", env!("CARGO_BIN_EXE_rtgtd")),
    ));
    let mut u = Inst {
        dir,
        env: paths_env,
        paths,
        child: None,
        notify: None,
    };
    u.run(&text, "ExecStart");
    u.run(&text, "ExecStartPost");
    // The watchdog is pinged (WATCHDOG_USEC 200 ms: every 100 ms).
    u.expect_notify("WATCHDOG=1");
    let s = u.adm(&["--op", "show", "--mode", "target"]);
    assert!(
        s.contains("Target 1: iqn.x:u.a") && s.contains("Target 2: iqn.x:u.b"),
        "{s}"
    );
    assert!(u
        .adm(&["--op", "show", "--mode", "sys"])
        .contains("State: ready"));
    let _session = login(portal, "iqn.x:u.a").expect("login");

    // Reload: a gains a LUN (kept as is: in use), b goes, c comes.
    let mut v2 = targets_conf(&u.dir, &["iqn.x:u.a", "iqn.x:u.c"]);
    v2 = v2.replacen(
        "</target>",
        &format!(
            "    backing-store {}\n</target>",
            sparse_file(&u.dir, "extra.img", 8 << 20).display()
        ),
        1,
    );
    std::fs::write(&conf, v2).unwrap();
    u.run(&text, "ExecReload");
    let s = u.adm(&["--op", "show", "--mode", "target"]);
    assert!(
        s.contains("Target 1: iqn.x:u.a") && !s.contains("extra.img"),
        "{s}"
    );
    assert!(!s.contains("iqn.x:u.b") && s.contains("iqn.x:u.c"), "{s}");

    u.run(&text, "ExecStop");
    u.expect_notify("STOPPING=1");
    assert!(u.wait_exit(), "rtgtd still running after ExecStop");
}

fn instance(name: &str) -> (Inst, SocketAddr, String) {
    let dir = tempdir(&format!("unit-{name}"));
    let port = control_port();
    let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let iqn = format!("iqn.x:inst.{name}");
    let tconf = dir.join(format!("{name}-targets.conf"));
    std::fs::write(&tconf, targets_conf(&dir, &[&iqn])).unwrap();
    // The instance's env file, read the way systemd's EnvironmentFile= is.
    let envfile = dir.join(format!("{name}.conf"));
    std::fs::write(
        &envfile,
        format!(
            "# instance {name}\nCONTROL_PORT={port}\nPORTALS={portal}\nTARGETS_CONF={}\n",
            tconf.display()
        ),
    )
    .unwrap();
    let mut env = HashMap::new();
    for l in std::fs::read_to_string(&envfile).unwrap().lines() {
        if let Some((k, v)) = l.split_once('=') {
            if !k.starts_with('#') {
                env.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    let mut paths = bins();
    // The instance's state directory, inside the test's.
    paths.push((
        "/var/lib/rtgt".into(),
        dir.join("state").display().to_string(),
    ));
    paths.push(("%i".into(), name.into()));
    (
        Inst {
            dir,
            env,
            paths,
            child: None,
            notify: None,
        },
        portal,
        iqn,
    )
}

#[test]
fn template_instances_are_independent() {
    let text = unit("rtgtd@.service");
    assert!(text.contains("EnvironmentFile=/etc/rtgt/conf.d/%i.conf"));
    let (mut a, pa, ia) = instance("alpha");
    let (mut b, pb, ib) = instance("beta");
    for u in [&mut a, &mut b] {
        u.run(&text, "ExecStart");
        u.run(&text, "ExecStartPost");
    }
    let sa = a.adm(&["--op", "show", "--mode", "target"]);
    let sb = b.adm(&["--op", "show", "--mode", "target"]);
    assert!(sa.contains(&ia) && !sa.contains(&ib), "{sa}");
    assert!(sb.contains(&ib) && !sb.contains(&ia), "{sb}");
    login(pa, &ia).expect("alpha serves");
    login(pb, &ib).expect("beta serves");
    // Each portal serves only its own daemon's targets.
    assert!(login(pa, &ib).is_err());
    // Kill alpha: beta goes on.
    a.child.as_mut().unwrap().kill().unwrap();
    a.wait_exit();
    assert!(login(pa, &ia).is_err());
    login(pb, &ib).expect("beta still serves");
    b.run(&text, "ExecStop");
    assert!(b.wait_exit());
}
