//! What the `*_get_*` methods and `framework_get_config` answer, in SPDK's
//! shapes and key order, from the one table tgtadm also shows. A LUN made
//! with tgtadm has no bdev; it is listed as an implicit bdev named
//! `tid<T>.lun<L>` (saved as a bdev of its kind, so a saved configuration
//! recreates it).

use serde_json::{json, Map, Value};

use super::RpcError;
use crate::mgmt::attrs;
use crate::mgmt::groups::{Bdev, BdevKind};
use crate::mgmt::live::Live;
use crate::mgmt::params::key_index;
use crate::mgmt::table::{DeviceType, LunSpec, Target, TargetTable};
use crate::stats::SpdkHistogram;

/// The bdev name of a unit: its own, or the implicit one.
pub fn lun_bdev_name(t: &Target, l: &LunSpec) -> String {
    l.bdev
        .clone()
        .unwrap_or_else(|| format!("tid{}.lun{}", t.tid, l.lun))
}

/// Units that are SPDK LUNs: disks with a medium (not tgt's controller).
fn disk_luns(t: &Target) -> impl Iterator<Item = &LunSpec> {
    t.luns
        .values()
        .filter(|l| l.device_type != DeviceType::Controller && l.path.is_some())
}

/// Bdevs tgtadm's LUNs stand for.
fn implicit_bdevs(table: &TargetTable) -> Vec<Bdev> {
    let mut out = Vec::new();
    for t in table.targets() {
        for l in disk_luns(t).filter(|l| l.bdev.is_none()) {
            let path = l.path.clone().unwrap_or_default();
            let kind = match l.bstype.as_str() {
                "null" => BdevKind::Null,
                "rbd" => {
                    let (pool, image) = path.split_once('/').unwrap_or(("rbd", &path));
                    BdevKind::Rbd {
                        pool: pool.to_string(),
                        image: image.to_string(),
                        user_id: None,
                        config: l
                            .bsopts
                            .as_deref()
                            .unwrap_or("")
                            .split(';')
                            .filter_map(|o| o.split_once('='))
                            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                            .collect(),
                    }
                }
                _ => BdevKind::Aio { filename: path },
            };
            let mut b = Bdev {
                name: lun_bdev_name(t, l),
                kind,
                block_size: l.block_size,
                num_blocks: l.size_bytes / l.block_size.max(1) as u64,
                readonly: l.readonly,
                uuid: implicit_uuid(t.tid, l.lun, &l.scsi_sn),
            };
            if let BdevKind::Rbd {
                user_id, config, ..
            } = &mut b.kind
            {
                if let Some(i) = config.iter().position(|(k, _)| k == "id") {
                    *user_id = Some(config.remove(i).1);
                }
            }
            out.push(b);
        }
    }
    out
}

/// A stable UUID for an implicit bdev (FNV-1a of what names the unit).
fn implicit_uuid(tid: u32, lun: u64, serial: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in format!("{tid}/{lun}/{serial}").bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let x = format!("{h:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        &x[17..20],
        &x[20..32]
    )
}

/// An RBD bdev's Ceph user and settings, where given.
fn rbd_access(m: &mut Map<String, Value>, user_id: &Option<String>, config: &[(String, String)]) {
    if let Some(u) = user_id {
        m.insert("user_id".into(), json!(u));
    }
    if !config.is_empty() {
        let c: Map<String, Value> = config.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        m.insert("config".into(), Value::Object(c));
    }
}

fn bdev_view(b: &Bdev, claimed: bool) -> Value {
    let driver = match &b.kind {
        BdevKind::Aio { filename } => json!({"aio": {
            "filename": filename,
            "block_size_override": b.block_size != 512,
            "readonly": b.readonly,
            "fallocate": false,
            "nowait": false,
        }}),
        BdevKind::Null => json!({}),
        BdevKind::Rbd {
            pool,
            image,
            user_id,
            config,
        } => {
            let mut r = Map::new();
            r.insert("pool_name".into(), json!(pool));
            r.insert("rbd_name".into(), json!(image));
            rbd_access(&mut r, user_id, config);
            json!({ "rbd": r })
        }
    };
    let writable = !b.readonly;
    json!({
        "name": b.name,
        "aliases": [b.uuid],
        "product_name": b.product_name(),
        "block_size": b.block_size,
        "num_blocks": b.num_blocks,
        "uuid": b.uuid,
        "claimed": claimed,
        "zoned": false,
        "supported_io_types": {
            "read": true,
            "write": writable,
            "unmap": writable && !matches!(b.kind, BdevKind::Null),
            "flush": true,
            "reset": true,
            "write_zeroes": writable,
            "compare": true,
            "compare_and_write": writable,
            "abort": true,
            "copy": writable,
        },
        "driver_specific": driver,
    })
}

fn all_bdevs(table: &TargetTable) -> Vec<Bdev> {
    let mut v: Vec<Bdev> = table.bdevs.values().cloned().collect();
    v.extend(implicit_bdevs(table));
    v
}

fn claimed(table: &TargetTable, name: &str) -> bool {
    table
        .targets()
        .any(|t| disk_luns(t).any(|l| lun_bdev_name(t, l) == name))
}

/// `bdev_get_bdevs`.
pub fn bdevs(table: &TargetTable, name: Option<&str>) -> Result<Value, RpcError> {
    let all = all_bdevs(table);
    let pick: Vec<&Bdev> = match name {
        None => all.iter().collect(),
        Some(n) => {
            let b = all
                .iter()
                .find(|b| b.name == n || b.uuid.eq_ignore_ascii_case(n))
                .ok_or_else(|| RpcError::errno(-19, "No such device"))?;
            vec![b]
        }
    };
    Ok(Value::Array(
        pick.into_iter()
            .map(|b| bdev_view(b, claimed(table, &b.name)))
            .collect(),
    ))
}

/// The call that makes a bdev again.
fn bdev_create_call(b: &Bdev) -> Value {
    match &b.kind {
        BdevKind::Aio { filename } => json!({"method": "bdev_aio_create", "params": {
            "name": b.name,
            "block_size": b.block_size,
            "filename": filename,
            "readonly": b.readonly,
            "uuid": b.uuid,
        }}),
        BdevKind::Null => json!({"method": "bdev_null_create", "params": {
            "name": b.name,
            "num_blocks": b.num_blocks,
            "block_size": b.block_size,
            "uuid": b.uuid,
        }}),
        BdevKind::Rbd {
            pool,
            image,
            user_id,
            config,
        } => {
            let mut p = Map::new();
            p.insert("name".into(), json!(b.name));
            p.insert("pool_name".into(), json!(pool));
            p.insert("rbd_name".into(), json!(image));
            p.insert("block_size".into(), json!(b.block_size));
            rbd_access(&mut p, user_id, config);
            p.insert("uuid".into(), json!(b.uuid));
            json!({"method": "bdev_rbd_create", "params": p})
        }
    }
}

/// `framework_get_config bdev`.
pub fn bdev_config(table: &TargetTable) -> Value {
    let mut v: Vec<Value> = all_bdevs(table).iter().map(bdev_create_call).collect();
    v.push(json!({"method": "bdev_wait_for_examine"}));
    Value::Array(v)
}

fn host_text(a: &std::net::SocketAddr) -> String {
    match a.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

/// Portal group tags: recorded groups and the TPGTs of portals.
fn pg_tags(table: &TargetTable) -> Vec<u16> {
    let mut tags: Vec<u16> = table.portal_groups.keys().copied().collect();
    tags.extend(table.portals().iter().map(|p| p.tpgt));
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// `iscsi_get_portal_groups`.
pub fn portal_groups(table: &TargetTable) -> Value {
    Value::Array(
        pg_tags(table)
            .into_iter()
            .map(|tag| {
                let attrs = table.portal_groups.get(&tag);
                let mut addrs: Vec<std::net::SocketAddr> = table
                    .portals()
                    .iter()
                    .rev()
                    .filter(|p| p.tpgt == tag)
                    .map(|p| p.addr)
                    .collect();
                if let Some(a) = attrs {
                    addrs.extend(a.waiting.iter().copied());
                }
                let portals: Vec<Value> = addrs
                    .iter()
                    .map(|a| json!({"host": host_text(a), "port": a.port().to_string()}))
                    .collect();
                json!({
                    "tag": tag,
                    "portals": portals,
                    "private": attrs.is_some_and(|a| a.private),
                })
            })
            .collect(),
    )
}

/// `iscsi_get_initiator_groups`.
pub fn initiator_groups(table: &TargetTable) -> Value {
    Value::Array(
        table
            .initiator_groups
            .iter()
            .map(|(tag, g)| json!({"tag": tag, "initiators": g.initiators, "netmasks": g.netmasks}))
            .collect(),
    )
}

/// `iscsi_get_auth_groups`.
pub fn auth_groups(table: &TargetTable) -> Value {
    Value::Array(
        table
            .auth_groups
            .iter()
            .map(|(tag, g)| {
                let secrets: Vec<Value> = g
                    .secrets
                    .iter()
                    .map(|s| {
                        let mut m = Map::new();
                        m.insert("user".into(), json!(s.user));
                        m.insert("secret".into(), json!(s.secret));
                        if let (Some(u), Some(p)) = (&s.muser, &s.msecret) {
                            m.insert("muser".into(), json!(u));
                            m.insert("msecret".into(), json!(p));
                        }
                        Value::Object(m)
                    })
                    .collect();
                json!({"tag": tag, "secrets": secrets})
            })
            .collect(),
    )
}

fn node_view(t: &Target, rtgt: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(t.name));
    if let Some(a) = &t.alias {
        m.insert("alias_name".into(), json!(a));
    }
    let maps: Vec<Value> = t
        .pg_ig_maps
        .iter()
        .map(|p| json!({"pg_tag": p.pg, "ig_tag": p.ig}))
        .collect();
    m.insert("pg_ig_maps".into(), Value::Array(maps));
    let luns: Vec<Value> = disk_luns(t)
        .map(|l| json!({"bdev_name": lun_bdev_name(t, l), "lun_id": l.lun}))
        .collect();
    m.insert("luns".into(), Value::Array(luns));
    m.insert(
        "queue_depth".into(),
        json!(t.params.get("MaxQueueCmd").unwrap_or(128)),
    );
    m.insert("disable_chap".into(), json!(t.auth.disable_chap));
    m.insert("require_chap".into(), json!(t.auth.require_chap));
    m.insert("mutual_chap".into(), json!(t.auth.mutual_chap));
    m.insert("chap_group".into(), json!(t.auth.chap_group));
    m.insert("header_digest".into(), json!(t.require_header_digest));
    m.insert("data_digest".into(), json!(t.require_data_digest));
    if rtgt {
        // rtgt's own view: what tgt's model adds.
        let units: Vec<Value> = disk_luns(t)
            .map(|l| {
                json!({
                    "lun_id": l.lun,
                    "bdev_name": lun_bdev_name(t, l),
                    "block_size": l.block_size,
                    "size": l.size_bytes,
                    "vendor_id": l.vendor_id,
                    "product_id": l.product_id,
                    "product_rev": l.product_rev,
                    "scsi_id": l.scsi_id,
                    "scsi_sn": l.scsi_sn,
                    "readonly": l.readonly,
                    "removable": l.removable,
                    "thin_provisioning": l.thin_provisioning,
                    "online": l.online,
                })
            })
            .collect();
        m.insert("units".into(), Value::Array(units));
        m.insert("tid".into(), json!(t.tid));
        m.insert("state".into(), json!(t.state.name()));
        m.insert("acl_addresses".into(), json!(t.acl_addresses));
        m.insert("acl_initiators".into(), json!(t.acl_initiators));
    }
    Value::Object(m)
}

/// `iscsi_get_target_nodes` (with `rtgt`, `rtgt_get_target_nodes`), in
/// creation order.
pub fn target_nodes(table: &TargetTable, rtgt: bool) -> Value {
    let mut ts: Vec<&Target> = table.targets().collect();
    ts.sort_by_key(|t| t.seq);
    Value::Array(ts.into_iter().map(|t| node_view(t, rtgt)).collect())
}

/// `iscsi_get_options`: rtgt's values where SPDK's options map onto its
/// session parameters; SPDK's own defaults for what rtgt only keeps.
pub fn options(table: &TargetTable) -> Value {
    let p = &table.new_target_params;
    let param = |k: &str| p.0[key_index(k).expect("a session key")];
    let extra = |k: &str, d: u64| table.spdk_extra_options.get(k).copied().unwrap_or(d);
    json!({
        "node_base": table.node_base,
        "max_sessions": extra("max_sessions", 128),
        "max_connections_per_session": param("MaxConnections"),
        "max_queue_depth": param("MaxQueueCmd"),
        "default_time2wait": param("DefaultTime2Wait"),
        "default_time2retain": param("DefaultTime2Retain"),
        "first_burst_length": param("FirstBurstLength"),
        "immediate_data": param("ImmediateData") != 0,
        "allow_duplicated_isid": extra("allow_duplicated_isid", 0) != 0,
        "error_recovery_level": param("ErrorRecoveryLevel"),
        "nop_timeout": extra("nop_timeout", 60),
        "nop_in_interval": table.default_nop_interval,
        "disable_chap": table.discovery_auth.disable_chap,
        "require_chap": table.discovery_auth.require_chap,
        "mutual_chap": table.discovery_auth.mutual_chap,
        "chap_group": table.discovery_auth.chap_group,
        "max_large_datain_per_connection": extra("max_large_datain_per_connection", 64),
        "max_r2t_per_connection": param("MaxOutstandingR2T"),
        "pdu_pool_size": extra("pdu_pool_size", 36864),
        "immediate_data_pool_size": extra("immediate_data_pool_size", 16384),
        "data_out_pool_size": extra("data_out_pool_size", 2048),
    })
}

/// `framework_get_config iscsi`: the calls that make this configuration.
pub fn iscsi_config(table: &TargetTable) -> Value {
    let mut v = vec![json!({"method": "iscsi_set_options", "params": options(table)})];
    for pg in portal_groups(table).as_array().into_iter().flatten() {
        v.push(json!({"method": "iscsi_create_portal_group", "params": pg}));
    }
    for ig in initiator_groups(table).as_array().into_iter().flatten() {
        v.push(json!({"method": "iscsi_create_initiator_group", "params": ig}));
    }
    // Before the targets that name them (SPDK writes them last).
    for ag in auth_groups(table).as_array().into_iter().flatten() {
        v.push(json!({"method": "iscsi_create_auth_group", "params": ag}));
    }
    let mut ts: Vec<&Target> = table.targets().collect();
    ts.sort_by_key(|t| t.seq);
    for t in ts {
        if disk_luns(t).next().is_none() || t.pg_ig_maps.is_empty() {
            // SPDK's target node needs LUNs and maps; tgt-only targets
            // are saved by tgt-admin --dump.
            continue;
        }
        v.push(json!({"method": "iscsi_create_target_node", "params": node_view(t, false)}));
        if t.histogram {
            v.push(json!({"method": "iscsi_enable_histogram",
                "params": {"name": t.name, "enable": true}}));
        }
        // What tgt's model adds: target and LU attributes set with tgtadm
        // (or rtgt_*), as rtgt's own calls.
        for (k, val) in attrs::target_items(table, t.tid) {
            v.push(json!({"method": "rtgt_target_node_set_param",
                "params": {"name": t.name, "key": k, "value": val}}));
        }
        for l in disk_luns(t) {
            let items = attrs::lun_items(table, t.tid, l);
            if !items.is_empty() {
                let pairs: Vec<Value> = items.iter().map(|(k, x)| json!([k, x])).collect();
                v.push(json!({"method": "rtgt_lun_set_params",
                    "params": {"name": t.name, "lun_id": l.lun, "params": pairs}}));
            }
        }
    }
    Value::Array(v)
}

/// `iscsi_get_connections`.
pub fn connections(table: &TargetTable, live: &dyn Live) -> Value {
    let mut out = Vec::new();
    let mut id = 0u64;
    for t in table.targets() {
        let short = t.name.split_once(':').map_or(t.name.as_str(), |(_, s)| s);
        for s in live.sessions(t.tid) {
            for c in &s.connections {
                out.push(json!({
                    "id": id,
                    "cid": c.cid,
                    "tsih": s.nexus_id,
                    "state": "running",
                    "login_phase": "full_feature_phase",
                    "initiator_addr": c.peer.ip().to_string(),
                    "initiator_name": s.initiator,
                    "target_node_name": short,
                    "thread_name": format!("tgt/{}", t.tid),
                }));
                id += 1;
            }
        }
    }
    Value::Array(out)
}

/// `iscsi_get_histogram`: SPDK's layout (base64 of the little-endian
/// bucket counts), in nanoseconds of media latency (`tsc_rate` 1 GHz).
pub fn histogram(table: &TargetTable, live: &dyn Live, name: &str) -> Result<Value, RpcError> {
    let t = table
        .target_by_name(name)
        .ok_or_else(|| RpcError::invalid_params("target not found"))?;
    let counts = match live.histogram(t.tid) {
        Some(c) if t.histogram => c,
        _ => {
            return Err(RpcError::invalid_params(
                "target's histogram function is not enabled",
            ))
        }
    };
    let bytes: Vec<u8> = counts.iter().flat_map(|c| c.to_le_bytes()).collect();
    let b64 = iscsi::chap::encode_base64(&bytes);
    Ok(json!({
        "histogram": b64.strip_prefix("0b").unwrap_or(&b64),
        "granularity": SpdkHistogram::SHIFT,
        "min_range": 0,
        "max_range": SpdkHistogram::RANGES - 1,
        "tsc_rate": SpdkHistogram::TICK_RATE,
    }))
}
