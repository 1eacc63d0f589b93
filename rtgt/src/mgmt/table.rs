//! The daemon's configuration state, as tgtadm changes it and as the login
//! path reads it: system state, targets (LUNs, ACLs, accounts, session
//! parameters), global accounts and portals.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::groups::{
    AuthGroup, Bdev, Decision, InitiatorGroup, NodeAuth, PgIgMap, PortalGroupAttrs,
};
use super::params::SessionParams;

/// The default iSCSI port (RFC 7143 section 13.1: well-known port 3260).
pub const ISCSI_LISTEN_PORT: u16 = 3260;

/// SCSI peripheral device types tgt knows (SPC-4 table 49), with tgt's show
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// 0x00 direct-access block device (SBC-3).
    Disk,
    /// 0x01 sequential-access device.
    Tape,
    /// 0x05 CD/DVD (MMC).
    Cd,
    /// 0x08 medium changer.
    Changer,
    /// 0x0c storage array controller (SCC-2): tgt's LUN 0.
    Controller,
    /// 0x11 object storage device.
    Osd,
    /// 0xff passthrough (tgt's pseudo type).
    Passthrough,
}

impl DeviceType {
    /// From the SCSI peripheral type code carried in `tgtadm_req`.
    pub fn from_code(c: u32) -> Option<Self> {
        Some(match c {
            0x00 => Self::Disk,
            0x01 => Self::Tape,
            0x05 => Self::Cd,
            0x08 => Self::Changer,
            0x0c => Self::Controller,
            0x11 => Self::Osd,
            0xff => Self::Passthrough,
            _ => return None,
        })
    }

    /// The SCSI peripheral type code.
    pub fn code(self) -> u32 {
        match self {
            Self::Disk => 0x00,
            Self::Tape => 0x01,
            Self::Cd => 0x05,
            Self::Changer => 0x08,
            Self::Controller => 0x0c,
            Self::Osd => 0x11,
            Self::Passthrough => 0xff,
        }
    }

    /// tgt's name for it in `show` output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Tape => "tape",
            Self::Cd => "cd/dvd",
            Self::Changer => "changer",
            Self::Controller => "controller",
            Self::Osd => "osd",
            Self::Passthrough => "passthrough",
        }
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Backing-store open flags (`--bsoflags sync:direct`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OpenFlags {
    /// O_SYNC.
    pub sync: bool,
    /// O_DIRECT.
    pub direct: bool,
}

impl OpenFlags {
    /// Parse tgt's `sync:direct` form; `None` for an unknown flag.
    pub fn parse(s: &str) -> Option<Self> {
        let mut f = OpenFlags::default();
        // tgt splits on ':' (strtok, so empty parts vanish), skips leading
        // blanks and matches by prefix.
        for tok in s.split(':').filter(|t| !t.is_empty()) {
            let tok = tok.trim_start_matches(' ');
            if tok.starts_with("sync") {
                f.sync = true;
            } else if tok.starts_with("direct") {
                f.direct = true;
            } else {
                return None;
            }
        }
        Some(f)
    }

    /// No flag set.
    pub fn is_empty(self) -> bool {
        !self.sync && !self.direct
    }

    /// Whether every flag in `self` is also in `supported`.
    pub fn subset_of(self, supported: OpenFlags) -> bool {
        (!self.sync || supported.sync) && (!self.direct || supported.direct)
    }
}

impl fmt::Display for OpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.sync, self.direct) {
            (true, true) => f.write_str("sync:direct"),
            (true, false) => f.write_str("sync"),
            (false, true) => f.write_str("direct"),
            (false, false) => Ok(()),
        }
    }
}

/// A mode page set with `--params mode_page=pcode:subpcode:size:b0:b1:...`
/// (SPC-4 section 7.5). Bytes not given are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModePage {
    /// Page code.
    pub pcode: u8,
    /// Subpage code.
    pub subpcode: u8,
    /// Page data (`size` bytes).
    pub data: Vec<u8>,
}

/// Everything about one logical unit that the management plane knows:
/// what `logicalunit new` / `update` set, with tgt's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunSpec {
    /// Logical unit number.
    pub lun: u64,
    /// Peripheral device type.
    pub device_type: DeviceType,
    /// Backing store type: `rdwr`, `aio`, `null`.
    pub bstype: String,
    /// Backing file or block device; `None` for no medium.
    pub path: Option<String>,
    /// Open flags.
    pub bsoflags: OpenFlags,
    /// Backing-store specific options (`--bsopts`).
    pub bsopts: Option<String>,
    /// Logical block size in bytes (512 default for disks; 1 for the
    /// controller LUN 0, as tgt shows it).
    pub block_size: u32,
    /// Medium size in bytes (0 without a medium).
    pub size_bytes: u64,
    /// INQUIRY vendor identification (SPC-4 6.4.2), at most 8 bytes.
    pub vendor_id: String,
    /// INQUIRY product identification, at most 16 bytes.
    pub product_id: String,
    /// INQUIRY product revision level, at most 4 bytes.
    pub product_rev: String,
    /// Device identification VPD page 0x83 designator, at most 36 bytes.
    pub scsi_id: String,
    /// Unit serial number VPD page 0x80, at most 36 bytes.
    pub scsi_sn: String,
    /// `(tid << 32) | lun`: tgt's NAA identifier seed.
    pub numeric_id: u64,
    /// Removable medium (RMB in INQUIRY).
    pub removable: bool,
    /// Write protected medium.
    pub readonly: bool,
    /// Software write protect (control mode page SWP).
    pub swp: bool,
    /// A medium is loaded and the unit is ready.
    pub online: bool,
    /// Descriptor format sense data (SPC-4 4.5.1) when true.
    pub sense_format: bool,
    /// Logical block provisioning: UNMAP / WRITE SAME with UNMAP supported.
    pub thin_provisioning: bool,
    /// rtgt extension: the thin LU's soft threshold, percent of its
    /// capacity mapped (SBC-4 §4.7.3.8); 0 for none.
    pub thin_threshold: u8,
    /// Block device characteristics VPD MEDIUM ROTATION RATE (SBC-3 6.6.2).
    pub rotation_rate: u16,
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY (16)).
    pub lbppbe: u8,
    /// `lbppbe` was set by hand: do not derive it from the backing store.
    pub no_auto_lbppbe: bool,
    /// LOWEST ALIGNED LOGICAL BLOCK ADDRESS (READ CAPACITY (16)).
    pub la_lba: u16,
    /// Block limits VPD OPTIMAL TRANSFER LENGTH GRANULARITY, when set.
    pub optimal_xfer_gran: Option<u32>,
    /// Block limits VPD OPTIMAL TRANSFER LENGTH, when set.
    pub optimal_xfer_len: Option<u32>,
    /// Mode pages set by hand (the SCSI layer owns the defaults).
    pub mode_pages: Vec<ModePage>,
    /// The bdev this unit was made from (JSON-RPC), if any.
    pub bdev: Option<String>,
}

/// SPDK's default `node_base`.
pub const DEFAULT_NODE_BASE: &str = "iqn.2016-06.io.spdk";

/// tgt's `VENDOR_ID`.
pub const DEFAULT_VENDOR_ID: &str = "IET";

impl LunSpec {
    /// A unit with tgt's defaults for `tid`/`lun` (`spc_lu_init`): scsi_id
    /// `"IET     %04x%04x"`, serial `"beaf<tid><lun>"`, not online.
    pub fn new(tid: u32, lun: u64, device_type: DeviceType, bstype: &str) -> Self {
        let product_id = match device_type {
            DeviceType::Controller => "Controller",
            _ => "VIRTUAL-DISK",
        };
        LunSpec {
            lun,
            device_type,
            bstype: bstype.to_string(),
            path: None,
            bsoflags: OpenFlags::default(),
            bsopts: None,
            block_size: if device_type == DeviceType::Controller {
                1
            } else {
                512
            },
            size_bytes: 0,
            vendor_id: DEFAULT_VENDOR_ID.to_string(),
            product_id: product_id.to_string(),
            product_rev: "0001".to_string(),
            scsi_id: format!("IET     {tid:04x}{lun:04x}"),
            scsi_sn: format!("beaf{tid}{lun}"),
            numeric_id: ((tid as u64) << 32) | lun,
            removable: false,
            readonly: false,
            swp: false,
            online: false,
            sense_format: false,
            thin_provisioning: false,
            thin_threshold: 0,
            rotation_rate: 0,
            lbppbe: 0,
            no_auto_lbppbe: false,
            la_lba: 0,
            optimal_xfer_gran: None,
            optimal_xfer_len: None,
            mode_pages: Vec::new(),
            bdev: None,
        }
    }

    /// tgt's LUN 0 of every target: an SCC-2 controller with no backing
    /// store, online.
    pub fn controller(tid: u32) -> Self {
        let mut s = LunSpec::new(tid, 0, DeviceType::Controller, "null");
        s.online = true;
        s
    }
}

/// Target state: an offline target refuses logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Accepting logins.
    Ready,
    /// Refusing logins.
    Offline,
}

impl TargetState {
    /// tgt's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Offline => "offline",
        }
    }

    /// Parse tgt's exact names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ready" => Some(Self::Ready),
            "offline" => Some(Self::Offline),
            _ => None,
        }
    }
}

/// Login redirection (RFC 7143 section 11.13.5, status class 1), set with
/// `--name RedirectAddress` etc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redirect {
    /// Address to redirect to; empty: no redirection.
    pub addr: String,
    /// Port to redirect to.
    pub port: String,
    /// `Some(true)`: moved temporarily (0x0101); `Some(false)`: moved
    /// permanently (0x0102); `None`: not set.
    pub temporary: Option<bool>,
    /// External program deciding the redirection.
    pub callback: Option<String>,
}

/// One target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Target id (> 0).
    pub tid: u32,
    /// iSCSI target name.
    pub name: String,
    /// Ready or offline.
    pub state: TargetState,
    /// Logical units by number (LUN 0 is the controller).
    pub luns: BTreeMap<u64, LunSpec>,
    /// Address ACL rules in insertion order: `ALL`, an address, `a.b.c.d/n`,
    /// `[v6]`, `[v6]/n`.
    pub acl_addresses: Vec<String>,
    /// Initiator-name ACL rules in insertion order.
    pub acl_initiators: Vec<String>,
    /// Incoming (CHAP) account ids, in binding order.
    pub incoming: Vec<u32>,
    /// Outgoing (mutual CHAP) account id.
    pub outgoing: Option<u32>,
    /// Session parameter offers.
    pub params: SessionParams,
    /// NOP-In interval in seconds (0: none).
    pub nop_interval: i32,
    /// Unanswered NOP-Ins before the connection is dropped.
    pub nop_count: i32,
    /// Login redirection.
    pub redirect: Redirect,
    /// The portal group whose logins `redirect` applies to (SPDK's
    /// `iscsi_target_node_set_redirect`); `None`: every login (tgtadm's).
    pub redirect_pg: Option<u16>,
    /// iSCSI TargetAlias (SPDK's `alias_name`), sent at login.
    pub alias: Option<String>,
    /// SPDK's portal group / initiator group pairs: when any are set, the
    /// target is reached only through the portals of the mapped groups.
    pub pg_ig_maps: Vec<PgIgMap>,
    /// SPDK's CHAP settings (an auth group, required or mutual CHAP).
    pub auth: NodeAuth,
    /// Logins must negotiate CRC32C header / data digests.
    pub require_header_digest: bool,
    /// See `require_header_digest`.
    pub require_data_digest: bool,
    /// Collect latency histograms for `iscsi_get_histogram`.
    pub histogram: bool,
    /// Creation order (tgt lists targets per driver in this order).
    pub(crate) seq: u64,
}

impl Target {
    /// A ready target with tgt's defaults and its LUN 0 controller.
    pub fn new(tid: u32, name: &str, seq: u64, nop: (i32, i32)) -> Target {
        let mut luns = BTreeMap::new();
        luns.insert(0, LunSpec::controller(tid));
        Target {
            tid,
            name: name.to_string(),
            state: TargetState::Ready,
            luns,
            acl_addresses: Vec::new(),
            acl_initiators: Vec::new(),
            incoming: Vec::new(),
            outgoing: None,
            params: Default::default(),
            nop_interval: nop.0,
            nop_count: nop.1,
            redirect: Default::default(),
            redirect_pg: None,
            alias: None,
            pg_ig_maps: Vec::new(),
            auth: NodeAuth::default(),
            require_header_digest: false,
            require_data_digest: false,
            histogram: false,
            seq,
        }
    }
}

/// A CHAP account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Account id (lowest free, from 1).
    pub aid: u32,
    /// User name.
    pub user: String,
    /// Secret.
    pub password: String,
}

/// A listening portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Portal {
    /// Address and port.
    pub addr: SocketAddr,
    /// Target portal group tag.
    pub tpgt: u16,
}

/// System state: offline refuses all logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemState {
    /// Accepting logins.
    Ready,
    /// Refusing logins.
    Offline,
}

impl SystemState {
    /// tgt's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Offline => "offline",
        }
    }
}

/// A backing store type the daemon offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingStoreInfo {
    /// Name (`--bstype`).
    pub name: String,
    /// Open flags it supports.
    pub oflags: OpenFlags,
    /// Whether a LUN of this type needs a real file (false for `null`,
    /// whose medium is a 1 TiB void).
    pub needs_file: bool,
    /// Whether the store allocates on write (RBD): its LUNs report thin
    /// provisioning (SBC-3 §4.7) from the start.
    pub thin: bool,
}

/// What the daemon supports, as `system show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// Low-level drivers and their state name (`ready`, `error`, ...).
    pub llds: Vec<(String, String)>,
    /// Backing stores, in listing order.
    pub backing_stores: Vec<BackingStoreInfo>,
    /// Device types, in listing order.
    pub device_types: Vec<DeviceType>,
}

impl Default for SystemInfo {
    fn default() -> Self {
        SystemInfo {
            // iser is listed as tgt lists an iser it could not start.
            llds: vec![
                ("iscsi".into(), "ready".into()),
                ("iser".into(), "error".into()),
            ],
            // rbd first, where tgt with Debian's tgt-rbd lists it.
            backing_stores: vec![
                BackingStoreInfo {
                    name: "rbd".into(),
                    oflags: OpenFlags {
                        sync: true,
                        direct: true,
                    },
                    needs_file: true,
                    thin: true,
                },
                BackingStoreInfo {
                    name: "null".into(),
                    oflags: OpenFlags::default(),
                    needs_file: false,
                    thin: false,
                },
                BackingStoreInfo {
                    name: "rdwr".into(),
                    oflags: OpenFlags {
                        sync: true,
                        direct: true,
                    },
                    needs_file: true,
                    thin: false,
                },
                BackingStoreInfo {
                    name: "aio".into(),
                    oflags: OpenFlags::default(),
                    needs_file: true,
                    thin: false,
                },
            ],
            device_types: vec![DeviceType::Disk, DeviceType::Controller],
        }
    }
}

/// iSNS settings (shown; iSNS itself is not implemented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsnsSettings {
    /// iSNS on.
    pub enabled: bool,
    /// Server address.
    pub server_ip: String,
    /// Server port.
    pub server_port: i32,
    /// iSNS access control.
    pub access_control: bool,
}

impl Default for IsnsSettings {
    fn default() -> Self {
        IsnsSettings {
            enabled: false,
            server_ip: String::new(),
            server_port: 3205,
            access_control: false,
        }
    }
}

/// The whole configuration of one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTable {
    /// Ready or offline.
    pub system_state: SystemState,
    /// `debug` flag (`--op update --mode system -n debug -v on`).
    pub debug: bool,
    /// What the daemon supports.
    pub info: SystemInfo,
    /// iSNS settings.
    pub isns: IsnsSettings,
    /// Targets by tid.
    pub(crate) targets: BTreeMap<u32, Target>,
    /// Accounts, newest first (tgt's listing order).
    pub(crate) accounts: Vec<Account>,
    /// Global (discovery) incoming account ids.
    pub(crate) global_incoming: Vec<u32>,
    /// Global outgoing account id.
    pub(crate) global_outgoing: Option<u32>,
    /// Portals, newest first (tgt's listing order).
    pub(crate) portals: Vec<Portal>,
    /// NOP interval new targets get (`--iscsi nop_interval=N`).
    pub default_nop_interval: i32,
    /// NOP count new targets get.
    pub default_nop_count: i32,
    /// The target portal group tag of this daemon's portals (`rtgtd
    /// --port-group`; tgt's 1 by default).
    pub tpgt: u16,
    /// SPDK portal groups' attributes, by tag (their portals are the
    /// portals with that TPGT).
    pub portal_groups: BTreeMap<u16, PortalGroupAttrs>,
    /// SPDK initiator groups, by tag.
    pub initiator_groups: BTreeMap<u32, InitiatorGroup>,
    /// SPDK auth groups, by tag.
    pub auth_groups: BTreeMap<u32, AuthGroup>,
    /// CHAP settings of discovery sessions (`iscsi_set_discovery_auth`).
    pub discovery_auth: NodeAuth,
    /// Named backing stores (SPDK's bdevs), by name.
    pub bdevs: BTreeMap<String, Bdev>,
    /// Prefix of target names given without `iqn.`/`eui.`/`naa.`
    /// (`iscsi_set_options node_base`).
    pub node_base: String,
    /// Session parameter offers new targets start with
    /// (`iscsi_set_options`; tgt's defaults otherwise).
    pub new_target_params: SessionParams,
    /// SPDK options rtgt keeps and reports but has no use for
    /// (`iscsi_set_options`: pool sizes and the like), by name.
    pub spdk_extra_options: BTreeMap<String, u64>,
    pub(crate) next_seq: u64,
}

impl Default for TargetTable {
    fn default() -> Self {
        Self::new()
    }
}

impl TargetTable {
    /// An empty, ready system.
    pub fn new() -> Self {
        TargetTable {
            system_state: SystemState::Ready,
            debug: false,
            info: SystemInfo::default(),
            isns: IsnsSettings::default(),
            targets: BTreeMap::new(),
            accounts: Vec::new(),
            global_incoming: Vec::new(),
            global_outgoing: None,
            portals: Vec::new(),
            default_nop_interval: 0,
            default_nop_count: 0,
            tpgt: 1,
            portal_groups: BTreeMap::new(),
            initiator_groups: BTreeMap::new(),
            auth_groups: BTreeMap::new(),
            discovery_auth: NodeAuth::default(),
            bdevs: BTreeMap::new(),
            node_base: DEFAULT_NODE_BASE.to_string(),
            new_target_params: SessionParams::default(),
            spdk_extra_options: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Whether the system accepts logins.
    pub fn system_ready(&self) -> bool {
        self.system_state == SystemState::Ready
    }

    /// A target by id.
    pub fn target(&self, tid: u32) -> Option<&Target> {
        self.targets.get(&tid)
    }

    /// A target by iSCSI name (exact, as tgt compares).
    pub fn target_by_name(&self, name: &str) -> Option<&Target> {
        self.targets.values().find(|t| t.name == name)
    }

    /// All targets, by tid.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// Whether target `tid` exists and accepts logins (its own state; see
    /// also [`TargetTable::system_ready`]).
    pub fn target_ready(&self, tid: u32) -> bool {
        self.target(tid)
            .is_some_and(|t| t.state == TargetState::Ready)
    }

    /// A logical unit.
    pub fn lun(&self, tid: u32, lun: u64) -> Option<&LunSpec> {
        self.target(tid)?.luns.get(&lun)
    }

    /// A session parameter offer of target `tid` (key case-insensitive).
    pub fn session_param(&self, tid: u32, key: &str) -> Option<u32> {
        self.target(tid)?.params.get(key)
    }

    /// The session parameter offers of target `tid`.
    pub fn session_params(&self, tid: u32) -> Option<&SessionParams> {
        self.target(tid).map(|t| &t.params)
    }

    /// The listening portals, newest first.
    pub fn portals(&self) -> &[Portal] {
        &self.portals
    }

    /// Record a portal the daemon listens on (its command-line portals at
    /// start); it is listed first, as tgt lists the newest first.
    pub fn add_portal(&mut self, addr: SocketAddr, tpgt: u16) {
        if !self.portals.iter().any(|p| p.addr == addr) {
            self.portals.insert(0, Portal { addr, tpgt });
        }
    }

    /// All accounts, newest first.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// An account by id.
    pub fn account_by_id(&self, aid: u32) -> Option<&Account> {
        self.accounts.iter().find(|a| a.aid == aid)
    }

    /// An account by user name.
    pub fn account_by_user(&self, user: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.user == user)
    }

    /// Incoming accounts of target `tid`, or of discovery sessions when
    /// `tid` is `None`. CHAP is required when this is not empty.
    pub fn incoming_accounts(&self, tid: Option<u32>) -> Vec<&Account> {
        let ids: &[u32] = match tid {
            None => &self.global_incoming,
            Some(t) => match self.target(t) {
                Some(t) => &t.incoming,
                None => return Vec::new(),
            },
        };
        ids.iter().filter_map(|&a| self.account_by_id(a)).collect()
    }

    /// The outgoing (mutual CHAP) account of target `tid`, or of discovery
    /// sessions when `tid` is `None`.
    pub fn outgoing_account(&self, tid: Option<u32>) -> Option<&Account> {
        let aid = match tid {
            None => self.global_outgoing?,
            Some(t) => self.target(t)?.outgoing?,
        };
        self.account_by_id(aid)
    }

    /// Whether an initiator at `peer` named `initiator_name` may log in to
    /// (or discover) target `tid`: tgt allows it when any address rule or
    /// any initiator-name rule matches; a target without rules admits
    /// no one.
    pub fn acl_allows(&self, tid: u32, peer: IpAddr, initiator_name: &str) -> bool {
        let Some(t) = self.target(tid) else {
            return false;
        };
        t.acl_addresses
            .iter()
            .any(|rule| address_rule_matches(rule, peer))
            || t.acl_initiators.iter().any(|n| n == initiator_name)
    }

    /// Whether an initiator reaching us through a portal of group `tpgt`
    /// may log in to (or discover) target `tid`. A target with SPDK
    /// `pg_ig_maps` is reached only through its mapped portal groups, and
    /// there admits the initiators of the groups mapped with that portal
    /// group, or those tgt's ACL rules admit; a target without maps
    /// follows tgt's rules alone ([`TargetTable::acl_allows`]).
    pub fn access_allows(&self, tid: u32, tpgt: u16, peer: IpAddr, initiator_name: &str) -> bool {
        let Some(t) = self.target(tid) else {
            return false;
        };
        if t.pg_ig_maps.is_empty() {
            return self.acl_allows(tid, peer, initiator_name);
        }
        if !t.pg_ig_maps.iter().any(|m| m.pg == tpgt) {
            return false;
        }
        match self.groups_decide(t, Some(tpgt), initiator_name, Some(peer)) {
            Decision::Deny => false,
            Decision::Allow => true,
            Decision::Undecided => self.acl_allows(tid, peer, initiator_name),
        }
    }

    /// Whether SendTargets lists target `tid` to `initiator_name` at
    /// `peer`: as SPDK, a target with maps when any of its groups (through
    /// any portal group) names the initiator, netmasks aside; tgt's rules
    /// otherwise, or as well.
    pub fn discovery_allows(&self, tid: u32, peer: IpAddr, initiator_name: &str) -> bool {
        let Some(t) = self.target(tid) else {
            return false;
        };
        if t.pg_ig_maps.is_empty() {
            return self.acl_allows(tid, peer, initiator_name);
        }
        match self.groups_decide(t, None, initiator_name, None) {
            Decision::Deny => false,
            Decision::Allow => true,
            Decision::Undecided => self.acl_allows(tid, peer, initiator_name),
        }
    }

    /// The first decision of the target's initiator groups, in map order
    /// (those mapped with portal group `tpgt` only, when given).
    fn groups_decide(
        &self,
        t: &Target,
        tpgt: Option<u16>,
        name: &str,
        peer: Option<IpAddr>,
    ) -> Decision {
        for m in t
            .pg_ig_maps
            .iter()
            .filter(|m| tpgt.is_none_or(|p| m.pg == p))
        {
            let Some(g) = self.initiator_groups.get(&m.ig) else {
                continue;
            };
            match g.decide(name, peer) {
                Decision::Undecided => continue,
                d => return d,
            }
        }
        Decision::Undecided
    }

    /// The TPGT of the portal listening on `local`, or the daemon's own.
    pub fn tpgt_of(&self, local: SocketAddr) -> u16 {
        // The portal itself, else the wildcard portal that accepted it.
        let local = match local.ip() {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), local.port()),
                None => local,
            },
            _ => local,
        };
        self.portals
            .iter()
            .find(|p| p.addr == local)
            .or_else(|| {
                self.portals
                    .iter()
                    .find(|p| p.addr.port() == local.port() && p.addr.ip().is_unspecified())
            })
            .map_or(self.tpgt, |p| p.tpgt)
    }

    pub(crate) fn alloc_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// Whether an address ACL rule admits `peer`, with tgt's semantics
/// (`usr/iscsi/target.c` `ip_match`): `ALL`; an exact address; `[v6]`;
/// `addr/bits` where, for IPv4, bits must be below 32 and the rule's host
/// bits must be zero, and for IPv6 bits below 128. A malformed rule never
/// matches. IPv4-mapped IPv6 peers are compared as IPv4 (tgt does not, and
/// then never matches them).
pub fn address_rule_matches(rule: &str, peer: IpAddr) -> bool {
    if rule == "ALL" {
        return true;
    }
    let peer = match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        p => p,
    };
    let (host, bits) = if let Some(rest) = rule.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return false;
        };
        (h, after.split_once('/').map(|(_, b)| b))
    } else {
        match rule.split_once('/') {
            Some((h, b)) => (h, Some(b)),
            None => (rule, None),
        }
    };
    let Ok(addr) = host.parse::<IpAddr>() else {
        return false;
    };
    match bits {
        None => addr == peer,
        Some(b) => {
            let mbit = super::request::c_strtoull(b, 0).0;
            match (addr, peer) {
                (IpAddr::V4(a), IpAddr::V4(p)) => {
                    if mbit > 31 {
                        return false;
                    }
                    let mask: u32 = if mbit == 0 {
                        0
                    } else {
                        !((1u32 << (32 - mbit)) - 1)
                    };
                    let (a, p) = (u32::from(a), u32::from(p));
                    if a & !mask != 0 {
                        return false;
                    }
                    a & mask == p & mask
                }
                (IpAddr::V6(a), IpAddr::V6(p)) => {
                    if mbit > 127 {
                        return false;
                    }
                    let mask: u128 = if mbit == 0 {
                        0
                    } else {
                        !((1u128 << (128 - mbit)) - 1)
                    };
                    u128::from(a) & mask == u128::from(p) & mask
                }
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_rules() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(address_rule_matches("ALL", v4("10.0.0.1")));
        assert!(address_rule_matches("10.0.0.1", v4("10.0.0.1")));
        assert!(!address_rule_matches("10.0.0.1", v4("10.0.0.2")));
        assert!(address_rule_matches("192.168.1.0/24", v4("192.168.1.77")));
        assert!(!address_rule_matches("192.168.1.0/24", v4("192.168.2.1")));
        // tgt refuses a rule with host bits set, and /32.
        assert!(!address_rule_matches("192.168.1.5/24", v4("192.168.1.5")));
        assert!(!address_rule_matches("192.168.1.5/32", v4("192.168.1.5")));
        assert!(address_rule_matches("[fe80::1]/64", v4("fe80::99")));
        assert!(!address_rule_matches("[fe80::1]/64", v4("fe81::99")));
        assert!(address_rule_matches("[::1]", v4("::1")));
        assert!(address_rule_matches("::1", v4("::1")));
        assert!(address_rule_matches("127.0.0.1", v4("::ffff:127.0.0.1")));
        assert!(!address_rule_matches("garbage", v4("127.0.0.1")));
        assert!(!address_rule_matches("[::1", v4("::1")));
    }

    #[test]
    fn lun_defaults() {
        let l = LunSpec::new(1, 2, DeviceType::Disk, "rdwr");
        assert_eq!(l.scsi_id, "IET     00010002");
        assert_eq!(l.scsi_sn, "beaf12");
        assert_eq!(l.block_size, 512);
        let c = LunSpec::controller(3);
        assert!(c.online);
        assert_eq!(c.block_size, 1);
        assert_eq!(
            OpenFlags::parse("sync:direct").unwrap().to_string(),
            "sync:direct"
        );
        assert!(OpenFlags::parse("bogus").is_none());
    }
}
