//! I/O counters for `tgtadm --op stat`: per target, LUN, session and
//! connection. The data path only bumps relaxed atomics it already holds
//! handles to (no lookup, no lock per command); management reads them
//! through the shared [`Stats`] table.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one object.
#[derive(Debug, Default)]
pub struct Counters {
    /// SCSI commands completed.
    pub commands: AtomicU64,
    /// Data-In bytes sent.
    pub read_bytes: AtomicU64,
    /// Data-Out bytes received.
    pub write_bytes: AtomicU64,
    /// Commands that ended in other than GOOD / CONDITION MET.
    pub errors: AtomicU64,
    /// Commands that moved Data-In.
    pub read_commands: AtomicU64,
    /// Commands that moved Data-Out.
    pub write_commands: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub commands: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    pub read_commands: u64,
    pub write_commands: u64,
}

impl Counters {
    pub fn record(&self, read: u64, written: u64, error: bool) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if read > 0 {
            self.read_bytes.fetch_add(read, Ordering::Relaxed);
            self.read_commands.fetch_add(1, Ordering::Relaxed);
        }
        if written > 0 {
            self.write_bytes.fetch_add(written, Ordering::Relaxed);
            self.write_commands.fetch_add(1, Ordering::Relaxed);
        }
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            commands: self.commands.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            read_commands: self.read_commands.load(Ordering::Relaxed),
            write_commands: self.write_commands.load(Ordering::Relaxed),
        }
    }
}

/// Counters of one target and everything in it.
#[derive(Debug, Default)]
pub struct TargetStats {
    pub total: Arc<Counters>,
    pub luns: Mutex<BTreeMap<u64, Arc<Counters>>>,
    /// By TSIH, then by CID.
    pub sessions: Mutex<BTreeMap<u16, SessionStats>>,
}

/// A session's TSIH and counters, with each connection's (CID, counters).
pub type SessionSnapshot = (u16, Snapshot, Vec<(u16, Snapshot)>);

/// Counters of one session and its connections.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    pub total: Arc<Counters>,
    pub conns: BTreeMap<u16, Arc<Counters>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TargetStats {
    /// The LUN's counters, created on first use.
    pub fn lun(&self, lun: u64) -> Arc<Counters> {
        lock(&self.luns).entry(lun).or_default().clone()
    }

    pub fn remove_lun(&self, lun: u64) {
        lock(&self.luns).remove(&lun);
    }

    /// The session's and the connection's counters, created on first use.
    pub fn conn(&self, tsih: u16, cid: u16) -> (Arc<Counters>, Arc<Counters>) {
        let mut s = lock(&self.sessions);
        let sess = s.entry(tsih).or_default();
        let c = sess.conns.entry(cid).or_default().clone();
        (sess.total.clone(), c)
    }

    pub fn remove_conn(&self, tsih: u16, cid: u16) {
        let mut s = lock(&self.sessions);
        if let Some(sess) = s.get_mut(&tsih) {
            sess.conns.remove(&cid);
        }
    }

    pub fn remove_session(&self, tsih: u16) {
        lock(&self.sessions).remove(&tsih);
    }

    /// LUN counters, by LUN.
    pub fn lun_snapshots(&self) -> Vec<(u64, Snapshot)> {
        lock(&self.luns)
            .iter()
            .map(|(k, v)| (*k, v.snapshot()))
            .collect()
    }

    /// Session counters with their connections', by TSIH.
    pub fn session_snapshots(&self) -> Vec<SessionSnapshot> {
        lock(&self.sessions)
            .iter()
            .map(|(t, s)| {
                (
                    *t,
                    s.total.snapshot(),
                    s.conns.iter().map(|(c, v)| (*c, v.snapshot())).collect(),
                )
            })
            .collect()
    }
}

/// All targets' counters; shared by the loops and management.
#[derive(Debug, Default)]
pub struct Stats {
    targets: Mutex<BTreeMap<u32, Arc<TargetStats>>>,
}

impl Stats {
    pub fn new() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    /// A target's counters, created on first use.
    pub fn target(&self, tid: u32) -> Arc<TargetStats> {
        lock(&self.targets).entry(tid).or_default().clone()
    }

    pub fn get(&self, tid: u32) -> Option<Arc<TargetStats>> {
        lock(&self.targets).get(&tid).cloned()
    }

    pub fn remove_target(&self, tid: u32) {
        lock(&self.targets).remove(&tid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roll_up_per_object() {
        let stats = Stats::new();
        let t = stats.target(1);
        let (s, c) = t.conn(5, 0);
        let l = t.lun(1);
        for (r, w, e) in [(4096, 0, false), (0, 512, false), (0, 0, true)] {
            for x in [&t.total, &l, &s, &c] {
                x.record(r, w, e);
            }
        }
        let want = Snapshot {
            commands: 3,
            read_bytes: 4096,
            write_bytes: 512,
            errors: 1,
            read_commands: 1,
            write_commands: 1,
        };
        assert_eq!(t.total.snapshot(), want);
        assert_eq!(t.lun_snapshots(), vec![(1, want)]);
        assert_eq!(t.session_snapshots(), vec![(5, want, vec![(0, want)])]);
        t.remove_conn(5, 0);
        assert_eq!(t.session_snapshots()[0].2.len(), 0);
        t.remove_session(5);
        assert!(t.session_snapshots().is_empty());
        assert!(stats.get(1).is_some());
        stats.remove_target(1);
        assert!(stats.get(1).is_none());
    }
}
