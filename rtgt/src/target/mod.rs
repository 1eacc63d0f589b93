//! A target's event loop: thread `tgt/<tid>`, a current-thread runtime that
//! owns the target's LUNs, sessions and connections, so the data path takes
//! no lock. The management thread talks to it only through [`TargetMsg`].
//! Disk I/O runs on the runtime's blocking pool and completes back into the
//! loop, which therefore never waits on a disk.

pub mod conn;
pub mod session;
pub mod uring;
pub mod writer;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use iscsi::StatSn;
use scsi::{BlockDevice, LunConfig, LunId, LunSet, NexusId, TargetPort};
use tokio::sync::{mpsc, oneshot};

use crate::registry::Registry;
use crate::stats::{Counters, TargetStats};
use conn::{Conn, ConnParams};
use session::{Session, SessionSetup};
use writer::WriterState;

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
    AddLun {
        id: LunId,
        cfg: Box<LunConfig>,
        dev: Arc<dyn BlockDevice>,
    },
    RemoveLun(LunId),
    /// New LU settings, and a new store when the path changed.
    UpdateLun {
        id: LunId,
        cfg: Box<LunConfig>,
        dev: Option<Arc<dyn BlockDevice>>,
    },
    /// End a session (reinstatement, forced delete).
    CloseSession {
        tsih: u16,
        done: Option<oneshot::Sender<()>>,
    },
    /// End one connection.
    CloseConnection {
        tsih: u16,
        cid: u16,
    },
    SetKnobs(Knobs),
    Rename(String),
    /// Close everything and end the thread.
    Stop,
}

/// What the target's loop owns.
pub struct TargetCtx {
    pub tid: u32,
    pub name: RefCell<String>,
    pub luns: RefCell<LunSet>,
    pub devices: RefCell<HashMap<LunId, Arc<dyn BlockDevice>>>,
    pub sessions: RefCell<HashMap<u16, Rc<Session>>>,
    pub registry: Arc<Registry>,
    pub portals: Arc<RwLock<Vec<SocketAddr>>>,
    pub knobs: Cell<Knobs>,
    /// The loop's io_uring, when the kernel offers one (else workers).
    pub uring: Option<Rc<uring::Uring>>,
    /// COMPARE AND WRITE / ORWRITE tasks running on workers: while any
    /// runs, plain I/O takes the worker path too, under the LU's lock.
    pub exclusive: Cell<usize>,
    /// Signalled when the ring drains, for an exclusive task to start.
    pub ring_idle: tokio::sync::Notify,
    /// Counters for `tgtadm --op stat`.
    pub stats: Arc<TargetStats>,
    /// Each LUN's counters, so a command bumps them without a lookup lock.
    pub lun_stats: RefCell<HashMap<LunId, Arc<Counters>>>,
}

impl TargetCtx {
    /// A connection ended: leave its session, and end the session with its
    /// last connection.
    pub fn conn_closed(&self, c: &Rc<Conn>) {
        let tsih = c.session.setup.tsih;
        self.registry.remove_conn(tsih, c.cid);
        self.stats.remove_conn(tsih, c.cid);
        let empty = {
            let mut conns = c.session.conns.borrow_mut();
            conns.retain(|x| !Rc::ptr_eq(x, c));
            conns.is_empty()
        };
        if empty {
            let mut sessions = self.sessions.borrow_mut();
            if sessions
                .get(&tsih)
                .is_some_and(|s| Rc::ptr_eq(s, &c.session))
            {
                sessions.remove(&tsih);
                self.registry.remove_session(tsih);
                self.stats.remove_session(tsih);
            }
            drop(sessions);
            self.luns.borrow_mut().remove_nexus(c.session.setup.nexus);
        }
    }

    /// Abort tasks on a LUN (or all LUNs) on every connection of the target.
    pub fn abort_everywhere(&self, lun: Option<LunId>) {
        let sessions: Vec<_> = self.sessions.borrow().values().cloned().collect();
        for s in sessions {
            for c in s.conns.borrow().iter() {
                c.abort_lun(lun);
            }
        }
    }

    /// This target with every portal, wildcards replaced by the address
    /// the connection arrived on (what SendTargets in a normal session
    /// lists, RFC 7143 §13.3 / Appendix C).
    pub fn listing(&self, local: SocketAddr) -> Vec<iscsi::TargetEntry> {
        let portals = self
            .portals
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|a| a.is_ipv4() == local.is_ipv4() || !a.ip().is_unspecified())
            .map(|a| {
                let a = if a.ip().is_unspecified() {
                    SocketAddr::new(local.ip(), a.port())
                } else {
                    *a
                };
                (a, 1)
            })
            .collect();
        vec![(self.name.borrow().clone(), portals)]
    }

    fn accept(self: &Rc<Self>, h: Handoff) {
        let stream = match tokio::net::TcpStream::from_std(h.stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handoff failed");
                self.registry.remove_conn(h.session.tsih, h.cid);
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
                    self.luns.borrow_mut().add_nexus_named(s.setup.nexus, &port);
                    sessions.insert(tsih, s.clone());
                    s
                }
            }
        };
        // A connection reusing a CID replaces the old one (RFC 7143 §6.3.4).
        if let Some(old) = session.conn(h.cid) {
            old.close();
        }
        let (tx, rx) = writer::channel();
        let local = stream.local_addr().unwrap_or(h.peer);
        let conn = Conn::new(
            h.cid,
            h.peer,
            local,
            session.clone(),
            self.clone(),
            tx,
            h.params,
            &h.negotiated,
        );
        session.conns.borrow_mut().push(conn.clone());
        let (rd, wr) = stream.into_split();
        let wstate = Rc::new(RefCell::new(WriterState {
            stat_sn: h.stat_sn,
            digests: h.params.digests,
        }));
        tokio::task::spawn_local(writer::run(wr, rx, wstate, session));
        let leftover = h.leftover;
        tokio::task::spawn_local(async move { conn.run(rd, leftover).await });
    }

    fn close_session(&self, tsih: u16) {
        let s = self.sessions.borrow().get(&tsih).cloned();
        if let Some(s) = s {
            for c in s.conns.borrow().iter() {
                c.close();
            }
        }
    }
}

/// The loop's io_uring unless unavailable or `RTGT_IO_ENGINE=threads`
/// (for comparisons), in which case data I/O goes to workers.
fn ring_for_loop() -> Option<Rc<uring::Uring>> {
    if std::env::var("RTGT_IO_ENGINE").is_ok_and(|v| v == "threads") {
        return None;
    }
    // The ring's eventfd is registered with this thread's runtime, so it
    // must be created inside it.
    match uring::Uring::new() {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::info!(error = %e, "io_uring unavailable; disk I/O uses worker threads");
            None
        }
    }
}

/// The management side's handle on a running target loop.
pub struct TargetHandle {
    pub tid: u32,
    tx: mpsc::UnboundedSender<TargetMsg>,
    thread: Option<JoinHandle<()>>,
}

impl TargetHandle {
    /// Start thread `tgt/<tid>`.
    /// `io_threads` bounds the workers that run blocking disk I/O for this
    /// target (tgtd's `-t`).
    pub fn spawn(
        tid: u32,
        name: String,
        registry: Arc<Registry>,
        portals: Arc<RwLock<Vec<SocketAddr>>>,
        io_threads: usize,
        stats: Arc<TargetStats>,
    ) -> std::io::Result<TargetHandle> {
        let (tx, rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(format!("tgt/{tid}"))
            .spawn(move || {
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
                let port = TargetPort {
                    target_name: name.clone(),
                    tpgt: 1,
                    relative_port: 1,
                };
                let _in_rt = rt.enter();
                let ctx = Rc::new(TargetCtx {
                    tid,
                    name: RefCell::new(name),
                    luns: RefCell::new(LunSet::new(tid, port)),
                    devices: RefCell::new(HashMap::new()),
                    sessions: RefCell::new(HashMap::new()),
                    registry,
                    portals,
                    knobs: Cell::new(Knobs::default()),
                    uring: ring_for_loop(),
                    exclusive: Cell::new(0),
                    ring_idle: tokio::sync::Notify::new(),
                    stats,
                    lun_stats: RefCell::new(HashMap::new()),
                });
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    if let Some(u) = &ctx.uring {
                        tokio::task::spawn_local(u.clone().reap());
                    }
                    run_loop(ctx, rx).await
                });
            })?;
        Ok(TargetHandle {
            tid,
            tx,
            thread: Some(thread),
        })
    }

    pub fn send(&self, m: TargetMsg) {
        if self.tx.send(m).is_err() {
            tracing::warn!(tid = self.tid, "target loop is gone");
        }
    }

    /// Stop the loop and join its thread.
    pub fn stop(mut self) {
        let _ = self.tx.send(TargetMsg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run_loop(ctx: Rc<TargetCtx>, mut rx: mpsc::UnboundedReceiver<TargetMsg>) {
    while let Some(m) = rx.recv().await {
        match m {
            TargetMsg::Connection(h) => ctx.accept(*h),
            TargetMsg::AddLun { id, cfg, dev } => {
                ctx.lun_stats.borrow_mut().insert(id, ctx.stats.lun(id.0));
                ctx.devices.borrow_mut().insert(id, dev);
                ctx.luns.borrow_mut().insert(id, *cfg);
            }
            TargetMsg::RemoveLun(id) => {
                ctx.abort_everywhere(Some(id));
                ctx.luns.borrow_mut().remove(id);
                ctx.devices.borrow_mut().remove(&id);
                ctx.lun_stats.borrow_mut().remove(&id);
                ctx.stats.remove_lun(id.0);
            }
            TargetMsg::UpdateLun { id, cfg, dev } => {
                if let Some(d) = dev {
                    ctx.devices.borrow_mut().insert(id, d);
                }
                ctx.luns.borrow_mut().update(id, |c| *c = *cfg);
            }
            TargetMsg::CloseSession { tsih, done } => {
                ctx.close_session(tsih);
                if let Some(d) = done {
                    let _ = d.send(());
                }
            }
            TargetMsg::CloseConnection { tsih, cid } => {
                let s = ctx.sessions.borrow().get(&tsih).cloned();
                if let Some(c) = s.and_then(|s| s.conn(cid)) {
                    c.close();
                }
            }
            TargetMsg::SetKnobs(k) => ctx.knobs.set(k),
            TargetMsg::Rename(n) => *ctx.name.borrow_mut() = n,
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
}

/// Nexus ids as the SCSI layer sees them.
pub fn nexus_of(n: u64) -> NexusId {
    NexusId(n)
}
