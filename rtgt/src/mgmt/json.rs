//! `rtgtadm --json`: machine-readable `show` output (an rtgt extension;
//! tgt has none). rtgtadm asks for it with `json=1` in the parameter
//! string, which the stock tgtadm never sends for `show`, so stock clients
//! keep tgt's text.
//!
//! A small hand-written value type and writer (RFC 8259): the documents
//! are a few kilobytes, made once per request.

use std::fmt::Write;

use super::live::{Live, SessionInfo};
use super::params::{value_text, SESSION_KEYS};
use super::table::{LunSpec, Target, TargetTable};

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An unsigned integer.
    UInt(u64),
    /// A signed integer.
    Int(i64),
    /// A string (escaped when written).
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object; keys in the order given.
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A string, or `null` for `None`.
    pub fn opt_str(s: Option<&str>) -> Json {
        s.map(Json::str).unwrap_or(Json::Null)
    }

    /// Write compactly, with a trailing newline (one document per answer).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s.push('\n');
        s
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::UInt(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => escape(out, s),
            Json::Arr(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    x.write(out);
                }
                out.push(']');
            }
            Json::Obj(v) => {
                out.push('{');
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape(out, k);
                    out.push(':');
                    x.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// A JSON string literal (RFC 8259 section 7): quote, backslash and
/// control characters escaped; everything else as UTF-8.
fn escape(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn strings<'a>(v: impl IntoIterator<Item = &'a String>) -> Json {
    Json::Arr(v.into_iter().map(|s| Json::str(s.as_str())).collect())
}

/// Sessions and their connections (`sid` is the I_T nexus id `--sid`
/// takes).
pub fn session(s: &SessionInfo) -> Json {
    Json::Obj(vec![
        ("sid", Json::UInt(s.nexus_id)),
        ("initiator", Json::str(s.initiator.as_str())),
        ("alias", Json::opt_str(s.alias.as_deref())),
        (
            "connections",
            Json::Arr(
                s.connections
                    .iter()
                    .map(|c| {
                        Json::Obj(vec![
                            ("cid", Json::UInt(c.cid as u64)),
                            ("address", Json::str(c.peer.ip().to_string())),
                            ("port", Json::UInt(c.peer.port() as u64)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

/// Every attribute of a logical unit.
pub fn lun(l: &LunSpec, prevent_removal: bool) -> Json {
    let hex = |d: &[u8]| {
        d.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    Json::Obj(vec![
        ("lun", Json::UInt(l.lun)),
        ("type", Json::str(l.device_type.name())),
        ("scsi_id", Json::str(l.scsi_id.as_str())),
        ("scsi_sn", Json::str(l.scsi_sn.as_str())),
        ("vendor_id", Json::str(l.vendor_id.as_str())),
        ("product_id", Json::str(l.product_id.as_str())),
        ("product_rev", Json::str(l.product_rev.as_str())),
        ("size_bytes", Json::UInt(l.size_bytes)),
        ("block_size", Json::UInt(l.block_size as u64)),
        ("online", Json::Bool(l.online)),
        ("removable", Json::Bool(l.removable)),
        ("prevent_removal", Json::Bool(prevent_removal)),
        ("readonly", Json::Bool(l.readonly)),
        ("swp", Json::Bool(l.swp)),
        ("thin_provisioning", Json::Bool(l.thin_provisioning)),
        ("thin_threshold", Json::UInt(l.thin_threshold as u64)),
        (
            "sense_format",
            Json::str(if l.sense_format {
                "descriptor"
            } else {
                "fixed"
            }),
        ),
        ("rotation_rate", Json::UInt(l.rotation_rate as u64)),
        ("lbppbe", Json::UInt(l.lbppbe as u64)),
        ("la_lba", Json::UInt(l.la_lba as u64)),
        (
            "optimal_xfer_gran",
            l.optimal_xfer_gran
                .map(|v| Json::UInt(v as u64))
                .unwrap_or(Json::Null),
        ),
        (
            "optimal_xfer_len",
            l.optimal_xfer_len
                .map(|v| Json::UInt(v as u64))
                .unwrap_or(Json::Null),
        ),
        ("backing_store_type", Json::str(l.bstype.as_str())),
        ("backing_store_path", Json::opt_str(l.path.as_deref())),
        ("backing_store_flags", Json::str(l.bsoflags.to_string())),
        ("bsopts", Json::opt_str(l.bsopts.as_deref())),
        (
            "mode_pages",
            Json::Arr(
                l.mode_pages
                    .iter()
                    .map(|p| {
                        Json::Obj(vec![
                            ("pcode", Json::UInt(p.pcode as u64)),
                            ("subpcode", Json::UInt(p.subpcode as u64)),
                            ("data", Json::str(hex(&p.data))),
                        ])
                    })
                    .collect(),
            ),
        ),
    ])
}

/// Account names bound to a target or globally; never passwords.
fn bindings(table: &TargetTable, incoming: &[u32], outgoing: Option<u32>) -> Json {
    let user = |aid: u32| table.account_by_id(aid).map(|a| a.user.clone());
    Json::Obj(vec![
        (
            "incoming",
            Json::Arr(
                incoming
                    .iter()
                    .filter_map(|&a| user(a))
                    .map(Json::Str)
                    .collect(),
            ),
        ),
        (
            "outgoing",
            Json::opt_str(outgoing.and_then(user).as_deref()),
        ),
    ])
}

/// One target with everything `show` prints about it, and its session
/// parameter offers (what `show --tid N` prints).
pub fn target(table: &TargetTable, t: &Target, live: &dyn Live) -> Json {
    let mut sessions = live.sessions(t.tid);
    sessions.sort_by_key(|s| s.nexus_id);
    let params = SESSION_KEYS
        .iter()
        .enumerate()
        .map(|(i, k)| (k.name, Json::Str(value_text(i, t.params.0[i]))))
        .collect();
    let redirect = if t.redirect.addr.is_empty() && t.redirect.callback.is_none() {
        Json::Null
    } else {
        Json::Obj(vec![
            ("address", Json::str(t.redirect.addr.as_str())),
            ("port", Json::str(t.redirect.port.as_str())),
            (
                "reason",
                Json::str(match t.redirect.temporary {
                    Some(true) => "Temporary",
                    Some(false) => "Permanent",
                    None => "Unknown",
                }),
            ),
            ("callback", Json::opt_str(t.redirect.callback.as_deref())),
        ])
    };
    Json::Obj(vec![
        ("tid", Json::UInt(t.tid as u64)),
        ("name", Json::str(t.name.as_str())),
        ("driver", Json::str("iscsi")),
        ("state", Json::str(t.state.name())),
        ("nop_interval", Json::Int(t.nop_interval as i64)),
        ("nop_count", Json::Int(t.nop_count as i64)),
        (
            "sessions",
            Json::Arr(sessions.iter().map(session).collect()),
        ),
        (
            "luns",
            Json::Arr(
                t.luns
                    .values()
                    .map(|l| lun(l, live.prevent_removal(t.tid, l.lun)))
                    .collect(),
            ),
        ),
        ("accounts", bindings(table, &t.incoming, t.outgoing)),
        (
            "acl",
            Json::Obj(vec![
                ("initiator_addresses", strings(&t.acl_addresses)),
                ("initiator_names", strings(&t.acl_initiators)),
            ]),
        ),
        ("params", Json::Obj(params)),
        ("redirect", redirect),
    ])
}

/// `--mode target --op show [--tid N] --json`.
pub fn targets(table: &TargetTable, only: Option<&Target>, live: &dyn Live) -> String {
    let list: Vec<Json> = match only {
        Some(t) => vec![target(table, t, live)],
        None => table.targets().map(|t| target(table, t, live)).collect(),
    };
    Json::Obj(vec![("targets", Json::Arr(list))]).to_text()
}

/// `--mode system --op show --json`.
pub fn system(t: &TargetTable) -> String {
    Json::Obj(vec![(
        "system",
        Json::Obj(vec![
            ("state", Json::str(t.system_state.name())),
            ("debug", Json::Bool(t.debug)),
            (
                "llds",
                Json::Arr(
                    t.info
                        .llds
                        .iter()
                        .map(|(n, s)| {
                            Json::Obj(vec![
                                ("name", Json::str(n.as_str())),
                                ("state", Json::str(s.as_str())),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "backing_stores",
                Json::Arr(
                    t.info
                        .backing_stores
                        .iter()
                        .map(|b| {
                            Json::Obj(vec![
                                ("name", Json::str(b.name.as_str())),
                                ("bsoflags", Json::str(b.oflags.to_string())),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "device_types",
                Json::Arr(
                    t.info
                        .device_types
                        .iter()
                        .map(|d| Json::str(d.name()))
                        .collect(),
                ),
            ),
            (
                "accounts",
                bindings(t, &t.global_incoming, t.global_outgoing),
            ),
            (
                "isns",
                Json::Obj(vec![
                    ("enabled", Json::Bool(t.isns.enabled)),
                    ("server_ip", Json::str(t.isns.server_ip.as_str())),
                    ("server_port", Json::Int(t.isns.server_port as i64)),
                    ("access_control", Json::Bool(t.isns.access_control)),
                ]),
            ),
        ]),
    )])
    .to_text()
}

/// `--mode account --op show --json`: user names only, never secrets.
pub fn accounts(table: &TargetTable) -> String {
    Json::Obj(vec![(
        "accounts",
        Json::Arr(
            table
                .accounts
                .iter()
                .map(|a| {
                    Json::Obj(vec![
                        ("aid", Json::UInt(a.aid as u64)),
                        ("user", Json::str(a.user.as_str())),
                    ])
                })
                .collect(),
        ),
    )])
    .to_text()
}

/// `--mode portal --op show --json`.
pub fn portals(table: &TargetTable) -> String {
    Json::Obj(vec![(
        "portals",
        Json::Arr(
            table
                .portals
                .iter()
                .map(|p| {
                    Json::Obj(vec![
                        ("address", Json::str(p.addr.ip().to_string())),
                        ("port", Json::UInt(p.addr.port() as u64)),
                        ("tpgt", Json::UInt(p.tpgt as u64)),
                    ])
                })
                .collect(),
        ),
    )])
    .to_text()
}

/// `--mode lld --op show --json`.
pub fn llds(table: &TargetTable) -> String {
    Json::Obj(vec![(
        "llds",
        Json::Arr(
            table
                .info
                .llds
                .iter()
                .map(|(name, state)| {
                    let targets = if name == "iscsi" {
                        table
                            .targets()
                            .map(|t| {
                                Json::Obj(vec![
                                    ("tid", Json::UInt(t.tid as u64)),
                                    ("name", Json::str(t.name.as_str())),
                                ])
                            })
                            .collect()
                    } else {
                        Vec::new()
                    };
                    Json::Obj(vec![
                        ("name", Json::str(name.as_str())),
                        ("state", Json::str(state.as_str())),
                        ("targets", Json::Arr(targets)),
                    ])
                })
                .collect(),
        ),
    )])
    .to_text()
}

/// `--mode conn --op show --tid N --json`.
pub fn connections(sessions: &[SessionInfo]) -> String {
    let mut v: Vec<&SessionInfo> = sessions.iter().collect();
    v.sort_by_key(|s| s.nexus_id);
    Json::Obj(vec![(
        "sessions",
        Json::Arr(v.into_iter().map(session).collect()),
    )])
    .to_text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        let j = Json::Obj(vec![
            ("a", Json::str("q\"b\\n\n\u{1}é")),
            (
                "b",
                Json::Arr(vec![Json::UInt(1), Json::Int(-2), Json::Null]),
            ),
            ("c", Json::Bool(true)),
        ]);
        assert_eq!(
            j.to_text(),
            "{\"a\":\"q\\\"b\\\\n\\n\\u0001é\",\"b\":[1,-2,null],\"c\":true}\n"
        );
    }
}
