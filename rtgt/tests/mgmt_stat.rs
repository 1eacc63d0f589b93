//! `--op stat` counters, `rtgtadm --json`, and growing a unit with
//! `--params disksize=auto|<bytes>`, through a running rtgtd and the
//! in-repo initiator.

mod common;

use std::time::Duration;

use common::{sparse_file, Daemon};
use initiator::{Connection, LoginOptions};

const IQN: &str = "iqn.2026-11.io.rtgt.test:stat";
const BS: u32 = 512;

// ------------------------------------------------------------ a tiny JSON reader

/// Just enough JSON (RFC 8259) to check rtgtadm's documents: a parse
/// failure fails the test.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Value>),
    Obj(Vec<(String, Value)>),
}

impl Value {
    fn get(&self, k: &str) -> &Value {
        match self {
            Value::Obj(v) => v
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, x)| x)
                .unwrap_or_else(|| panic!("no key {k} in {self:?}")),
            _ => panic!("not an object: {self:?}"),
        }
    }
    fn has(&self, k: &str) -> bool {
        matches!(self, Value::Obj(v) if v.iter().any(|(n, _)| n == k))
    }
    fn arr(&self) -> &[Value] {
        match self {
            Value::Arr(v) => v,
            _ => panic!("not an array: {self:?}"),
        }
    }
    fn num(&self) -> u64 {
        match self {
            Value::Num(n) => *n as u64,
            _ => panic!("not a number: {self:?}"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            _ => panic!("not a string: {self:?}"),
        }
    }
}

fn parse_json(text: &str) -> Value {
    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }
    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && b" \t\r\n".contains(&self.s[self.i]) {
                self.i += 1;
            }
        }
        fn eat(&mut self, c: u8) {
            self.ws();
            assert_eq!(
                self.s.get(self.i),
                Some(&c),
                "expected {} at {}",
                c as char,
                self.i
            );
            self.i += 1;
        }
        fn lit(&mut self, w: &str, v: Value) -> Value {
            assert!(
                self.s[self.i..].starts_with(w.as_bytes()),
                "bad literal at {}",
                self.i
            );
            self.i += w.len();
            v
        }
        fn string(&mut self) -> String {
            self.eat(b'"');
            let mut out = String::new();
            loop {
                let c = self.s[self.i];
                self.i += 1;
                match c {
                    b'"' => return out,
                    b'\\' => {
                        let e = self.s[self.i];
                        self.i += 1;
                        match e {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'b' => out.push('\u{8}'),
                            b'f' => out.push('\u{c}'),
                            b'u' => {
                                let h = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
                                out.push(
                                    char::from_u32(u32::from_str_radix(h, 16).unwrap()).unwrap(),
                                );
                                self.i += 4;
                            }
                            _ => panic!("bad escape"),
                        }
                    }
                    c if c < 0x20 => panic!("raw control character in string"),
                    _ => {
                        // Copy one UTF-8 sequence.
                        let start = self.i - 1;
                        let len = match c {
                            0x00..=0x7f => 1,
                            0xc0..=0xdf => 2,
                            0xe0..=0xef => 3,
                            _ => 4,
                        };
                        out.push_str(std::str::from_utf8(&self.s[start..start + len]).unwrap());
                        self.i = start + len;
                    }
                }
            }
        }
        fn value(&mut self) -> Value {
            self.ws();
            match self.s[self.i] {
                b'{' => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.s[self.i] == b'}' {
                        self.i += 1;
                        return Value::Obj(v);
                    }
                    loop {
                        self.ws();
                        let k = self.string();
                        self.eat(b':');
                        v.push((k, self.value()));
                        self.ws();
                        let c = self.s[self.i];
                        self.i += 1;
                        match c {
                            b',' => continue,
                            b'}' => return Value::Obj(v),
                            _ => panic!("bad object at {}", self.i),
                        }
                    }
                }
                b'[' => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.s[self.i] == b']' {
                        self.i += 1;
                        return Value::Arr(v);
                    }
                    loop {
                        v.push(self.value());
                        self.ws();
                        let c = self.s[self.i];
                        self.i += 1;
                        match c {
                            b',' => continue,
                            b']' => return Value::Arr(v),
                            _ => panic!("bad array at {}", self.i),
                        }
                    }
                }
                b'"' => Value::Str(self.string()),
                b't' => self.lit("true", Value::Bool(true)),
                b'f' => self.lit("false", Value::Bool(false)),
                b'n' => self.lit("null", Value::Null),
                _ => {
                    let start = self.i;
                    while self.i < self.s.len() && b"+-0123456789.eE".contains(&self.s[self.i]) {
                        self.i += 1;
                    }
                    let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                    Value::Num(t.parse().unwrap_or_else(|_| panic!("bad number {t:?}")))
                }
            }
        }
    }
    let mut p = P {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value();
    p.ws();
    assert_eq!(p.i, p.s.len(), "trailing bytes after the document");
    v
}

// ------------------------------------------------------------ helpers

fn opts(initiator: &str, isid: u8) -> LoginOptions {
    LoginOptions {
        initiator_name: initiator.into(),
        target_name: Some(IQN.into()),
        isid: [0x80, 0, 0, 0, 0, isid],
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// Counters as the test expects them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct C {
    commands: u64,
    read: u64,
    written: u64,
    errors: u64,
}

impl C {
    fn add(&mut self, read: u64, written: u64, ok: bool) {
        self.commands += 1;
        self.read += read;
        self.written += written;
        self.errors += u64::from(!ok);
    }
    fn plus(self, o: C) -> C {
        C {
            commands: self.commands + o.commands,
            read: self.read + o.read,
            written: self.written + o.written,
            errors: self.errors + o.errors,
        }
    }
    fn of_json(v: &Value) -> C {
        let c = v.get("counters");
        C {
            commands: c.get("commands").num(),
            read: c.get("read_bytes").num(),
            written: c.get("write_bytes").num(),
            errors: c.get("errors").num(),
        }
    }
}

/// TEST UNIT READY until GOOD (the power-on unit attention comes first),
/// counting each one.
fn settle(c: &mut Connection, lun: u64, k: &mut C) {
    for _ in 0..4 {
        let ok = c.test_unit_ready(lun).unwrap().is_good();
        k.add(0, 0, ok);
        if ok {
            return;
        }
    }
    panic!("unit {lun} never became ready");
}

fn adm(d: &Daemon, args: &[&str]) -> String {
    let mut v = vec!["--lld", "iscsi"];
    v.extend_from_slice(args);
    d.must(&v)
}

/// The `--counters` table as (object, tid, lun, sid, cid) -> counters.
fn counters_table(text: &str) -> Vec<(String, C)> {
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        head,
        [
            "object",
            "tid",
            "lun",
            "sid",
            "cid",
            "commands",
            "read_bytes",
            "write_bytes",
            "errors"
        ]
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 9, "{l}");
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (
                f[..5].join(" "),
                C {
                    commands: n(5),
                    read: n(6),
                    written: n(7),
                    errors: n(8),
                },
            )
        })
        .collect()
}

fn row(t: &[(String, C)], key: &str) -> C {
    t.iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no row {key} in {t:?}"))
        .1
}

// ------------------------------------------------------------ tests

/// Counters follow the I/O done: per target, LUN, session and connection,
/// in all three renderings, and tgt's error answers for unknown objects.
#[test]
fn stat_counts_commands_bytes_and_errors_per_object() {
    let d = Daemon::start("stat");
    let img1 = sparse_file(&d.dir, "one.img", 1 << 20);
    let img2 = sparse_file(&d.dir, "two.img", 1 << 20);
    d.file_target(1, IQN, &img1, false);
    adm(
        &d,
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
            img2.to_str().unwrap(),
        ],
    );
    adm(
        &d,
        &[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            "MaxConnections",
            "-v",
            "2",
        ],
    );
    // Nothing yet: tgt's header, zero lines per unit.
    let text = adm(&d, &["--op", "stat", "--mode", "system"]);
    assert!(
        text.starts_with("tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) "),
        "{text}"
    );

    // Session A: connection 0 writes and reads LUN 1 and reads LUN 2; then
    // connection 1 joins and reads LUN 1.
    let (mut lun1, mut lun2) = (C::default(), C::default());
    let (mut a0, mut a1, mut b0) = (C::default(), C::default(), C::default());
    let oa = LoginOptions {
        max_connections: 2,
        ..opts("iqn.2026-11.io.rtgt:a", 1)
    };
    let (mut a, _) = Connection::login(d.portal, &oa).expect("login a");
    let mut k = C::default();
    settle(&mut a, 1, &mut k);
    lun1 = lun1.plus(k);
    a0 = a0.plus(k);
    a.write(1, 0, &[0x11; 4096], BS).unwrap();
    lun1.add(0, 4096, true);
    a0.add(0, 4096, true);
    assert_eq!(a.read(1, 0, 4, BS).unwrap(), vec![0x11; 2048]);
    lun1.add(2048, 0, true);
    a0.add(2048, 0, true);
    let mut k = C::default();
    settle(&mut a, 2, &mut k);
    lun2 = lun2.plus(k);
    a0 = a0.plus(k);
    a.read(2, 0, 2, BS).unwrap();
    lun2.add(1024, 0, true);
    a0.add(1024, 0, true);
    let join = LoginOptions {
        tsih: a.tsih(),
        cid: 1,
        initial_cmd_sn: a.cmd_sn(),
        ..oa.clone()
    };
    let (mut a_1, _) = Connection::login(d.portal, &join).expect("join a");
    a_1.read(1, 8, 8, BS).unwrap();
    lun1.add(4096, 0, true);
    a1.add(4096, 0, true);

    // Session B: a read and a read past the end (an error).
    let (mut b, _) =
        Connection::login(d.portal, &opts("iqn.2026-11.io.rtgt:b", 2)).expect("login b");
    let mut k = C::default();
    settle(&mut b, 1, &mut k);
    lun1 = lun1.plus(k);
    b0 = b0.plus(k);
    b.read(1, 16, 16, BS).unwrap();
    lun1.add(8192, 0, true);
    b0.add(8192, 0, true);
    assert!(
        b.read(1, 1 << 30, 1, BS).is_err(),
        "read past the end must fail"
    );
    lun1.add(0, 0, false);
    b0.add(0, 0, false);

    let sa = a0.plus(a1);
    let total = lun1.plus(lun2);
    assert_eq!(total, sa.plus(b0));

    // Session ids (I_T nexus) as show gives them.
    let show = parse_json(&adm(&d, &["--op", "show", "--mode", "target", "--json"]));
    let sessions = show.get("targets").arr()[0].get("sessions").arr().to_vec();
    assert_eq!(sessions.len(), 2);
    let sid_of = |name: &str| {
        sessions
            .iter()
            .find(|s| s.get("initiator").str() == name)
            .unwrap()
            .get("sid")
            .num()
    };
    let (sa_id, sb_id) = (
        sid_of("iqn.2026-11.io.rtgt:a"),
        sid_of("iqn.2026-11.io.rtgt:b"),
    );

    // rtgt's own table.
    let t = counters_table(&adm(
        &d,
        &["--op", "stat", "--mode", "system", "--counters"],
    ));
    assert_eq!(row(&t, "target 1 - - -"), total);
    assert_eq!(row(&t, "lun 1 0 - -"), C::default());
    assert_eq!(row(&t, "lun 1 1 - -"), lun1);
    assert_eq!(row(&t, "lun 1 2 - -"), lun2);
    assert_eq!(row(&t, &format!("session 1 - {sa_id} -")), sa);
    assert_eq!(row(&t, &format!("connection 1 - {sa_id} 0")), a0);
    assert_eq!(row(&t, &format!("connection 1 - {sa_id} 1")), a1);
    assert_eq!(row(&t, &format!("session 1 - {sb_id} -")), b0);
    assert_eq!(row(&t, &format!("connection 1 - {sb_id} 0")), b0);
    assert_eq!(t.len(), 9, "{t:?}");

    // Narrower modes.
    let sid = sa_id.to_string();
    let t = counters_table(&adm(
        &d,
        &[
            "--op",
            "stat",
            "--mode",
            "session",
            "--sid",
            &sid,
            "--counters",
        ],
    ));
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!(row(&t, &format!("session 1 - {sa_id} -")), sa);
    let t = counters_table(&adm(
        &d,
        &[
            "--op",
            "stat",
            "--mode",
            "conn",
            "--tid",
            "1",
            "--sid",
            &sid,
            "--cid",
            "1",
            "--counters",
        ],
    ));
    assert_eq!(t, vec![(format!("connection 1 - {sa_id} 1"), a1)]);
    let t = counters_table(&adm(
        &d,
        &[
            "--op",
            "stat",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "2",
            "--counters",
        ],
    ));
    assert_eq!(t, vec![("lun 1 2 - -".to_string(), lun2)]);

    // JSON.
    let j = parse_json(&adm(
        &d,
        &["--op", "stat", "--mode", "target", "--tid", "1", "--json"],
    ));
    let t1 = &j.get("targets").arr()[0];
    assert_eq!(t1.get("name").str(), IQN);
    assert_eq!(C::of_json(t1), total);
    let luns = t1.get("luns").arr();
    assert_eq!(luns.len(), 3);
    assert_eq!(C::of_json(&luns[1]), lun1);
    assert_eq!(C::of_json(&luns[2]), lun2);
    let js = t1
        .get("sessions")
        .arr()
        .iter()
        .find(|s| s.get("sid").num() == sa_id)
        .unwrap();
    assert_eq!(C::of_json(js), sa);
    let conns = js.get("connections").arr();
    assert_eq!(conns.len(), 2);
    assert_eq!(C::of_json(&conns[0]), a0);
    assert_eq!(C::of_json(&conns[1]), a1);

    // tgt's layout: one line per unit (all sessions), bytes in the done
    // and submitted columns, errors last.
    let text = adm(&d, &["--op", "stat", "--mode", "target", "--tid", "1"]);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let l1 = &lines[1];
    assert_eq!(&l1[..3], ["1", "1", "-"], "{text}");
    let r = lun1.read.to_string();
    let w = lun1.written.to_string();
    let e = lun1.errors.to_string();
    assert_eq!(
        [l1[3], l1[5], l1[7], l1[9], l1[11]],
        [r.as_str(), &r, &w, &w, &e],
        "{text}"
    );
    // Command counts: submitted equals done, and a unit that moved data
    // in a direction counted at least one command for it.
    assert_eq!((l1[4], l1[8]), (l1[6], l1[10]), "{text}");
    let (rc, wc): (u64, u64) = (l1[4].parse().unwrap(), l1[8].parse().unwrap());
    assert_eq!(rc > 0, lun1.read > 0, "{text}");
    assert_eq!(wc > 0, lun1.written > 0, "{text}");
    // Session: its line, then the connection table.
    let text = adm(&d, &["--op", "stat", "--mode", "session", "--sid", &sid]);
    let want_conn1 = format!(
        "{:>3} {:>3} {:>13} {:>13} {:>12} {:>11} {:>8} {:>8}",
        sa_id, 1, a1.written, a1.read, "-", "-", a1.commands, "-"
    );
    assert!(
        text.contains(
            "\nsid cid rxdata_octets txdata_octets dataout_pdus datain_pdus cmd_pdus rsp_pdus\n"
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == want_conn1),
        "{text}\nwant {want_conn1}"
    );

    // Unknown objects: tgt's errors.
    let err = |args: &[&str]| {
        let mut v = vec!["--lld", "iscsi"];
        v.extend_from_slice(args);
        let o = d.adm(&v);
        assert_eq!(o.status.code(), Some(22), "{args:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(
        err(&["--op", "stat", "--mode", "target", "--tid", "9"]).contains("can't find the target")
    );
    assert!(err(&[
        "--op",
        "stat",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "7"
    ])
    .contains("can't find the logical unit"));
    assert!(err(&["--op", "stat", "--mode", "session", "--sid", "999"])
        .contains("can't find the session"));
    assert!(
        err(&["--op", "stat", "--mode", "conn", "--sid", &sid, "--cid", "5"])
            .contains("can't find the connection")
    );

    // The stock tgtadm gets tgt's layout from rtgtd.
    if std::path::Path::new("/usr/sbin/tgtadm").exists() {
        let o = d.adm_with(
            "/usr/sbin/tgtadm",
            &[
                "--lld", "iscsi", "--op", "stat", "--mode", "target", "--tid", "1",
            ],
        );
        assert!(o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stdout), text_of_target(&d));
    }
    drop((a, a_1, b));
}

fn text_of_target(d: &Daemon) -> String {
    adm(d, &["--op", "stat", "--mode", "target", "--tid", "1"])
}

/// `--json` on show: the same information as the text, accounts without
/// their secrets.
#[test]
fn json_show_describes_targets_and_hides_passwords() {
    let d = Daemon::start("json");
    let img = sparse_file(&d.dir, "disk.img", 4 << 20);
    d.file_target(1, IQN, &img, true);
    adm(
        &d,
        &[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            "alice",
            "--password",
            "s3cr3t-pw",
        ],
    );
    adm(
        &d,
        &[
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice",
        ],
    );
    adm(
        &d,
        &[
            "--op",
            "bind",
            "--mode",
            "target",
            "--tid",
            "1",
            "-Q",
            "iqn.x:\"q\"",
        ],
    );
    adm(
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
            "vendor_id=ACME,product_id=Disk\\9",
        ],
    );
    let (mut c, _) = Connection::login(
        d.portal,
        &LoginOptions {
            chap: Some(("alice".into(), "s3cr3t-pw".into())),
            ..opts("iqn.2026-11.io.rtgt:j", 3)
        },
    )
    .expect("login");
    c.test_unit_ready(1).unwrap();

    let text = adm(&d, &["--op", "show", "--mode", "target", "--json"]);
    assert!(!text.contains("s3cr3t-pw"), "{text}");
    let j = parse_json(&text);
    let t = &j.get("targets").arr()[0];
    assert_eq!(t.get("tid").num(), 1);
    assert_eq!(t.get("name").str(), IQN);
    assert_eq!(t.get("state").str(), "ready");
    let l = &t.get("luns").arr()[1];
    assert_eq!(l.get("lun").num(), 1);
    assert_eq!(l.get("size_bytes").num(), 4 << 20);
    assert_eq!(l.get("block_size").num(), 512);
    assert_eq!(l.get("thin_provisioning"), &Value::Bool(true));
    assert_eq!(l.get("vendor_id").str(), "ACME");
    assert_eq!(l.get("product_id").str(), "Disk\\9");
    assert_eq!(l.get("backing_store_path").str(), img.to_str().unwrap());
    assert_eq!(t.get("accounts").get("incoming").arr()[0].str(), "alice");
    assert_eq!(
        t.get("acl").get("initiator_addresses").arr()[0].str(),
        "ALL"
    );
    assert_eq!(
        t.get("acl").get("initiator_names").arr()[0].str(),
        "iqn.x:\"q\""
    );
    let s = &t.get("sessions").arr()[0];
    assert_eq!(s.get("initiator").str(), "iqn.2026-11.io.rtgt:j");
    assert_eq!(
        s.get("connections").arr()[0].get("address").str(),
        "127.0.0.1"
    );
    assert_eq!(t.get("params").get("MaxConnections").str(), "1");

    let acc = parse_json(&adm(&d, &["--op", "show", "--mode", "account", "--json"]));
    let a = &acc.get("accounts").arr()[0];
    assert_eq!(a.get("user").str(), "alice");
    assert!(!a.has("password"));
    let sys = parse_json(&adm(&d, &["--op", "show", "--mode", "system", "--json"]));
    assert_eq!(sys.get("system").get("state").str(), "ready");
    let one = parse_json(&adm(
        &d,
        &["--op", "show", "--mode", "target", "--tid", "1", "--json"],
    ));
    assert_eq!(one.get("targets").arr().len(), 1);
    let conns = parse_json(&adm(
        &d,
        &["--op", "show", "--mode", "conn", "--tid", "1", "--json"],
    ));
    assert_eq!(conns.get("sessions").arr().len(), 1);
    let portals = parse_json(&adm(&d, &["--op", "show", "--mode", "portal", "--json"]));
    assert_eq!(
        portals.get("portals").arr()[0].get("port").num(),
        d.portal.port() as u64
    );
    parse_json(&adm(&d, &["--op", "show", "--mode", "lld", "--json"]));
    parse_json(&adm(&d, &["--op", "stat", "--mode", "system", "--json"]));
    // Without the flag, show is tgt's text as before.
    let plain = adm(&d, &["--op", "show", "--mode", "target"]);
    assert!(plain.starts_with(&format!("Target 1: {IQN}\n")), "{plain}");
}

/// Growing the backing file and `disksize=auto`: the initiator's next
/// command gets CAPACITY DATA HAS CHANGED and READ CAPACITY sees the new
/// size; `disksize=<bytes>` sets a size up to the store's.
#[test]
fn disksize_auto_resizes_and_raises_capacity_changed() {
    let d = Daemon::start("resize");
    let img = sparse_file(&d.dir, "disk.img", 1 << 20);
    d.file_target(1, IQN, &img, false);
    let (mut c, _) = Connection::login(d.portal, &opts("iqn.2026-11.io.rtgt:r", 4)).expect("login");
    let mut k = C::default();
    settle(&mut c, 1, &mut k);
    assert_eq!(c.read_capacity16(1).unwrap(), ((1 << 20) / 512, 512));

    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(3 << 20)
        .unwrap();
    let upd = |v: &str| {
        d.adm(&[
            "--lld",
            "iscsi",
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "--params",
            v,
        ])
    };
    assert!(upd("disksize=auto").status.success());
    let r = c.test_unit_ready(1).unwrap();
    assert_eq!(r.sense_key(), Some((0x6, 0x2a, 0x09)), "{r:?}");
    assert!(c.test_unit_ready(1).unwrap().is_good());
    assert_eq!(c.read_capacity16(1).unwrap(), ((3 << 20) / 512, 512));
    // The new blocks are usable.
    let last = (3 << 20) / 512 - 8;
    c.write(1, last, &[0x77; 4096], BS).unwrap();
    assert_eq!(c.read(1, last, 8, BS).unwrap(), vec![0x77; 4096]);
    let show = adm(&d, &["--op", "show", "--mode", "target"]);
    assert!(show.contains("Size: 3 MB, Block size: 512"), "{show}");
    let j = parse_json(&adm(&d, &["--op", "show", "--mode", "target", "--json"]));
    assert_eq!(
        j.get("targets").arr()[0].get("luns").arr()[1]
            .get("size_bytes")
            .num(),
        3 << 20
    );

    // An explicit size, within the store.
    assert!(upd("disksize=2097152").status.success());
    let r = c.test_unit_ready(1).unwrap();
    assert_eq!(r.sense_key(), Some((0x6, 0x2a, 0x09)), "{r:?}");
    assert_eq!(c.read_capacity16(1).unwrap(), ((2 << 20) / 512, 512));
    // Unchanged size: no unit attention.
    assert!(upd("disksize=2097152").status.success());
    assert!(c.test_unit_ready(1).unwrap().is_good());
    // Past the store, nonsense, or a unit without a medium: refused.
    for bad in [
        "disksize=4194304",
        "disksize=abc",
        "disksize=",
        "disksize=-1",
    ] {
        let o = upd(bad);
        assert_eq!(o.status.code(), Some(22), "{bad}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid request"),
            "{bad}"
        );
    }
    let o = d.adm(&[
        "--lld",
        "iscsi",
        "--op",
        "update",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "0",
        "--params",
        "disksize=auto",
    ]);
    assert_eq!(o.status.code(), Some(22));
    assert_eq!(c.read_capacity16(1).unwrap(), ((2 << 20) / 512, 512));
}
