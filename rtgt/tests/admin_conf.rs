//! rtgt-admin: targets.conf parsing, and its effect on a live rtgtd compared
//! with the stock tgt-admin's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{sparse_file, tempdir, Daemon};
use tgt_admin::conf::{parse_file, parse_str, Value};

const TGT_ADMIN: &str = "/usr/sbin/tgt-admin";

fn admin_with(d: &Daemon, bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .args(["-C", &d.control_port.to_string()])
        .env("TGT_IPC_SOCKET", d.dir.join("socket"))
        .output()
        .expect("run admin")
}

fn admin(d: &Daemon, args: &[&str]) -> Output {
    admin_with(d, env!("CARGO_BIN_EXE_rtgt-admin"), args)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn show(d: &Daemon) -> String {
    d.must(&["--op", "show", "--mode", "target"])
}

fn have_tgt_admin() -> bool {
    if Path::new(TGT_ADMIN).exists()
        && Command::new("perl")
            .args(["-MConfig::General", "-e", "1"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    {
        return true;
    }
    eprintln!("skipping the comparison with {TGT_ADMIN}: not installed");
    false
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn parse_grammar() {
    let text = r#"
# a comment
default-driver iscsi
ignore-errors = yes
iSNSServerIP 192.0.2.1  # trailing comment
/* a C comment */
/*
   spanning lines
*/
incomingdiscoveryuser disc "secretsecret"
<target iqn.2001-04.com.example:a>
    backing-store /tmp/a.img
    backing-store /tmp/b.img
    initiator-address 192.0.2.10
    initiator-address 192.0.2.11
    vendor_id "My Vendor"
    scsi_sn 12\#34
    params thin_provisioning=1,\
        rotation_rate=1
    MaxRecvDataSegmentLength 65536
</target>
<target iqn.2001-04.com.example:a>
    incominguser u1 p1p1p1p1p1p1
</target>
<target iqn.2001-04.com.example:b>
    <direct-store /dev/sg1>
        lun 3
        mode_page 8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0
        mode_page 2:0:14:0x80:0x80:0:0xa:0:0:0:0:0:0:0:0
    </direct-store>
</target>
"#;
    let c = parse_str(text, "t.conf").unwrap();
    assert_eq!(c.str("default-driver"), Some("iscsi"));
    assert_eq!(c.str("ignore-errors"), Some("yes"));
    assert_eq!(c.str("iSNSServerIP"), Some("192.0.2.1"));
    assert_eq!(
        c.str("incomingdiscoveryuser"),
        Some("disc \"secretsecret\"")
    );
    let Some(Value::Block(targets)) = c.get("target") else {
        panic!("no targets")
    };
    assert_eq!(targets.entries.len(), 2);
    let Some(Value::Block(a)) = targets.get("iqn.2001-04.com.example:a") else {
        panic!()
    };
    // Repeated options become lists, in order; merged blocks keep both.
    let Some(Value::List(bs)) = a.get("initiator-address") else {
        panic!()
    };
    assert_eq!(bs.len(), 2);
    assert_eq!(a.str("vendor_id"), Some("My Vendor"));
    assert_eq!(a.str("scsi_sn"), Some("12#34"));
    assert_eq!(a.str("params"), Some("thin_provisioning=1,rotation_rate=1"));
    assert_eq!(a.str("incominguser"), Some("u1 p1p1p1p1p1p1"));
    assert!(matches!(a.get("backing-store"), Some(Value::List(l)) if l.len() == 2));
    let Some(Value::Block(b)) = targets.get("iqn.2001-04.com.example:b") else {
        panic!()
    };
    let Some(Value::Block(ds)) = b.get("direct-store") else {
        panic!()
    };
    let Some(Value::Block(sg1)) = ds.get("/dev/sg1") else {
        panic!()
    };
    assert_eq!(sg1.str("lun"), Some("3"));
    assert!(matches!(sg1.get("mode_page"), Some(Value::List(l)) if l.len() == 2));
    // Locations are kept.
    assert_eq!(sg1.get("lun").unwrap().loc().line, 27);
    tgt_admin::validate::validate(&c).unwrap();
}

#[test]
fn parse_includes_globs_and_dirs() {
    let dir = tempdir("adm-inc");
    write(
        &dir,
        "conf.d/20-b.conf",
        "<target iqn.x:b>\n backing-store /b\n</target>\n",
    );
    write(
        &dir,
        "conf.d/10-a.conf",
        "<target iqn.x:a>\n backing-store /a\n</target>\n",
    );
    write(&dir, "conf.d/skip.txt", "<target iqn.x:skip>\n</target>\n");
    write(
        &dir,
        "more/one.conf",
        "<target iqn.x:c>\n backing-store /c\n</target>\n",
    );
    write(
        &dir,
        "rel.conf",
        "<target iqn.x:rel>\n backing-store /r\n</target>\n",
    );
    let main = write(
        &dir,
        "targets.conf",
        &format!(
            "include {d}/conf.d/*.conf\nInclude {d}/more\ninclude rel.conf\nincludeoptional {d}/missing.conf\ninclude {d}/none/*.conf\n<target iqn.x:a>\n initiator-address 192.0.2.1\n</target>\n",
            d = dir.display()
        ),
    );
    let c = parse_file(&main).unwrap();
    let Some(Value::Block(t)) = c.get("target") else {
        panic!()
    };
    let names: Vec<&str> = t.entries.keys().map(String::as_str).collect();
    assert_eq!(names, ["iqn.x:a", "iqn.x:b", "iqn.x:c", "iqn.x:rel"]);
    let Some(Value::Block(a)) = t.get("iqn.x:a") else {
        panic!()
    };
    assert_eq!(a.str("initiator-address"), Some("192.0.2.1"));
    assert_eq!(a.str("backing-store"), Some("/a"));
    assert!(a
        .get("backing-store")
        .unwrap()
        .loc()
        .file
        .ends_with("conf.d/10-a.conf"));
    // A missing (non-optional, non-glob) include is an error at its line.
    let bad = write(&dir, "bad.conf", "# x\n\ninclude /nonexistent/file.conf\n");
    let e = parse_file(&bad).unwrap_err();
    assert_eq!(e.loc.line, 3, "{e}");
    assert!(e.to_string().contains("bad.conf:3"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_errors_name_file_and_line() {
    let dir = tempdir("adm-err");
    let cases: &[(&str, &str, usize)] = &[
        ("<target iqn.x:a>\n backing-store /a\n", "no end block", 1),
        ("<target iqn.x:a>\n  vendor_id\n</target>\n", "missing value", 2),
        ("<target iqn.x:a>\n  scsi_id a\n  scsi_id b\n</target>\n", "multiple 'scsi_id'", 3),
        ("<target iqn.x:a>\n  incominguser onlyuser\n</target>\n", "USER PASSWORD", 2),
        (
            "<target iqn.x:a>\n <backing-store /a>\n  vendor_id A\n  vendor_id B\n </backing-store>\n</target>\n",
            "multiple 'vendor_id'",
            4,
        ),
        (
            "<target iqn.x:a>\n backing-store /b\n <backing-store /a>\n  lun 1\n </backing-store>\n</target>\n",
            "already set as an option",
            3,
        ),
        (
            "<target iqn.x:a>\n <backing-store /a>\n  lun 1\n </backing-store>\n backing-store /b\n</target>\n",
            "can't be mixed",
            2,
        ),
        ("default-driver iscsi\ndefault-driver iser\n", "multiple 'default-driver'", 2),
        ("</target>\n", "no start block", 1),
    ];
    for (text, what, line) in cases {
        let inc = write(&dir, "inc.conf", text);
        let main = write(
            &dir,
            "main.conf",
            &format!("# main\ninclude {}\n", inc.display()),
        );
        let r = parse_file(&main).and_then(|c| tgt_admin::validate::validate(&c));
        let e = r.expect_err(text);
        assert!(e.msg.contains(what), "{text:?}: {e}");
        assert_eq!(e.loc.line, *line, "{text:?}: {e}");
        assert!(e.loc.file.ends_with("inc.conf"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A config using every keyword tgt-admin acts on.
fn full_conf(dir: &Path) -> PathBuf {
    for f in ["a.img", "b.img", "c.img", "d.img", "e.img"] {
        sparse_file(dir, f, 16 << 20);
    }
    let d = dir.display();
    write(
        dir,
        "full.conf",
        &format!(
            r#"default-driver iscsi
ignore-errors no
incomingdiscoveryuser discuser discpass12345
outgoingdiscoveryuser discout discoutpass123
<target iqn.2001-04.com.example:full.one>
    driver iscsi
    backing-store {d}/a.img
    backing-store {d}/b.img
    backing-store {d}/missing.img
    initiator-address 192.0.2.1
    initiator-address 192.0.2.0/24
    initiator-name iqn.1994-05.com.redhat:client
    incominguser alice alicepass1234
    incominguser carol carolpass1234
    outgoinguser bob bobpass123456
    MaxRecvDataSegmentLength 65536
    MaxXmitDataSegmentLength 65536
    HeaderDigest None
    DataDigest None
    InitialR2T Yes
    MaxOutstandingR2T 1
    ImmediateData Yes
    FirstBurstLength 65536
    MaxBurstLength 262144
    DefaultTime2Wait 2
    DefaultTime2Retain 20
    MaxConnections 1
    write-cache off
    vendor_id RTGT
    product_id "Full Disk"
    product_rev 0001
    scsi_sn SNFULL
    removable 0
    sense_format 0
    online 1
    readonly 0
    allow-in-use no
</target>
<target iqn.2001-04.com.example:full.two>
    <backing-store {d}/c.img>
        lun 4
        block-size 4096
        bs-type rdwr
        vendor_id LUNVEND
        mode_page 8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0
    </backing-store>
    <backing-store {d}/d.img>
        bsoflags direct
        write-cache off
    </backing-store>
    <backing-store {d}/e.img>
        scsi_id my-scsi-id
        device-type disk
    </backing-store>
    params thin_provisioning=1
    lbppbe 3
    la_lba 0
    optimal_xfer_gran 8
    optimal_xfer_len 256
    controller_tid 7
</target>
<target iqn.2001-04.com.example:full.three>
    backing-store {d}/missing2.img
    state offline
</target>
"#
        ),
    )
}

#[test]
fn pretend_output_matches_tgt_admin() {
    let d = Daemon::start("adm-pretend");
    let conf = full_conf(&d.dir);
    let c = conf.to_str().unwrap();
    let ours = ok(&admin(&d, &["-e", "-p", "-c", c]));
    assert!(
        ours.contains("--tid 7 -T iqn.2001-04.com.example:full.two"),
        "{ours}"
    );
    assert!(ours.contains("# Skipping device: "), "{ours}");
    // -p changes nothing.
    assert!(!show(&d).contains("Target "));
    if have_tgt_admin() {
        let theirs = ok(&admin_with(&d, TGT_ADMIN, &["-e", "-p", "-c", c]));
        assert_eq!(ours, theirs);
    }
}

#[test]
fn execute_matches_tgt_admin() {
    // One daemon at a time: tgt-admin skips a file another process holds.
    let dir = tempdir("adm-files");
    let conf = full_conf(&dir);
    let c = conf.to_str().unwrap();
    let (ours, our_accounts, our_out) = {
        let d = Daemon::start("adm-exec-ours");
        let out = ok(&admin(&d, &["-e", "-v", "-c", c]));
        (
            show(&d),
            d.must(&["--op", "show", "--mode", "account"]),
            out,
        )
    };
    assert!(
        ours.contains("Target 1: iqn.2001-04.com.example:full.one"),
        "{ours}"
    );
    assert!(
        ours.contains("Target 7: iqn.2001-04.com.example:full.two"),
        "{ours}"
    );
    assert!(ours.contains("SCSI ID: my-scsi-id"), "{ours}");
    assert!(ours.contains("192.0.2.0/24"), "{ours}");
    if have_tgt_admin() {
        let d = Daemon::start("adm-exec-theirs");
        let out = ok(&admin_with(&d, TGT_ADMIN, &["-e", "-v", "-c", c]));
        assert_eq!(show(&d), ours);
        assert_eq!(d.must(&["--op", "show", "--mode", "account"]), our_accounts);
        let port = |o: &str| {
            o.split(" -C ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .map(|p| format!(" -C {p} "))
                .unwrap()
        };
        assert_eq!(
            out.replace(&port(&out), " -C N "),
            our_out.replace(&port(&our_out), " -C N "),
            "the same lines, in the same order"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dump_round_trip() {
    let dir = tempdir("adm-dump");
    for f in ["a.img", "b.img", "c.img"] {
        sparse_file(&dir, f, 8 << 20);
    }
    let d1 = dir.display();
    let conf = write(
        &dir,
        "t.conf",
        &format!(
            "<target iqn.x:dump.a>\n backing-store {d1}/a.img\n backing-store {d1}/b.img\n incominguser alice alicepass1234\n outgoinguser bob bobpass123456\n initiator-address 192.0.2.7\n initiator-name iqn.y:client\n</target>\n<target iqn.x:dump.b>\n backing-store {d1}/c.img\n</target>\n"
        ),
    );
    let (first, dump) = {
        let d = Daemon::start("adm-dump1");
        ok(&admin(&d, &["-e", "-c", conf.to_str().unwrap()]));
        let dump = ok(&admin(&d, &["--dump"]));
        if have_tgt_admin() {
            // tgt-admin lists targets in Perl hash order: compare as sets.
            let blocks = |s: &str| {
                let mut v: Vec<String> = s.split("\n\n").map(str::to_string).collect();
                v.sort();
                v
            };
            assert_eq!(
                blocks(&ok(&admin_with(&d, TGT_ADMIN, &["--dump"]))),
                blocks(&dump)
            );
        }
        (show(&d), dump)
    };
    assert!(
        dump.starts_with("default-driver iscsi\n\n<target iqn.x:dump.a>\n"),
        "{dump}"
    );
    assert!(
        dump.contains("\tincominguser alice PLEASE_CORRECT_THE_PASSWORD\n"),
        "{dump}"
    );
    assert!(
        dump.contains("\toutgoinguser bob PLEASE_CORRECT_THE_PASSWORD\n"),
        "{dump}"
    );
    assert!(
        dump.contains("\tinitiator-address 192.0.2.7\n\tinitiator-name iqn.y:client\n"),
        "{dump}"
    );
    let dumped = write(&dir, "dumped.conf", &dump);
    let d = Daemon::start("adm-dump2");
    ok(&admin(&d, &["-e", "-c", dumped.to_str().unwrap()]));
    assert_eq!(show(&d), first);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}

fn login(d: &Daemon, iqn: &str) -> initiator::Connection {
    let opts = initiator::LoginOptions {
        initiator_name: "iqn.2026-11.rs.rtgt:admin-test".into(),
        target_name: Some(iqn.into()),
        ..Default::default()
    };
    initiator::Connection::login(d.portal, &opts)
        .expect("login")
        .0
}

#[test]
fn update_keeps_targets_in_use() {
    let d = Daemon::start("adm-update");
    for f in ["a.img", "b.img", "c.img", "d.img"] {
        sparse_file(&d.dir, f, 8 << 20);
    }
    let dd = d.dir.display();
    let v1 = write(
        &d.dir,
        "v1.conf",
        &format!("<target iqn.x:up.a>\n backing-store {dd}/a.img\n</target>\n<target iqn.x:up.b>\n backing-store {dd}/b.img\n</target>\n"),
    );
    ok(&admin(&d, &["-e", "-c", v1.to_str().unwrap()]));
    let _session = login(&d, "iqn.x:up.a");
    let before = show(&d);
    assert!(before.contains("Connection:"), "{before}");
    // v2: a gets another LUN, b goes, c comes.
    let v2 = write(
        &d.dir,
        "v2.conf",
        &format!("<target iqn.x:up.a>\n backing-store {dd}/a.img\n backing-store {dd}/d.img\n</target>\n<target iqn.x:up.c>\n backing-store {dd}/c.img\n</target>\n"),
    );
    let out = ok(&admin(
        &d,
        &["--update", "ALL", "-v", "-c", v2.to_str().unwrap()],
    ));
    assert!(
        out.contains("# Target with tid 1 (iqn.x:up.a) is in use, it won't be updated."),
        "{out}"
    );
    let after = show(&d);
    assert!(after.contains("Target 1: iqn.x:up.a"), "{after}");
    assert!(
        !after.contains("d.img"),
        "in-use target left alone: {after}"
    );
    assert!(!after.contains("iqn.x:up.b"), "{after}");
    assert!(after.contains("Target 3: iqn.x:up.c"), "{after}");
    // --update by name with -f replaces it even in use.
    let out = ok(&admin(
        &d,
        &[
            "--update",
            "iqn.x:up.a",
            "-f",
            "-v",
            "-c",
            v2.to_str().unwrap(),
        ],
    ));
    assert!(out.contains("--op delete --mode conn --tid 1"), "{out}");
    let after = show(&d);
    assert!(after.contains("d.img"), "{after}");
}

#[test]
fn delete_offline_ready_show() {
    let d = Daemon::start("adm-ops");
    for f in ["a.img", "b.img", "c.img"] {
        sparse_file(&d.dir, f, 8 << 20);
    }
    let dd = d.dir.display();
    let conf = write(
        &d.dir,
        "t.conf",
        &format!("<target iqn.x:ops.a>\n backing-store {dd}/a.img\n</target>\n<target iqn.x:ops.b>\n backing-store {dd}/b.img\n</target>\n<target iqn.x:ops.c>\n backing-store {dd}/c.img\n</target>\n"),
    );
    ok(&admin(&d, &["-e", "-c", conf.to_str().unwrap()]));
    assert_eq!(ok(&admin(&d, &["-s"])), show(&d));
    ok(&admin(&d, &["--offline", "ALL"]));
    assert_eq!(show(&d).matches("State: offline").count(), 3);
    ok(&admin(&d, &["--ready", "tid=2"]));
    ok(&admin(&d, &["--ready", "iqn.x:ops.c"]));
    let s = show(&d);
    assert_eq!(s.matches("State: offline").count(), 1, "{s}");
    assert_eq!(s.matches("State: ready").count(), 2, "{s}");
    let o = admin(&d, &["--ready", "iqn.x:nope"]);
    assert_eq!(o.status.code(), Some(1));
    ok(&admin(&d, &["--delete", "iqn.x:ops.a"]));
    ok(&admin(&d, &["--delete", "tid=3"]));
    let s = show(&d);
    assert!(
        !s.contains("ops.a") && !s.contains("ops.c") && s.contains("ops.b"),
        "{s}"
    );
    // In use: kept without -f, deleted with it.
    let _c = login(&d, "iqn.x:ops.b");
    let out = ok(&admin(&d, &["--delete", "ALL", "-v"]));
    assert!(out.contains("is in use, it won't be deleted."), "{out}");
    assert!(show(&d).contains("ops.b"));
    ok(&admin(&d, &["--delete", "ALL", "-f"]));
    assert!(!show(&d).contains("Target "));
}

#[test]
fn config_error_applies_nothing() {
    let d = Daemon::start("adm-bad");
    sparse_file(&d.dir, "a.img", 8 << 20);
    let conf = write(
        &d.dir,
        "bad.conf",
        &format!(
            "<target iqn.x:good>\n backing-store {}/a.img\n</target>\n<target iqn.x:bad>\n MaxRecvDataSegmentLength\n</target>\n",
            d.dir.display()
        ),
    );
    let o = admin(&d, &["-e", "-c", conf.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.conf:5"), "{err}");
    assert!(err.contains("MaxRecvDataSegmentLength"), "{err}");
    assert!(!show(&d).contains("Target "));
}
