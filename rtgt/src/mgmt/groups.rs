//! SPDK's iSCSI objects, kept in the same [`TargetTable`](super::TargetTable)
//! as tgt's, so `tgtadm --op show` and `iscsi_get_target_nodes` see one set
//! of targets:
//!
//! - a *portal group* (tag N) is the set of portals whose TPGT is N; the
//!   portals made by tgtadm or rtgtd's command line are in the daemon's
//!   group (`--port-group`, 1 by default). [`PortalGroupAttrs`] holds what
//!   tgt's model has no place for (private, started).
//! - an *initiator group* is a list of initiator names and netmasks
//!   ([`InitiatorGroup`]); a target's `pg_ig_maps` admit, through the
//!   portals of group P, the initiators of the groups mapped with P. These
//!   sit beside tgt's per-target ACL rules: a login is admitted when either
//!   admits it.
//! - an *auth group* holds CHAP secrets ([`AuthGroup`]); a target's
//!   [`NodeAuth`] names one. tgt's accounts bound to the target count too.
//! - a *bdev* is a named backing store ([`Bdev`]); a LUN made from it
//!   records the name.

use std::net::{IpAddr, SocketAddr};

/// What a portal group has beyond its portals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalGroupAttrs {
    /// Private: its portals are not listed in SendTargets (SPDK uses such
    /// groups as redirection destinations).
    pub private: bool,
    /// Portals not listening yet (created with `wait`; listening after
    /// `iscsi_start_portal_group`).
    pub waiting: Vec<SocketAddr>,
    /// CHAP settings for discovery through this group.
    pub auth: NodeAuth,
}

/// CHAP settings of a target node, of a portal group or of discovery
/// (SPDK's `disable_chap`, `require_chap`, `mutual_chap`, `chap_group`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeAuth {
    /// Never ask for CHAP.
    pub disable_chap: bool,
    /// Always ask for CHAP.
    pub require_chap: bool,
    /// Ask for mutual CHAP too.
    pub mutual_chap: bool,
    /// The auth group whose secrets apply (0: none).
    pub chap_group: u32,
}

impl NodeAuth {
    /// SPDK's consistency rules (`iscsi_check_chap_params`): CHAP cannot be
    /// both disabled and required, mutual CHAP needs CHAP required, and a
    /// group tag is not negative (checked by the type).
    pub fn valid(&self) -> bool {
        let both = self.disable_chap && self.require_chap;
        let mutual_alone = self.mutual_chap && !self.require_chap;
        !both && !mutual_alone
    }
}

/// An initiator group: who may log in, by name and by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitiatorGroup {
    /// Initiator names; `ANY` admits every name, `!name` refuses one.
    pub initiators: Vec<String>,
    /// Netmasks: `ANY`, an address, `addr/bits`, `[v6]/bits`.
    pub netmasks: Vec<String>,
}

/// Most names or netmasks one initiator group holds (SPDK's
/// `MAX_INITIATOR` and `MAX_NETMASK` are 256).
pub const MAX_GROUP_ENTRIES: usize = 256;

/// What an initiator group says of an initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A `!name` (or `!ANY`) rule named it first: refused, whatever other
    /// groups say.
    Deny,
    /// A name rule named it first and a netmask admits its address.
    Allow,
    /// Nothing here decides: the next group is asked.
    Undecided,
}

impl InitiatorGroup {
    /// SPDK's rule: the first initiator entry that names the initiator
    /// (`ANY` names everyone) decides; `!` refuses. A name allowed counts
    /// only if one of the group's netmasks admits `peer` (with `None`, the
    /// address is not looked at: SendTargets).
    pub fn decide(&self, name: &str, peer: Option<IpAddr>) -> Decision {
        for i in &self.initiators {
            let (deny, n) = match i.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, i.as_str()),
            };
            if n != "ANY" && !n.eq_ignore_ascii_case(name) {
                continue;
            }
            if deny {
                return Decision::Deny;
            }
            let addressed = match peer {
                None => true,
                Some(p) => self.netmasks.iter().any(|m| netmask_matches(m, p)),
            };
            return if addressed {
                Decision::Allow
            } else {
                Decision::Undecided
            };
        }
        Decision::Undecided
    }
}

/// A netmask rule (SPDK's forms): `ANY`, `a.b.c.d[/n]` (n up to 32),
/// `[v6][/n]` (n up to 128), or a bare IPv6 address. The top n bits of the
/// rule's address and the peer's must agree; without `/n`, all of them.
/// IPv4-mapped IPv6 peers are compared as IPv4.
pub fn netmask_matches(rule: &str, peer: IpAddr) -> bool {
    if rule.eq_ignore_ascii_case("ANY") {
        return true;
    }
    let Some((addr, bits)) = parse_netmask(rule) else {
        return false;
    };
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        p => p,
    };
    match (addr, peer) {
        (IpAddr::V4(a), IpAddr::V4(p)) => {
            let n = u32::from(bits.unwrap_or(32));
            let mask = u32::MAX.checked_shl(32 - n).unwrap_or(0);
            u32::from(a) & mask == u32::from(p) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(p)) => {
            let n = u32::from(bits.unwrap_or(128));
            let mask = u128::MAX.checked_shl(128 - n).unwrap_or(0);
            u128::from(a) & mask == u128::from(p) & mask
        }
        _ => false,
    }
}

/// A netmask's address and prefix length, if well formed.
fn parse_netmask(rule: &str) -> Option<(IpAddr, Option<u8>)> {
    let (host, bits) = match rule.strip_prefix('[') {
        Some(rest) => {
            let (h, after) = rest.split_once(']')?;
            match after {
                "" => (h, None),
                a => (h, Some(a.strip_prefix('/')?)),
            }
        }
        None => match rule.split_once('/') {
            Some((h, b)) => (h, Some(b)),
            None => (rule, None),
        },
    };
    let addr: IpAddr = host.parse().ok()?;
    let bits = match bits {
        None => None,
        Some(b) => {
            let n: u8 = b.parse().ok()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if n > max {
                return None;
            }
            Some(n)
        }
    };
    Some((addr, bits))
}

/// Whether a netmask rule is well formed.
pub fn netmask_valid(rule: &str) -> bool {
    rule.eq_ignore_ascii_case("ANY") || parse_netmask(rule).is_some()
}

/// Whether an initiator name rule is well formed: a name (or `ANY`),
/// possibly behind `!`, at most 223 bytes (RFC 7143 §4.2.7.1).
pub fn initiator_rule_valid(rule: &str) -> bool {
    let n = rule.strip_prefix('!').unwrap_or(rule);
    !n.is_empty() && n.len() <= 223 && !n.bytes().any(|c| c.is_ascii_whitespace() || c == b',')
}

/// One CHAP secret of an auth group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChapSecret {
    /// The initiator's user name.
    pub user: String,
    /// Its secret.
    pub secret: String,
    /// Our name for mutual CHAP with this initiator.
    pub muser: Option<String>,
    /// Our secret for mutual CHAP.
    pub msecret: Option<String>,
}

/// An auth group: CHAP secrets by user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthGroup {
    /// Secrets, in the order added.
    pub secrets: Vec<ChapSecret>,
}

/// Most secrets one auth group holds.
pub const MAX_SECRETS: usize = 64;

/// What a bdev stands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevKind {
    /// A file or block device (SPDK's `bdev_aio_create`): served by the
    /// `rdwr` store.
    Aio {
        /// The file.
        filename: String,
    },
    /// No medium: reads return zeros, writes are dropped.
    Null,
    /// A Ceph RBD image.
    Rbd {
        /// Pool.
        pool: String,
        /// Image.
        image: String,
        /// Ceph user (`client.<id>`), if not the default.
        user_id: Option<String>,
        /// ceph.conf settings (`key=value`), in order.
        config: Vec<(String, String)>,
    },
}

/// A named backing store (SPDK's bdev), ready to be a LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bdev {
    /// Unique name.
    pub name: String,
    /// What it stands on.
    pub kind: BdevKind,
    /// Logical block size.
    pub block_size: u32,
    /// Blocks (for a file: its size when created).
    pub num_blocks: u64,
    /// Read-only.
    pub readonly: bool,
    /// UUID (random when not given).
    pub uuid: String,
}

impl Bdev {
    /// tgt's backing store type for this bdev.
    pub fn bstype(&self) -> &'static str {
        match self.kind {
            BdevKind::Aio { .. } => "rdwr",
            BdevKind::Null => "null",
            BdevKind::Rbd { .. } => "rbd",
        }
    }

    /// tgt's backing path.
    pub fn path(&self) -> Option<String> {
        match &self.kind {
            BdevKind::Aio { filename } => Some(filename.clone()),
            BdevKind::Null => Some("null".into()),
            BdevKind::Rbd { pool, image, .. } => Some(format!("{pool}/{image}")),
        }
    }

    /// tgt's `--bsopts` for this bdev (rbd: `id=<user>` and the ceph.conf
    /// settings as `key=value`, `;`-separated).
    pub fn bsopts(&self) -> Option<String> {
        match &self.kind {
            BdevKind::Rbd {
                user_id, config, ..
            } => {
                let mut v: Vec<String> = Vec::new();
                if let Some(u) = user_id {
                    v.push(format!("id={u}"));
                }
                for (k, val) in config {
                    v.push(format!("{k}={val}"));
                }
                (!v.is_empty()).then(|| v.join(";"))
            }
            _ => None,
        }
    }

    /// SPDK's product name for `bdev_get_bdevs`.
    pub fn product_name(&self) -> &'static str {
        match self.kind {
            BdevKind::Aio { .. } => "AIO disk",
            BdevKind::Null => "Null disk",
            BdevKind::Rbd { .. } => "Ceph Rbd Disk",
        }
    }
}

/// Whether a bdev name is usable: SPDK's CLI splits `name:lun` pairs on
/// colons and spaces, so neither may appear.
pub fn bdev_name_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .bytes()
            .any(|c| c == b':' || c.is_ascii_whitespace() || c.is_ascii_control())
}

/// A (portal group, initiator group) pair of a target node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgIgMap {
    /// Portal group tag.
    pub pg: u16,
    /// Initiator group tag.
    pub ig: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    impl InitiatorGroup {
        fn admits(&self, name: &str, peer: IpAddr) -> bool {
            self.decide(name, Some(peer)) == Decision::Allow
        }
    }

    #[test]
    fn initiator_group_needs_a_name_and_a_netmask_and_honours_denials() {
        let g = InitiatorGroup {
            initiators: vec!["!iqn.bad".into(), "ANY".into()],
            netmasks: vec!["127.0.0.0/8".into()],
        };
        assert!(g.admits("iqn.good", ip("127.0.0.9")));
        assert!(!g.admits("iqn.bad", ip("127.0.0.9")));
        // Order matters, as in SPDK: an ANY before the denial admits first.
        let g2 = InitiatorGroup {
            initiators: vec!["ANY".into(), "!iqn.bad".into()],
            ..g.clone()
        };
        assert!(g2.admits("iqn.bad", ip("127.0.0.9")));
        assert!(!g.admits("iqn.good", ip("10.0.0.1")));
        let g = InitiatorGroup {
            initiators: vec!["iqn.one".into()],
            netmasks: vec!["ANY".into()],
        };
        assert!(g.admits("IQN.ONE", ip("10.0.0.1")));
        assert!(!g.admits("iqn.two", ip("10.0.0.1")));
        assert!(!InitiatorGroup::default().admits("x", ip("::1")));
        assert!(netmask_matches("127.0.0.1/32", ip("127.0.0.1")));
        assert!(!netmask_matches("127.0.0.1/32", ip("127.0.0.2")));
        // Host bits in the rule are masked off, as SPDK does; /128 works.
        assert!(netmask_matches("10.1.2.3/8", ip("10.9.9.9")));
        assert!(netmask_matches("[::1]/128", ip("::1")));
        assert!(netmask_matches("127.0.0.0/8", ip("::ffff:127.0.0.5")));
        assert!(netmask_matches("0.0.0.0/0", ip("192.0.2.1")));
        // The first entry that names the initiator decides.
        let g = InitiatorGroup {
            initiators: vec!["iqn.a".into(), "!ANY".into()],
            netmasks: vec!["ANY".into()],
        };
        assert_eq!(g.decide("iqn.a", Some(ip("1.1.1.1"))), Decision::Allow);
        assert_eq!(g.decide("iqn.b", Some(ip("1.1.1.1"))), Decision::Deny);
        // A name allowed from outside the netmasks leaves it to others.
        let g = InitiatorGroup {
            initiators: vec!["ANY".into()],
            netmasks: vec!["10.0.0.0/8".into()],
        };
        assert_eq!(g.decide("iqn.a", Some(ip("1.1.1.1"))), Decision::Undecided);
        assert_eq!(g.decide("iqn.a", None), Decision::Allow);
    }

    #[test]
    fn rule_syntax() {
        for ok in [
            "ANY",
            "10.0.0.0/8",
            "1.2.3.4",
            "[::1]",
            "[fe80::]/64",
            "::1",
        ] {
            assert!(netmask_valid(ok), "{ok}");
        }
        for bad in ["", "10.0.0.0/33", "x/8", "[::1", "[::1]x", "1.2.3.4/a"] {
            assert!(!netmask_valid(bad), "{bad}");
        }
        assert!(initiator_rule_valid("!iqn.x"));
        assert!(!initiator_rule_valid("a b"));
        assert!(!initiator_rule_valid("!"));
        assert!(bdev_name_valid("Malloc0"));
        assert!(!bdev_name_valid("a:b"));
        assert!(!bdev_name_valid(""));
    }

    #[test]
    fn node_auth_rules() {
        let a = |d, r, m| NodeAuth {
            disable_chap: d,
            require_chap: r,
            mutual_chap: m,
            chap_group: 0,
        };
        assert!(a(false, false, false).valid());
        assert!(a(false, true, true).valid());
        assert!(!a(true, true, false).valid());
        assert!(!a(false, false, true).valid());
    }
}
