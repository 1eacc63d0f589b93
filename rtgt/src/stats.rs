//! I/O counters for `tgtadm --op stat` and the Prometheus endpoint: per
//! target, LUN, session and connection, with media latency histograms,
//! reservation conflicts and unit attentions per LUN, commands in flight
//! per target and logins by outcome. The data path only bumps relaxed
//! atomics it already holds handles to (no lookup, no lock per command);
//! management reads them through the shared [`Stats`] table.

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
    /// Commands answered RESERVATION CONFLICT.
    pub conflicts: AtomicU64,
    /// Commands answered with a unit attention.
    pub unit_attentions: AtomicU64,
    /// Media latency (from the task's start on an engine to its answer)
    /// of reads, writes and other commands.
    pub latency: [Latency; 3],
}

/// Which latency histogram a command counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read = 0,
    Write = 1,
    Other = 2,
}

/// Upper bounds of the latency histogram's buckets, in microseconds
/// (100 µs to 10 s; beyond, only the +Inf bucket).
pub const LATENCY_BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram: a count per bucket (not cumulative), their sum in
/// microseconds, and how many.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A snapshot of a [`Latency`]: each bucket's own count (not cumulative)
/// by upper bound in seconds (the last one +Inf), the sum in seconds, the
/// count.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum_secs: f64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let le = LATENCY_BOUNDS_US
                    .get(i)
                    .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
                (le, b.load(Ordering::Relaxed))
            })
            .collect();
        LatencySnapshot {
            // The buckets' total, read with them: consistent.
            count: buckets.iter().map(|b| b.1).sum(),
            buckets,
            sum_secs: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
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

    /// Count a command's answer: its status, and (for CHECK CONDITION)
    /// whether its sense key is UNIT ATTENTION.
    pub fn record_status(&self, status: u8, sense: &[u8]) {
        match status {
            0x18 => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            0x02 => {
                // Fixed format keeps the key in byte 2, descriptor in 1.
                let key = match sense.first().map(|b| b & 0x7f) {
                    Some(0x72) | Some(0x73) => sense.get(1),
                    _ => sense.get(2),
                };
                if key.is_some_and(|k| k & 0x0f == 0x06) {
                    self.unit_attentions.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
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
    /// Each loop's own counters, summed when read.
    loops: Mutex<Vec<Arc<LoopCounters>>>,
    /// SPDK's latency histogram (`iscsi_enable_histogram`): made on first
    /// use, counted into only while on.
    histogram_on: std::sync::atomic::AtomicBool,
    histogram: std::sync::OnceLock<SpdkHistogram>,
}

/// A latency histogram in SPDK's layout (`spdk_histogram_data`, bucket
/// shift 7, ranges 0 to 57), so SPDK's tools read `iscsi_get_histogram`.
/// Range 0 and 1 hold one value per bucket (0 to 255); each later range
/// covers twice the values of the one before with its 128 buckets. Values
/// are nanoseconds (reported as a tick rate of 1 GHz).
#[derive(Debug)]
pub struct SpdkHistogram {
    buckets: Box<[AtomicU64]>,
}

impl SpdkHistogram {
    /// Bits of a value that pick the bucket within its range.
    pub const SHIFT: u32 = 7;
    /// Ranges: one per possible leading bit position past the first 7.
    pub const RANGES: u32 = 64 - Self::SHIFT + 1;
    /// Ticks per second of the values.
    pub const TICK_RATE: u64 = 1_000_000_000;

    fn new() -> Self {
        let n = (Self::RANGES << Self::SHIFT) as usize;
        SpdkHistogram {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The bucket of a value.
    pub fn bucket(v: u64) -> usize {
        let top = 64 - v.leading_zeros(); // bits in use
        let range = top.saturating_sub(Self::SHIFT);
        let index = (v >> range.saturating_sub(1)) & ((1 << Self::SHIFT) - 1);
        ((range << Self::SHIFT) as u64 + index) as usize
    }

    /// Count one value.
    pub fn tally(&self, v: u64) {
        self.buckets[Self::bucket(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, bucket by bucket.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    fn clear(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// What one target loop counts for itself: written by its thread alone
/// (a plain store, no read-modify-write another core contends for), on a
/// cache line of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LoopCounters {
    in_flight: AtomicU64,
}

impl LoopCounters {
    /// The loop's media tasks on an engine now.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
    }
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

    /// Turn SPDK's histogram on (from empty) or off.
    pub fn set_histogram(&self, on: bool) {
        if on {
            self.histogram.get_or_init(SpdkHistogram::new).clear();
        }
        self.histogram_on.store(on, Ordering::Relaxed);
    }

    /// The histogram, while it is on (one relaxed load when off).
    pub fn histogram(&self) -> Option<&SpdkHistogram> {
        if self.histogram_on.load(Ordering::Relaxed) {
            self.histogram.get()
        } else {
            None
        }
    }

    /// A new loop's counters.
    pub fn register_loop(&self) -> Arc<LoopCounters> {
        let c = Arc::new(LoopCounters::default());
        let mut l = lock(&self.loops);
        // Loops that stopped (a target's loops stop with it) go.
        l.retain(|x| Arc::strong_count(x) > 1);
        l.push(c.clone());
        c
    }

    /// Media tasks on an engine now, over the target's loops.
    pub fn in_flight(&self) -> u64 {
        // A loop that has stopped holds no task.
        lock(&self.loops)
            .iter()
            .filter(|c| Arc::strong_count(c) > 1)
            .map(|c| c.in_flight.load(Ordering::Relaxed))
            .sum()
    }

    /// Every LUN's counters themselves, by LUN.
    pub fn lun_counters(&self) -> Vec<(u64, Arc<Counters>)> {
        lock(&self.luns)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
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
    /// Logins by outcome (see [`Login`]).
    pub logins: [AtomicU64; 5],
}

/// How a login ended, for [`Stats::logins`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Ok = 0,
    AuthenticationFailure = 1,
    AclRefused = 2,
    NotFound = 3,
    Other = 4,
}

impl Login {
    pub const ALL: [Login; 5] = [
        Login::Ok,
        Login::AuthenticationFailure,
        Login::AclRefused,
        Login::NotFound,
        Login::Other,
    ];

    /// The outcome a Login Response status (class << 8 | detail) means.
    pub fn from_status(status: u16) -> Login {
        match status {
            0x0000 => Login::Ok,
            0x0201 => Login::AuthenticationFailure,
            0x0202 => Login::AclRefused,
            0x0203 | 0x0204 => Login::NotFound,
            _ => Login::Other,
        }
    }

    /// A refusal that reads as success (status 0 in a failed login)
    /// counts as an error.
    pub fn or_other(self) -> Login {
        if self == Login::Ok {
            Login::Other
        } else {
            self
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Login::Ok => "ok",
            Login::AuthenticationFailure => "authentication_failure",
            Login::AclRefused => "acl_refused",
            Login::NotFound => "not_found",
            Login::Other => "error",
        }
    }
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

    /// Every target's counters, by tid.
    pub fn targets(&self) -> Vec<(u32, Arc<TargetStats>)> {
        lock(&self.targets)
            .iter()
            .map(|(t, s)| (*t, s.clone()))
            .collect()
    }

    pub fn login(&self, outcome: Login) {
        self.logins[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spdk_histogram_buckets_follow_spdks_layout() {
        // Ranges 0 and 1: one value per bucket.
        assert_eq!(SpdkHistogram::bucket(0), 0);
        assert_eq!(SpdkHistogram::bucket(127), 127);
        assert_eq!(SpdkHistogram::bucket(128), 128);
        assert_eq!(SpdkHistogram::bucket(255), 255);
        // Range 2: two values per bucket, 256 to 511.
        assert_eq!(SpdkHistogram::bucket(256), 256);
        assert_eq!(SpdkHistogram::bucket(257), 256);
        assert_eq!(SpdkHistogram::bucket(258), 257);
        assert_eq!(SpdkHistogram::bucket(511), 383);
        // Range 3: four values per bucket from 512.
        assert_eq!(SpdkHistogram::bucket(512), 384);
        assert_eq!(SpdkHistogram::bucket(515), 384);
        assert_eq!(SpdkHistogram::bucket(516), 385);
        // The last range ends the table.
        assert_eq!(
            SpdkHistogram::bucket(u64::MAX),
            ((SpdkHistogram::RANGES << SpdkHistogram::SHIFT) - 1) as usize
        );
        let t = TargetStats::default();
        assert!(t.histogram().is_none());
        t.set_histogram(true);
        t.histogram().unwrap().tally(300);
        assert_eq!(t.histogram().unwrap().counts()[256 + 22], 1);
        t.set_histogram(false);
        assert!(t.histogram().is_none());
        // On again: from empty, as SPDK makes a new one.
        t.set_histogram(true);
        assert_eq!(t.histogram().unwrap().counts().iter().sum::<u64>(), 0);
    }

    #[test]
    fn in_flight_sums_each_running_loops_own_counter() {
        let t = TargetStats::default();
        let (a, b) = (t.register_loop(), t.register_loop());
        a.set_in_flight(3);
        b.set_in_flight(4);
        assert_eq!(t.in_flight(), 7);
        b.set_in_flight(1);
        assert_eq!(t.in_flight(), 4);
        // A loop that stopped (dropped its counters) counts no more.
        drop(a);
        assert_eq!(t.in_flight(), 1);
        let _c = t.register_loop();
        assert_eq!(lock(&t.loops).len(), 2);
    }

    #[test]
    fn latency_buckets_count_each_bound_with_inf_last() {
        let l = Latency::default();
        for us in [50, 100, 101, 3_000, 20_000_000] {
            l.observe(std::time::Duration::from_micros(us));
        }
        let s = l.snapshot();
        assert_eq!(s.buckets[0], (0.0001, 2), "50 and 100 µs are <= 100 µs");
        assert_eq!(s.buckets[1], (0.00025, 1));
        assert_eq!(s.buckets[4].1, 0, "2.5 ms");
        assert_eq!(s.buckets[5].1, 1, "3 ms <= 5 ms");
        assert_eq!(*s.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(s.count, 5);
        assert!((s.sum_secs - 20.003251).abs() < 1e-9);
    }

    #[test]
    fn statuses_count_conflicts_and_unit_attentions() {
        let c = Counters::default();
        c.record_status(0x18, &[]);
        c.record_status(0x02, &[0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0]);
        c.record_status(0x02, &[0x72, 0x06, 0x29, 0]);
        c.record_status(0x02, &[0x70, 0, 0x05]);
        c.record_status(0x00, &[]);
        assert_eq!(c.conflicts.load(Ordering::Relaxed), 1);
        assert_eq!(c.unit_attentions.load(Ordering::Relaxed), 2);
    }

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
