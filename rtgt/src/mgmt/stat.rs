//! `--op stat`: I/O counters per target, LUN, session and connection.
//!
//! tgt 1.0.85 answers stat in five modes (`usr/target.c` tgt_stat_*,
//! `usr/iscsi/target.c` iscsi_stat*): system, target and logicalunit print
//! one line per (LUN, I_T nexus) under the header
//! `tgt lun sid rd_subm(bytes,cmds) ...`; session prints its nexus' lines
//! and a connection table (`sid cid rxdata_octets ...`); conn prints the
//! connection table for one connection. Sessions are found by `--sid`
//! alone (tgt ignores `--tid` there).
//!
//! Three renderings of the same counters:
//! - tgt's text (default), in tgt's layout. rtgt counts per LUN and per
//!   session, not per (LUN, session), and not per data direction: a
//!   column rtgt cannot fill shows `-` (see README, "Statistics").
//! - `counters=1` (`rtgtadm --counters`): one line per object with every
//!   counter rtgt keeps.
//! - `json=1` (`rtgtadm --json`).

use std::fmt::Write;

use super::ipc::TgtadmError;
use super::json::Json;
use super::live::{Live, Snapshot, TargetCounters};
use super::request::{Mode, Request};
use super::table::TargetTable;

/// What a stat request covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    System,
    Target,
    Lun,
    Session,
    Conn,
}

struct ConnStat {
    cid: u32,
    c: Snapshot,
}

struct SessStat {
    sid: u64,
    initiator: String,
    c: Snapshot,
    conns: Vec<ConnStat>,
}

struct TgtStat {
    tid: u32,
    name: String,
    c: Snapshot,
    luns: Vec<(u64, Snapshot)>,
    sessions: Vec<SessStat>,
}

/// The counters of one target, its units (all of the table's, zero when
/// never used) and its live sessions, oldest first.
fn collect_target(table: &TargetTable, tid: u32, live: &dyn Live) -> Option<TgtStat> {
    let t = table.target(tid)?;
    let k: TargetCounters = live.counters(tid).unwrap_or_default();
    let luns = t
        .luns
        .keys()
        .map(|&l| {
            let c = k.luns.iter().find(|x| x.0 == l).map(|x| x.1);
            (l, c.unwrap_or_default())
        })
        .collect();
    let mut infos = live.sessions(tid);
    infos.sort_by_key(|s| s.nexus_id);
    let sessions = infos
        .into_iter()
        .map(|s| {
            let sk = k.sessions.iter().find(|x| x.0 == s.nexus_id);
            let conns = s
                .connections
                .iter()
                .map(|ci| ConnStat {
                    cid: ci.cid,
                    c: sk
                        .and_then(|x| x.2.iter().find(|y| y.0 == ci.cid))
                        .map(|y| y.1)
                        .unwrap_or_default(),
                })
                .collect();
            SessStat {
                sid: s.nexus_id,
                initiator: s.initiator,
                c: sk.map(|x| x.1).unwrap_or_default(),
                conns,
            }
        })
        .collect();
    Some(TgtStat {
        tid,
        name: t.name.clone(),
        c: k.total,
        luns,
        sessions,
    })
}

/// The target holding session `sid`, narrowed to that session (tgt looks
/// sessions up by id alone, whatever `--tid` says).
fn find_session(table: &TargetTable, sid: u64, live: &dyn Live) -> Option<TgtStat> {
    let tids: Vec<u32> = table.targets().map(|t| t.tid).collect();
    for tid in tids {
        if !live.sessions(tid).iter().any(|s| s.nexus_id == sid) {
            continue;
        }
        let mut t = collect_target(table, tid, live)?;
        t.luns.clear();
        t.sessions.retain(|s| s.sid == sid);
        return Some(t);
    }
    None
}

fn collect(
    table: &TargetTable,
    req: &Request,
    live: &dyn Live,
) -> Result<(Scope, Vec<TgtStat>), TgtadmError> {
    let tid = u32::try_from(req.tid).ok().filter(|&t| t > 0);
    let one = |tid: Option<u32>| {
        tid.and_then(|t| collect_target(table, t, live))
            .ok_or(TgtadmError::NoTarget)
    };
    match req.mode {
        Mode::System => {
            let tids: Vec<u32> = table.targets().map(|t| t.tid).collect();
            let v = tids
                .into_iter()
                .filter_map(|t| collect_target(table, t, live))
                .collect();
            Ok((Scope::System, v))
        }
        Mode::Target => Ok((Scope::Target, vec![one(tid)?])),
        // tgt's device_mgmt: with a session id the driver prints that
        // session's statistics instead.
        Mode::Device if req.sid != 0 => {
            let t = find_session(table, req.sid, live).ok_or(TgtadmError::NoSession)?;
            Ok((Scope::Session, vec![t]))
        }
        Mode::Device => {
            let mut t = one(tid)?;
            if !t.luns.iter().any(|l| l.0 == req.lun) {
                return Err(TgtadmError::NoLun);
            }
            t.luns.retain(|l| l.0 == req.lun);
            t.sessions.clear();
            Ok((Scope::Lun, vec![t]))
        }
        Mode::Session => {
            let t = find_session(table, req.sid, live).ok_or(TgtadmError::NoSession)?;
            Ok((Scope::Session, vec![t]))
        }
        Mode::Connection => {
            let mut t = find_session(table, req.sid, live).ok_or(TgtadmError::NoSession)?;
            let s = &mut t.sessions[0];
            if !s.conns.iter().any(|c| c.cid == req.cid) {
                return Err(TgtadmError::NoConnection);
            }
            s.conns.retain(|c| c.cid == req.cid);
            Ok((Scope::Conn, vec![t]))
        }
        _ => Err(TgtadmError::InvalidRequest),
    }
}

/// Answer `--op stat` in `req.mode`: tgt's text, or with `json=1` /
/// `counters=1` in the parameters rtgt's own renderings.
pub fn stat(table: &TargetTable, req: &Request, live: &dyn Live) -> Result<String, TgtadmError> {
    let (scope, targets) = collect(table, req, live)?;
    if wants(req, "json") {
        Ok(json(scope, &targets))
    } else if wants(req, "counters") {
        Ok(counters_text(scope, &targets))
    } else {
        Ok(tgt_text(scope, &targets))
    }
}

/// Whether the parameter string carries the item `key=1` (rtgtadm's own
/// `--json` / `--counters`; the stock tgtadm never sends them with show or
/// stat).
pub fn wants(req: &Request, key: &str) -> bool {
    req.items().any(|i| i.split_once('=') == Some((key, "1")))
}

const TGT_HEADER: &str = "tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) \
                          wr_subm(bytes,cmds) wr_done(bytes,cmds) errs\n";
const CONN_HEADER: &str =
    "sid cid rxdata_octets txdata_octets dataout_pdus datain_pdus cmd_pdus rsp_pdus\n";

/// One line of tgt's `tgt_stat_line` layout. `lun` / `sid` are `None` for
/// "all": rtgt's unit counters cover every session, its session counters
/// every unit. Commands are counted on completion and not by direction,
/// so submitted equals done and the command columns are `-`.
fn tgt_line(b: &mut String, tid: u32, lun: Option<u64>, sid: Option<u64>, c: &Snapshot) {
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        b,
        "{:>3} {:>3} {:>3} {:>12} {:>6} {:>12} {:>6} {:>12} {:>6} {:>12} {:>6} {:>4}",
        tid,
        opt(lun),
        opt(sid),
        c.read_bytes,
        c.read_commands,
        c.read_bytes,
        c.read_commands,
        c.write_bytes,
        c.write_commands,
        c.write_bytes,
        c.write_commands,
        c.errors
    );
}

/// tgt's connection line: payload octets (rtgt does not count PDU
/// headers), SCSI commands for cmd_pdus; PDU counts rtgt does not keep
/// are `-`.
fn conn_line(b: &mut String, sid: u64, c: &ConnStat) {
    let _ = writeln!(
        b,
        "{:>3} {:>3} {:>13} {:>13} {:>12} {:>11} {:>8} {:>8}",
        sid, c.cid, c.c.write_bytes, c.c.read_bytes, "-", "-", c.c.commands, "-"
    );
}

fn tgt_text(scope: Scope, targets: &[TgtStat]) -> String {
    let mut b = String::new();
    match scope {
        Scope::System | Scope::Target | Scope::Lun => {
            b.push_str(TGT_HEADER);
            for t in targets {
                for (l, c) in &t.luns {
                    tgt_line(&mut b, t.tid, Some(*l), None, c);
                }
            }
        }
        Scope::Session => {
            b.push_str(TGT_HEADER);
            for t in targets {
                for s in &t.sessions {
                    tgt_line(&mut b, t.tid, None, Some(s.sid), &s.c);
                    if !s.conns.is_empty() {
                        b.push('\n');
                        b.push_str(CONN_HEADER);
                    }
                    for c in &s.conns {
                        conn_line(&mut b, s.sid, c);
                    }
                }
            }
        }
        Scope::Conn => {
            b.push_str(CONN_HEADER);
            for t in targets {
                for s in &t.sessions {
                    for c in &s.conns {
                        conn_line(&mut b, s.sid, c);
                    }
                }
            }
        }
    }
    b
}

/// rtgt's own table: one line per object, `-` where an id does not apply.
fn counters_text(scope: Scope, targets: &[TgtStat]) -> String {
    let mut b = String::new();
    let line = |b: &mut String,
                kind: &str,
                tid: u32,
                lun: Option<u64>,
                sid: Option<u64>,
                cid: Option<u32>,
                c: &Snapshot| {
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            b,
            "{:<10} {:>5} {:>5} {:>5} {:>5} {:>12} {:>16} {:>16} {:>8}",
            kind,
            tid,
            opt(lun),
            opt(sid),
            opt(cid.map(u64::from)),
            c.commands,
            c.read_bytes,
            c.write_bytes,
            c.errors
        );
    };
    let _ = writeln!(
        b,
        "{:<10} {:>5} {:>5} {:>5} {:>5} {:>12} {:>16} {:>16} {:>8}",
        "object", "tid", "lun", "sid", "cid", "commands", "read_bytes", "write_bytes", "errors"
    );
    for t in targets {
        if matches!(scope, Scope::System | Scope::Target) {
            line(&mut b, "target", t.tid, None, None, None, &t.c);
        }
        for (l, c) in &t.luns {
            line(&mut b, "lun", t.tid, Some(*l), None, None, c);
        }
        for s in &t.sessions {
            if scope != Scope::Conn {
                line(&mut b, "session", t.tid, None, Some(s.sid), None, &s.c);
            }
            for c in &s.conns {
                line(
                    &mut b,
                    "connection",
                    t.tid,
                    None,
                    Some(s.sid),
                    Some(c.cid),
                    &c.c,
                );
            }
        }
    }
    b
}

fn counters_json(c: &Snapshot) -> Json {
    Json::Obj(vec![
        ("commands", Json::UInt(c.commands)),
        ("read_bytes", Json::UInt(c.read_bytes)),
        ("write_bytes", Json::UInt(c.write_bytes)),
        ("errors", Json::UInt(c.errors)),
    ])
}

fn json(scope: Scope, targets: &[TgtStat]) -> String {
    let list = targets
        .iter()
        .map(|t| {
            let mut o = vec![
                ("tid", Json::UInt(t.tid as u64)),
                ("name", Json::str(t.name.as_str())),
            ];
            if matches!(scope, Scope::System | Scope::Target) {
                o.push(("counters", counters_json(&t.c)));
            }
            o.push((
                "luns",
                Json::Arr(
                    t.luns
                        .iter()
                        .map(|(l, c)| {
                            Json::Obj(vec![
                                ("lun", Json::UInt(*l)),
                                ("counters", counters_json(c)),
                            ])
                        })
                        .collect(),
                ),
            ));
            o.push((
                "sessions",
                Json::Arr(
                    t.sessions
                        .iter()
                        .map(|s| {
                            Json::Obj(vec![
                                ("sid", Json::UInt(s.sid)),
                                ("initiator", Json::str(s.initiator.as_str())),
                                ("counters", counters_json(&s.c)),
                                (
                                    "connections",
                                    Json::Arr(
                                        s.conns
                                            .iter()
                                            .map(|c| {
                                                Json::Obj(vec![
                                                    ("cid", Json::UInt(c.cid as u64)),
                                                    ("counters", counters_json(&c.c)),
                                                ])
                                            })
                                            .collect(),
                                    ),
                                ),
                            ])
                        })
                        .collect(),
                ),
            ));
            Json::Obj(o)
        })
        .collect();
    Json::Obj(vec![("targets", Json::Arr(list))]).to_text()
}
