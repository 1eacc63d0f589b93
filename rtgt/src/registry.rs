//! Every live session of the daemon, shared by the login path (TSIH
//! allocation, reinstatement, MC/S joins, connection limits), the target
//! loops (which remove what ends) and management (`show`). Touched once per
//! login or logout, never per command.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One session as management and login see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub tid: u32,
    pub tsih: u16,
    pub isid: [u8; 6],
    pub initiator: String,
    pub alias: Option<String>,
    /// tgt's "I_T nexus" number, unique in the daemon.
    pub nexus: u64,
    pub conns: Vec<(u16, SocketAddr)>,
}

#[derive(Debug, Default)]
struct Inner {
    next_tsih: u16,
    next_nexus: u64,
    sessions: Vec<SessionRecord>,
}

/// The shared table; clone the `Arc` to share.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge logins: the data stays consistent
        // because every update is a single push or retain.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create a session with a fresh, non-zero TSIH not in use.
    pub fn create(
        &self,
        tid: u32,
        isid: [u8; 6],
        initiator: &str,
        alias: Option<String>,
        first: (u16, SocketAddr),
    ) -> SessionRecord {
        let mut g = self.lock();
        let tsih = loop {
            g.next_tsih = g.next_tsih.wrapping_add(1);
            let t = g.next_tsih;
            if t != 0 && !g.sessions.iter().any(|s| s.tsih == t) {
                break t;
            }
        };
        g.next_nexus += 1;
        let rec = SessionRecord {
            tid,
            tsih,
            isid,
            initiator: initiator.to_string(),
            alias,
            nexus: g.next_nexus,
            conns: vec![first],
        };
        g.sessions.push(rec.clone());
        rec
    }

    /// The session an initiator already has on a target with this ISID
    /// (reinstatement, RFC 7143 §6.3.5).
    pub fn find_by_isid(&self, tid: u32, initiator: &str, isid: [u8; 6]) -> Option<SessionRecord> {
        self.lock()
            .sessions
            .iter()
            .find(|s| s.tid == tid && s.isid == isid && s.initiator == initiator)
            .cloned()
    }

    pub fn find(&self, tsih: u16) -> Option<SessionRecord> {
        self.lock()
            .sessions
            .iter()
            .find(|s| s.tsih == tsih)
            .cloned()
    }

    /// Add a connection to a session; false when the session is gone.
    pub fn add_conn(&self, tsih: u16, cid: u16, peer: SocketAddr) -> bool {
        let mut g = self.lock();
        match g.sessions.iter_mut().find(|s| s.tsih == tsih) {
            Some(s) => {
                s.conns.retain(|c| c.0 != cid);
                s.conns.push((cid, peer));
                true
            }
            None => false,
        }
    }

    /// Record the InitiatorAlias the login carried.
    pub fn set_alias(&self, tsih: u16, alias: Option<String>) {
        if let Some(s) = self.lock().sessions.iter_mut().find(|s| s.tsih == tsih) {
            s.alias = alias;
        }
    }

    pub fn remove_conn(&self, tsih: u16, cid: u16) {
        let mut g = self.lock();
        if let Some(s) = g.sessions.iter_mut().find(|s| s.tsih == tsih) {
            s.conns.retain(|c| c.0 != cid);
        }
    }

    pub fn remove_session(&self, tsih: u16) {
        self.lock().sessions.retain(|s| s.tsih != tsih);
    }

    /// Sessions of one target, in creation order.
    pub fn sessions_of(&self, tid: u32) -> Vec<SessionRecord> {
        self.lock()
            .sessions
            .iter()
            .filter(|s| s.tid == tid)
            .cloned()
            .collect()
    }

    /// Connections the initiator at `ip` holds across the daemon.
    pub fn conns_from(&self, ip: std::net::IpAddr) -> usize {
        self.lock()
            .sessions
            .iter()
            .flat_map(|s| s.conns.iter())
            .filter(|c| c.1.ip() == ip)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsih_unique_and_lookup() {
        let r = Registry::new();
        let p: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = r.create(1, [1; 6], "iqn.a", None, (0, p));
        let b = r.create(1, [2; 6], "iqn.a", None, (0, p));
        assert_ne!(a.tsih, b.tsih);
        assert_ne!(a.tsih, 0);
        assert_eq!(r.find_by_isid(1, "iqn.a", [2; 6]).unwrap().tsih, b.tsih);
        assert!(r.find_by_isid(2, "iqn.a", [2; 6]).is_none());
        assert!(r.add_conn(a.tsih, 1, p));
        assert_eq!(r.find(a.tsih).unwrap().conns.len(), 2);
        r.remove_session(a.tsih);
        assert_eq!(r.sessions_of(1).len(), 1);
        assert_eq!(r.conns_from(p.ip()), 1);
    }
}
