//! A typed management request and the small C-compatible parsers tgt uses
//! for its parameter strings.

/// `enum tgtadm_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MODE_SYSTEM (0).
    System,
    /// MODE_TARGET (1).
    Target,
    /// MODE_DEVICE (2): `--mode logicalunit`.
    Device,
    /// MODE_PORTAL (3).
    Portal,
    /// MODE_LLD (4).
    Lld,
    /// MODE_SESSION (5).
    Session,
    /// MODE_CONNECTION (6).
    Connection,
    /// MODE_ACCOUNT (7).
    Account,
    /// Any other value.
    Other(u32),
}

impl Mode {
    /// From the wire value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::System,
            1 => Self::Target,
            2 => Self::Device,
            3 => Self::Portal,
            4 => Self::Lld,
            5 => Self::Session,
            6 => Self::Connection,
            7 => Self::Account,
            o => Self::Other(o),
        }
    }

    /// The wire value.
    pub fn raw(self) -> u32 {
        match self {
            Self::System => 0,
            Self::Target => 1,
            Self::Device => 2,
            Self::Portal => 3,
            Self::Lld => 4,
            Self::Session => 5,
            Self::Connection => 6,
            Self::Account => 7,
            Self::Other(o) => o,
        }
    }

    /// tgtadm's `--mode` names (`str_to_mode`).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "system" | "sys" => Self::System,
            "target" | "tgt" => Self::Target,
            "logicalunit" | "lu" => Self::Device,
            "portal" | "pt" => Self::Portal,
            "session" | "sess" => Self::Session,
            "connection" | "conn" => Self::Connection,
            "account" => Self::Account,
            "lld" => Self::Lld,
            _ => return None,
        })
    }
}

/// `enum tgtadm_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// OP_NEW (0).
    New,
    /// OP_DELETE (1).
    Delete,
    /// OP_SHOW (2).
    Show,
    /// OP_BIND (3).
    Bind,
    /// OP_UNBIND (4).
    Unbind,
    /// OP_UPDATE (5).
    Update,
    /// OP_STATS (6).
    Stats,
    /// OP_START (7).
    Start,
    /// OP_STOP (8).
    Stop,
    /// Any other value.
    Other(u32),
}

impl Op {
    /// From the wire value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::New,
            1 => Self::Delete,
            2 => Self::Show,
            3 => Self::Bind,
            4 => Self::Unbind,
            5 => Self::Update,
            6 => Self::Stats,
            7 => Self::Start,
            8 => Self::Stop,
            o => Self::Other(o),
        }
    }

    /// The wire value.
    pub fn raw(self) -> u32 {
        match self {
            Self::New => 0,
            Self::Delete => 1,
            Self::Show => 2,
            Self::Bind => 3,
            Self::Unbind => 4,
            Self::Update => 5,
            Self::Stats => 6,
            Self::Start => 7,
            Self::Stop => 8,
            Self::Other(o) => o,
        }
    }

    /// tgtadm's `--op` names (`str_to_op`).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "new" => Self::New,
            "delete" => Self::Delete,
            "bind" => Self::Bind,
            "unbind" => Self::Unbind,
            "show" => Self::Show,
            "update" => Self::Update,
            "stat" => Self::Stats,
            "start" => Self::Start,
            "stop" => Self::Stop,
            _ => return None,
        })
    }
}

/// Account direction (`ac_dir`): incoming (the initiator authenticates to
/// us) or outgoing (mutual CHAP, we authenticate to the initiator).
pub const ACCOUNT_INCOMING: u32 = 0;
/// See [`ACCOUNT_INCOMING`].
pub const ACCOUNT_OUTGOING: u32 = 1;

/// One management request, as decoded from `struct tgtadm_req` and its
/// parameter string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the request is about.
    pub mode: Mode,
    /// What to do.
    pub op: Op,
    /// Low-level driver name; empty means the first (iscsi).
    pub lld: String,
    /// Target id; -1 when not given (or the global account target).
    pub tid: i32,
    /// Session id.
    pub sid: u64,
    /// Logical unit number; `u64::MAX` when not given.
    pub lun: u64,
    /// Connection id.
    pub cid: u32,
    /// SCSI host number (host bindings).
    pub host_no: u32,
    /// SCSI peripheral device type (0 disk, 1 tape, 5 cd, 8 changer, 0x11
    /// osd, 0xff passthrough).
    pub device_type: u32,
    /// Account direction ([`ACCOUNT_INCOMING`] or [`ACCOUNT_OUTGOING`]).
    pub ac_dir: u32,
    /// `--force`.
    pub force: bool,
    /// The parameter string, without its NUL.
    pub params: String,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            mode: Mode::System,
            op: Op::Show,
            lld: String::new(),
            tid: -1,
            sid: 0,
            lun: u64::MAX,
            cid: 0,
            host_no: 0,
            device_type: 0,
            ac_dir: ACCOUNT_INCOMING,
            force: false,
            params: String::new(),
        }
    }
}

impl Request {
    /// The comma-separated items of the parameter string, empty ones
    /// skipped.
    pub fn items(&self) -> impl Iterator<Item = &str> {
        self.params.split(',').filter(|s| !s.is_empty())
    }

    /// The value after the first `key=` in the parameter string (tgt uses
    /// `strstr`), up to the next comma.
    pub fn find_value(&self, key: &str) -> Option<&str> {
        let pat = format!("{key}=");
        let at = self.params.find(&pat)? + pat.len();
        let rest = &self.params[at..];
        Some(rest.split(',').next().unwrap_or(""))
    }

    /// The value after the first `key=`, to the end of the string.
    pub fn find_rest(&self, key: &str) -> Option<&str> {
        let pat = format!("{key}=");
        let at = self.params.find(&pat)? + pat.len();
        Some(&self.params[at..])
    }
}

/// Split `key=value` at the first `=`.
pub fn split_kv(item: &str) -> Option<(&str, &str)> {
    item.split_once('=')
}

/// C `strtoull(s, &end, base)` with base 0 semantics (`0x` hex, leading `0`
/// octal): returns the value and how many bytes were consumed (0 when no
/// digits). Overflow saturates to `u64::MAX`, as C does. A leading `-`
/// negates modulo 2^64, as C does.
pub fn c_strtoull(s: &str, base0: u32) -> (u64, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i] == b' ' || (b'\t'..=b'\r').contains(&b[i])) {
        i += 1;
    }
    let mut neg = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        neg = b[i] == b'-';
        i += 1;
    }
    let mut base = base0;
    if (base == 0 || base == 16)
        && i + 1 < b.len()
        && b[i] == b'0'
        && (b[i + 1] == b'x' || b[i + 1] == b'X')
        && i + 2 < b.len()
        && (b[i + 2] as char).is_ascii_hexdigit()
    {
        i += 2;
        base = 16;
    } else if base == 0 {
        base = if i < b.len() && b[i] == b'0' { 8 } else { 10 };
    }
    let start = i;
    let mut v: u64 = 0;
    let mut overflow = false;
    while i < b.len() {
        let d = match (b[i] as char).to_digit(base) {
            Some(d) => d as u64,
            None => break,
        };
        match v.checked_mul(base as u64).and_then(|x| x.checked_add(d)) {
            Some(n) => v = n,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start {
        return (0, 0);
    }
    if overflow {
        return (u64::MAX, i);
    }
    (if neg { v.wrapping_neg() } else { v }, i)
}

/// C `atoi` (base 10, stops at the first non-digit, 0 when none), with the
/// result truncated to 32 bits as glibc's `(int)strtol` does.
pub fn c_atoi(s: &str) -> i32 {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut v: i64 = 0;
    for c in digits.bytes() {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.saturating_mul(10).saturating_add((c - b'0') as i64);
    }
    let v = if neg { -v } else { v };
    v as i32
}

/// C `strtol(s, NULL, 0)` truncated to `unsigned int`, as tgt's
/// `range_str_to_val` and `strtoul(.., 0)` uses do.
pub fn c_strtoul_u32(s: &str) -> u32 {
    c_strtoull(s, 0).0 as u32
}

/// tgtadm's parameter string (`usr/tgtadm.c` builds it in this order):
/// `name=value` from `-n/-v`, then path, bstype, bsopts, bsoflags,
/// blocksize, targetname, initiator-address, initiator-name, user,
/// password, and the `targetOps`/`portalOps` lists with tgtadm's trailing
/// comma. `opts` maps each short option letter to its value.
pub fn tgtadm_params(
    opts: &std::collections::HashMap<char, String>,
    device_type: u32,
    target_ops: Option<&str>,
    portal_ops: Option<&str>,
) -> String {
    let mut b = String::new();
    let mut add = |k: &str, v: &str| {
        if !b.is_empty() {
            b.push(',');
        }
        b.push_str(k);
        b.push_str(v);
    };
    if let Some(n) = opts.get(&'n') {
        let v = opts.get(&'v').map(String::as_str).unwrap_or("(null)");
        add("", &format!("{n}={v}"));
    }
    if let Some(p) = opts.get(&'b') {
        add("path=", p);
    }
    if device_type == 0x01 {
        add("bstype=", "ssc");
    } else if let Some(v) = opts.get(&'E') {
        add("bstype=", v);
    }
    for (c, k) in [
        ('S', "bsopts="),
        ('f', "bsoflags="),
        ('y', "blocksize="),
        ('T', "targetname="),
        ('I', "initiator-address="),
        ('Q', "initiator-name="),
        ('u', "user="),
        ('p', "password="),
    ] {
        if let Some(v) = opts.get(&c) {
            add(k, v);
        }
    }
    if let Some(v) = target_ops {
        add("targetOps ", &format!("{v},"));
    }
    if let Some(v) = portal_ops {
        add("portalOps ", &format!("{v},"));
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtoull_like_c() {
        assert_eq!(c_strtoull("12abc", 0), (12, 2));
        assert_eq!(c_strtoull("0x10", 0), (16, 4));
        assert_eq!(c_strtoull("010", 0), (8, 3));
        assert_eq!(c_strtoull("abc", 0), (0, 0));
        assert_eq!(c_strtoull("-1", 0).0, u64::MAX);
        assert_eq!(c_strtoull("99999999999999999999999", 0).0, u64::MAX);
        assert_eq!(c_atoi("42x"), 42);
        assert_eq!(c_atoi("-3"), -3);
        assert_eq!(c_atoi("x"), 0);
    }

    #[test]
    fn find_value_stops_at_comma() {
        let r = Request {
            params: "initiator-address=1.2.3.4,initiator-name=iqn.x".into(),
            ..Request::default()
        };
        assert_eq!(r.find_value("initiator-address"), Some("1.2.3.4"));
        assert_eq!(r.find_value("initiator-name"), Some("iqn.x"));
        assert_eq!(r.find_value("user"), None);
    }
}
