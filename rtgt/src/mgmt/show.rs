//! `--op show` texts, line for line as tgt 1.0.85 prints them
//! (`usr/target.c`, `usr/iscsi/target.c`, `usr/iscsi/isns.c`).

use std::fmt::Write;

use super::live::{Live, SessionInfo};
use super::params::{value_text, SESSION_KEYS};
use super::table::{Target, TargetTable};

const TAB1: &str = "    ";
const TAB2: &str = "        ";
const TAB3: &str = "            ";
const TAB4: &str = "                ";

/// tgt's `print_disksize`: a size in "MB" computed by tgt's own formula
/// (close to decimal megabytes), with C unsigned wrap-around.
pub fn disksize(size: u64) -> String {
    let s = size / 512;
    let mb = s.wrapping_sub((s / 625).wrapping_sub(974)) / 1950;
    format!("{mb} MB")
}

/// `--mode system --op show`.
pub fn system(t: &TargetTable) -> String {
    let mut b = String::new();
    b.push_str("System:\n");
    let _ = writeln!(b, "{TAB1}State: {}", t.system_state.name());
    let _ = writeln!(b, "{TAB1}debug: {}", if t.debug { "on" } else { "off" });
    b.push_str("LLDs:\n");
    for (name, state) in &t.info.llds {
        let _ = writeln!(b, "{TAB1}{name}: {state}");
    }
    b.push_str("Backing stores:\n");
    for bs in &t.info.backing_stores {
        if bs.oflags.is_empty() {
            let _ = writeln!(b, "{TAB1}{}", bs.name);
        } else {
            let _ = writeln!(b, "{TAB1}{} (bsoflags {})", bs.name, bs.oflags);
        }
    }
    b.push_str("Device types:\n");
    for d in &t.info.device_types {
        let _ = writeln!(b, "{TAB1}{}", d.name());
    }
    if !t.global_incoming.is_empty() {
        // tgt prints this header with an extra newline.
        let _ = writeln!(b, "{TAB1}Account information:\n");
        for aid in &t.global_incoming {
            if let Some(a) = t.account_by_id(*aid) {
                let _ = writeln!(b, "{TAB1}{}", a.user);
            }
        }
        if let Some(a) = t.global_outgoing.and_then(|aid| t.account_by_id(aid)) {
            let _ = writeln!(b, "{TAB1}{} (outgoing)", a.user);
        }
    }
    b.push_str("iSNS:\n");
    let _ = writeln!(
        b,
        "{TAB1}iSNS={}",
        if t.isns.enabled { "On" } else { "Off" }
    );
    let _ = writeln!(b, "{TAB1}iSNSServerIP={}", t.isns.server_ip);
    let _ = writeln!(b, "{TAB1}iSNSServerPort={}", t.isns.server_port);
    let _ = writeln!(
        b,
        "{TAB1}iSNSAccessControl={}",
        if t.isns.access_control { "On" } else { "Off" }
    );
    b
}

/// The I_T nexus info tgt records when a session is created (from its
/// first connection).
fn nexus_info(b: &mut String, s: &SessionInfo) {
    let _ = writeln!(b, "{TAB2}I_T nexus: {}", s.nexus_id);
    if let Some(c) = s.connections.first() {
        let _ = writeln!(
            b,
            "{TAB3}Initiator: {} alias: {}",
            s.initiator,
            s.alias.as_deref().unwrap_or("none")
        );
        let _ = writeln!(b, "{TAB3}Connection: {}", c.cid);
        let _ = writeln!(b, "{TAB4}IP Address: {}", c.peer.ip());
    }
}

fn one_target(b: &mut String, table: &TargetTable, t: &Target, live: &dyn Live) {
    let _ = writeln!(b, "Target {}: {}", t.tid, t.name);
    let _ = writeln!(b, "{TAB1}System information:");
    let _ = writeln!(b, "{TAB2}Driver: iscsi");
    let _ = writeln!(b, "{TAB2}State: {}", t.state.name());
    if t.nop_interval != 0 {
        let _ = writeln!(b, "{TAB2}Nop interval: {}", t.nop_interval);
        let _ = writeln!(b, "{TAB2}Nop count: {}", t.nop_count);
    }
    let _ = writeln!(b, "{TAB1}I_T nexus information:");
    for s in live.sessions(t.tid) {
        nexus_info(b, &s);
    }
    let _ = writeln!(b, "{TAB1}LUN information:");
    let yn = |v: bool| if v { "Yes" } else { "No" };
    for l in t.luns.values() {
        let _ = writeln!(b, "{TAB2}LUN: {}", l.lun);
        let _ = writeln!(b, "{TAB3}Type: {}", l.device_type.name());
        let _ = writeln!(b, "{TAB3}SCSI ID: {}", l.scsi_id);
        let _ = writeln!(b, "{TAB3}SCSI SN: {}", l.scsi_sn);
        let _ = writeln!(
            b,
            "{TAB3}Size: {}, Block size: {}",
            disksize(l.size_bytes),
            l.block_size
        );
        let _ = writeln!(b, "{TAB3}Online: {}", yn(l.online));
        let _ = writeln!(b, "{TAB3}Removable media: {}", yn(l.removable));
        let _ = writeln!(
            b,
            "{TAB3}Prevent removal: {}",
            yn(live.prevent_removal(t.tid, l.lun))
        );
        let _ = writeln!(b, "{TAB3}Readonly: {}", yn(l.readonly));
        let _ = writeln!(b, "{TAB3}SWP: {}", yn(l.swp));
        let _ = writeln!(b, "{TAB3}Thin-provisioning: {}", yn(l.thin_provisioning));
        let _ = writeln!(b, "{TAB3}Backing store type: {}", l.bstype);
        let _ = writeln!(
            b,
            "{TAB3}Backing store path: {}",
            l.path.as_deref().unwrap_or("None")
        );
        let _ = writeln!(b, "{TAB3}Backing store flags: {}", l.bsoflags);
    }
    let _ = writeln!(b, "{TAB1}Account information:");
    for aid in &t.incoming {
        if let Some(a) = table.account_by_id(*aid) {
            let _ = writeln!(b, "{TAB2}{}", a.user);
        }
    }
    if let Some(a) = t.outgoing.and_then(|aid| table.account_by_id(aid)) {
        let _ = writeln!(b, "{TAB2}{} (outgoing)", a.user);
    }
    let _ = writeln!(b, "{TAB1}ACL information:");
    for a in &t.acl_addresses {
        let _ = writeln!(b, "{TAB2}{a}");
    }
    for n in &t.acl_initiators {
        let _ = writeln!(b, "{TAB2}{n}");
    }
}

/// `--mode target --op show` (all targets, by tid).
pub fn targets(table: &TargetTable, live: &dyn Live) -> String {
    let mut b = String::new();
    for t in table.targets() {
        one_target(&mut b, table, t, live);
    }
    b
}

/// `--mode target --op show --tid N`: NOP settings and session parameter
/// offers, or the redirection when one is set.
pub fn target_params(t: &Target) -> String {
    let mut b = String::new();
    if let Some(cb) = &t.redirect.callback {
        let _ = writeln!(b, "RedirectCallback={cb}");
    } else if !t.redirect.addr.is_empty() {
        let _ = writeln!(b, "RedirectAddress={}", t.redirect.addr);
        let _ = writeln!(b, "RedirectPort={}", t.redirect.port);
        let reason = match t.redirect.temporary {
            Some(true) => "Temporary",
            Some(false) => "Permanent",
            None => "Unknown",
        };
        let _ = writeln!(b, "RedirectReason={reason}");
    } else {
        let _ = writeln!(b, "nop_interval={}", t.nop_interval);
        let _ = writeln!(b, "nop_count={}", t.nop_count);
        for (i, k) in SESSION_KEYS.iter().enumerate() {
            let _ = writeln!(b, "{}={}", k.name, value_text(i, t.params.0[i]));
        }
    }
    b
}

/// `--mode account --op show`.
pub fn accounts(table: &TargetTable) -> String {
    let mut b = String::new();
    if !table.accounts.is_empty() {
        b.push_str("Account list:\n");
    }
    for a in &table.accounts {
        let _ = writeln!(b, "{TAB1}{}", a.user);
    }
    b
}

/// `--mode portal --op show`.
pub fn portals(table: &TargetTable) -> String {
    let mut b = String::new();
    for p in &table.portals {
        let ip = p.addr.ip();
        if ip.is_ipv6() {
            let _ = writeln!(b, "Portal: [{ip}]:{},{}", p.addr.port(), p.tpgt);
        } else {
            let _ = writeln!(b, "Portal: {ip}:{},{}", p.addr.port(), p.tpgt);
        }
    }
    b
}

/// `--mode lld --op show`: drivers, and the targets of the iscsi driver in
/// creation order.
pub fn llds(table: &TargetTable) -> String {
    let mut b = String::from("LLDs:\n");
    for (name, state) in &table.info.llds {
        let _ = writeln!(b, "{TAB1}{name}: {state}");
        if name == "iscsi" {
            let mut ts: Vec<&Target> = table.targets().collect();
            ts.sort_by_key(|t| t.seq);
            for t in ts {
                let _ = writeln!(b, "{TAB2}Target {}: {}", t.tid, t.name);
            }
        }
    }
    b
}

/// `--mode conn --op show --tid N`.
pub fn connections(sessions: &[SessionInfo]) -> String {
    let mut b = String::new();
    for s in sessions {
        for c in &s.connections {
            let _ = writeln!(b, "Session: {}", s.nexus_id as u32);
            let _ = writeln!(b, "{TAB1}Connection: {}", c.cid);
            let _ = writeln!(b, "{TAB2}Initiator: {}", s.initiator);
            let _ = writeln!(b, "{TAB2}IP Address: {}", c.peer.ip());
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disksize_matches_tgt() {
        assert_eq!(disksize(0), "0 MB");
        assert_eq!(disksize(100 << 20), "105 MB");
        assert_eq!(disksize(1 << 30), "1074 MB");
        assert_eq!(disksize(1 << 40), "1099512 MB");
    }
}
