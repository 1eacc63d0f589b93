//! rtgtd's JSON-RPC socket, end to end: SPDK's own `rpc.py` (the `spdk`
//! package's `spdk-rpc`, when installed; `RTGT_REQUIRE_SPDK=1` makes its
//! absence a failure) or the same JSON sent by hand builds a target that
//! initiators use and tgtadm shows; a saved configuration restores the
//! same answers in a fresh daemon (`--json`, and `load_config`); bad input
//! gets JSON-RPC errors without stalling anything else.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, have, sparse_file, Daemon};
use initiator::{Connection, LoginOptions};
use serde_json::{json, Value};

fn rpc_path(d: &Daemon) -> PathBuf {
    d.dir.join(format!("socket.{}.rpc", d.control_port))
}

/// One call on its own connection; the error's (code, message) on error.
fn call(path: &Path, method: &str, params: Value) -> Result<Value, (i64, String)> {
    let mut s = Client::connect(path);
    let mut req = json!({"jsonrpc": "2.0", "id": 1, "method": method});
    if !params.is_null() {
        req["params"] = params;
    }
    s.w.write_all(&serde_json::to_vec(&req).unwrap()).unwrap();
    let r = s.read_one().expect("an answer");
    match r.get("error") {
        Some(e) => Err((e["code"].as_i64().unwrap(), e["message"].to_string())),
        None => Ok(r["result"].clone()),
    }
}

/// A client connection that reads newline-ended answers, keeping what
/// arrived beyond one answer for the next.
struct Client {
    w: UnixStream,
    r: std::io::BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let w = UnixStream::connect(path).expect("connect to the JSON-RPC socket");
        w.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = std::io::BufReader::new(w.try_clone().unwrap());
        Client { w, r }
    }

    /// One answer; `None` at EOF first.
    fn read_one(&mut self) -> Option<Value> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("valid JSON answer")),
        }
    }
}

/// RFC 4648 base64, padded.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in chunk {
            n = n << 6 | if c == b'=' { 0 } else { val(c) as u32 };
        }
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

fn spdk_rpc() -> Option<&'static str> {
    if have("spdk-rpc") {
        return Some("spdk-rpc");
    }
    assert!(
        std::env::var_os("RTGT_REQUIRE_SPDK").is_none(),
        "RTGT_REQUIRE_SPDK is set but SPDK's rpc.py (spdk-rpc) is not installed"
    );
    None
}

/// Run SPDK's client: its output, asserting success.
fn rpc_py(bin: &str, path: &Path, args: &[&str]) -> String {
    let o = Command::new(bin)
        .arg("-s")
        .arg(path)
        .args(args)
        .output()
        .expect("run spdk-rpc");
    assert!(
        o.status.success(),
        "spdk-rpc {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const GETS: [&str; 6] = [
    "iscsi_get_portal_groups",
    "iscsi_get_initiator_groups",
    "iscsi_get_auth_groups",
    "iscsi_get_target_nodes",
    "iscsi_get_options",
    "bdev_get_bdevs",
];

/// SPDK's getting-started steps on `d`, with a portal group on a new port:
/// returns (that portal, the target's name).
fn build(d: &Daemon, disk: &Path) -> (String, String) {
    let path = rpc_path(d);
    let portal = format!("127.0.0.1:{}", free_port());
    let disk = disk.to_str().unwrap();
    match spdk_rpc() {
        Some(bin) => {
            rpc_py(bin, &path, &["iscsi_create_portal_group", "7", &portal]);
            rpc_py(
                bin,
                &path,
                &["iscsi_create_initiator_group", "2", "ANY", "127.0.0.1/32"],
            );
            assert_eq!(
                rpc_py(bin, &path, &["bdev_aio_create", disk, "aio0", "512"]).trim(),
                "aio0"
            );
            rpc_py(bin, &path, &["bdev_null_create", "null0", "64", "4096"]);
            rpc_py(
                bin,
                &path,
                &[
                    "iscsi_create_target_node",
                    "disk1",
                    "Data Disk1",
                    "aio0:0 null0:1",
                    "7:2",
                    "64",
                    "-d",
                ],
            );
        }
        None => {
            let (host, port) = portal.split_once(':').unwrap();
            for (m, p) in [
                (
                    "iscsi_create_portal_group",
                    json!({"tag": 7, "portals": [{"host": host, "port": port}]}),
                ),
                (
                    "iscsi_create_initiator_group",
                    json!({"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}),
                ),
                (
                    "bdev_aio_create",
                    json!({"filename": disk, "name": "aio0", "block_size": 512}),
                ),
                (
                    "bdev_null_create",
                    json!({"name": "null0", "num_blocks": 16384, "block_size": 4096}),
                ),
                (
                    "iscsi_create_target_node",
                    json!({"name": "disk1", "alias_name": "Data Disk1",
                    "luns": [{"bdev_name": "aio0", "lun_id": 0}, {"bdev_name": "null0", "lun_id": 1}],
                    "pg_ig_maps": [{"pg_tag": 7, "ig_tag": 2}], "queue_depth": 64, "disable_chap": true}),
                ),
            ] {
                call(&path, m, p).unwrap_or_else(|e| panic!("{m}: {e:?}"));
            }
        }
    }
    (portal, "iqn.2016-06.io.spdk:disk1".to_string())
}

fn login(portal: &str, target: &str) -> Connection {
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:rpc-test".into(),
        target_name: Some(target.into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    ready(
        Connection::login(portal.parse().unwrap(), &o)
            .expect("login")
            .0,
    )
}

/// Take the power-on unit attention of LUNs 0 and 1.
fn ready(mut c: Connection) -> Connection {
    for lun in [0, 1] {
        for _ in 0..4 {
            if c.test_unit_ready(lun).is_ok_and(|r| r.is_good()) {
                break;
            }
        }
    }
    c
}

#[test]
fn spdk_rpc_builds_a_target_that_initiators_use_and_tgtadm_shows() {
    let d = Daemon::start("rpc-build");
    let disk = sparse_file(&d.dir, "disk.img", 32 << 20);
    let (portal, target) = build(&d, &disk);

    // Our initiator writes through the portal group's portal; the data is
    // in the file the bdev names.
    let path = rpc_path(&d);
    assert_eq!(
        call(&path, "iscsi_get_histogram", json!({"name": target}))
            .unwrap_err()
            .0,
        -32602,
        "not enabled yet"
    );
    call(
        &path,
        "iscsi_enable_histogram",
        json!({"name": target, "enable": true}),
    )
    .unwrap();
    let mut c = login(&portal, &target);
    assert_eq!(c.read_capacity16(0).unwrap(), ((32 << 20) / 512, 512));
    assert_eq!(c.read_capacity16(1).unwrap().1, 4096);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    c.write(0, 100, &data, 512).unwrap();
    let back = std::fs::read(&disk).unwrap();
    assert_eq!(&back[100 * 512..100 * 512 + 8192], &data[..]);
    // SPDK's histogram counts media tasks (READ CAPACITY is answered
    // without one): at least the write, in SPDK's bucket layout.
    let h = call(&path, "iscsi_get_histogram", json!({"name": target})).unwrap();
    assert_eq!(
        (h["granularity"].clone(), h["max_range"].clone()),
        (json!(7), json!(57))
    );
    let bytes = base64_decode(h["histogram"].as_str().unwrap());
    assert_eq!(bytes.len(), 58 * 128 * 8);
    let counts: Vec<u64> = bytes
        .chunks(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(counts.iter().sum::<u64>() >= 1, "the write is counted");
    // iscsi_target_node_request_logout: the initiator is asked to log out
    // (AsyncEvent 1, within 30 s), as SPDK asks; then it does.
    call(
        &path,
        "iscsi_target_node_request_logout",
        json!({"name": target}),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    while c.async_messages.is_empty() && t0.elapsed() < Duration::from_secs(15) {
        c.nop().unwrap();
    }
    let a = c.async_messages.first().expect("an Async Message");
    assert_eq!(
        (a.bhs.0[36], u16::from_be_bytes([a.bhs.0[42], a.bhs.0[43]])),
        (1, 30)
    );
    c.logout(0).unwrap();

    // Not through the daemon's other portal: the target is mapped to
    // portal group 7 only.
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:rpc-test".into(),
        target_name: Some(target.clone()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    assert!(Connection::login(d.portal, &o).is_err());

    // libiscsi lists and reads it.
    if have("iscsi-ls") {
        let o = Command::new("iscsi-ls")
            .args(["-s", &format!("iscsi://{portal}/")])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("Target:{target} Portal:{portal},7")),
            "{out}"
        );
        assert!(out.contains("Lun:1"), "{out}");
    }
    // tgtadm shows the same target and its two LUNs.
    let show = d.must(&["--lld", "iscsi", "--op", "show", "--mode", "target"]);
    assert!(show.contains(&format!("Target 1: {target}")), "{show}");
    assert!(
        show.contains(&format!("Backing store path: {}", disk.display())),
        "{show}"
    );
    if have("tgtadm") {
        let o = d.adm_with(
            "tgtadm",
            &["--lld", "iscsi", "--op", "show", "--mode", "target"],
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), show);
    }
    // And a target tgtadm makes is a target node.
    d.must(&[
        "--lld",
        "iscsi",
        "--op",
        "new",
        "--mode",
        "target",
        "--tid",
        "5",
        "-T",
        "iqn.2026-12.io.rtgt:made-by-tgtadm",
    ]);
    let nodes = call(&rpc_path(&d), "iscsi_get_target_nodes", Value::Null).unwrap();
    assert_eq!(
        nodes[1]["name"],
        json!("iqn.2026-12.io.rtgt:made-by-tgtadm")
    );
    assert_eq!(
        nodes[0]["luns"],
        json!([{"bdev_name": "aio0", "lun_id": 0}, {"bdev_name": "null0", "lun_id": 1}])
    );
    let conns = call(&rpc_path(&d), "iscsi_get_connections", Value::Null).unwrap();
    assert_eq!(conns, json!([]));
}

#[test]
fn a_saved_configuration_gives_a_fresh_daemon_the_same_answers() {
    let d = Daemon::start("rpc-save");
    let disk = sparse_file(&d.dir, "disk.img", 16 << 20);
    let (portal, target) = build(&d, &disk);
    let path = rpc_path(&d);
    call(
        &path,
        "iscsi_create_auth_group",
        json!({"tag": 4, "secrets": [
        {"user": "u1", "secret": "secret-one-12", "muser": "m1", "msecret": "msecret-one-1"}]}),
    )
    .unwrap();
    call(
        &path,
        "iscsi_target_node_set_auth",
        json!({"name": target, "require_chap": true, "mutual_chap": true, "chap_group": 4}),
    )
    .unwrap();
    let want: Vec<Value> = GETS
        .iter()
        .map(|m| call(&path, m, Value::Null).unwrap())
        .collect();
    let saved = match spdk_rpc() {
        Some(bin) => rpc_py(bin, &path, &["save_config"]),
        None => {
            let sub = |n: &str| call(&path, "framework_get_config", json!({"name": n})).unwrap();
            json!({"subsystems": [
                {"subsystem": "bdev", "config": sub("bdev")},
                {"subsystem": "iscsi", "config": sub("iscsi")},
            ]})
            .to_string()
        }
    };
    let file = d.dir.join("saved.json");
    std::fs::write(&file, &saved).unwrap();
    let keep = common::tempdir("rpc-save-keep");
    std::fs::copy(&file, keep.join("saved.json")).unwrap();
    std::fs::copy(&disk, keep.join("disk.img")).unwrap();
    drop(d);
    // The saved file names the first daemon's disk: point it at the copy.
    let text = std::fs::read_to_string(keep.join("saved.json"))
        .unwrap()
        .replace(
            disk.to_str().unwrap(),
            keep.join("disk.img").to_str().unwrap(),
        );
    std::fs::write(keep.join("saved.json"), text).unwrap();
    let fix = |v: &Value| -> Value {
        serde_json::from_str(&v.to_string().replace(
            disk.to_str().unwrap(),
            keep.join("disk.img").to_str().unwrap(),
        ))
        .unwrap()
    };

    // rtgtd --json FILE, as spdk_tgt --json.
    let saved_path = keep.join("saved.json");
    let d2 = Daemon::start_with("rpc-json", &["--json", saved_path.to_str().unwrap()]);
    let p2 = rpc_path(&d2);
    for (m, w) in GETS.iter().zip(&want) {
        let got = call(&p2, m, Value::Null).unwrap();
        // The fresh daemon's own command-line portal joins group 1.
        if *m == "iscsi_get_portal_groups" {
            let g7 = |v: &Value| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .find(|g| g["tag"] == 7)
                    .cloned()
            };
            assert_eq!(g7(&got), g7(w), "{m}");
        } else {
            assert_eq!(got, fix(w), "{m}");
        }
    }
    // The restored target serves its LUN, with mutual CHAP now required.
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:rpc-test".into(),
        target_name: Some(target.clone()),
        chap: Some(("u1".into(), "secret-one-12".into())),
        // The mutual identity the auth group gives this user.
        chap_target: Some(("m1".into(), "msecret-one-1".into())),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut c = ready(
        Connection::login(portal.parse().unwrap(), &o)
            .expect("CHAP login")
            .0,
    );
    assert_eq!(c.read_capacity16(0).unwrap().1, 512);
    drop(c);
    drop(d2);

    // load_config by SPDK's client into a fresh daemon.
    if let Some(bin) = spdk_rpc() {
        let d3 = Daemon::start("rpc-load");
        let p3 = rpc_path(&d3);
        rpc_py(
            bin,
            &p3,
            &["load_config", "-j", saved_path.to_str().unwrap()],
        );
        let nodes = call(&p3, "iscsi_get_target_nodes", Value::Null).unwrap();
        assert_eq!(nodes, fix(&want[3]));
    }
    std::fs::remove_dir_all(&keep).unwrap();
}

#[test]
fn bad_input_gets_json_rpc_errors_and_stalls_nothing() {
    let d = Daemon::start("rpc-bad");
    let path = rpc_path(&d);
    // Malformed JSON: -32700, then the connection closes.
    let mut s = Client::connect(&path);
    s.w.write_all(b"{\"method\": oops}").unwrap();
    let r = s.read_one().unwrap();
    assert_eq!(r["error"]["code"], json!(-32700));
    assert!(s.read_one().is_none());
    // Two requests in one write, then an unknown method and wrong types.
    let mut s = Client::connect(&path);
    s.w.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"iscsi_get_stats"}{"jsonrpc":"2.0","id":2,"method":"nope"}"#)
        .unwrap();
    assert_eq!(s.read_one().unwrap()["id"], json!(1));
    assert_eq!(s.read_one().unwrap()["error"]["code"], json!(-32601));
    assert_eq!(
        call(&path, "iscsi_create_portal_group", json!({"tag": "x"}))
            .unwrap_err()
            .0,
        -32602
    );
    // A request that never ends is cut at 256 KiB.
    let mut s = Client::connect(&path);
    let mut big = br#"{"method":"x","params":{"a":""#.to_vec();
    big.resize(300 * 1024, b'A');
    let _ = s.w.write_all(&big);
    let r = s.read_one().unwrap();
    assert_eq!(r["error"]["code"], json!(-32600));
    assert!(s.read_one().is_none());
    // 64 idle clients: the 65th is closed at once; the data plane, tgtadm
    // and, once they go, JSON-RPC itself carry on.
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // (The server accepts in arrival order: the 64 are counted before the
    // 65th is looked at.)
    let mut extra = Client::connect(&path);
    let _ = extra.w.write_all(br#"{"id":1,"method":"iscsi_get_stats"}"#);
    assert!(extra.read_one().is_none(), "the 65th client is refused");
    let disk = sparse_file(&d.dir, "d.img", 8 << 20);
    d.file_target(1, "iqn.2026-12.io.rtgt:bad", &disk, false);
    let o = LoginOptions {
        initiator_name: "iqn.2026-12.io.rtgt:rpc-test".into(),
        target_name: Some("iqn.2026-12.io.rtgt:bad".into()),
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let mut c = ready(
        Connection::login(d.portal, &o)
            .expect("login while clients idle")
            .0,
    );
    c.write(1, 0, &[9u8; 4096], 512).unwrap();
    drop(idle);
    // The server sees the idle clients' ends as it reads them: poll until
    // a call is served again (bounded).
    let mut nodes = Value::Null;
    for _ in 0..500 {
        let mut s = Client::connect(&path);
        s.w.write_all(br#"{"id":1,"method":"iscsi_get_target_nodes"}"#)
            .unwrap();
        if let Some(r) = s.read_one() {
            nodes = r["result"].clone();
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(nodes[0]["name"], json!("iqn.2026-12.io.rtgt:bad"));
    // A refused multi-part command leaves nothing behind.
    let e = call(
        &path,
        "iscsi_create_target_node",
        json!({"name": "half", "alias_name": "h",
        "luns": [{"bdev_name": "ghost", "lun_id": 0}], "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}],
        "queue_depth": 4}),
    );
    assert_eq!(e.unwrap_err().0, -32602);
    assert_eq!(
        call(&path, "iscsi_get_target_nodes", Value::Null)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(d.log().lines().all(|l| !l.contains("panicked")));
}
