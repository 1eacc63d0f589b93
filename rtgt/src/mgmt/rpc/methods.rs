//! SPDK's JSON-RPC methods (names and parameters as SPDK's `rpc.py` sends
//! them), each turned into a [`Command`] of the core or answered from the
//! table. Views (`*_get_*`, `framework_get_config`) are in [`super::views`].

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use super::params::{as_int, as_str, item, Params};
use super::{views, RpcError};
use crate::mgmt::command::{execute, Command, CoreError, NodeSpec};
use crate::mgmt::groups::{Bdev, BdevKind, ChapSecret, InitiatorGroup, NodeAuth, PgIgMap};
use crate::mgmt::live::Live;
use crate::mgmt::params::key_index;
use crate::mgmt::table::TargetTable;

/// Every method served, for `rpc_get_methods`.
pub const METHODS: &[&str] = &[
    "rpc_get_methods",
    "spdk_get_version",
    "framework_get_subsystems",
    "framework_get_config",
    "framework_wait_init",
    "spdk_kill_instance",
    "bdev_aio_create",
    "bdev_aio_delete",
    "bdev_aio_rescan",
    "bdev_null_create",
    "bdev_null_delete",
    "bdev_rbd_create",
    "bdev_rbd_delete",
    "bdev_get_bdevs",
    "bdev_wait_for_examine",
    "iscsi_set_options",
    "iscsi_get_options",
    "iscsi_set_discovery_auth",
    "iscsi_create_portal_group",
    "iscsi_start_portal_group",
    "iscsi_delete_portal_group",
    "iscsi_get_portal_groups",
    "iscsi_portal_group_set_auth",
    "iscsi_create_initiator_group",
    "iscsi_delete_initiator_group",
    "iscsi_get_initiator_groups",
    "iscsi_initiator_group_add_initiators",
    "iscsi_initiator_group_remove_initiators",
    "iscsi_create_auth_group",
    "iscsi_delete_auth_group",
    "iscsi_get_auth_groups",
    "iscsi_auth_group_add_secret",
    "iscsi_auth_group_remove_secret",
    "iscsi_create_target_node",
    "iscsi_delete_target_node",
    "iscsi_get_target_nodes",
    "iscsi_target_node_add_lun",
    "iscsi_target_node_add_pg_ig_maps",
    "iscsi_target_node_remove_pg_ig_maps",
    "iscsi_target_node_set_auth",
    "iscsi_target_node_set_redirect",
    "iscsi_target_node_request_logout",
    "iscsi_get_connections",
    "iscsi_get_stats",
    "iscsi_enable_histogram",
    "iscsi_get_histogram",
    "rtgt_get_target_nodes",
    "rtgt_target_node_set_param",
    "rtgt_lun_set_params",
];

/// Largest number of portals, pairs or LUNs one request may name.
const MAX_LIST: usize = 1024;

fn core(table: &mut TargetTable, live: &mut dyn Live, cmd: Command) -> Result<Value, RpcError> {
    execute(table, live, &cmd).map_err(RpcError::from_core)?;
    Ok(Value::Bool(true))
}

/// Run one method. A store that must be opened off the thread leaves a
/// deferred open in `live` and an error; the server runs the open and calls
/// again (nothing was changed).
pub fn call(
    table: &mut TargetTable,
    live: &mut dyn Live,
    method: &str,
    params: Option<&Value>,
) -> Result<Value, RpcError> {
    match method {
        "rpc_get_methods" => {
            let p = Params::new(params, &["current", "include_aliases"])?;
            p.flag("current")?;
            p.flag("include_aliases")?;
            Ok(json!(METHODS))
        }
        "spdk_get_version" => {
            Params::none(params, method)?;
            let v = env!("CARGO_PKG_VERSION");
            let mut f = v.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
            Ok(json!({
                "version": format!("rtgt v{v}"),
                "fields": {
                    "major": f.next().unwrap_or(0),
                    "minor": f.next().unwrap_or(0),
                    "patch": f.next().unwrap_or(0),
                    "suffix": "",
                }
            }))
        }
        "framework_get_subsystems" => {
            Params::none(params, method)?;
            Ok(json!([
                {"subsystem": "bdev", "depends_on": []},
                {"subsystem": "iscsi", "depends_on": ["bdev"]},
            ]))
        }
        "framework_get_config" => {
            let p = Params::new(params, &["name", "with_batches"])?;
            p.flag("with_batches")?;
            match p.str("name")? {
                "bdev" => Ok(views::bdev_config(table)),
                "iscsi" => Ok(views::iscsi_config(table)),
                n => Err(RpcError::invalid_params(format!(
                    "Subsystem '{n}' not found"
                ))),
            }
        }
        "framework_wait_init" => {
            // rtgtd is initialised before it serves this socket.
            Params::none(params, method)?;
            Ok(Value::Bool(true))
        }
        "spdk_kill_instance" => {
            // As SPDK: SIGTERM or SIGINT end the daemon (its sessions
            // closed, its stores flushed, as on those signals).
            let p = Params::new(params, &["sig_name"])?;
            match p.str("sig_name")? {
                "SIGTERM" | "SIGINT" | "SIGKILL" => {
                    live.apply(crate::mgmt::live::Effect::SystemDeleted);
                    Ok(Value::Bool(true))
                }
                s => Err(RpcError::invalid_params(format!("unsupported signal {s}"))),
            }
        }
        "bdev_wait_for_examine" => {
            // Stores are opened when they are made: nothing to wait for.
            Params::none(params, method)?;
            Ok(Value::Bool(true))
        }
        "bdev_aio_create" => {
            let p = Params::new(
                params,
                &[
                    "name",
                    "filename",
                    "block_size",
                    "readonly",
                    "fallocate",
                    "uuid",
                    "nowait",
                ],
            )?;
            let name = p.str("name")?.to_string();
            let b = Bdev {
                name: name.clone(),
                kind: BdevKind::Aio {
                    filename: p.str("filename")?.to_string(),
                },
                block_size: block_size(&p)?,
                num_blocks: 0,
                readonly: p.flag("readonly")?,
                uuid: uuid(&p)?,
            };
            // fallocate and nowait tune SPDK's aio; rtgt's file store always
            // punches holes for UNMAP and never uses RWF_NOWAIT.
            p.flag("fallocate")?;
            p.flag("nowait")?;
            core(table, live, Command::BdevCreate(b))?;
            Ok(Value::String(name))
        }
        "bdev_null_create" => {
            let p = Params::new(
                params,
                &[
                    "name",
                    "num_blocks",
                    "block_size",
                    "physical_block_size",
                    "md_size",
                    "dif_type",
                    "dif_is_head_of_md",
                    "dif_pi_format",
                    "uuid",
                    "preferred_write_granularity",
                    "preferred_write_alignment",
                    "optimal_write_size",
                    "preferred_unmap_granularity",
                    "preferred_unmap_alignment",
                ],
            )?;
            if p.opt_int("md_size", 0, 128)?.unwrap_or(0) != 0
                || p.opt_int("dif_type", 0, 3)?.unwrap_or(0) != 0
            {
                return Err(RpcError::errno(-95, "Operation not supported"));
            }
            let name = p.str("name")?.to_string();
            let b = Bdev {
                name: name.clone(),
                kind: BdevKind::Null,
                block_size: p.int("block_size", 1, u32::MAX as i64)? as u32,
                num_blocks: p.int("num_blocks", 1, i64::MAX)? as u64,
                readonly: false,
                uuid: uuid(&p)?,
            };
            core(table, live, Command::BdevCreate(b))?;
            Ok(Value::String(name))
        }
        "bdev_rbd_create" => {
            let p = Params::new(
                params,
                &[
                    "name",
                    "user_id",
                    "pool_name",
                    "rbd_name",
                    "block_size",
                    "config",
                    "cluster_name",
                    "uuid",
                ],
            )?;
            if p.opt_str("cluster_name")?.is_some() {
                return Err(RpcError::errno(-95, "cluster_name is not supported"));
            }
            let pool = p.str("pool_name")?.to_string();
            let image = p.str("rbd_name")?.to_string();
            let name = match p.opt_str("name")? {
                Some(n) => n.to_string(),
                None => format!("Ceph{}", table.bdevs.len()),
            };
            let mut config = Vec::new();
            if let Ok(c) = p.req("config") {
                let m = c
                    .as_object()
                    .ok_or_else(|| RpcError::invalid_params("config must be an object"))?;
                for (k, v) in m {
                    let v = as_str(v, k)?;
                    if k.contains([';', '=']) || v.contains(';') {
                        return Err(RpcError::invalid_params("bad config entry"));
                    }
                    config.push((k.clone(), v.to_string()));
                }
            }
            let b = Bdev {
                name: name.clone(),
                kind: BdevKind::Rbd {
                    pool,
                    image,
                    user_id: p.opt_str("user_id")?.map(str::to_string),
                    config,
                },
                block_size: p.int("block_size", 512, 65536)? as u32,
                num_blocks: 0,
                readonly: false,
                uuid: uuid(&p)?,
            };
            core(table, live, Command::BdevCreate(b))?;
            Ok(Value::String(name))
        }
        "bdev_aio_delete" | "bdev_null_delete" | "bdev_rbd_delete" => {
            let p = Params::new(params, &["name"])?;
            let name = p.str("name")?;
            let kind_ok = table.bdevs.get(name).is_some_and(|b| {
                matches!(
                    (&b.kind, method),
                    (BdevKind::Aio { .. }, "bdev_aio_delete")
                        | (BdevKind::Null, "bdev_null_delete")
                        | (BdevKind::Rbd { .. }, "bdev_rbd_delete")
                )
            });
            if !kind_ok {
                return Err(RpcError::errno(-19, "No such device"));
            }
            core(
                table,
                live,
                Command::BdevDelete {
                    name: name.to_string(),
                },
            )
        }
        "bdev_aio_rescan" => {
            let p = Params::new(params, &["name"])?;
            let name = p.str("name")?;
            let Some(b) = table.bdevs.get(name).cloned() else {
                return Err(RpcError::errno(-19, "No such device"));
            };
            let mut probe = crate::mgmt::table::LunSpec::new(
                0,
                u64::MAX,
                crate::mgmt::table::DeviceType::Disk,
                b.bstype(),
            );
            probe.path = b.path();
            probe.readonly = true;
            let size = live
                .backing_size(0, &probe)
                .map_err(|_| RpcError::errno(-5, "Input/output error"))?;
            if let Some(b) = table.bdevs.get_mut(name) {
                b.num_blocks = size / b.block_size as u64;
            }
            Ok(Value::Bool(true))
        }
        "bdev_get_bdevs" => {
            let p = Params::new(params, &["name", "timeout"])?;
            p.opt_int("timeout", 0, i64::MAX)?;
            views::bdevs(table, p.opt_str("name")?)
        }
        "iscsi_set_options" => set_options(table, params),
        "iscsi_get_options" => {
            Params::none(params, method)?;
            Ok(views::options(table))
        }
        "iscsi_set_discovery_auth" => {
            let p = Params::new(params, AUTH_KEYS)?;
            let a = auth(&p)?;
            if !a.valid() {
                return Err(RpcError::invalid_params(
                    "Invalid combination of CHAP params",
                ));
            }
            core(table, live, Command::DiscoveryAuth(a))
        }
        "iscsi_create_portal_group" => {
            let p = Params::new(params, &["tag", "portals", "private", "wait"])?;
            let tag = pg_tag(&p)?;
            let mut portals = Vec::new();
            for v in p.arr("portals", MAX_LIST)? {
                let it = item(v, "portals", &["host", "port"])?;
                portals.push(portal(it.req("host")?, it.req("port")?)?);
            }
            core(
                table,
                live,
                Command::PortalGroupCreate {
                    tag,
                    portals,
                    private: p.flag("private")?,
                    wait: p.flag("wait")?,
                },
            )
        }
        "iscsi_start_portal_group" => {
            let p = Params::new(params, &["tag"])?;
            core(table, live, Command::PortalGroupStart { tag: pg_tag(&p)? })
        }
        "iscsi_delete_portal_group" => {
            let p = Params::new(params, &["tag"])?;
            core(table, live, Command::PortalGroupDelete { tag: pg_tag(&p)? })
        }
        "iscsi_portal_group_set_auth" => {
            let mut keys = AUTH_KEYS.to_vec();
            keys.push("tag");
            let p = Params::new(params, &keys)?;
            let tag = pg_tag(&p)?;
            let a = auth(&p)?;
            if !a.valid() {
                return Err(RpcError::invalid_params(
                    "Invalid combination of auth params",
                ));
            }
            core(table, live, Command::PortalGroupSetAuth { tag, auth: a })
        }
        "iscsi_get_portal_groups" => {
            Params::none(params, method)?;
            Ok(views::portal_groups(table))
        }
        "iscsi_create_initiator_group" => {
            let p = Params::new(params, &["tag", "initiators", "netmasks"])?;
            let tag = tag(&p)?;
            let group = InitiatorGroup {
                initiators: p.strings("initiators", 256, true)?,
                netmasks: p.strings("netmasks", 256, true)?,
            };
            core(table, live, Command::InitiatorGroupCreate { tag, group })
        }
        "iscsi_initiator_group_add_initiators" | "iscsi_initiator_group_remove_initiators" => {
            let p = Params::new(params, &["tag", "initiators", "netmasks"])?;
            let tag = tag(&p)?;
            let change = InitiatorGroup {
                initiators: p.strings("initiators", 256, false)?,
                netmasks: p.strings("netmasks", 256, false)?,
            };
            core(
                table,
                live,
                Command::InitiatorGroupEdit {
                    tag,
                    add: method == "iscsi_initiator_group_add_initiators",
                    change,
                },
            )
        }
        "iscsi_delete_initiator_group" => {
            let p = Params::new(params, &["tag"])?;
            core(table, live, Command::InitiatorGroupDelete { tag: tag(&p)? })
        }
        "iscsi_get_initiator_groups" => {
            Params::none(params, method)?;
            Ok(views::initiator_groups(table))
        }
        "iscsi_create_auth_group" => {
            let p = Params::new(params, &["tag", "secrets"])?;
            let tag = tag(&p)?;
            let mut secrets = Vec::new();
            for v in p.opt_arr("secrets", 64)? {
                secrets.push(secret(&item(v, "secrets", SECRET_KEYS)?)?);
            }
            core(table, live, Command::AuthGroupCreate { tag, secrets })
        }
        "iscsi_delete_auth_group" => {
            let p = Params::new(params, &["tag"])?;
            core(table, live, Command::AuthGroupDelete { tag: tag(&p)? })
        }
        "iscsi_auth_group_add_secret" => {
            let mut keys = SECRET_KEYS.to_vec();
            keys.push("tag");
            let p = Params::new(params, &keys)?;
            let tag = tag(&p)?;
            let secret = secret(&p)?;
            core(table, live, Command::AuthGroupAddSecret { tag, secret })
        }
        "iscsi_auth_group_remove_secret" => {
            let p = Params::new(params, &["tag", "user"])?;
            let tag = tag(&p)?;
            let user = p.str("user")?.to_string();
            core(table, live, Command::AuthGroupRemoveSecret { tag, user })
        }
        "iscsi_get_auth_groups" => {
            Params::none(params, method)?;
            Ok(views::auth_groups(table))
        }
        "iscsi_create_target_node" => {
            let mut keys = AUTH_KEYS.to_vec();
            keys.extend([
                "name",
                "alias_name",
                "pg_ig_maps",
                "luns",
                "queue_depth",
                "header_digest",
                "data_digest",
            ]);
            let p = Params::new(params, &keys)?;
            let name = full_name(table, p.str("name")?);
            let alias = p.opt_str("alias_name")?.filter(|a| !a.is_empty());
            let mut luns = Vec::new();
            for v in p.arr("luns", 64)? {
                let it = item(v, "luns", &["bdev_name", "lun_id"])?;
                let lun = it.opt_int("lun_id", 0, 255)?.unwrap_or(0) as u64;
                luns.push((it.str("bdev_name")?.to_string(), lun));
            }
            let spec = NodeSpec {
                name,
                alias: alias.map(str::to_string),
                luns,
                maps: maps(&p)?,
                queue_depth: p
                    .int("queue_depth", i32::MIN as i64, i32::MAX as i64)?
                    .max(0) as u32,
                auth: node_auth(&p)?,
                header_digest: p.flag("header_digest")?,
                data_digest: p.flag("data_digest")?,
            };
            core(table, live, Command::TargetNodeCreate(spec))
        }
        "iscsi_target_node_add_lun" => {
            let p = Params::new(params, &["name", "bdev_name", "lun_id"])?;
            let name = node_name(table, p.str("name")?)?;
            let lun = match p.opt_int("lun_id", -1, 255)? {
                None | Some(-1) => None,
                Some(n) => Some(n as u64),
            };
            let tid = table.target_by_name(&name).map(|t| t.tid).unwrap_or(0);
            if !live.sessions(tid).is_empty() {
                // As SPDK: LUNs are added to idle targets only.
                return Err(RpcError::invalid_params(format!(
                    "target {name} has sessions"
                )));
            }
            core(
                table,
                live,
                Command::TargetNodeAddLun {
                    name,
                    bdev: p.str("bdev_name")?.to_string(),
                    lun,
                },
            )
        }
        "iscsi_target_node_add_pg_ig_maps" | "iscsi_target_node_remove_pg_ig_maps" => {
            let p = Params::new(params, &["name", "pg_ig_maps"])?;
            let name = node_name(table, p.str("name")?)?;
            let maps = maps(&p)?;
            core(
                table,
                live,
                Command::TargetNodeMaps {
                    name,
                    add: method == "iscsi_target_node_add_pg_ig_maps",
                    maps,
                },
            )
        }
        "iscsi_target_node_set_auth" => {
            let mut keys = AUTH_KEYS.to_vec();
            keys.push("name");
            let p = Params::new(params, &keys)?;
            let name = node_name(table, p.str("name")?)?;
            let auth = node_auth(&p)?;
            core(table, live, Command::TargetNodeSetAuth { name, auth })
        }
        "iscsi_target_node_set_redirect" => {
            let p = Params::new(
                params,
                &["name", "pg_tag", "redirect_host", "redirect_port"],
            )?;
            let name = node_name(table, p.str("name")?)?;
            let port =
                match p.opt_str("redirect_port")? {
                    None => None,
                    Some(s) => Some(s.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(|| {
                        RpcError::invalid_params(format!("bad redirect_port {s:?}"))
                    })?),
                };
            core(
                table,
                live,
                Command::TargetNodeSetRedirect {
                    name,
                    pg_tag: pg_tag_key(&p, "pg_tag")?,
                    host: p.opt_str("redirect_host")?.map(str::to_string),
                    port,
                },
            )
        }
        "iscsi_target_node_request_logout" => {
            let p = Params::new(params, &["name", "pg_tag"])?;
            let name = node_name(table, p.str("name")?)?;
            let pg_tag = match p.opt_int("pg_tag", -1, u16::MAX as i64)? {
                None | Some(-1) => None,
                Some(n) => Some(n as u16),
            };
            core(
                table,
                live,
                Command::TargetNodeRequestLogout { name, pg_tag },
            )
        }
        "iscsi_delete_target_node" => {
            let p = Params::new(params, &["name"])?;
            let Ok(name) = node_name(table, p.str("name")?) else {
                return Err(RpcError::errno(-2, "No such file or directory"));
            };
            core(table, live, Command::TargetNodeDelete { name })
        }
        "iscsi_get_target_nodes" => {
            Params::none(params, method)?;
            Ok(views::target_nodes(table, false))
        }
        "rtgt_target_node_set_param" => {
            // tgtadm --mode target --op update --name KEY --value VALUE.
            let p = Params::new(params, &["name", "key", "value"])?;
            let name = node_name(table, p.str("name")?)?;
            let tid = table.target_by_name(&name).map_or(0, |t| t.tid);
            let value = scalar_text(p.req("value")?, "value")?;
            core(
                table,
                live,
                Command::TargetSet {
                    tid,
                    name: p.str("key")?.to_string(),
                    value,
                },
            )
        }
        "rtgt_lun_set_params" => {
            // tgtadm --mode logicalunit --op update --params k=v,...: as
            // [[key, value], ...] (a key may repeat: mode_page) or an object.
            let p = Params::new(params, &["name", "lun_id", "params"])?;
            let name = node_name(table, p.str("name")?)?;
            let tid = table.target_by_name(&name).map_or(0, |t| t.tid);
            let lun = p.int("lun_id", 0, 16383)? as u64;
            let mut items = Vec::new();
            match p.req("params")? {
                Value::Object(m) => {
                    for (k, v) in m {
                        items.push((k.clone(), scalar_text(v, k)?));
                    }
                }
                Value::Array(a) if a.len() <= 64 => {
                    for pair in a {
                        match pair.as_array().map(Vec::as_slice) {
                            Some([k, v]) => {
                                let k = as_str(k, "key")?.to_string();
                                let v = scalar_text(v, &k)?;
                                items.push((k, v));
                            }
                            _ => {
                                return Err(RpcError::invalid_params(
                                    "params items are [key, value] pairs",
                                ))
                            }
                        }
                    }
                }
                _ => {
                    return Err(RpcError::invalid_params(
                        "params is an object or at most 64 [key, value] pairs",
                    ))
                }
            }
            core(table, live, Command::LunSet { tid, lun, items })
        }
        "rtgt_get_target_nodes" => {
            Params::none(params, method)?;
            Ok(views::target_nodes(table, true))
        }
        "iscsi_get_connections" => {
            Params::none(params, method)?;
            Ok(views::connections(table, live))
        }
        "iscsi_get_stats" => {
            Params::none(params, method)?;
            let running: usize = table
                .targets()
                .map(|t| {
                    live.sessions(t.tid)
                        .iter()
                        .map(|s| s.connections.len())
                        .sum::<usize>()
                })
                .sum();
            Ok(json!({"invalid": 0, "running": running, "exiting": 0, "exited": 0}))
        }
        "iscsi_enable_histogram" => {
            let p = Params::new(params, &["name", "enable"])?;
            let name = node_name(table, p.str("name")?)?;
            let enable = p
                .opt_bool("enable")?
                .ok_or_else(|| RpcError::invalid_params("missing parameter \"enable\""))?;
            core(table, live, Command::TargetNodeHistogram { name, enable })
        }
        "iscsi_get_histogram" => {
            let p = Params::new(params, &["name"])?;
            let name = node_name(table, p.str("name")?)
                .map_err(|_| RpcError::invalid_params("target not found"))?;
            views::histogram(table, live, &name)
        }
        _ => Err(RpcError::method_not_found()),
    }
}

/// A parameter value as tgt's text: a string as it is, a number in
/// decimal, a boolean as 1 or 0.
fn scalar_text(v: &Value, k: &str) -> Result<String, RpcError> {
    match v {
        Value::String(s) if !s.contains(',') => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if *b { "1" } else { "0" }.to_string()),
        _ => Err(RpcError::invalid_params(format!(
            "{k} must be a string without commas, a number or a boolean"
        ))),
    }
}

const AUTH_KEYS: &[&str] = &["disable_chap", "require_chap", "mutual_chap", "chap_group"];
const SECRET_KEYS: &[&str] = &["user", "secret", "muser", "msecret"];

fn auth(p: &Params) -> Result<NodeAuth, RpcError> {
    Ok(NodeAuth {
        disable_chap: p.flag("disable_chap")?,
        require_chap: p.flag("require_chap")?,
        mutual_chap: p.flag("mutual_chap")?,
        chap_group: p.opt_int("chap_group", 0, i32::MAX as i64)?.unwrap_or(0) as u32,
    })
}

fn node_auth(p: &Params) -> Result<NodeAuth, RpcError> {
    let a = auth(p)?;
    if !a.valid() {
        return Err(RpcError::invalid_params(
            "Invalid combination of auth params",
        ));
    }
    Ok(a)
}

fn secret(p: &Params) -> Result<ChapSecret, RpcError> {
    Ok(ChapSecret {
        user: p.str("user")?.to_string(),
        secret: p.str("secret")?.to_string(),
        muser: p.opt_str("muser")?.map(str::to_string),
        msecret: p.opt_str("msecret")?.map(str::to_string),
    })
}

fn tag(p: &Params) -> Result<u32, RpcError> {
    Ok(p.int("tag", 1, i32::MAX as i64)? as u32)
}

fn pg_tag(p: &Params) -> Result<u16, RpcError> {
    pg_tag_key(p, "tag")
}

fn pg_tag_key(p: &Params, k: &str) -> Result<u16, RpcError> {
    // A TPGT is 16 bits on the wire (RFC 7143 §13.9).
    Ok(p.int(k, 1, u16::MAX as i64)? as u16)
}

fn maps(p: &Params) -> Result<Vec<PgIgMap>, RpcError> {
    let mut out = Vec::new();
    for v in p.arr("pg_ig_maps", 256)? {
        let it = item(v, "pg_ig_maps", &["pg_tag", "ig_tag"])?;
        out.push(PgIgMap {
            pg: pg_tag_key(&it, "pg_tag")?,
            ig: it.int("ig_tag", 1, i32::MAX as i64)? as u32,
        });
    }
    Ok(out)
}

fn block_size(p: &Params) -> Result<u32, RpcError> {
    // 0 or absent: the file's own (rtgt serves 512-byte blocks then).
    match p.opt_int("block_size", 0, 65536)? {
        None | Some(0) => Ok(512),
        Some(n) => Ok(n as u32),
    }
}

fn uuid(p: &Params) -> Result<String, RpcError> {
    match p.opt_str("uuid")? {
        Some(u) if valid_uuid(u) => Ok(u.to_ascii_lowercase()),
        Some(u) => Err(RpcError::invalid_params(format!("bad uuid {u:?}"))),
        None => {
            let b: [u8; 16] = rand::random();
            Ok(format_uuid(b))
        }
    }
}

/// A random (version 4) UUID's text.
fn format_uuid(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn valid_uuid(u: &str) -> bool {
    let groups: Vec<&str> = u.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// A portal from SPDK's `{host, port}` strings: `*` is every IPv4 address,
/// `[*]` every IPv6 one; IPv6 hosts may be in brackets.
fn portal(host: &Value, port: &Value) -> Result<SocketAddr, RpcError> {
    let host = as_str(host, "host")?;
    let port = match port {
        Value::String(s) => s
            .parse::<u16>()
            .map_err(|_| RpcError::invalid_params(format!("bad port {s:?}")))?,
        v => as_int(v, "port", 1, 65535)? as u16,
    };
    if port == 0 {
        return Err(RpcError::invalid_params("port must be 1 to 65535"));
    }
    let h = match host {
        "*" => "0.0.0.0",
        "[*]" => "::",
        h => h
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(h),
    };
    let ip: IpAddr = h
        .parse()
        .map_err(|_| RpcError::invalid_params(format!("bad host {host:?} (a numeric address)")))?;
    Ok(SocketAddr::new(ip, port))
}

/// SPDK's rule: a name without `iqn.`, `eui.` or `naa.` gets
/// `<node_base>:` in front.
pub fn full_name(table: &TargetTable, name: &str) -> String {
    let lower = name.get(..4).map(str::to_ascii_lowercase);
    match lower.as_deref() {
        Some("iqn.") | Some("eui.") | Some("naa.") => name.to_string(),
        _ => format!("{}:{name}", table.node_base),
    }
}

/// A target's stored name, found case-insensitively as SPDK does.
fn node_name(table: &TargetTable, name: &str) -> Result<String, RpcError> {
    table
        .targets()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .map(|t| t.name.clone())
        .ok_or_else(|| RpcError::invalid_params(format!("Target {name} is not found")))
}

/// `iscsi_set_options`: what maps onto rtgt's parameters changes the offers
/// new targets start with; pool sizes and other SPDK internals are kept
/// and reported only.
fn set_options(table: &mut TargetTable, params: Option<&Value>) -> Result<Value, RpcError> {
    const NUMERIC: &[(&str, Option<&str>, i64, i64)] = &[
        ("max_sessions", None, 1, 65535),
        (
            "max_connections_per_session",
            Some("MaxConnections"),
            1,
            65535,
        ),
        ("max_queue_depth", Some("MaxQueueCmd"), 1, 512),
        ("default_time2wait", Some("DefaultTime2Wait"), 0, 3600),
        ("default_time2retain", Some("DefaultTime2Retain"), 0, 3600),
        ("first_burst_length", Some("FirstBurstLength"), 512, 1 << 20),
        ("error_recovery_level", Some("ErrorRecoveryLevel"), 0, 2),
        (
            "max_r2t_per_connection",
            Some("MaxOutstandingR2T"),
            1,
            65535,
        ),
        ("max_large_datain_per_connection", None, 1, u32::MAX as i64),
        ("pdu_pool_size", None, 1, u32::MAX as i64),
        ("immediate_data_pool_size", None, 1, u32::MAX as i64),
        ("data_out_pool_size", None, 1, u32::MAX as i64),
        ("nop_timeout", None, 0, i32::MAX as i64),
        // SPDK allows up to 60; tgt's interval (which a saved
        // configuration carries) has no such bound.
        ("nop_in_interval", None, 0, 3600),
    ];
    let mut keys: Vec<&str> = NUMERIC.iter().map(|k| k.0).collect();
    keys.extend(AUTH_KEYS);
    keys.extend([
        "node_base",
        "immediate_data",
        "allow_duplicated_isid",
        "auth_file",
    ]);
    let p = Params::new(params, &keys)?;
    if p.opt_str("auth_file")?.is_some() {
        return Err(RpcError::invalid_params(
            "auth_file is not supported: use iscsi_create_auth_group",
        ));
    }
    // Validate everything, then change.
    let mut t = table.clone();
    if let Some(nb) = p.opt_str("node_base")? {
        if !crate::mgmt::command::valid_target_name(nb) {
            return Err(RpcError::invalid_params(format!("bad node_base {nb:?}")));
        }
        t.node_base = nb.to_string();
    }
    for (k, param, lo, hi) in NUMERIC {
        let Some(v) = p.opt_int(k, *lo, *hi)? else {
            continue;
        };
        match (param, *k) {
            (Some(name), _) => {
                let idx = key_index(name).expect("a session key");
                t.new_target_params
                    .set_text(idx, &v.to_string())
                    .map_err(|_| RpcError::invalid_params(format!("bad {k}")))?;
            }
            (None, "nop_in_interval") => t.default_nop_interval = v as i32,
            (None, _) => {
                t.spdk_extra_options.insert(k.to_string(), v as u64);
            }
        }
    }
    if let Some(timeout) = t.spdk_extra_options.get("nop_timeout").copied() {
        // tgt counts unanswered NOP-Ins; SPDK waits a time for the answer.
        if t.default_nop_interval > 0 {
            t.default_nop_count = (timeout as i32 / t.default_nop_interval).max(1);
        }
    }
    if let Some(b) = p.opt_bool("immediate_data")? {
        let idx = key_index("ImmediateData").expect("a session key");
        t.new_target_params
            .set_text(idx, if b { "Yes" } else { "No" })
            .map_err(|_| RpcError::invalid_params("bad immediate_data"))?;
    }
    if let Some(b) = p.opt_bool("allow_duplicated_isid")? {
        t.spdk_extra_options
            .insert("allow_duplicated_isid".into(), b as u64);
    }
    let a = auth(&p)?;
    if a != NodeAuth::default() || AUTH_KEYS.iter().any(|k| p.req(k).is_ok()) {
        if !a.valid() {
            return Err(RpcError::invalid_params(
                "Invalid combination of CHAP params",
            ));
        }
        // The group need not exist yet: SPDK saves auth groups after the
        // options (CHAP then finds no secret until it does).
        t.discovery_auth = a;
    }
    *table = t;
    Ok(Value::Bool(true))
}

impl RpcError {
    /// From a core error: SPDK's errno where it answers one, else -32602
    /// with the message.
    pub fn from_core(e: CoreError) -> Self {
        match e.errno {
            Some(n) => RpcError::errno(n.into(), &e.msg),
            None => RpcError::invalid_params(e.msg),
        }
    }
}
