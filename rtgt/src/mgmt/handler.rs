//! Executing one management request against the table, with tgt 1.0.85's
//! validation and error codes (`usr/mgmt.c`, `usr/target.c`,
//! `usr/iscsi/target.c`, `usr/spc.c`).
//!
//! Every request is validated completely before anything changes, so a
//! refused request leaves the table as it was (tgt applies `--params`
//! items one by one and may leave the first ones applied; we do not).

use std::net::{IpAddr, SocketAddr};

use super::command::{execute, listen_all, valid_target_name, Command, LunArgs};
use super::ipc::{TgtadmError, GLOBAL_TID};
use super::live::{Effect, Live};
use super::request::{c_atoi, c_strtoul_u32, c_strtoull, Mode, Op, Request, ACCOUNT_OUTGOING};
use super::stat::wants;
use super::table::{Account, LunSpec, SystemState, TargetTable, ISCSI_LISTEN_PORT};
use super::{json, show, stat};

type Res = Result<String, TgtadmError>;

/// Execute `req`. On success returns the text to send back (empty for
/// most changes); changes are committed to `table` and then handed to
/// `live` as [`Effect`]s.
pub fn handle(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    // Driver selection (tgt's mtask_execute): an empty name means the
    // first driver; a named driver must exist and be ready, except for
    // `--mode lld`.
    if !req.lld.is_empty() {
        let state = table
            .info
            .llds
            .iter()
            .find(|(n, _)| *n == req.lld)
            .map(|(_, s)| s.clone());
        match state {
            None => return Err(TgtadmError::NoDriver),
            Some(s) if s != "ready" && req.mode != Mode::Lld => {
                return Err(TgtadmError::NoDriver);
            }
            Some(_) => {}
        }
        if req.lld != "iscsi" && req.mode != Mode::Lld {
            return Err(TgtadmError::NoDriver);
        }
    }
    match req.mode {
        Mode::System => system(table, req, live),
        Mode::Target => target(table, req, live),
        Mode::Portal => portal(table, req, live),
        Mode::Device => device(table, req, live),
        Mode::Account => account(table, req, live),
        // tgt's session_mgmt: only stat is served for sessions.
        Mode::Session if req.op == Op::Stats => stat::stat(table, req, live),
        Mode::Session => Err(TgtadmError::InvalidRequest),
        Mode::Connection => connection(table, req, live),
        Mode::Lld => lld(table, req, live),
        Mode::Other(_) => Err(TgtadmError::InvalidRequest),
    }
}

fn tid_of(req: &Request) -> Option<u32> {
    if req.tid > 0 {
        Some(req.tid as u32)
    } else {
        None
    }
}

// ---------------------------------------------------------------- system

fn system(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    match req.op {
        Op::Show if wants(req, "json") => Ok(json::system(table)),
        Op::Show => Ok(show::system(table)),
        Op::Stats => stat::stat(table, req, live),
        Op::Update => {
            if let Some(v) = req.params.strip_prefix("debug=") {
                // tgt compares prefixes: "on..." / "off...".
                if v.starts_with("on") {
                    table.debug = true;
                } else if v.starts_with("off") {
                    table.debug = false;
                } else {
                    return Err(TgtadmError::InvalidRequest);
                }
                return Ok(String::new());
            }
            system_update(table, req, live)
        }
        Op::Delete => {
            if table.targets.is_empty() {
                live.apply(Effect::SystemDeleted);
                Ok(String::new())
            } else {
                Err(TgtadmError::InvalidRequest)
            }
        }
        _ => Err(TgtadmError::InvalidRequest),
    }
}

/// tgt's `isns_update`: iSNS settings and `State=ready|offline`.
fn system_update(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    let mut isns = table.isns.clone();
    let mut state = table.system_state;
    for item in req.items() {
        let Some((k, v)) = item.split_once('=') else {
            return Err(TgtadmError::InvalidRequest);
        };
        match k {
            "iSNS" => match v {
                "Off" => isns.enabled = false,
                // iSNS (RFC 4171) is not implemented.
                "On" => return Err(TgtadmError::UnsupportedOperation),
                _ => return Err(TgtadmError::InvalidRequest),
            },
            "iSNSServerIP" => isns.server_ip = v.chars().take(63).collect(),
            "iSNSServerPort" => {
                let (n, used) = c_strtoull(v, 10);
                if used == 0 || used != v.len() {
                    return Err(TgtadmError::InvalidRequest);
                }
                isns.server_port = n as i32;
            }
            "iSNSAccessControl" => isns.access_control = v == "On",
            "State" => {
                state = match v {
                    "ready" => SystemState::Ready,
                    "offline" => SystemState::Offline,
                    _ => return Err(TgtadmError::InvalidRequest),
                }
            }
            _ => return Err(TgtadmError::InvalidRequest),
        }
    }
    table.isns = isns;
    if state != table.system_state {
        table.system_state = state;
        live.apply(Effect::SystemStateChanged {
            ready: state == SystemState::Ready,
        });
    }
    Ok(String::new())
}

// ---------------------------------------------------------------- target

fn target(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    match req.op {
        Op::New => target_new(table, req, live),
        Op::Delete => {
            let tid = tid_of(req).ok_or(TgtadmError::NoTarget)?;
            run(
                table,
                live,
                Command::TargetDelete {
                    tid,
                    force: req.force,
                },
            )
        }
        Op::Bind | Op::Unbind => acl(table, req, live),
        Op::Update => target_update(table, req, live),
        Op::Show if wants(req, "json") => {
            let only = if req.tid < 0 {
                None
            } else {
                Some(
                    tid_of(req)
                        .and_then(|tid| table.target(tid))
                        .ok_or(TgtadmError::NoTarget)?,
                )
            };
            Ok(json::targets(table, only, live))
        }
        Op::Show => {
            if req.tid < 0 {
                Ok(show::targets(table, live))
            } else {
                let t = tid_of(req)
                    .and_then(|tid| table.target(tid))
                    .ok_or(TgtadmError::NoTarget)?;
                Ok(show::target_params(t))
            }
        }
        Op::Stats => stat::stat(table, req, live),
        _ => Err(TgtadmError::InvalidRequest),
    }
}

/// Run a core command; tgt answers with the error's code only.
fn run(table: &mut TargetTable, live: &mut dyn Live, cmd: Command) -> Res {
    execute(table, live, &cmd).map_err(|e| e.code)?;
    Ok(String::new())
}

fn target_new(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    let mut name = None;
    for item in req.params.split(',') {
        if let Some(("targetname", v)) = item.split_once('=') {
            name = Some(v);
        }
    }
    let name = name.ok_or(TgtadmError::InvalidRequest)?;
    if !valid_target_name(name) {
        return Err(TgtadmError::InvalidRequest);
    }
    let tid = tid_of(req).ok_or(TgtadmError::InvalidRequest)?;
    run(
        table,
        live,
        Command::TargetNew {
            tid,
            name: name.to_string(),
        },
    )
}

fn acl(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    let bind = req.op == Op::Bind;
    let tid = tid_of(req).ok_or(TgtadmError::NoTarget)?;
    if req.params.is_empty() {
        // A SCSI host binding (not used by iSCSI): tgt accepts it for an
        // existing target; there is nothing for us to bind.
        return match table.target(tid) {
            Some(_) if bind => Ok(String::new()),
            Some(_) => Err(TgtadmError::NoBinding),
            None => Err(TgtadmError::NoTarget),
        };
    }
    let address = req.find_value("initiator-address").map(str::to_string);
    let initiator = req.find_value("initiator-name").map(str::to_string);
    if address.is_none() && initiator.is_none() {
        return Err(TgtadmError::InvalidRequest);
    }
    run(
        table,
        live,
        Command::Acl {
            tid,
            bind,
            address,
            initiator,
        },
    )
}

fn target_update(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    let (name, value) = req
        .params
        .split_once('=')
        .ok_or(TgtadmError::UnsupportedOperation)?;
    let tid = tid_of(req).ok_or(TgtadmError::NoTarget)?;
    run(
        table,
        live,
        Command::TargetSet {
            tid,
            name: name.to_string(),
            value: value.to_string(),
        },
    )
}

// ---------------------------------------------------------------- portal

/// Parse tgt's portal list (`portal=ADDR[:PORT],...`, IPv6 in brackets;
/// `nop_interval=` / `nop_count=` set the defaults for new targets).
struct PortalArgs {
    addrs: Vec<SocketAddr>,
    nop_interval: Option<i32>,
    nop_count: Option<i32>,
}

fn parse_portals(s: &str) -> Result<PortalArgs, TgtadmError> {
    let mut out = Vec::new();
    let (mut ni, mut nc) = (None, None);
    for item in s.split(',').filter(|i| !i.is_empty()) {
        if let Some(a) = item.strip_prefix("portal=") {
            let (host, port) = if let Some(rest) = a.strip_prefix('[') {
                let (h, after) = rest.split_once(']').ok_or(TgtadmError::InvalidRequest)?;
                (h, after.strip_prefix(':'))
            } else {
                match a.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (a, None),
                }
            };
            let port = match port {
                Some(p) => {
                    let v = c_atoi(p);
                    u16::try_from(v).map_err(|_| TgtadmError::InvalidRequest)?
                }
                None => ISCSI_LISTEN_PORT,
            };
            let ip: IpAddr = host.parse().map_err(|_| TgtadmError::InvalidRequest)?;
            out.push(SocketAddr::new(ip, port));
        } else if let Some(v) = item.strip_prefix("nop_interval=") {
            ni = Some(c_atoi(v));
        } else if let Some(v) = item.strip_prefix("nop_count=") {
            nc = Some(c_atoi(v));
        }
    }
    Ok(PortalArgs {
        addrs: out,
        nop_interval: ni,
        nop_count: nc,
    })
}

fn portal(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    match req.op {
        Op::Show if wants(req, "json") => Ok(json::portals(table)),
        Op::Show => Ok(show::portals(table)),
        Op::New | Op::Delete => {
            let at = req
                .params
                .find("portal=")
                .ok_or(TgtadmError::InvalidRequest)?;
            let PortalArgs {
                addrs,
                nop_interval: ni,
                nop_count: nc,
            } = parse_portals(&req.params[at..])?;
            if req.op == Op::New {
                for (i, a) in addrs.iter().enumerate() {
                    if table.portals.iter().any(|p| p.addr == *a) || addrs[..i].contains(a) {
                        return Err(TgtadmError::InvalidRequest);
                    }
                }
                // All of them or none (a later one that cannot be bound
                // closes those before it).
                let tpgt = table.tpgt;
                listen_all(table, live, tpgt, &addrs).map_err(|e| e.code)?;
            } else {
                for a in &addrs {
                    if !table.portals.iter().any(|p| p.addr == *a) {
                        return Err(TgtadmError::InvalidRequest);
                    }
                }
                for a in &addrs {
                    table.portals.retain(|p| p.addr != *a);
                    live.apply(Effect::PortalRemoved(*a));
                }
            }
            if let Some(v) = ni {
                table.default_nop_interval = v;
            }
            if let Some(v) = nc {
                table.default_nop_count = v;
            }
            Ok(String::new())
        }
        _ => Err(TgtadmError::InvalidRequest),
    }
}

// ---------------------------------------------------------------- logical units

fn device(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    match req.op {
        Op::New => lun_new(table, req, live),
        Op::Delete => {
            // tgt refuses LUN 0 before anything else.
            if req.lun == 0 {
                return Err(TgtadmError::InvalidRequest);
            }
            let tid = tid_of(req).ok_or(TgtadmError::NoLun)?;
            run(table, live, Command::LunDelete { tid, lun: req.lun })
        }
        Op::Update => lun_update(table, req, live),
        Op::Stats => stat::stat(table, req, live),
        _ => Err(TgtadmError::UnsupportedOperation),
    }
}

fn lun_new(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    let mut args = LunArgs {
        device_type: req.device_type,
        ..LunArgs::default()
    };
    for item in req.items() {
        let own = |v: &str| Some(v.to_string());
        match item.split_once('=') {
            Some(("path", v)) => args.path = own(v),
            Some(("bstype", v)) => args.bstype = own(v),
            Some(("bsopts", v)) => args.bsopts = own(v),
            Some(("bsoflags", v)) => args.bsoflags = own(v),
            Some(("blocksize", v)) => args.block_size = Some(c_strtoul_u32(v)),
            _ => {}
        }
    }
    let tid = tid_of(req).ok_or(TgtadmError::NoTarget)?;
    run(
        table,
        live,
        Command::LunNew {
            tid,
            lun: req.lun,
            args,
        },
    )
}

/// A unit on a medium with an identity of its own (an RBD image) gets its
/// SCSI identity from it, so every gateway serving the image reports the
/// same LU (SPC-4 §7.8.6: VPD 83's T10 vendor and NAA designators, VPD 80's
/// serial), whatever its tid and lun there; multipath initiators then see
/// one disk. Only what is still tgt's tid/lun default is replaced:
/// `--params scsi_id=`, `scsi_sn=` set by hand win. The values are FNV-1a
/// hashes of the identity, stable across versions and machines.
pub fn medium_identity(spec: &mut LunSpec, tid: u32, identity: &str) {
    let lun = spec.lun;
    let h = |salt: &str| {
        let mut x: u64 = 0xcbf2_9ce4_8422_2325;
        for b in salt.bytes().chain([0]).chain(identity.bytes()) {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0000_0100_0000_01b3);
        }
        x
    };
    if spec.scsi_id == format!("IET     {tid:04x}{lun:04x}") {
        // "IET" as tgt's vendor field, then 16 hex digits.
        spec.scsi_id = format!("IET     {:016x}", h("scsi_id"));
    }
    if spec.scsi_sn == format!("beaf{tid}{lun}") {
        spec.scsi_sn = format!("{:016x}", h("scsi_sn"));
    }
    if spec.numeric_id == ((tid as u64) << 32) | lun {
        spec.numeric_id = h("naa") & 0x0fff_ffff_ffff_ffff;
    }
}

fn lun_update(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    let tid = tid_of(req).ok_or(TgtadmError::NoTarget)?;
    let params = req
        .params
        .strip_prefix("targetOps")
        .map(|p| p.get(1..).unwrap_or(""))
        .unwrap_or(&req.params);
    let mut items = Vec::new();
    for item in params.split(',').filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or(TgtadmError::InvalidRequest)?;
        items.push((k.to_string(), v.to_string()));
    }
    run(
        table,
        live,
        Command::LunSet {
            tid,
            lun: req.lun,
            items,
        },
    )
}

// ---------------------------------------------------------------- accounts

fn account(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    match req.op {
        Op::Show if wants(req, "json") => Ok(json::accounts(table)),
        Op::Show => Ok(show::accounts(table)),
        Op::New => {
            let rest = req.find_rest("user").ok_or(TgtadmError::InvalidRequest)?;
            let (user, pw) = rest.split_once(',').ok_or(TgtadmError::InvalidRequest)?;
            let pw = pw
                .strip_prefix("password=")
                .ok_or(TgtadmError::InvalidRequest)?;
            if table.account_by_user(user).is_some() {
                return Err(TgtadmError::UserExist);
            }
            let mut aid = 1u32;
            while table.account_by_id(aid).is_some() {
                aid = aid.checked_add(1).ok_or(TgtadmError::TooManyUser)?;
            }
            if aid >= i32::MAX as u32 {
                return Err(TgtadmError::TooManyUser);
            }
            table.accounts.insert(
                0,
                Account {
                    aid,
                    user: user.to_string(),
                    password: pw.to_string(),
                },
            );
            live.apply(Effect::AccountsChanged);
            Ok(String::new())
        }
        Op::Delete => {
            let user = req.find_rest("user").ok_or(TgtadmError::InvalidRequest)?;
            let aid = table.account_by_user(user).ok_or(TgtadmError::NoUser)?.aid;
            for t in table.targets.values_mut() {
                t.incoming.retain(|&a| a != aid);
                if t.outgoing == Some(aid) {
                    t.outgoing = None;
                }
            }
            table.global_incoming.retain(|&a| a != aid);
            if table.global_outgoing == Some(aid) {
                table.global_outgoing = None;
            }
            table.accounts.retain(|a| a.aid != aid);
            live.apply(Effect::AccountsChanged);
            Ok(String::new())
        }
        Op::Bind | Op::Unbind => {
            let user = req.find_rest("user").ok_or(TgtadmError::InvalidRequest)?;
            let global = req.tid == GLOBAL_TID;
            if !global && !tid_of(req).is_some_and(|t| table.targets.contains_key(&t)) {
                return Err(TgtadmError::NoTarget);
            }
            let aid = table.account_by_user(user).ok_or(TgtadmError::NoUser)?.aid;
            let (incoming, outgoing) = if global {
                (&mut table.global_incoming, &mut table.global_outgoing)
            } else {
                let t = table
                    .targets
                    .get_mut(&(req.tid as u32))
                    .expect("checked above");
                (&mut t.incoming, &mut t.outgoing)
            };
            let out = req.ac_dir == ACCOUNT_OUTGOING;
            match (req.op == Op::Bind, out) {
                (true, false) => {
                    if incoming.contains(&aid) {
                        return Err(TgtadmError::UserExist);
                    }
                    incoming.push(aid);
                }
                (true, true) => {
                    if outgoing.is_some() {
                        return Err(TgtadmError::OutaccountExist);
                    }
                    *outgoing = Some(aid);
                }
                (false, false) => {
                    if !incoming.contains(&aid) {
                        return Err(TgtadmError::NoUser);
                    }
                    incoming.retain(|&a| a != aid);
                }
                (false, true) => {
                    if *outgoing != Some(aid) {
                        return Err(TgtadmError::NoUser);
                    }
                    *outgoing = None;
                }
            }
            live.apply(Effect::AccountsChanged);
            Ok(String::new())
        }
        _ => Err(TgtadmError::UnsupportedOperation),
    }
}

// ---------------------------------------------------------------- connections, llds

fn connection(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    // tgt finds the session of a connection stat by its id alone.
    if req.op == Op::Stats {
        return stat::stat(table, req, live);
    }
    let tid = tid_of(req)
        .filter(|t| table.targets.contains_key(t))
        .ok_or(TgtadmError::NoTarget)?;
    match req.op {
        Op::Show if wants(req, "json") => Ok(json::connections(&live.sessions(tid))),
        Op::Show => Ok(show::connections(&live.sessions(tid))),
        Op::Delete => {
            let sessions = live.sessions(tid);
            let s = sessions
                .iter()
                .find(|s| s.nexus_id == req.sid)
                .ok_or(TgtadmError::NoSession)?;
            if !s.connections.iter().any(|c| c.cid == req.cid) {
                return Err(TgtadmError::NoConnection);
            }
            live.apply(Effect::ConnectionClose {
                tid,
                sid: req.sid,
                cid: req.cid,
            });
            Ok(String::new())
        }
        _ => Err(TgtadmError::InvalidRequest),
    }
}

/// Set a driver's state; true when it changed.
fn set_lld_state(table: &mut TargetTable, name: &str, state: &str) -> bool {
    match table.info.llds.iter_mut().find(|(n, _)| n == name) {
        Some((_, s)) if s != state => {
            *s = state.to_string();
            true
        }
        _ => false,
    }
}

fn lld(table: &mut TargetTable, req: &Request, live: &mut dyn Live) -> Res {
    match req.op {
        Op::Show if wants(req, "json") => Ok(json::llds(table)),
        Op::Show => Ok(show::llds(table)),
        Op::Start => {
            let name = if req.lld.is_empty() {
                "iscsi"
            } else {
                &req.lld
            };
            match name {
                "iscsi" => {
                    // tgt's lld_mgmt: (re)initialise a driver that is not
                    // running; its portals listen again.
                    if set_lld_state(table, name, "ready") {
                        live.apply(Effect::LldStarted);
                    }
                    Ok(String::new())
                }
                _ => Err(TgtadmError::UnknownErr),
            }
        }
        Op::Stop => {
            let name = if req.lld.is_empty() {
                "iscsi"
            } else {
                &req.lld
            };
            if name == "iscsi" && !table.targets.is_empty() {
                Err(TgtadmError::DriverActive)
            } else {
                // A driver with no targets exits: it stops listening and
                // refuses requests until started again.
                if name == "iscsi" && set_lld_state(table, name, "stopped") {
                    live.apply(Effect::LldStopped);
                }
                Ok(String::new())
            }
        }
        _ => Err(TgtadmError::InvalidRequest),
    }
}
