//! The typed management core: every change to the configuration, from
//! tgt's IPC (stock `tgtadm`, `tgt-admin`) or from JSON-RPC (SPDK's
//! `rpc.py`), is one [`Command`], validated completely here before the
//! table changes, then handed to the running daemon as [`Effect`]s. A
//! refused command changes nothing. Adapters only translate: tgt's
//! parameter strings (`handler`) and SPDK's JSON objects (`rpc`).

use std::net::SocketAddr;

use super::groups::{
    bdev_name_valid, initiator_rule_valid, netmask_valid, AuthGroup, Bdev, BdevKind, ChapSecret,
    InitiatorGroup, NodeAuth, PgIgMap, PortalGroupAttrs, MAX_GROUP_ENTRIES, MAX_SECRETS,
};
use super::ipc::TgtadmError;
use super::live::{Effect, Live};
use super::params::key_index;
use super::table::{BackingStoreInfo, DeviceType, LunSpec, OpenFlags, Portal, Target, TargetTable};

/// A refused command: tgt's error code (what tgtadm prints) and a message
/// saying what was wrong (what JSON-RPC answers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CoreError {
    /// tgt's code for it.
    pub code: TgtadmError,
    /// What was wrong, for people.
    pub msg: String,
    /// The errno SPDK answers for it, where SPDK answers one (bdev
    /// methods: `-ENOENT`, `-EEXIST`, `-ENODEV`).
    pub errno: Option<i32>,
}

impl CoreError {
    /// An error with a message.
    pub fn new(code: TgtadmError, msg: impl Into<String>) -> Self {
        CoreError {
            code,
            msg: msg.into(),
            errno: None,
        }
    }

    /// The same, with SPDK's errno.
    fn with_errno(mut self, errno: i32) -> Self {
        self.errno = Some(errno);
        self
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::new(TgtadmError::InvalidRequest, msg)
    }
}

impl From<TgtadmError> for CoreError {
    fn from(code: TgtadmError) -> Self {
        CoreError::new(code, code.to_string())
    }
}

/// Result of a command.
pub type CoreResult<T = ()> = Result<T, CoreError>;

/// How a new logical unit is backed (tgtadm's `--bstype`, `--backing-store`,
/// `--bsopts`, `--bsoflags`, `--blocksize`, `--device-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunArgs {
    /// Backing store type (`rdwr` when `None`).
    pub bstype: Option<String>,
    /// Backing file; `None`: no medium (a removable unit, offline).
    pub path: Option<String>,
    /// Store options.
    pub bsopts: Option<String>,
    /// Open flags (`sync`, `direct`).
    pub bsoflags: Option<String>,
    /// Logical block size (tgt ignores one that is not a power of two
    /// above 1).
    pub block_size: Option<u32>,
    /// SCSI peripheral device type code.
    pub device_type: u32,
    /// Read-only.
    pub readonly: bool,
    /// The bdev it comes from.
    pub bdev: Option<String>,
}

impl Default for LunArgs {
    fn default() -> Self {
        LunArgs {
            bstype: None,
            path: None,
            bsopts: None,
            bsoflags: None,
            block_size: None,
            device_type: DeviceType::Disk.code(),
            readonly: false,
            bdev: None,
        }
    }
}

/// A new target node (SPDK's `iscsi_create_target_node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Full iSCSI name (node_base already applied).
    pub name: String,
    /// TargetAlias.
    pub alias: Option<String>,
    /// (bdev name, LUN) pairs.
    pub luns: Vec<(String, u64)>,
    /// Portal group / initiator group pairs.
    pub maps: Vec<PgIgMap>,
    /// Most commands queued per session (MaxQueueCmd).
    pub queue_depth: u32,
    /// CHAP settings.
    pub auth: NodeAuth,
    /// Require header digests.
    pub header_digest: bool,
    /// Require data digests.
    pub data_digest: bool,
}

/// One configuration change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// tgtadm `--mode target --op new`.
    TargetNew {
        /// Target id.
        tid: u32,
        /// iSCSI name.
        name: String,
    },
    /// Delete a target; with `force`, its sessions are closed.
    TargetDelete {
        /// Target id.
        tid: u32,
        /// Close sessions.
        force: bool,
    },
    /// Add a logical unit.
    LunNew {
        /// Target id.
        tid: u32,
        /// LUN.
        lun: u64,
        /// Backing.
        args: LunArgs,
    },
    /// tgtadm's target update: one attribute (see [`super::attrs`]).
    TargetSet {
        /// Target id.
        tid: u32,
        /// Attribute.
        name: String,
        /// Value.
        value: String,
    },
    /// tgtadm's logical unit update: attributes, all or none.
    LunSet {
        /// Target id.
        tid: u32,
        /// LUN.
        lun: u64,
        /// (attribute, value), in order.
        items: Vec<(String, String)>,
    },
    /// Remove a logical unit (not LUN 0).
    LunDelete {
        /// Target id.
        tid: u32,
        /// LUN.
        lun: u64,
    },
    /// tgt's ACL rules: bind or unbind an address rule, a name, or both.
    Acl {
        /// Target id.
        tid: u32,
        /// Bind (else unbind).
        bind: bool,
        /// Address rule.
        address: Option<String>,
        /// Initiator name.
        initiator: Option<String>,
    },
    /// A portal group with its portals.
    PortalGroupCreate {
        /// Tag (TPGT).
        tag: u16,
        /// Portals.
        portals: Vec<SocketAddr>,
        /// Not listed in SendTargets.
        private: bool,
        /// Listen only after [`Command::PortalGroupStart`].
        wait: bool,
    },
    /// Listen on a waiting portal group's portals.
    PortalGroupStart {
        /// Tag.
        tag: u16,
    },
    /// Delete a portal group and close its portals.
    PortalGroupDelete {
        /// Tag.
        tag: u16,
    },
    /// Discovery CHAP through one portal group.
    PortalGroupSetAuth {
        /// Tag.
        tag: u16,
        /// Settings.
        auth: NodeAuth,
    },
    /// A new initiator group.
    InitiatorGroupCreate {
        /// Tag.
        tag: u32,
        /// Names.
        group: InitiatorGroup,
    },
    /// Add to or remove from an initiator group.
    InitiatorGroupEdit {
        /// Tag.
        tag: u32,
        /// Add (else remove).
        add: bool,
        /// Names and netmasks.
        change: InitiatorGroup,
    },
    /// Delete an initiator group.
    InitiatorGroupDelete {
        /// Tag.
        tag: u32,
    },
    /// A new auth group.
    AuthGroupCreate {
        /// Tag.
        tag: u32,
        /// Secrets.
        secrets: Vec<ChapSecret>,
    },
    /// Delete an auth group.
    AuthGroupDelete {
        /// Tag.
        tag: u32,
    },
    /// Add a secret to an auth group.
    AuthGroupAddSecret {
        /// Tag.
        tag: u32,
        /// The secret.
        secret: ChapSecret,
    },
    /// Remove a user's secret from an auth group.
    AuthGroupRemoveSecret {
        /// Tag.
        tag: u32,
        /// User.
        user: String,
    },
    /// CHAP for discovery sessions.
    DiscoveryAuth(NodeAuth),
    /// A named backing store.
    BdevCreate(Bdev),
    /// Delete a bdev no LUN uses.
    BdevDelete {
        /// Name.
        name: String,
    },
    /// A target node with its LUNs and maps.
    TargetNodeCreate(NodeSpec),
    /// Add a LUN from a bdev (`None`: the lowest free LUN).
    TargetNodeAddLun {
        /// Target name.
        name: String,
        /// Bdev.
        bdev: String,
        /// LUN.
        lun: Option<u64>,
    },
    /// Add or remove portal group / initiator group pairs.
    TargetNodeMaps {
        /// Target name.
        name: String,
        /// Add (else remove).
        add: bool,
        /// Pairs.
        maps: Vec<PgIgMap>,
    },
    /// CHAP settings of a target node.
    TargetNodeSetAuth {
        /// Target name.
        name: String,
        /// Settings.
        auth: NodeAuth,
    },
    /// Redirect logins (RFC 7143 §11.13.5); no host clears it.
    TargetNodeSetRedirect {
        /// Target name.
        name: String,
        /// The (public) portal group the redirection is for.
        pg_tag: u16,
        /// Where to.
        host: Option<String>,
        /// Port there.
        port: Option<u16>,
    },
    /// Close the target's connections (those through `pg_tag`, or all).
    TargetNodeRequestLogout {
        /// Target name.
        name: String,
        /// Portal group.
        pg_tag: Option<u16>,
    },
    /// Delete a target node and its sessions.
    TargetNodeDelete {
        /// Target name.
        name: String,
    },
    /// Histograms on or off.
    TargetNodeHistogram {
        /// Target name.
        name: String,
        /// On.
        enable: bool,
    },
}

/// Largest queue depth a target node may ask for (tgt's MaxQueueCmd
/// limit).
pub const MAX_QUEUE_DEPTH: u32 = 512;
/// Most portal groups one target node is mapped to (SPDK's limit).
pub const MAX_NODE_PORTAL_GROUPS: usize = 4;
/// Most LUNs one target node may be created with in one command.
pub const MAX_NODE_LUNS: usize = 256;

/// Execute `cmd`: validate everything, then change `table` and hand the
/// changes to `live`. A store that must be opened off this thread makes
/// the command fail with nothing changed and leaves a
/// [`Deferred`](super::Deferred) in `live`; the caller runs it and
/// executes the command again.
pub fn execute(table: &mut TargetTable, live: &mut dyn Live, cmd: &Command) -> CoreResult {
    match cmd {
        Command::TargetNew { tid, name } => target_new(table, live, *tid, name),
        Command::TargetDelete { tid, force } => target_delete(table, live, *tid, *force),
        Command::LunNew { tid, lun, args } => {
            let spec = lun_spec(table, live, *tid, *lun, args)?;
            commit_lun(table, live, *tid, spec);
            Ok(())
        }
        Command::LunDelete { tid, lun } => lun_delete(table, live, *tid, *lun),
        Command::TargetSet { tid, name, value } => {
            super::attrs::target_set(table, live, *tid, name, value)
        }
        Command::LunSet { tid, lun, items } => {
            super::attrs::lun_set(table, live, *tid, *lun, items)
        }
        Command::Acl {
            tid,
            bind,
            address,
            initiator,
        } => acl(
            table,
            live,
            *tid,
            *bind,
            address.as_deref(),
            initiator.as_deref(),
        ),
        Command::PortalGroupCreate {
            tag,
            portals,
            private,
            wait,
        } => pg_create(table, live, *tag, portals, *private, *wait),
        Command::PortalGroupStart { tag } => pg_start(table, live, *tag),
        Command::PortalGroupDelete { tag } => pg_delete(table, live, *tag),
        Command::PortalGroupSetAuth { tag, auth } => {
            check_auth(auth)?;
            let pg = table
                .portal_groups
                .get_mut(tag)
                .ok_or_else(|| not_found("portal group", tag))?;
            pg.auth = *auth;
            live.apply(Effect::AccountsChanged);
            Ok(())
        }
        Command::InitiatorGroupCreate { tag, group } => {
            if *tag == 0 {
                return Err(CoreError::invalid("initiator group tag must be above 0"));
            }
            if group.initiators.is_empty() || group.netmasks.is_empty() {
                return Err(CoreError::invalid(
                    "an initiator group needs initiators and netmasks",
                ));
            }
            if table.initiator_groups.contains_key(tag) {
                return Err(exists("initiator group", tag));
            }
            let mut g = InitiatorGroup::default();
            ig_add(&mut g, group)?;
            table.initiator_groups.insert(*tag, g);
            Ok(())
        }
        Command::InitiatorGroupEdit { tag, add, change } => {
            let g = table
                .initiator_groups
                .get(tag)
                .ok_or_else(|| not_found("initiator group", tag))?;
            let mut g = g.clone();
            if *add {
                ig_add(&mut g, change)?;
            } else {
                ig_remove(&mut g, change)?;
            }
            table.initiator_groups.insert(*tag, g);
            acl_changed_for_ig(table, live, *tag);
            Ok(())
        }
        Command::InitiatorGroupDelete { tag } => {
            if !table.initiator_groups.contains_key(tag) {
                return Err(not_found("initiator group", tag));
            }
            // As SPDK: the group leaves every target's maps.
            acl_changed_for_ig(table, live, *tag);
            for t in table.targets.values_mut() {
                t.pg_ig_maps.retain(|m| m.ig != *tag);
            }
            table.initiator_groups.remove(tag);
            Ok(())
        }
        Command::AuthGroupCreate { tag, secrets } => {
            if *tag == 0 {
                return Err(CoreError::invalid("auth group tag must be above 0"));
            }
            if table.auth_groups.contains_key(tag) {
                return Err(exists("auth group", tag));
            }
            let mut g = AuthGroup::default();
            for s in secrets {
                add_secret(&mut g, s)?;
            }
            table.auth_groups.insert(*tag, g);
            Ok(())
        }
        Command::AuthGroupDelete { tag } => {
            if !table.auth_groups.contains_key(tag) {
                return Err(not_found("auth group", tag));
            }
            // As SPDK, targets may keep naming it: CHAP they require then
            // finds no secret from it.
            live.apply(Effect::AccountsChanged);
            table.auth_groups.remove(tag);
            Ok(())
        }
        Command::AuthGroupAddSecret { tag, secret } => {
            let g = table
                .auth_groups
                .get_mut(tag)
                .ok_or_else(|| not_found("auth group", tag))?;
            add_secret(g, secret)?;
            live.apply(Effect::AccountsChanged);
            Ok(())
        }
        Command::AuthGroupRemoveSecret { tag, user } => {
            let g = table
                .auth_groups
                .get_mut(tag)
                .ok_or_else(|| not_found("auth group", tag))?;
            let before = g.secrets.len();
            g.secrets.retain(|s| s.user != *user);
            if g.secrets.len() == before {
                return Err(CoreError::new(
                    TgtadmError::NoUser,
                    format!("no secret for user {user} in auth group {tag}"),
                ));
            }
            live.apply(Effect::AccountsChanged);
            Ok(())
        }
        Command::DiscoveryAuth(auth) => {
            check_auth(auth)?;
            table.discovery_auth = *auth;
            live.apply(Effect::AccountsChanged);
            Ok(())
        }
        Command::BdevCreate(b) => bdev_create(table, live, b),
        Command::BdevDelete { name } => {
            if !table.bdevs.contains_key(name) {
                return Err(
                    CoreError::invalid(format!("bdev {name} not found")).with_errno(-libc::ENODEV)
                );
            }
            for t in table.targets() {
                if let Some(l) = t.luns.values().find(|l| l.bdev.as_deref() == Some(name)) {
                    return Err(CoreError::new(
                        TgtadmError::LunActive,
                        format!("bdev {name} is LUN {} of {}", l.lun, t.name),
                    ));
                }
            }
            table.bdevs.remove(name);
            Ok(())
        }
        Command::TargetNodeCreate(spec) => node_create(table, live, spec),
        Command::TargetNodeAddLun { name, bdev, lun } => {
            let t = node(table, name)?;
            let tid = t.tid;
            let lun = match lun {
                Some(l) => *l,
                None => (0..).find(|l| !t.luns.contains_key(l)).unwrap_or(0),
            };
            let spec = bdev_lun(table, live, tid, lun, bdev)?;
            if spec.lun == 0 {
                // The disk takes the controller's place.
                live.apply(Effect::LunDeleted { tid, lun: 0 });
            }
            commit_lun(table, live, tid, spec);
            Ok(())
        }
        Command::TargetNodeMaps { name, add, maps } => {
            let t = node(table, name)?;
            let tid = t.tid;
            let mut now = t.pg_ig_maps.clone();
            for m in maps {
                let has = now.contains(m);
                if *add {
                    check_map(table, m)?;
                    if has {
                        return Err(CoreError::invalid(format!(
                            "{name} already maps portal group {} to initiator group {}",
                            m.pg, m.ig
                        )));
                    }
                    now.push(*m);
                } else if !has {
                    return Err(CoreError::new(
                        TgtadmError::AclNoexist,
                        format!(
                            "{name} does not map portal group {} to initiator group {}",
                            m.pg, m.ig
                        ),
                    ));
                } else {
                    now.retain(|x| x != m);
                }
            }
            let mut pgs: Vec<u16> = now.iter().map(|m| m.pg).collect();
            pgs.sort_unstable();
            pgs.dedup();
            if pgs.len() > MAX_NODE_PORTAL_GROUPS {
                return Err(CoreError::invalid(format!(
                    "a target node is in at most {MAX_NODE_PORTAL_GROUPS} portal groups"
                )));
            }
            table.targets.get_mut(&tid).expect("found above").pg_ig_maps = now;
            live.apply(Effect::AclChanged { tid });
            Ok(())
        }
        Command::TargetNodeSetAuth { name, auth } => {
            check_auth(auth)?;
            let tid = node(table, name)?.tid;
            table.targets.get_mut(&tid).expect("found above").auth = *auth;
            live.apply(Effect::AccountsChanged);
            Ok(())
        }
        Command::TargetNodeSetRedirect {
            name,
            pg_tag,
            host,
            port,
        } => {
            let t = node(table, name)?;
            let tid = t.tid;
            if !t.pg_ig_maps.iter().any(|m| m.pg == *pg_tag) {
                return Err(CoreError::invalid(format!(
                    "{name} is not mapped to portal group {pg_tag}"
                )));
            }
            if table.portal_groups.get(pg_tag).is_some_and(|p| p.private) {
                return Err(CoreError::invalid(format!(
                    "portal group {pg_tag} is private"
                )));
            }
            let r = match host {
                Some(h) => {
                    let Ok(ip) = h.parse::<std::net::IpAddr>() else {
                        return Err(CoreError::invalid(format!("bad redirect host {h}")));
                    };
                    let to = SocketAddr::new(ip, port.unwrap_or(super::table::ISCSI_LISTEN_PORT));
                    if table
                        .portals
                        .iter()
                        .any(|p| p.tpgt == *pg_tag && p.addr == to)
                    {
                        return Err(CoreError::invalid(format!(
                            "{to} is a portal of group {pg_tag} itself"
                        )));
                    }
                    super::table::Redirect {
                        addr: h.clone(),
                        port: port.unwrap_or(super::table::ISCSI_LISTEN_PORT).to_string(),
                        temporary: Some(true),
                        callback: None,
                    }
                }
                None if port.is_some() => {
                    return Err(CoreError::invalid("a redirect port needs a host"))
                }
                None => Default::default(),
            };
            let t = table.targets.get_mut(&tid).expect("found above");
            t.redirect = r;
            // Only logins through that portal group are redirected (its
            // destination may be a private group the target is mapped to).
            t.redirect_pg = host.as_ref().map(|_| *pg_tag);
            live.apply(Effect::TargetParamsChanged { tid });
            Ok(())
        }
        Command::TargetNodeRequestLogout { name, pg_tag } => {
            let tid = node(table, name)?.tid;
            if let Some(pg) = pg_tag {
                if !pg_exists(table, *pg) {
                    return Err(not_found("portal group", pg));
                }
            }
            // As SPDK: each connection is asked to log out (AsyncEvent 1)
            // and closed if it has not within LOGOUT_WAIT. Sessions do not
            // record the portal group they came through: with a group
            // named, every connection of the target is asked.
            for s in live.sessions(tid) {
                for c in &s.connections {
                    live.apply(Effect::RequestLogout {
                        tid,
                        sid: s.nexus_id,
                        cid: c.cid,
                    });
                }
            }
            Ok(())
        }
        Command::TargetNodeDelete { name } => {
            let tid = node(table, name)?.tid;
            target_delete(table, live, tid, true)
        }
        Command::TargetNodeHistogram { name, enable } => {
            let tid = node(table, name)?.tid;
            table.targets.get_mut(&tid).expect("found above").histogram = *enable;
            live.apply(Effect::HistogramChanged {
                tid,
                enable: *enable,
            });
            Ok(())
        }
    }
}

fn not_found(what: &str, tag: &impl std::fmt::Display) -> CoreError {
    CoreError::invalid(format!("{what} {tag} not found"))
}

fn exists(what: &str, tag: &impl std::fmt::Display) -> CoreError {
    CoreError::invalid(format!("{what} {tag} already exists"))
}

fn node<'a>(table: &'a TargetTable, name: &str) -> CoreResult<&'a Target> {
    table
        .target_by_name(name)
        .ok_or_else(|| CoreError::new(TgtadmError::NoTarget, format!("target {name} not found")))
}

/// Characters tgt accepts in a target name.
pub fn valid_target_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 223
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b':' || c == b'.' || c == b'-')
}

fn target_new(table: &mut TargetTable, live: &mut dyn Live, tid: u32, name: &str) -> CoreResult {
    if !valid_target_name(name) {
        return Err(CoreError::invalid(format!("bad target name {name:?}")));
    }
    if tid == 0 {
        return Err(CoreError::invalid("target id must be above 0"));
    }
    if table.targets.contains_key(&tid) || table.target_by_name(name).is_some() {
        return Err(CoreError::new(
            TgtadmError::TargetExist,
            format!("target {name} (tid {tid}) already exists"),
        ));
    }
    let seq = table.alloc_seq();
    let t = Target::new(
        tid,
        name,
        seq,
        (table.default_nop_interval, table.default_nop_count),
    );
    let mut t = t;
    t.params = table.new_target_params.clone();
    let lun0 = t.luns[&0].clone();
    table.targets.insert(tid, t);
    live.apply(Effect::TargetCreated {
        tid,
        name: name.to_string(),
    });
    live.apply(Effect::LunAdded { tid, spec: lun0 });
    Ok(())
}

fn target_delete(
    table: &mut TargetTable,
    live: &mut dyn Live,
    tid: u32,
    force: bool,
) -> CoreResult {
    let t = table
        .targets
        .get(&tid)
        .ok_or_else(|| CoreError::from(TgtadmError::NoTarget))?;
    if !force && !live.sessions(tid).is_empty() {
        return Err(TgtadmError::TargetActive.into());
    }
    if t.luns.keys().any(|&l| live.lun_busy(tid, l)) {
        return Err(TgtadmError::LunActive.into());
    }
    table.targets.remove(&tid);
    live.apply(Effect::TargetDeleted { tid, force });
    Ok(())
}

fn lun_delete(table: &mut TargetTable, live: &mut dyn Live, tid: u32, lun: u64) -> CoreResult {
    // tgt refuses LUN 0 before anything else.
    if lun == 0 {
        return Err(CoreError::invalid("LUN 0 cannot be deleted"));
    }
    let t = table
        .targets
        .get_mut(&tid)
        .ok_or_else(|| CoreError::from(TgtadmError::NoLun))?;
    if !t.luns.contains_key(&lun) {
        return Err(TgtadmError::NoLun.into());
    }
    if live.lun_busy(tid, lun) {
        return Err(TgtadmError::LunActive.into());
    }
    t.luns.remove(&lun);
    live.apply(Effect::LunDeleted { tid, lun });
    Ok(())
}

fn acl(
    table: &mut TargetTable,
    live: &mut dyn Live,
    tid: u32,
    bind: bool,
    addr: Option<&str>,
    name: Option<&str>,
) -> CoreResult {
    if addr.is_none() && name.is_none() {
        return Err(CoreError::invalid("no address or initiator name"));
    }
    let t = table
        .targets
        .get_mut(&tid)
        .ok_or_else(|| CoreError::from(TgtadmError::NoTarget))?;
    // Validate both before changing either.
    for (rule, list) in [(addr, &t.acl_addresses), (name, &t.acl_initiators)] {
        if let Some(a) = rule {
            let has = list.iter().any(|x| x == a);
            if bind && has {
                return Err(TgtadmError::AclExist.into());
            }
            if !bind && !has {
                return Err(TgtadmError::AclNoexist.into());
            }
        }
    }
    for (rule, list) in [(addr, &mut t.acl_addresses), (name, &mut t.acl_initiators)] {
        if let Some(a) = rule {
            if bind {
                list.push(a.to_string());
            } else {
                list.retain(|x| x != a);
            }
        }
    }
    live.apply(Effect::AclChanged { tid });
    Ok(())
}

/// Size of the `null` backing store's medium (tgt's `NULL_BS_DEV_SIZE`).
pub const NULL_BS_SIZE: u64 = 1 << 40;

fn backing_store<'a>(table: &'a TargetTable, bstype: &str) -> CoreResult<&'a BackingStoreInfo> {
    table
        .info
        .backing_stores
        .iter()
        .find(|b| b.name == bstype)
        .ok_or_else(|| CoreError::invalid(format!("unknown backing store type {bstype}")))
}

/// Build (and open the store of) a new unit, changing nothing.
fn lun_spec(
    table: &TargetTable,
    live: &mut dyn Live,
    tid: u32,
    lun: u64,
    args: &LunArgs,
) -> CoreResult<LunSpec> {
    let t = table
        .targets
        .get(&tid)
        .ok_or_else(|| CoreError::from(TgtadmError::NoTarget))?;
    if t.luns.contains_key(&lun) {
        return Err(CoreError::new(
            TgtadmError::LunExist,
            format!("LUN {lun} of {} exists", t.name),
        ));
    }
    // The iscsi driver's default backing store.
    let bstype = args.bstype.as_deref().unwrap_or("rdwr");
    let bs = backing_store(table, bstype)?.clone();
    let dev_type = DeviceType::from_code(args.device_type)
        .ok_or_else(|| CoreError::invalid("unknown device type"))?;
    if dev_type == DeviceType::Passthrough {
        // tgt needs bstype bsg/sg for passthrough; we have neither.
        return Err(CoreError::invalid("passthrough units are not supported"));
    }
    let oflags = match &args.bsoflags {
        Some(s) => OpenFlags::parse(s).ok_or_else(|| CoreError::invalid("bad bsoflags"))?,
        None => OpenFlags::default(),
    };
    if !oflags.subset_of(bs.oflags) {
        return Err(CoreError::invalid(format!(
            "{bstype} does not take {oflags}"
        )));
    }
    if !table.info.device_types.contains(&dev_type) || dev_type == DeviceType::Controller {
        return Err(CoreError::invalid("device type not served"));
    }
    let mut spec = LunSpec::new(tid, lun, dev_type, bstype);
    spec.thin_provisioning = bs.thin;
    spec.bsoflags = oflags;
    spec.bsopts = args.bsopts.clone();
    spec.readonly = args.readonly;
    spec.bdev = args.bdev.clone();
    if let Some(v) = args.block_size {
        if v > 1 && v.is_power_of_two() {
            spec.block_size = v;
        }
    }
    match &args.path {
        None => {
            // No medium: a removable unit that is offline until loaded.
            spec.removable = true;
            spec.online = false;
        }
        Some(p) => {
            spec.path = Some(p.to_string());
            attach_medium(live, tid, &mut spec, bs.needs_file)?;
        }
    }
    Ok(spec)
}

fn commit_lun(table: &mut TargetTable, live: &mut dyn Live, tid: u32, spec: LunSpec) {
    if let Some(t) = table.targets.get_mut(&tid) {
        t.luns.insert(spec.lun, spec.clone());
        live.apply(Effect::LunAdded { tid, spec });
    }
}

/// Open `spec.path` and bring the unit online (tgt's
/// `tgt_device_path_update`).
pub(crate) fn attach_medium(
    live: &mut dyn Live,
    tid: u32,
    spec: &mut LunSpec,
    needs_file: bool,
) -> CoreResult {
    if needs_file {
        let info = live.open_backing(tid, spec).map_err(|e| {
            CoreError::new(
                e,
                format!(
                    "cannot open backing store {}",
                    spec.path.as_deref().unwrap_or("")
                ),
            )
        })?;
        spec.size_bytes = info.size_bytes;
        if info.readonly {
            spec.readonly = true;
        }
        if let Some(id) = &info.identity {
            super::handler::medium_identity(spec, tid, id);
        }
        if !spec.no_auto_lbppbe {
            // READ CAPACITY (16) LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT
            // (SBC-3 section 5.16.2), as tgt's update_lbppbe derives it.
            let mut e = 0u8;
            let mut pbs = info.physical_block_size;
            while pbs > spec.block_size {
                e += 1;
                pbs >>= 1;
            }
            spec.lbppbe = e;
        }
    } else {
        spec.size_bytes = NULL_BS_SIZE;
    }
    spec.online = true;
    Ok(())
}

// ---------------------------------------------------------------- portal groups

fn pg_exists(table: &TargetTable, tag: u16) -> bool {
    table.portal_groups.contains_key(&tag) || table.portals.iter().any(|p| p.tpgt == tag)
}

fn pg_create(
    table: &mut TargetTable,
    live: &mut dyn Live,
    tag: u16,
    portals: &[SocketAddr],
    private: bool,
    wait: bool,
) -> CoreResult {
    if tag == 0 {
        return Err(CoreError::invalid("portal group tag must be above 0"));
    }
    if table.portal_groups.contains_key(&tag) {
        return Err(exists("portal group", &tag));
    }
    // A group the command line or tgtadm made (the daemon's own portals,
    // with no record yet) is adopted: its portals may be named again, so
    // a saved configuration loads into a daemon started the same way.
    let mut new = Vec::new();
    for (i, a) in portals.iter().enumerate() {
        if portals[..i].contains(a) {
            return Err(CoreError::invalid(format!("portal {a} given twice")));
        }
        match table.portals.iter().find(|p| p.addr == *a) {
            Some(p) if p.tpgt == tag => {}
            Some(p) => {
                return Err(CoreError::invalid(format!(
                    "portal {a} is in portal group {}",
                    p.tpgt
                )))
            }
            None if table.portal_groups.values().any(|g| g.waiting.contains(a)) => {
                return Err(CoreError::invalid(format!(
                    "portal {a} is in another group"
                )))
            }
            None => new.push(*a),
        }
    }
    let mut attrs = PortalGroupAttrs {
        private,
        ..Default::default()
    };
    if wait {
        attrs.waiting = new;
    } else {
        listen_all(table, live, tag, &new)?;
    }
    table.portal_groups.insert(tag, attrs);
    Ok(())
}

/// Bind every address, or none: a failure closes those already bound.
pub(crate) fn listen_all(
    table: &mut TargetTable,
    live: &mut dyn Live,
    tag: u16,
    addrs: &[SocketAddr],
) -> CoreResult {
    for (i, a) in addrs.iter().enumerate() {
        if let Err(e) = live.bind_portal(*a) {
            for b in &addrs[..i] {
                live.apply(Effect::PortalRemoved(*b));
            }
            return Err(CoreError::new(e, format!("cannot listen on {a}")));
        }
    }
    for a in addrs {
        table.portals.insert(
            0,
            Portal {
                addr: *a,
                tpgt: tag,
            },
        );
        live.apply(Effect::PortalAdded(*a));
    }
    Ok(())
}

fn pg_start(table: &mut TargetTable, live: &mut dyn Live, tag: u16) -> CoreResult {
    let waiting = table
        .portal_groups
        .get(&tag)
        .ok_or_else(|| not_found("portal group", &tag))?
        .waiting
        .clone();
    listen_all(table, live, tag, &waiting)?;
    if let Some(g) = table.portal_groups.get_mut(&tag) {
        g.waiting.clear();
    }
    Ok(())
}

fn pg_delete(table: &mut TargetTable, live: &mut dyn Live, tag: u16) -> CoreResult {
    if !pg_exists(table, tag) {
        return Err(not_found("portal group", &tag));
    }
    // As SPDK: the group leaves every target's maps.
    for t in table.targets.values_mut() {
        if t.pg_ig_maps.iter().any(|m| m.pg == tag) {
            t.pg_ig_maps.retain(|m| m.pg != tag);
            live.apply(Effect::AclChanged { tid: t.tid });
        }
    }
    let gone: Vec<SocketAddr> = table
        .portals
        .iter()
        .filter(|p| p.tpgt == tag)
        .map(|p| p.addr)
        .collect();
    table.portals.retain(|p| p.tpgt != tag);
    table.portal_groups.remove(&tag);
    for a in gone {
        live.apply(Effect::PortalRemoved(a));
    }
    Ok(())
}

// ---------------------------------------------------------------- initiator and auth groups

/// SPDK stores `ALL` as `ANY`.
fn any_for_all(s: &str) -> String {
    s.replacen("ALL", "ANY", 1)
}

fn ig_add(g: &mut InitiatorGroup, add: &InitiatorGroup) -> CoreResult {
    let add = InitiatorGroup {
        initiators: add.initiators.iter().map(|s| any_for_all(s)).collect(),
        netmasks: add.netmasks.iter().map(|s| any_for_all(s)).collect(),
    };
    add_rules(
        &mut g.initiators,
        &add.initiators,
        "initiator",
        initiator_rule_valid,
    )?;
    add_rules(&mut g.netmasks, &add.netmasks, "netmask", netmask_valid)?;
    if g.initiators.len() > MAX_GROUP_ENTRIES || g.netmasks.len() > MAX_GROUP_ENTRIES {
        return Err(CoreError::invalid(format!(
            "an initiator group holds at most {MAX_GROUP_ENTRIES} names and netmasks"
        )));
    }
    Ok(())
}

/// Append rules to a group's list: each well formed and not there yet.
fn add_rules(
    list: &mut Vec<String>,
    add: &[String],
    what: &str,
    valid: fn(&str) -> bool,
) -> CoreResult {
    for r in add {
        if !valid(r) {
            return Err(CoreError::invalid(format!("bad {what} {r:?}")));
        }
        if list.contains(r) {
            return Err(CoreError::invalid(format!(
                "{what} {r} already in the group"
            )));
        }
        list.push(r.clone());
    }
    Ok(())
}

fn ig_remove(g: &mut InitiatorGroup, rm: &InitiatorGroup) -> CoreResult {
    for i in &rm.initiators {
        if !g.initiators.contains(i) {
            return Err(CoreError::invalid(format!(
                "initiator {i} not in the group"
            )));
        }
        g.initiators.retain(|x| x != i);
    }
    for m in &rm.netmasks {
        if !g.netmasks.contains(m) {
            return Err(CoreError::invalid(format!("netmask {m} not in the group")));
        }
        g.netmasks.retain(|x| x != m);
    }
    Ok(())
}

fn acl_changed_for_ig(table: &TargetTable, live: &mut dyn Live, tag: u32) {
    for t in table.targets() {
        if t.pg_ig_maps.iter().any(|m| m.ig == tag) {
            live.apply(Effect::AclChanged { tid: t.tid });
        }
    }
}

fn add_secret(g: &mut AuthGroup, s: &ChapSecret) -> CoreResult {
    let ok_text = |v: &str| !v.is_empty() && v.len() <= 255 && !v.contains(['\0', ',']);
    if !ok_text(&s.user) || !ok_text(&s.secret) {
        return Err(CoreError::invalid(
            "a CHAP user and secret are 1 to 255 characters",
        ));
    }
    match (&s.muser, &s.msecret) {
        (None, None) => {}
        (Some(u), Some(p)) if ok_text(u) && ok_text(p) => {}
        _ => {
            return Err(CoreError::invalid(
                "mutual CHAP needs both muser and msecret",
            ))
        }
    }
    if g.secrets.iter().any(|x| x.user == s.user) {
        return Err(CoreError::new(
            TgtadmError::UserExist,
            format!("user {} already has a secret", s.user),
        ));
    }
    if g.secrets.len() >= MAX_SECRETS {
        return Err(CoreError::invalid(format!(
            "an auth group holds at most {MAX_SECRETS} secrets"
        )));
    }
    g.secrets.push(s.clone());
    Ok(())
}

fn check_auth(a: &NodeAuth) -> CoreResult {
    if !a.valid() {
        return Err(CoreError::invalid(
            "CHAP cannot be both disabled and required, and mutual CHAP needs CHAP required",
        ));
    }
    // As SPDK, the group need not exist yet (SPDK saves auth groups after
    // the targets that name them); CHAP finds no secret in it until it does.
    Ok(())
}

fn check_map(table: &TargetTable, m: &PgIgMap) -> CoreResult {
    if !pg_exists(table, m.pg) {
        return Err(not_found("portal group", &m.pg));
    }
    if !table.initiator_groups.contains_key(&m.ig) {
        return Err(not_found("initiator group", &m.ig));
    }
    Ok(())
}

// ---------------------------------------------------------------- bdevs and target nodes

fn bdev_create(table: &mut TargetTable, live: &mut dyn Live, b: &Bdev) -> CoreResult {
    if !bdev_name_valid(&b.name) {
        return Err(CoreError::invalid(format!(
            "bad bdev name {:?} (no spaces or colons)",
            b.name
        )));
    }
    if table.bdevs.contains_key(&b.name) {
        return Err(
            CoreError::invalid(format!("bdev {} already exists", b.name)).with_errno(-libc::EEXIST),
        );
    }
    if !(512..=65536).contains(&b.block_size) || !b.block_size.is_power_of_two() {
        return Err(CoreError::invalid(format!(
            "bad block size {} (a power of two from 512 to 65536)",
            b.block_size
        )));
    }
    let mut b = b.clone();
    match &b.kind {
        BdevKind::Null => {
            if b.num_blocks == 0 {
                return Err(CoreError::invalid("a null bdev needs blocks"));
            }
            // Its size in bytes must fit the LU's 64-bit capacity.
            if b.num_blocks.checked_mul(u64::from(b.block_size)).is_none() {
                return Err(CoreError::invalid("a null bdev of over 2^64 bytes"));
            }
        }
        BdevKind::Aio { .. } | BdevKind::Rbd { .. } => {
            // Open it now (off this thread: see `Deferred`), so a missing
            // file is refused here rather than at the first LUN.
            let mut probe = LunSpec::new(0, u64::MAX, DeviceType::Disk, b.bstype());
            probe.path = b.path();
            probe.bsopts = b.bsopts();
            probe.block_size = b.block_size;
            probe.readonly = b.readonly;
            let info = live.open_backing(0, &probe).map_err(|e| {
                let what = probe.path.as_deref().unwrap_or(&b.name);
                CoreError::new(e, format!("cannot open {what}")).with_errno(-libc::ENOENT)
            })?;
            // (The store opened for the check closes when the request ends.)
            b.num_blocks = info.size_bytes / b.block_size as u64;
            if b.num_blocks == 0 {
                return Err(CoreError::invalid(format!(
                    "{} is smaller than one block",
                    b.name
                )));
            }
            b.readonly |= info.readonly;
        }
    }
    table.bdevs.insert(b.name.clone(), b);
    Ok(())
}

/// A unit from a bdev, opened but not committed.
fn bdev_lun(
    table: &TargetTable,
    live: &mut dyn Live,
    tid: u32,
    lun: u64,
    bdev: &str,
) -> CoreResult<LunSpec> {
    let b = table
        .bdevs
        .get(bdev)
        .ok_or_else(|| CoreError::invalid(format!("bdev {bdev} not found")))?;
    for t in table.targets() {
        if let Some(l) = t.luns.values().find(|l| l.bdev.as_deref() == Some(bdev)) {
            return Err(CoreError::invalid(format!(
                "bdev {bdev} is already LUN {} of {}",
                l.lun, t.name
            )));
        }
    }
    let args = LunArgs {
        bstype: Some(b.bstype().to_string()),
        path: b.path(),
        bsopts: b.bsopts(),
        block_size: Some(b.block_size),
        readonly: b.readonly,
        bdev: Some(bdev.to_string()),
        ..LunArgs::default()
    };
    let mut spec = if lun == 0 {
        // SPDK's LUN 0 is a disk; tgt's is the controller it replaces.
        lun_spec_at_zero(table, live, tid, &args)?
    } else {
        lun_spec(table, live, tid, lun, &args)?
    };
    if let BdevKind::Null = b.kind {
        spec.size_bytes = b
            .num_blocks
            .checked_mul(u64::from(b.block_size))
            .ok_or_else(|| CoreError::invalid(format!("bdev {bdev} is too large")))?;
    }
    Ok(spec)
}

/// A disk at LUN 0 of `tid` in place of the controller.
fn lun_spec_at_zero(
    table: &TargetTable,
    live: &mut dyn Live,
    tid: u32,
    args: &LunArgs,
) -> CoreResult<LunSpec> {
    let t = table
        .targets
        .get(&tid)
        .ok_or_else(|| CoreError::from(TgtadmError::NoTarget))?;
    if t.luns
        .get(&0)
        .is_some_and(|l| l.device_type != DeviceType::Controller)
    {
        return Err(CoreError::new(TgtadmError::LunExist, "LUN 0 exists"));
    }
    let mut shadow = table.clone();
    if let Some(t) = shadow.targets.get_mut(&tid) {
        t.luns.remove(&0);
    }
    lun_spec(&shadow, live, tid, 0, args)
}

/// The lowest free target id.
pub fn free_tid(table: &TargetTable) -> u32 {
    (1..).find(|t| !table.targets.contains_key(t)).unwrap_or(1)
}

fn node_create(table: &mut TargetTable, live: &mut dyn Live, spec: &NodeSpec) -> CoreResult {
    if table.target_by_name(&spec.name).is_some() {
        return Err(CoreError::new(
            TgtadmError::TargetExist,
            format!("target {} already exists", spec.name),
        ));
    }
    if !valid_target_name(&spec.name) {
        return Err(CoreError::invalid(format!(
            "bad target name {:?}",
            spec.name
        )));
    }
    if spec.luns.is_empty() || spec.luns.len() > MAX_NODE_LUNS {
        return Err(CoreError::invalid(format!(
            "a target node needs 1 to {MAX_NODE_LUNS} LUNs"
        )));
    }
    if spec.maps.is_empty() {
        return Err(CoreError::invalid("a target node needs a pg_ig_map"));
    }
    let mut pgs: Vec<u16> = spec.maps.iter().map(|m| m.pg).collect();
    pgs.sort_unstable();
    pgs.dedup();
    if pgs.len() > MAX_NODE_PORTAL_GROUPS {
        return Err(CoreError::invalid(format!(
            "a target node is in at most {MAX_NODE_PORTAL_GROUPS} portal groups"
        )));
    }
    if let Some(a) = &spec.alias {
        if a.len() > 255 || a.contains('\0') {
            return Err(CoreError::invalid("alias_name is at most 255 bytes"));
        }
    }
    check_auth(&spec.auth)?;
    for (i, m) in spec.maps.iter().enumerate() {
        check_map(table, m)?;
        if spec.maps[..i].contains(m) {
            return Err(CoreError::invalid("a pg_ig_map is given twice"));
        }
    }
    for (i, (b, l)) in spec.luns.iter().enumerate() {
        if spec.luns[..i].iter().any(|(ob, ol)| ob == b || ol == l) {
            return Err(CoreError::invalid(format!(
                "bdev {b} or LUN {l} is given twice"
            )));
        }
    }
    // Build the target on a copy: every LUN's store opens before anything
    // is committed.
    let tid = free_tid(table);
    let mut shadow = table.clone();
    let mut t = Target::new(
        tid,
        &spec.name,
        0,
        (table.default_nop_interval, table.default_nop_count),
    );
    t.params = table.new_target_params.clone();
    t.alias = spec.alias.clone();
    t.pg_ig_maps = spec.maps.clone();
    t.auth = spec.auth;
    t.require_header_digest = spec.header_digest;
    t.require_data_digest = spec.data_digest;
    // As SPDK, a depth out of range gets the default instead.
    if (1..=MAX_QUEUE_DEPTH).contains(&spec.queue_depth) {
        let idx = key_index("MaxQueueCmd").expect("a session key");
        t.params
            .set_text(idx, &spec.queue_depth.to_string())
            .map_err(|_| CoreError::invalid("bad queue_depth"))?;
    }
    shadow.targets.insert(tid, t.clone());
    let mut luns = Vec::new();
    for (b, l) in &spec.luns {
        luns.push(bdev_lun(&shadow, live, tid, *l, b)?);
    }
    t.seq = table.alloc_seq();
    let controller = t.luns[&0].clone();
    table.targets.insert(tid, t);
    live.apply(Effect::TargetCreated {
        tid,
        name: spec.name.clone(),
    });
    if !luns.iter().any(|l| l.lun == 0) {
        live.apply(Effect::LunAdded {
            tid,
            spec: controller,
        });
    } else if let Some(t) = table.targets.get_mut(&tid) {
        t.luns.remove(&0);
    }
    for l in luns {
        commit_lun(table, live, tid, l);
    }
    Ok(())
}
