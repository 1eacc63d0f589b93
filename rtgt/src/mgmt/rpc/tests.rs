//! The JSON-RPC layer in memory: framing, request checks, SPDK's methods
//! on the shared table (tgtadm sees what JSON-RPC made), and a saved
//! configuration loading into a fresh table with the same answers.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::mgmt::ipc::TgtadmError;
use crate::mgmt::live::{BackingInfo, Deferred, DeferredDone, Effect, SessionInfo};
use crate::mgmt::request::{Mode, Op, Request};
use crate::mgmt::table::LunSpec;

/// A daemon stand-in: files under `/data/` exist (1 MiB each, opened off
/// the thread the first time, as the daemon defers every open), others
/// do not.
#[derive(Default)]
struct Fake {
    effects: Vec<Effect>,
    deferred: Option<Deferred>,
    opened: Vec<String>,
    opens_run: usize,
}

impl Live for Fake {
    fn open_backing(&mut self, _tid: u32, spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        let path = spec.path.clone().unwrap_or_default();
        if !self.opened.contains(&path) {
            self.deferred = Some(Deferred(Box::new(move || DeferredDone(Box::new(path)))));
            return Err(TgtadmError::InvalidRequest);
        }
        if path.starts_with("/data/") {
            Ok(BackingInfo {
                size_bytes: 1 << 20,
                ..BackingInfo::default()
            })
        } else {
            Err(TgtadmError::InvalidRequest)
        }
    }
    fn take_deferred(&mut self) -> Option<Deferred> {
        self.deferred.take()
    }
    fn finish_deferred(&mut self, done: DeferredDone) {
        self.opens_run += 1;
        if let Ok(p) = done.0.downcast::<String>() {
            self.opened.push(*p);
        }
    }
    fn end_request(&mut self) {
        self.opened.clear();
    }
    fn sessions(&self, _tid: u32) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn apply(&mut self, effect: Effect) {
        self.effects.push(effect);
    }
}

struct Rig {
    table: Rc<RefCell<TargetTable>>,
    live: Rc<RefCell<Fake>>,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            table: Rc::new(RefCell::new(TargetTable::new())),
            live: Rc::new(RefCell::new(Fake::default())),
        }
    }

    /// One request value in, its answer out (runs deferred opens inline).
    fn send(&self, v: Value) -> Option<Value> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let live: Rc<RefCell<dyn Live>> = self.live.clone();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, answer(v, &self.table, &live))
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        let r = self
            .send(json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .expect("a call gets an answer");
        match r.get("error") {
            Some(e) => Err((
                e["code"].as_i64().unwrap(),
                e["message"].as_str().unwrap().to_string(),
            )),
            None => Ok(r["result"].clone()),
        }
    }

    fn ok(&self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    fn get(&self, method: &str) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": 7, "method": method}))
            .unwrap()["result"]
            .clone()
    }

    /// SPDK's getting-started sequence.
    fn standard_setup(&self) {
        self.ok(
            "iscsi_create_portal_group",
            json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]}),
        );
        self.ok(
            "iscsi_create_initiator_group",
            json!({"tag": 2, "initiators": ["ANY"], "netmasks": ["127.0.0.1/32"]}),
        );
        assert_eq!(
            self.ok(
                "bdev_aio_create",
                json!({"filename": "/data/disk0", "name": "aio0", "block_size": 512})
            ),
            json!("aio0")
        );
        self.ok(
            "bdev_null_create",
            json!({"name": "null0", "num_blocks": 2048, "block_size": 4096}),
        );
        self.ok(
            "iscsi_create_target_node",
            json!({
                "name": "disk1", "alias_name": "Data Disk1",
                "luns": [{"bdev_name": "aio0", "lun_id": 0}, {"bdev_name": "null0", "lun_id": 1}],
                "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
                "queue_depth": 64, "disable_chap": false, "require_chap": false,
                "mutual_chap": false, "header_digest": false, "data_digest": false,
            }),
        );
    }
}

#[test]
fn framing_splits_consecutive_values_and_keeps_a_partial_one() {
    let b = br#"{"a":1}  {"b":[2]}
{"c":"#;
    match split(b) {
        Frame::Values(v, used) => {
            assert_eq!(v, vec![json!({"a": 1}), json!({"b": [2]})]);
            assert_eq!(b[used..].trim_ascii_start(), br#"{"c":"#);
        }
        f => panic!("{f:?}"),
    }
    assert_eq!(split(b""), Frame::Values(vec![], 0));
    assert!(matches!(split(br#"{"a":1} }"#), Frame::Bad(v) if v.len() == 1));
    assert!(matches!(split(b"{\"a\" 1}"), Frame::Bad(v) if v.is_empty()));
    // Nesting past serde_json's limit is an error, not a stack overflow.
    let deep = "[".repeat(100_000);
    assert!(matches!(split(deep.as_bytes()), Frame::Bad(_)));
}

#[test]
fn requests_are_checked_as_json_rpc_2_0() {
    let r = Rig::new();
    let err = |v: Value| r.send(v).unwrap()["error"]["code"].as_i64().unwrap();
    assert_eq!(err(json!(5)), -32600);
    assert_eq!(err(json!([])), -32600);
    assert_eq!(err(json!({"id": 1})), -32600);
    assert_eq!(err(json!({"method": "x", "id": 1, "extra": 2})), -32600);
    assert_eq!(err(json!({"method": "x", "id": [1]})), -32600);
    assert_eq!(
        err(json!({"jsonrpc": "1.0", "method": "x", "id": 1})),
        -32600
    );
    assert_eq!(err(json!({"method": "nope", "id": 1})), -32601);
    let e = r.send(json!({"method": "nope", "id": "a"})).unwrap();
    assert_eq!(e["id"], json!("a"));
    // Wrong types and unknown keys: invalid params, nothing changed.
    assert_eq!(
        r.call(
            "iscsi_create_portal_group",
            json!({"tag": "1", "portals": []})
        )
        .unwrap_err()
        .0,
        -32602
    );
    assert_eq!(
        r.call("iscsi_get_target_nodes", json!({"x": 1}))
            .unwrap_err()
            .0,
        -32602
    );
    assert_eq!(
        r.call(
            "iscsi_create_initiator_group",
            json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"], "bogus": true})
        )
        .unwrap_err()
        .0,
        -32602
    );
    assert_eq!(r.get("iscsi_get_initiator_groups"), json!([]));
    // A notification's result is not sent; its error is, with a null id.
    assert_eq!(r.send(json!({"method": "iscsi_get_stats"})), None);
    let e = r.send(json!({"method": "nope"})).unwrap();
    assert_eq!(
        (e["id"].clone(), e["error"]["code"].clone()),
        (Value::Null, json!(-32601))
    );
    // A batch answers each call, in order, in one array.
    let b = r
        .send(json!([
            {"jsonrpc": "2.0", "id": 1, "method": "iscsi_get_stats"},
            {"jsonrpc": "2.0", "method": "iscsi_get_stats"},
            {"jsonrpc": "2.0", "id": 3, "method": "nope"},
        ]))
        .unwrap();
    let ids: Vec<Value> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(1), json!(3)]);
}

#[test]
fn spdk_objects_are_tgt_objects() {
    let r = Rig::new();
    r.standard_setup();
    let nodes = r.get("iscsi_get_target_nodes");
    assert_eq!(
        nodes,
        json!([{
            "name": "iqn.2016-06.io.spdk:disk1", "alias_name": "Data Disk1",
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}],
            "luns": [{"bdev_name": "aio0", "lun_id": 0}, {"bdev_name": "null0", "lun_id": 1}],
            "queue_depth": 64, "disable_chap": false, "require_chap": false,
            "mutual_chap": false, "chap_group": 0, "header_digest": false, "data_digest": false,
        }])
    );
    // tgtadm's show lists the same target with both LUNs, LUN 0 a disk.
    let mut table = r.table.borrow_mut();
    let mut live = r.live.borrow_mut();
    let show = crate::mgmt::handle(
        &mut table,
        &Request {
            mode: Mode::Target,
            op: Op::Show,
            ..Request::default()
        },
        &mut *live,
    )
    .unwrap();
    assert!(
        show.contains("Target 1: iqn.2016-06.io.spdk:disk1"),
        "{show}"
    );
    assert!(show.contains("Backing store path: /data/disk0"), "{show}");
    assert!(show.contains("LUN: 1"), "{show}");
    // A target tgtadm makes shows in iscsi_get_target_nodes, its LUN as an
    // implicit bdev.
    for r2 in [
        Request {
            mode: Mode::Target,
            op: Op::New,
            tid: 2,
            params: "targetname=iqn.2001-04.com.example:t2".into(),
            ..Request::default()
        },
        Request {
            mode: Mode::Device,
            op: Op::New,
            tid: 2,
            lun: 1,
            params: "path=null,bstype=null".into(),
            ..Request::default()
        },
    ] {
        crate::mgmt::handle_blocking(&mut table, &r2, &mut *live).unwrap();
    }
    drop((table, live));
    let nodes = r.get("iscsi_get_target_nodes");
    assert_eq!(nodes[1]["name"], json!("iqn.2001-04.com.example:t2"));
    assert_eq!(
        nodes[1]["luns"],
        json!([{"bdev_name": "tid2.lun1", "lun_id": 1}])
    );
    let bdevs = r.get("bdev_get_bdevs");
    let names: Vec<&str> = bdevs
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["aio0", "null0", "tid2.lun1"]);
    assert_eq!(bdevs[0]["num_blocks"], json!(2048));
    assert_eq!(bdevs[0]["claimed"], json!(true));
}

#[test]
fn a_refused_command_changes_nothing() {
    let r = Rig::new();
    r.standard_setup();
    let before = r.table.borrow().clone();
    // A missing bdev among good ones: no target, no LUN, no effect.
    r.ok(
        "bdev_aio_create",
        json!({"filename": "/data/d2", "name": "aio2"}),
    );
    let before2 = r.table.borrow().clone();
    let effects = r.live.borrow().effects.len();
    let e = r.call(
        "iscsi_create_target_node",
        json!({"name": "disk2", "alias_name": "x",
            "luns": [{"bdev_name": "aio2", "lun_id": 0}, {"bdev_name": "ghost", "lun_id": 1}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}], "queue_depth": 8}),
    );
    assert_eq!(e.unwrap_err().0, -32602);
    assert_eq!(*r.table.borrow(), before2);
    assert_eq!(r.live.borrow().effects.len(), effects);
    // A file that does not exist: SPDK's errno answer.
    let e = r.call("bdev_aio_create", json!({"filename": "/nope", "name": "x"}));
    assert_eq!(e.unwrap_err().0, -2);
    assert_eq!(
        r.call(
            "bdev_aio_create",
            json!({"filename": "/data/d3", "name": "aio0"})
        )
        .unwrap_err()
        .0,
        -17
    );
    // Bad auth combinations, unknown groups, duplicate tags.
    for (m, p) in [
        (
            "iscsi_set_discovery_auth",
            json!({"disable_chap": true, "require_chap": true}),
        ),
        (
            "iscsi_create_portal_group",
            json!({"tag": 1, "portals": [{"host": "127.0.0.2", "port": "3260"}]}),
        ),
        (
            "iscsi_create_initiator_group",
            json!({"tag": 3, "initiators": [], "netmasks": ["ANY"]}),
        ),
        (
            "iscsi_create_initiator_group",
            json!({"tag": 3, "initiators": ["ANY"], "netmasks": ["10.0.0.0/99"]}),
        ),
        (
            "iscsi_target_node_add_pg_ig_maps",
            json!({"name": "iqn.2016-06.io.spdk:disk1", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 9}]}),
        ),
        (
            "iscsi_target_node_add_pg_ig_maps",
            json!({"name": "iqn.2016-06.io.spdk:disk1", "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 2}]}),
        ),
        (
            "iscsi_create_auth_group",
            json!({"tag": 1, "secrets": [{"user": "u", "secret": "s", "muser": "m"}]}),
        ),
        ("bdev_aio_delete", json!({"name": "aio0"})),
    ] {
        assert!(r.call(m, p.clone()).is_err(), "{m} {p}");
    }
    assert_eq!(
        r.call("iscsi_delete_target_node", json!({"name": "nope"}))
            .unwrap_err()
            .0,
        -2
    );
    let mut after = r.table.borrow().clone();
    after.bdevs.remove("aio2");
    let mut b = before.clone();
    b.next_seq = after.next_seq;
    assert_eq!(after, b);
}

#[test]
fn saved_configuration_loads_into_a_fresh_table_with_the_same_answers() {
    let r = Rig::new();
    r.standard_setup();
    r.ok(
        "iscsi_create_auth_group",
        json!({"tag": 5, "secrets": [{"user": "u1", "secret": "s1-secret-xyz",
            "muser": "m1", "msecret": "m1-secret-xyz"}]}),
    );
    r.ok(
        "iscsi_target_node_set_auth",
        json!({"name": "iqn.2016-06.io.spdk:disk1", "require_chap": true, "chap_group": 5}),
    );
    r.ok(
        "iscsi_initiator_group_add_initiators",
        json!({"tag": 2, "initiators": ["iqn.x"], "netmasks": ["[::1]"]}),
    );
    r.ok(
        "iscsi_set_options",
        json!({"first_burst_length": 16384, "node_base": "iqn.2026-12.org.example"}),
    );
    // tgt's attributes beyond SPDK's model travel as rtgt_* calls.
    r.ok(
        "rtgt_lun_set_params",
        json!({"name": "iqn.2016-06.io.spdk:disk1", "lun_id": 0, "params": [
            ["vendor_id", "ACME"], ["thin_provisioning", true], ["scsi_sn", "SN-77"],
            ["mode_page", "8:0:18:0x14:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0"]]}),
    );
    r.ok(
        "rtgt_target_node_set_param",
        json!({"name": "iqn.2016-06.io.spdk:disk1", "key": "MaxRecvDataSegmentLength", "value": 65536}),
    );
    assert_eq!(
        r.call(
            "rtgt_lun_set_params",
            json!({"name": "iqn.2016-06.io.spdk:disk1", "lun_id": 0,
            "params": {"no_such": "1"}})
        )
        .unwrap_err()
        .0,
        -32602
    );
    let saved = json!({"subsystems": [
        {"subsystem": "bdev", "config": r.ok("framework_get_config", json!({"name": "bdev"}))},
        {"subsystem": "iscsi", "config": r.ok("framework_get_config", json!({"name": "iscsi"}))},
    ]});
    let gets = [
        "rtgt_get_target_nodes",
        "iscsi_get_portal_groups",
        "iscsi_get_initiator_groups",
        "iscsi_get_auth_groups",
        "iscsi_get_target_nodes",
        "iscsi_get_options",
        "bdev_get_bdevs",
    ];
    let want: Vec<Value> = gets.iter().map(|m| r.get(m)).collect();

    let fresh = Rig::new();
    let dir = std::env::temp_dir().join(format!("rtgt-rpc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&saved).unwrap()).unwrap();
    let live: Rc<RefCell<dyn Live>> = fresh.live.clone();
    let n = load_file(&file, &fresh.table, &live).unwrap();
    assert!(n >= 9, "{n} calls");
    let t = fresh.table.borrow();
    let t1 = t.target_by_name("iqn.2016-06.io.spdk:disk1").unwrap();
    assert_eq!(t1.params.get("MaxRecvDataSegmentLength"), Some(65536));
    assert_eq!(t1.luns[&0].mode_pages.len(), 1);
    assert!(t1.luns[&0].thin_provisioning);
    assert_eq!(t1.luns[&0].scsi_sn, "SN-77");
    drop(t);
    let got: Vec<Value> = gets.iter().map(|m| fresh.get(m)).collect();
    for ((m, g), w) in gets.iter().zip(&got).zip(&want) {
        assert_eq!(g, w, "{m}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_target_node_with_many_luns_opens_each_store_once_per_round() {
    let r = Rig::new();
    r.ok(
        "iscsi_create_portal_group",
        json!({"tag": 1, "portals": [{"host": "127.0.0.1", "port": "3260"}]}),
    );
    r.ok(
        "iscsi_create_initiator_group",
        json!({"tag": 1, "initiators": ["ANY"], "netmasks": ["ANY"]}),
    );
    let mut luns = Vec::new();
    for i in 0..8 {
        r.ok(
            "bdev_aio_create",
            json!({"filename": format!("/data/f{i}"), "name": format!("b{i}")}),
        );
        luns.push(json!({"bdev_name": format!("b{i}"), "lun_id": i}));
    }
    let opens = r.live.borrow().opens_run;
    r.ok(
        "iscsi_create_target_node",
        json!({"name": "many", "alias_name": "m", "luns": luns,
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 1}], "queue_depth": 32}),
    );
    // Each store opened off the thread once; earlier ones kept meanwhile.
    assert_eq!(r.live.borrow().opens_run - opens, 8);
    assert_eq!(
        r.get("iscsi_get_target_nodes")[0]["luns"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
}

#[test]
fn portal_group_access_follows_spdk_rules() {
    let r = Rig::new();
    r.standard_setup();
    r.ok(
        "iscsi_create_portal_group",
        json!({"tag": 7, "portals": [{"host": "127.0.0.1", "port": "3270"}], "private": true}),
    );
    let t = r.table.borrow();
    let tid = t.target_by_name("iqn.2016-06.io.spdk:disk1").unwrap().tid;
    let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert!(t.access_allows(tid, 1, lo, "iqn.any"));
    // Not through a portal group the target is not mapped to.
    assert!(!t.access_allows(tid, 7, lo, "iqn.any"));
    // Not from outside the netmask.
    assert!(!t.access_allows(tid, 1, other, "iqn.any"));
    drop(t);
    // A denial in an earlier group is not undone by a later group's ANY.
    r.ok(
        "iscsi_create_initiator_group",
        json!({"tag": 9, "initiators": ["!iqn.evil"], "netmasks": ["ANY"]}),
    );
    r.ok(
        "iscsi_delete_target_node",
        json!({"name": "iqn.2016-06.io.spdk:disk1"}),
    );
    r.ok(
        "iscsi_create_target_node",
        json!({"name": "disk1", "alias_name": "a", "luns": [{"bdev_name": "aio0", "lun_id": 0}],
            "pg_ig_maps": [{"pg_tag": 1, "ig_tag": 9}, {"pg_tag": 1, "ig_tag": 2}], "queue_depth": 8}),
    );
    let t = r.table.borrow();
    let tid = t.target_by_name("iqn.2016-06.io.spdk:disk1").unwrap().tid;
    assert!(!t.access_allows(tid, 1, lo, "iqn.evil"));
    assert!(!t.discovery_allows(tid, lo, "iqn.evil"));
    assert!(t.access_allows(tid, 1, lo, "iqn.good"));
    // SendTargets names it to initiators of its groups, through any portal
    // group and whatever their address (as SPDK).
    assert!(t.discovery_allows(tid, other, "iqn.good"));
    drop(t);
    // A redirect applies to logins through the portal group it names.
    r.ok(
        "iscsi_target_node_set_redirect",
        json!({"name": "iqn.2016-06.io.spdk:disk1", "pg_tag": 1,
            "redirect_host": "127.0.0.9", "redirect_port": "3261"}),
    );
    let t = r.table.borrow();
    let n = t.target_by_name("iqn.2016-06.io.spdk:disk1").unwrap();
    assert_eq!(
        (n.redirect_pg, n.redirect.addr.as_str()),
        (Some(1), "127.0.0.9")
    );
    drop(t);
    let e = r.call(
        "iscsi_target_node_set_redirect",
        json!({"name": "iqn.2016-06.io.spdk:disk1", "pg_tag": 1,
            "redirect_host": "127.0.0.1", "redirect_port": "3260"}),
    );
    assert!(e.is_err(), "not to the group's own portal");
}

#[test]
fn framework_calls_scripts_make() {
    let r = Rig::new();
    assert_eq!(r.get("framework_wait_init"), json!(true));
    assert!(r
        .call("spdk_kill_instance", json!({"sig_name": "SIGHUP"}))
        .is_err());
    assert!(r.live.borrow().effects.is_empty());
    r.ok("spdk_kill_instance", json!({"sig_name": "SIGTERM"}));
    assert_eq!(r.live.borrow().effects, vec![Effect::SystemDeleted]);
    let methods = r.ok("rpc_get_methods", json!({"current": true}));
    assert!(methods
        .as_array()
        .unwrap()
        .contains(&json!("iscsi_create_target_node")));
    // load_config starts the framework when it may: rtgtd has no such state.
    assert!(!methods
        .as_array()
        .unwrap()
        .contains(&json!("framework_start_init")));
}

#[test]
fn peer_controlled_sizes_and_edges_are_refused_not_wrapped() {
    let r = Rig::new();
    let e = r.call(
        "bdev_null_create",
        json!({"name": "huge", "num_blocks": i64::MAX, "block_size": 4096}),
    );
    assert_eq!(e.unwrap_err().0, -32602);
    assert!(r.table.borrow().bdevs.is_empty());
    // SPDK accepts a portal group with no portal (tgtadm may leave one).
    r.ok(
        "iscsi_create_portal_group",
        json!({"tag": 3, "portals": []}),
    );
    assert_eq!(
        r.get("iscsi_get_portal_groups"),
        json!([{"tag": 3, "portals": [], "private": false}])
    );
}
