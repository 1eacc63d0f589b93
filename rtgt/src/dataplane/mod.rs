//! A target's event loops: threads `tgt/<tid>` (and `tgt/<tid>.<n>` when a
//! target has several), each a current-thread runtime that owns its
//! sessions and connections outright. A new session goes to the next loop
//! in turn; a connection joining a session (MC/S) goes to that session's
//! loop. What the loops of one target share is only the SCSI state of its
//! LUNs. Commands that may change it hold it exclusively for one
//! `LunSet::execute`; the common path (reads, writes and the other SBC
//! commands, with no unit attention or reservation pending) takes no lock:
//! each loop runs it on its own copy of the state, which it refreshes
//! after any exclusive use (one atomic load per command tells it).
//! COMPARE AND WRITE and ORWRITE serialize per LUN (`LunGate`), never per
//! target. Disk I/O goes through each loop's engines (io_uring, the worker
//! pool, or inline for memory), so a loop never waits on a disk. The
//! management thread reaches loops only through [`TargetMsg`].

pub mod affinity;
pub mod conn;
mod io;
pub mod session;
mod thin;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;

use iscsi::StatSn;
use scsi::{BlockDevice, LunConfig, LunId, LunSet, TargetPort};
use tokio::sync::mpsc;

pub use crate::backend::engine::LunGate;
use crate::backend::engine::{CompletionQueue, Pool};
use crate::backend::uring::Uring;
use crate::registry::Registry;
use crate::stats::{Counters, TargetStats};
use conn::{ConnHandle, ConnParams};
use session::{Session, SessionSetup};
use thin::ThinWatch;

/// Per-target knobs the loop reads (tgtadm `--mode target --op update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// Seconds of silence before a NOP-In ping; 0 disables pings.
    pub nop_interval: u32,
    /// Unanswered pings before the connection is dropped; 0 never drops.
    pub nop_count: u32,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            nop_interval: 30,
            nop_count: 4,
        }
    }
}

/// A logged-in connection handed over by the login path.
pub struct Handoff {
    pub stream: std::net::TcpStream,
    /// Bytes read past the last login PDU.
    pub leftover: Vec<u8>,
    pub peer: SocketAddr,
    pub cid: u16,
    pub params: ConnParams,
    pub stat_sn: StatSn,
    /// The session: new, or the one this connection joins (MC/S).
    pub session: SessionSetup,
    /// Everything the login negotiated (for Text exchanges).
    pub negotiated: Box<iscsi::SessionParams>,
}

/// Requests to a target loop.
pub enum TargetMsg {
    Connection(Box<Handoff>),
    /// Abort this loop's tasks on a LUN (all LUNs with `None`): a LUN
    /// removed, or a reset received on a sibling loop.
    AbortTasks(Option<LunId>),
    /// End a session (reinstatement, forced delete).
    CloseSession {
        tsih: u16,
    },
    /// End every session but `except` (TARGET COLD RESET).
    CloseSessionsBut {
        except: Option<u16>,
    },
    /// Abort these nexuses' tasks on these LUNs (PREEMPT AND ABORT).
    AbortNexusTasks(Vec<(LunId, scsi::NexusId)>),
    /// End one connection.
    CloseConnection {
        tsih: u16,
        cid: u16,
    },
    /// Ask the initiator to log one connection out (AsyncEvent 1) within
    /// `wait`; it is closed if it has not by then.
    RequestLogout {
        tsih: u16,
        cid: u16,
        wait: std::time::Duration,
    },
    /// Close everything and end the thread.
    Stop,
}

/// A LUN's store, its I/O counters, its media gate and its soft
/// threshold.
#[derive(Clone)]
pub struct LunIo {
    pub dev: Arc<dyn BlockDevice>,
    pub counters: Arc<Counters>,
    pub gate: Arc<LunGate>,
    pub thin: Arc<ThinWatch>,
}

/// Exclusive access to a target's LUN state; bumps the state generation
/// when dropped, while still holding the lock, so a loop that sees the new
/// generation and takes the lock to copy the state gets this change.
pub struct LunsMut<'a> {
    guard: std::sync::RwLockWriteGuard<'a, LunSet>,
    gen: &'a std::sync::atomic::AtomicU64,
    /// Whether to tell the loops (always, unless `execute` learnt the
    /// command left the state alone).
    changed: bool,
}

impl LunsMut<'_> {
    /// Run a command exclusively; the loops refresh their copies only if
    /// it may have changed what their common path reads.
    pub fn execute(&mut self, req: &scsi::Request<'_>, buf: &mut Vec<u8>) -> scsi::Outcome {
        let (out, changed) = self.guard.execute_tracked(req, buf);
        self.changed = changed;
        out
    }
}

impl std::ops::Deref for LunsMut<'_> {
    type Target = LunSet;
    fn deref(&self) -> &LunSet {
        &self.guard
    }
}

impl std::ops::DerefMut for LunsMut<'_> {
    fn deref_mut(&mut self) -> &mut LunSet {
        &mut self.guard
    }
}

impl Drop for LunsMut<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.gen.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    }
}

/// What the loops of one target share.
pub struct TargetShared {
    pub tid: u32,
    pub name: RwLock<String>,
    /// The LUNs' SCSI state. Private: every exclusive use goes through
    /// [`luns`](TargetShared::luns), which tells the loops to refresh
    /// their copies for the common path.
    luns: RwLock<LunSet>,
    /// Each LUN's store and counters.
    pub devices: RwLock<HashMap<LunId, LunIo>>,
    pub registry: Arc<Registry>,
    pub portals: Arc<RwLock<Vec<SocketAddr>>>,
    /// The portals' target portal group tag (`--port-group`).
    pub tpgt: u16,
    pub knobs: Mutex<Knobs>,
    /// Counters for `tgtadm --op stat`.
    pub stats: Arc<TargetStats>,
    /// Every loop's mailbox, for resets that must reach all of them.
    pub loops: OnceLock<Vec<mpsc::UnboundedSender<TargetMsg>>>,
    /// Bumped by every exclusive use of `luns` that may change it (LUNs
    /// and their stores change that way too): loops then drop their
    /// copies of the LU state and of `devices` (see [`LoopLuns`]).
    pub lun_gen: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere leaves SCSI state as consistent as the last
    // completed command made it; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TargetShared {
    /// The LUNs' SCSI state for a command that may change it (or a
    /// management change): exclusive. Letting go of it tells every loop
    /// that its copy for the common path is out of date.
    pub fn luns(&self) -> LunsMut<'_> {
        LunsMut {
            guard: self.luns.write().unwrap_or_else(|p| p.into_inner()),
            gen: &self.lun_gen,
            changed: true,
        }
    }

    /// The LUNs' SCSI state, read-only (a loop refreshing its copy).
    pub fn luns_shared(&self) -> std::sync::RwLockReadGuard<'_, LunSet> {
        self.luns.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn knobs(&self) -> Knobs {
        *lock(&self.knobs)
    }

    pub fn device(&self, id: LunId) -> Option<LunIo> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Ask every loop to abort its tasks on `lun` (or all LUNs).
    pub fn abort_on_all_loops(&self, lun: Option<LunId>) {
        self.abort_on_other_loops(lun, usize::MAX);
    }

    /// Ask every loop but loop `me` to abort its tasks on `lun`.
    pub fn abort_on_other_loops(&self, lun: Option<LunId>, me: usize) {
        for (i, l) in self
            .loops
            .get()
            .map(|v| v.as_slice())
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            if i != me {
                let _ = l.send(TargetMsg::AbortTasks(lun));
            }
        }
    }

    /// Have a store that keeps SCSI state for several gateways deliver it
    /// to LU `id` (now, and whenever it changes), as long as `dev` is that
    /// LU's store.
    fn share_state(self: &Arc<Self>, id: LunId, dev: &Arc<dyn BlockDevice>) {
        let Some(state) = dev.shared_state() else {
            return;
        };
        // Each gateway is one port group with one port (see `spawn`).
        dev.serve_port(self.tpgt, self.tpgt);
        let target = Arc::downgrade(self);
        let mine = Arc::downgrade(dev);
        state.subscribe(Box::new(move |bytes| {
            let Some(t) = target.upgrade() else {
                return;
            };
            if !t
                .device(id)
                .is_some_and(|io| std::ptr::addr_eq(Arc::as_ptr(&io.dev), mine.as_ptr()))
            {
                return;
            }
            let changes = {
                let mut luns = t.luns();
                if !luns.install_shared_pr(id, bytes) {
                    tracing::debug!(tid = t.tid, lun = id.0, "shared PR state not newer");
                }
                luns.take_shared_changes()
            };
            t.apply_shared_changes(changes);
        }));
    }

    /// Apply to the stores' shared state what nexus losses and resets owe
    /// it (SPC-2 releases, resets to announce:
    /// [`LunSet::take_shared_changes`]), each
    /// on a thread of its own: they wait for the cluster, and are rare.
    /// Each returned receiver completes when its change is made (or
    /// failed).
    pub fn apply_shared_changes(
        &self,
        changes: Vec<scsi::SharedChange>,
    ) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut done = Vec::new();
        for c in changes {
            let Some(io) = self.device(c.lun()) else {
                continue;
            };
            let tid = self.tid;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("pr-shared".into())
                .spawn(move || {
                    if let Some(state) = io.dev.shared_state() {
                        if let Err(e) = state.update(&mut |cur| c.apply(cur)) {
                            tracing::warn!(tid, lun = c.lun().0, result = ?e, "cannot change the shared reservation state");
                        }
                    }
                    let _ = tx.send(());
                });
            match spawned {
                Ok(_) => done.push(rx),
                Err(e) => {
                    tracing::warn!(tid, error = %e, "cannot change the shared reservation state")
                }
            }
        }
        done
    }

    pub fn add_lun(self: &Arc<Self>, id: LunId, cfg: LunConfig, dev: Arc<dyn BlockDevice>) {
        let counters = self.stats.lun(id.0);
        self.devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                LunIo {
                    dev: dev.clone(),
                    counters,
                    gate: Arc::default(),
                    thin: Arc::new(ThinWatch::new(id, &cfg)),
                },
            );
        // Persistent reservations made with APTPL come back with the LU
        // (at start-up, or when it is added again).
        let saved = cfg.pr_file.as_ref().and_then(|p| std::fs::read(p).ok());
        // Telling the loops to look again, this also retires their copy
        // of `devices`.
        let mut luns = self.luns();
        luns.insert(id, cfg);
        if let Some(bytes) = saved {
            if luns.restore_pr(id, &bytes) {
                tracing::info!(
                    tid = self.tid,
                    lun = id.0,
                    "persistent reservations restored (APTPL)"
                );
            }
        }
        drop(luns);
        self.share_state(id, &dev);
    }

    pub fn remove_lun(&self, id: LunId) {
        self.abort_on_all_loops(Some(id));
        // The store goes first: the LU state's generation moving then
        // makes the loops drop their copies of both.
        self.devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.luns().remove(id);
        self.stats.remove_lun(id.0);
    }

    /// New LU settings, and a new store when the medium changed.
    pub fn update_lun(
        self: &Arc<Self>,
        id: LunId,
        cfg: LunConfig,
        dev: Option<Arc<dyn BlockDevice>>,
    ) {
        {
            let mut devices = self.devices.write().unwrap_or_else(|p| p.into_inner());
            let old = devices.get(&id);
            let thin = old.map_or_else(|| Arc::new(ThinWatch::new(id, &cfg)), |l| l.thin.clone());
            thin.configure(&cfg);
            if let Some(d) = &dev {
                // The gate stays: I/O already in flight on the old store
                // is still counted in it.
                let gate = old.map(|l| l.gate.clone()).unwrap_or_default();
                let counters = self.stats.lun(id.0);
                devices.insert(
                    id,
                    LunIo {
                        dev: d.clone(),
                        counters,
                        gate,
                        thin,
                    },
                );
            }
        }
        self.luns().update(id, |c| *c = cfg);
        if let Some(d) = &dev {
            self.share_state(id, d);
        }
    }

    pub fn set_knobs(&self, k: Knobs) {
        *lock(&self.knobs) = k;
    }

    pub fn rename(&self, n: String) {
        *self.name.write().unwrap_or_else(|p| p.into_inner()) = n;
    }

    /// This target with every portal, wildcards replaced by the address
    /// the connection arrived on (what SendTargets in a normal session
    /// lists, RFC 7143 §13.3 / Appendix C).
    pub fn listing(&self, local: SocketAddr) -> Vec<iscsi::TargetEntry> {
        let portals = portal_entries(
            self.portals
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|a| (*a, self.tpgt)),
            local,
        );
        vec![(
            self.name.read().unwrap_or_else(|p| p.into_inner()).clone(),
            portals,
        )]
    }
}

/// SendTargets' `TargetAddress` entries for these portals (address and
/// tag), as seen from a connection that arrived on `local`: a wildcard
/// portal is listed as `local`'s address, and only in `local`'s family
/// (RFC 7143 §13.3, Appendix C).
pub fn portal_entries(
    portals: impl Iterator<Item = (SocketAddr, u16)>,
    local: SocketAddr,
) -> Vec<(SocketAddr, u16)> {
    portals
        .filter(|(a, _)| a.is_ipv4() == local.is_ipv4() || !a.ip().is_unspecified())
        .map(|(a, tag)| {
            let a = if a.ip().is_unspecified() {
                SocketAddr::new(local.ip(), a.port())
            } else {
                a
            };
            (a, tag)
        })
        .collect()
}

/// What one loop of a target owns.
pub struct TargetCtx {
    pub shared: Arc<TargetShared>,
    /// This loop's place among the target's loops.
    pub index: usize,
    pub sessions: RefCell<HashMap<u16, Rc<Session>>>,
    /// The loop's io_uring, when the kernel offers one (else the pool).
    /// Declared before `inflight`: dropping it waits for the kernel while
    /// the stores in flight are still open.
    pub uring: Option<Uring>,
    /// Worker threads for blocking stores and whole SCSI media tasks.
    pub pool: Arc<Pool>,
    /// Where every engine reports finished tasks.
    pub cq: Arc<CompletionQueue>,
    /// `cq` as asynchronous stores (librbd) see it.
    pub sink: Arc<dyn scsi::CompletionSink>,
    /// Media tasks in flight, by tag.
    pub inflight: RefCell<io::InFlightTable>,
    /// This loop's own counters (only this thread writes them; metrics sum
    /// them over the loops).
    pub counters: Arc<crate::stats::LoopCounters>,
    /// Adaptive polling window (see [`LoopConfig::poll_us`]).
    pub poll: std::time::Duration,
    /// This loop's copies of what the common path reads of its LUNs.
    pub luns: RefCell<LoopLuns>,
}

/// A loop's copies of its target's LUN state and stores, valid while
/// `TargetShared::lun_gen` stays at `gen`: the common path reads them with
/// one atomic load and no lock.
#[derive(Default)]
pub struct LoopLuns {
    gen: u64,
    /// The SCSI state, for [`LunSet::execute_shared`] (copied when first
    /// needed in a generation).
    pub state: Option<LunSet>,
    /// The stores, filled as commands name them.
    pub devices: HashMap<LunId, Rc<LunIo>>,
}

impl TargetCtx {
    /// This loop's copies, emptied first if the target's LUN state moved
    /// on since they were made.
    pub fn loop_luns(&self) -> std::cell::RefMut<'_, LoopLuns> {
        let gen = self
            .shared
            .lun_gen
            .load(std::sync::atomic::Ordering::Acquire);
        let mut l = self.luns.borrow_mut();
        if l.gen != gen {
            l.gen = gen;
            l.state = None;
            l.devices.clear();
        }
        l
    }

    /// A connection ended and left its session (`ended`: it was the last
    /// one; `None`: a login with its CID had already replaced it, and the
    /// registry entries now belong to the new one).
    pub fn conn_closed(&self, s: &Rc<Session>, c: &Rc<ConnHandle>, ended: Option<bool>) {
        s.conns.borrow_mut().retain(|x| !Rc::ptr_eq(x, c));
        let Some(ended) = ended else { return };
        let sh = &self.shared;
        let tsih = s.setup.tsih;
        sh.registry.remove_conn(tsih, c.cid);
        sh.stats.remove_conn(tsih, c.cid);
        if ended {
            let mut sessions = self.sessions.borrow_mut();
            if sessions.get(&tsih).is_some_and(|x| Rc::ptr_eq(x, s)) {
                sessions.remove(&tsih);
                sh.registry.remove_session(tsih);
                sh.stats.remove_session(tsih);
            }
            let idle = sessions.is_empty();
            drop(sessions);
            let changes = {
                let mut luns = sh.luns();
                luns.remove_nexus(s.setup.nexus);
                luns.take_shared_changes()
            };
            sh.apply_shared_changes(changes);
            if idle {
                // The loop's last session went: give the memory its
                // buffers held back to the system (glibc keeps freed
                // memory in its arenas otherwise), so a burst of large
                // transfers does not leave rtgtd's RSS at its peak.
                // SAFETY: malloc_trim only releases free memory.
                unsafe { libc::malloc_trim(0) };
            }
        }
    }

    /// This loop's sessions but `except` (a copy: acting on them may
    /// end some).
    fn sessions_but(&self, except: Option<u16>) -> Vec<Rc<Session>> {
        self.sessions
            .borrow()
            .values()
            .filter(|s| Some(s.setup.tsih) != except)
            .cloned()
            .collect()
    }

    /// Abort tasks on a LUN (or all LUNs) in every session of this loop
    /// but `except` (which aborted its own).
    pub fn abort_here(&self, lun: Option<LunId>, except: Option<u16>) {
        for s in self.sessions_but(except) {
            s.m.borrow_mut().abort_lun(lun.map(|l| l.0));
        }
    }

    /// Abort, on this loop, the tasks of each nexus on its LUN.
    fn abort_nexus_tasks_here(&self, aborts: &[(LunId, scsi::NexusId)]) {
        for s in self.sessions_but(None) {
            for (lun, _) in aborts.iter().filter(|(_, n)| *n == s.setup.nexus) {
                s.m.borrow_mut().abort_lun(Some(lun.0));
            }
        }
    }

    /// Abort each nexus's tasks on its LUN on every loop of the target.
    pub fn abort_nexus_tasks_everywhere(&self, aborts: Vec<(LunId, scsi::NexusId)>) {
        self.abort_nexus_tasks_here(&aborts);
        for (i, l) in self.shared.loops.get().into_iter().flatten().enumerate() {
            if i != self.index {
                let _ = l.send(TargetMsg::AbortNexusTasks(aborts.clone()));
            }
        }
    }

    /// End every session of this loop but `except`.
    fn close_here(&self, except: Option<u16>) {
        for s in self.sessions_but(except) {
            s.close();
        }
    }

    /// End every session of the target but `except`: this loop's now,
    /// the other loops' when they read their mailboxes.
    pub fn close_everywhere(&self, except: Option<u16>) {
        self.close_here(except);
        for (i, l) in self.shared.loops.get().into_iter().flatten().enumerate() {
            if i != self.index {
                let _ = l.send(TargetMsg::CloseSessionsBut { except });
            }
        }
    }

    /// Abort on this loop now and ask the target's other loops to.
    pub fn abort_everywhere(&self, lun: Option<LunId>, except: Option<u16>) {
        self.abort_here(lun, except);
        self.shared.abort_on_other_loops(lun, self.index);
    }

    fn accept(self: &Rc<Self>, h: Handoff) {
        let stream = match tokio::net::TcpStream::from_std(h.stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handoff failed");
                self.shared.registry.remove_conn(h.session.tsih, h.cid);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let tsih = h.session.tsih;
        let session = {
            let mut sessions = self.sessions.borrow_mut();
            match sessions.get(&tsih) {
                Some(s) => s.clone(),
                None => {
                    let s = Session::new(h.session.clone());
                    // PR registrations belong to the SCSI initiator port
                    // (name + ISID), so they survive a reconnect.
                    let port = scsi::iscsi_initiator_port_name(&s.setup.initiator, s.setup.isid);
                    self.shared.luns().add_nexus_named(s.setup.nexus, &port);
                    sessions.insert(tsih, s.clone());
                    s
                }
            }
        };
        let knobs = self.shared.knobs();
        let cfg = iscsi::session::ConnConfig {
            cid: h.cid,
            digests: h.params.digests,
            max_recv: h.params.max_recv,
            max_xmit: h.params.max_xmit,
            limits: h.params.limits,
            stat_sn: h.stat_sn,
            nop_interval: std::time::Duration::from_secs(knobs.nop_interval as u64),
            nop_count: knobs.nop_count,
        };
        // A connection reusing a CID replaces the old one (RFC 7143 §6.3.4).
        let (id, old) =
            session
                .m
                .borrow_mut()
                .add_conn(cfg, &h.negotiated, std::time::Instant::now());
        if let Some(old) = old.and_then(|o| session.handle(o)) {
            old.wake();
        }
        let stats = self.shared.stats.conn(tsih, h.cid);
        let handle = Rc::new(ConnHandle::new(id, h.cid, h.peer, stats));
        session.conns.borrow_mut().push(handle.clone());
        let ctx = self.clone();
        tokio::task::spawn_local(conn::run(
            ctx, session, handle, stream, h.leftover, h.params,
        ));
    }

    fn close_session(&self, tsih: u16) {
        let s = self.sessions.borrow().get(&tsih).cloned();
        if let Some(s) = s {
            s.close();
        }
    }
}

/// The loop's io_uring unless unavailable or `RTGT_IO_ENGINE=threads`
/// (for comparisons), in which case data I/O goes to the pool.
fn ring_for_loop(cq: &CompletionQueue) -> Option<Uring> {
    if std::env::var("RTGT_IO_ENGINE").is_ok_and(|v| v == "threads") {
        return None;
    }
    match Uring::new(cq) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::info!(error = %e, "io_uring unavailable; disk I/O uses worker threads");
            None
        }
    }
}

/// Default adaptive polling window (`--poll-us`), in microseconds: long
/// enough to catch an initiator's next command at queue depth 1 on a busy
/// host, short enough that polling costs at most that much CPU per
/// command at low rates and nothing when idle.
pub const DEFAULT_POLL_US: u32 = 50;

/// Event loops per target unless `--target-loops` says otherwise: one per
/// four cores (a target's sessions spread over them), at least one.
pub fn default_loops() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 4)
        .unwrap_or(1)
        .clamp(1, 8)
}

/// The management side's handle on a target's running loops.
pub struct TargetHandle {
    pub tid: u32,
    pub shared: Arc<TargetShared>,
    loops: Vec<mpsc::UnboundedSender<TargetMsg>>,
    threads: Vec<JoinHandle<()>>,
    /// Which loop serves each session, so MC/S connections join it.
    session_loop: RefCell<HashMap<u16, usize>>,
    next: Cell<usize>,
}

/// Settings for a target's loops.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Event-loop threads for the target.
    pub loops: usize,
    /// Blocking-I/O workers per loop (tgtd's `-t`).
    pub io_threads: usize,
    /// How long a connection keeps polling its socket after it last had
    /// work before it sleeps in the kernel (`--poll-us`); 0 never polls.
    pub poll_us: u32,
    /// Cores to pin loops to, round-robin (`--cpus`); empty: unpinned.
    pub cpus: Arc<Vec<usize>>,
    /// The daemon's port identity (`--port-group`): the target portal
    /// group tag and relative target port identifier of every target's
    /// one port (SPC-4 §7.8.6.5, §7.8.6.6), distinct per gateway when
    /// several serve one LU.
    pub port_group: u16,
}

/// Loops started so far in this process, to spread pinned loops over the
/// `--cpus` list across targets.
static LOOPS_STARTED: AtomicUsize = AtomicUsize::new(0);

impl TargetHandle {
    /// Start the target's loop threads, `tgt/<tid>` (then `tgt/<tid>.1`, ...).
    pub fn spawn(
        tid: u32,
        name: String,
        registry: Arc<Registry>,
        portals: Arc<RwLock<Vec<SocketAddr>>>,
        cfg: LoopConfig,
        stats: Arc<TargetStats>,
    ) -> std::io::Result<TargetHandle> {
        let port = TargetPort {
            target_name: name.clone(),
            tpgt: cfg.port_group,
            relative_port: cfg.port_group,
        };
        let shared = Arc::new(TargetShared {
            tid,
            name: RwLock::new(name),
            luns: RwLock::new(LunSet::new(tid, port)),
            devices: RwLock::new(HashMap::new()),
            registry,
            portals,
            tpgt: cfg.port_group,
            knobs: Mutex::new(Knobs::default()),
            stats,
            loops: OnceLock::new(),
            lun_gen: std::sync::atomic::AtomicU64::new(0),
        });
        let mut loops = Vec::new();
        let mut threads = Vec::new();
        for i in 0..cfg.loops.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let sh = shared.clone();
            let thread_name = if i == 0 {
                format!("tgt/{tid}")
            } else {
                format!("tgt/{tid}.{i}")
            };
            let io_threads = cfg.io_threads;
            let poll_us = cfg.poll_us;
            let pin = (!cfg.cpus.is_empty()).then(|| {
                let n = LOOPS_STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                cfg.cpus[n % cfg.cpus.len()]
            });
            let t = std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    if let Some(cpu) = pin {
                        affinity::pin_current_thread(cpu);
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .max_blocking_threads(io_threads)
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(tid, error = %e, "cannot start target loop");
                            return;
                        }
                    };
                    let _in_rt = rt.enter();
                    let cq = match CompletionQueue::new() {
                        Ok(cq) => cq,
                        Err(e) => {
                            tracing::error!(tid, error = %e, "cannot start target loop");
                            return;
                        }
                    };
                    let pool = Pool::new(io_threads, thread_name.clone(), cq.clone());
                    let counters = sh.stats.register_loop();
                    let ctx = Rc::new(TargetCtx {
                        shared: sh,
                        index: i,
                        sessions: RefCell::new(HashMap::new()),
                        uring: ring_for_loop(&cq),
                        pool,
                        sink: cq.clone(),
                        cq,
                        inflight: RefCell::new(io::InFlightTable::default()),
                        counters,
                        poll: std::time::Duration::from_micros(poll_us as u64),
                        luns: RefCell::new(LoopLuns {
                            gen: u64::MAX,
                            ..LoopLuns::default()
                        }),
                    });
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        tokio::task::spawn_local(io::reap(ctx.clone()));
                        run_loop(ctx, rx).await
                    });
                });
            match t {
                Ok(t) => {
                    loops.push(tx);
                    threads.push(t);
                }
                Err(e) => {
                    for l in &loops {
                        let _ = l.send(TargetMsg::Stop);
                    }
                    return Err(e);
                }
            }
        }
        let _ = shared.loops.set(loops.clone());
        Ok(TargetHandle {
            tid,
            shared,
            loops,
            threads,
            session_loop: RefCell::new(HashMap::new()),
            next: Cell::new(0),
        })
    }

    fn send_to(&self, i: usize, m: TargetMsg) {
        if self.loops[i % self.loops.len()].send(m).is_err() {
            tracing::warn!(tid = self.tid, "target loop is gone");
        }
    }

    /// Hand a logged-in connection to its session's loop, or a new
    /// session to the next loop in turn.
    pub fn connect(&self, h: Handoff) {
        let tsih = h.session.tsih;
        let known = self.session_loop.borrow().get(&tsih).copied();
        let i = match known {
            Some(i) => i,
            None => {
                let mut map = self.session_loop.borrow_mut();
                if map.len() > 4096 {
                    // Forget sessions that have ended.
                    map.retain(|t, _| self.shared.registry.find(*t).is_some());
                }
                let i = self.next.get() % self.loops.len();
                self.next.set(i + 1);
                map.insert(tsih, i);
                i
            }
        };
        self.send_to(i, TargetMsg::Connection(Box::new(h)));
    }

    /// Ask every loop (a session lives on one; the others ignore it).
    pub fn broadcast(&self, m: impl Fn() -> TargetMsg) {
        for i in 0..self.loops.len() {
            self.send_to(i, m());
        }
    }

    /// Stop the loops and join their threads (each waits for its I/O in
    /// flight), then flush every store: with the write cache on, writes
    /// already acknowledged may sit in the page cache, and a daemon told to
    /// stop (SIGTERM, `--op delete --mode system`) leaves them durable.
    pub fn stop(mut self) {
        for l in &self.loops {
            let _ = l.send(TargetMsg::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let stores: Vec<(LunId, Arc<dyn BlockDevice>)> = self
            .shared
            .devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, io)| (*id, io.dev.clone()))
            .collect();
        for (lun, dev) in stores {
            if let Err(e) = dev.flush() {
                tracing::warn!(tid = self.tid, lun = lun.0, error = %e, "flush at stop failed");
            }
        }
    }
}

async fn run_loop(ctx: Rc<TargetCtx>, mut rx: mpsc::UnboundedReceiver<TargetMsg>) {
    while let Some(m) = rx.recv().await {
        match m {
            TargetMsg::Connection(h) => ctx.accept(*h),
            TargetMsg::AbortTasks(lun) => ctx.abort_here(lun, None),
            TargetMsg::CloseSessionsBut { except } => ctx.close_here(except),
            TargetMsg::AbortNexusTasks(aborts) => ctx.abort_nexus_tasks_here(&aborts),
            TargetMsg::CloseSession { tsih } => {
                ctx.close_session(tsih);
            }
            TargetMsg::CloseConnection { tsih, cid } => {
                let s = ctx.sessions.borrow().get(&tsih).cloned();
                if let Some(s) = s {
                    s.m.borrow_mut().close_cid(cid);
                    s.wake(None);
                }
            }
            TargetMsg::RequestLogout { tsih, cid, wait } => {
                let s = ctx.sessions.borrow().get(&tsih).cloned();
                if let Some(s) = s {
                    let now = std::time::Instant::now();
                    if s.m.borrow_mut().request_logout(cid, wait, now) {
                        s.wake(None);
                    }
                }
            }
            TargetMsg::Stop => break,
        }
    }
    let all: Vec<u16> = ctx.sessions.borrow().keys().copied().collect();
    for t in all {
        ctx.close_session(t);
    }
    // Let connection tasks see their close and flush.
    tokio::task::yield_now().await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    ctx.pool.stop();
}
