//! The management plane's view of the running daemon ([`mgmt::Live`]):
//! opening backing stores, listing sessions, and turning committed table
//! changes into messages to the target loops.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use scsi::{BlockDevice, LunConfig, LunId, SenseFormat};

use super::{DaemonState, Demo};
use crate::backend::{self, BackendKind, OpenFlags};
use crate::dataplane::{Knobs, LoopConfig, TargetHandle, TargetMsg};
use crate::mgmt::{self, BackingInfo, ConnInfo, Effect, LunSpec, SessionInfo, TgtadmError};

pub struct DaemonLive {
    state: Rc<DaemonState>,
    /// Stores opened by `open_backing`, waiting for their `LunAdded` /
    /// `LunUpdated` effect, by (tid, lun).
    opened: Vec<((u32, u64), Arc<dyn BlockDevice>)>,
    /// An open put off to a blocking thread (see [`mgmt::Deferred`]).
    deferred: Option<mgmt::Deferred>,
    /// Opens done off the main thread, for the request handled again.
    prefetched: Vec<Prefetched>,
    /// Requests begun and not ended (see `Live::begin_request`).
    requests: usize,
}

/// What a deferred open is for: the same store, the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OpenKey {
    kind: BackendKind,
    path: Option<String>,
    bsopts: Option<String>,
    flags: OpenFlags,
    size: u64,
}

/// A deferred open's result: the store and whether it fell back to
/// read-only.
struct Prefetched {
    key: OpenKey,
    result: Result<(Arc<dyn BlockDevice>, bool), String>,
}

/// Open a store as tgt's rdwr does: read-write, or read-only when the file
/// refuses writing (the unit is then marked read-only).
fn open_with_fallback(k: &OpenKey) -> Result<(Arc<dyn BlockDevice>, bool), backend::BackendError> {
    slow_open_fault();
    let path = k.path.as_deref();
    let bsopts = k.bsopts.as_deref();
    match backend::open(k.kind, path, bsopts, k.flags, k.size) {
        Ok(d) => {
            let ro = k.flags.readonly || d.read_only();
            Ok((d, ro))
        }
        Err(backend::BackendError::Open { source, .. })
            if !k.flags.readonly
                && matches!(
                    source.raw_os_error(),
                    Some(libc::EACCES) | Some(libc::EROFS)
                ) =>
        {
            let flags = OpenFlags {
                readonly: true,
                ..k.flags
            };
            backend::open(k.kind, path, bsopts, flags, k.size).map(|d| (d, true))
        }
        Err(e) => Err(e),
    }
}

/// Fault injection for tests (issue 13's kind): with
/// `RTGT_FAULT_OPEN_GATE=<path>`, every backing store open first creates
/// `<path>.waiting`, then waits (up to a minute) until `<path>` exists,
/// standing in for a store that takes long to open (a hung NFS server, a
/// remote image).
fn slow_open_fault() {
    let Some(gate) = std::env::var_os("RTGT_FAULT_OPEN_GATE") else {
        return;
    };
    let gate = std::path::PathBuf::from(gate);
    let mut waiting = gate.clone().into_os_string();
    waiting.push(".waiting");
    let _ = std::fs::write(&waiting, b"");
    let t0 = std::time::Instant::now();
    while !gate.exists() && t0.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

impl DaemonLive {
    pub fn new(state: Rc<DaemonState>) -> DaemonLive {
        DaemonLive {
            state,
            opened: Vec::new(),
            deferred: None,
            prefetched: Vec::new(),
            requests: 0,
        }
    }

    /// The store for `key`: opened off the thread before this round, or
    /// (a `null` store, which costs nothing) opened now; otherwise the
    /// open is deferred and the request fails this round.
    fn store(&mut self, key: OpenKey) -> Result<(Arc<dyn BlockDevice>, bool), TgtadmError> {
        // Kept (not taken) until the request ends: a command that opens
        // several stores (a target node with LUNs) runs again after each
        // deferred open and needs the earlier ones again.
        if let Some(p) = self.prefetched.iter().find(|p| p.key == key) {
            return p.result.clone().map_err(|e| {
                tracing::warn!(error = %e, "backing store");
                TgtadmError::InvalidRequest
            });
        }
        if key.kind == BackendKind::Null {
            return open_with_fallback(&key).map_err(|_| TgtadmError::InvalidRequest);
        }
        self.deferred = Some(mgmt::Deferred(Box::new(move || {
            let result = open_with_fallback(&key).map_err(|e| e.to_string());
            mgmt::DeferredDone(Box::new(Prefetched { key, result }))
        })));
        Err(TgtadmError::InvalidRequest)
    }

    /// `cfg` with its APTPL state file: `<data-dir>/pr/<target name>.<lun>`
    /// (an iSCSI name has no `/`).
    /// (The management handler holds the table while effects apply: the
    /// name comes from the running target.)
    fn with_pr_file(&self, tid: u32, lun: u64, mut cfg: LunConfig) -> LunConfig {
        self.with_target(tid, |h| {
            // `%` and `/` escaped, so no two names share a file.
            let name = h
                .shared
                .name
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .replace('%', "%25")
                .replace('/', "%2F");
            cfg.pr_file = Some(self.state.data_dir.join("pr").join(format!("{name}.{lun}")));
        });
        cfg
    }

    /// Run `f` on a target's shared state, if the target runs.
    fn with_target(&self, tid: u32, f: impl FnOnce(&TargetHandle)) {
        if let Some(h) = self.state.targets.borrow().get(&tid) {
            f(h);
        }
    }

    /// Send a target's NOP settings to its loop. The management handler
    /// holds the table while effects apply, so read it once it is done.
    fn push_knobs(&self, tid: u32) {
        let state = self.state.clone();
        tokio::task::spawn_local(async move {
            let knobs = knobs_of(&state.table.borrow(), tid);
            if let Some(h) = state.targets.borrow().get(&tid) {
                h.shared.set_knobs(knobs);
            }
        });
    }

    /// The TSIH of target `tid`'s session with management's nexus id.
    fn tsih_of(&self, tid: u32, nexus: u64) -> Option<u16> {
        let sessions = self.state.registry.sessions_of(tid);
        sessions
            .into_iter()
            .find(|s| s.nexus == nexus)
            .map(|s| s.tsih)
    }

    fn take_opened(&mut self, tid: u32, lun: u64) -> Option<Arc<dyn BlockDevice>> {
        let i = self.opened.iter().position(|(k, _)| *k == (tid, lun))?;
        Some(self.opened.swap_remove(i).1)
    }

    fn device_for(&mut self, tid: u32, spec: &LunSpec) -> Arc<dyn BlockDevice> {
        if let Some(d) = self.take_opened(tid, spec.lun) {
            return d;
        }
        // LUN 0 controller and medium-less units: a null store of size 0
        // (null LUNs report the size tgt gives them).
        Arc::new(backend::NullDevice::new(spec.size_bytes))
    }
}

/// The SCSI layer's settings for a management LUN spec.
pub fn lun_config(tid: u32, spec: &LunSpec) -> LunConfig {
    let base = match spec.device_type {
        mgmt::table::DeviceType::Controller => LunConfig::tgt_controller(tid),
        _ => LunConfig::tgt_defaults(tid, LunId(spec.lun)),
    };
    LunConfig {
        block_size: spec.block_size.max(1),
        size_bytes: spec.size_bytes,
        thin: spec.thin_provisioning,
        soft_threshold_pct: spec.thin_threshold,
        readonly: spec.readonly || spec.swp,
        removable: spec.removable,
        online: spec.online,
        vendor_id: spec.vendor_id.clone(),
        product_id: spec.product_id.clone(),
        product_rev: spec.product_rev.clone(),
        scsi_id: spec.scsi_id.clone(),
        scsi_sn: spec.scsi_sn.clone(),
        sense_format: if spec.sense_format {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        },
        rotation_rate: spec.rotation_rate,
        lbppbe: spec.lbppbe,
        la_lba: spec.la_lba as u64,
        optimal_xfer_gran: spec.optimal_xfer_gran.unwrap_or(0),
        optimal_xfer_len: spec.optimal_xfer_len.unwrap_or(0),
        path: spec.path.clone(),
        numeric_id: spec.numeric_id,
        write_cache: write_cache(spec),
        ..base
    }
}

/// WCE as tgt-admin's `write-cache on|off` sets it: a caching mode page
/// (8, subpage 0) given with `--params mode_page=8:0:18:<byte 2>:...`, whose
/// first byte is the page's byte 2, with WCE in bit 2 (SBC-3 §6.4.5);
/// tgt's own default page has it on. The last such page given counts.
fn write_cache(spec: &LunSpec) -> bool {
    spec.mode_pages
        .iter()
        .rev()
        .find(|p| p.pcode == 8 && p.subpcode == 0)
        .and_then(|p| p.data.first())
        .is_none_or(|b| b & 0x04 != 0)
}

fn open_flags(spec: &LunSpec) -> OpenFlags {
    OpenFlags {
        sync: spec.bsoflags.sync,
        direct: spec.bsoflags.direct,
        readonly: false,
    }
}

impl mgmt::Live for DaemonLive {
    fn open_backing(&mut self, tid: u32, spec: &LunSpec) -> Result<BackingInfo, TgtadmError> {
        let kind = BackendKind::parse(&spec.bstype).map_err(|_| TgtadmError::InvalidRequest)?;
        let key = OpenKey {
            kind,
            path: spec.path.clone(),
            bsopts: spec.bsopts.clone(),
            flags: open_flags(spec),
            size: spec.size_bytes,
        };
        let (dev, readonly) = self.store(key)?;
        let info = BackingInfo {
            size_bytes: dev.size(),
            readonly,
            physical_block_size: dev.physical_block_size(),
            identity: dev.identity(),
        };
        self.take_opened(tid, spec.lun);
        self.opened.push(((tid, spec.lun), dev));
        Ok(info)
    }

    fn take_deferred(&mut self) -> Option<mgmt::Deferred> {
        self.deferred.take()
    }

    fn finish_deferred(&mut self, done: mgmt::DeferredDone) {
        if let Ok(p) = done.0.downcast::<Prefetched>() {
            // Bounded: a request makes at most MAX_DEFERRED_ROUNDS opens.
            self.prefetched.retain(|q| q.key != p.key);
            self.prefetched.push(*p);
        }
    }

    fn begin_request(&mut self) {
        self.requests += 1;
    }

    fn end_request(&mut self) {
        // A store opened for a command that was then refused must not be
        // taken by a later unit of the same tid and LUN.
        self.opened.clear();
        // Opens made off the thread serve every request still running
        // (one may wait between rounds while another ends).
        self.requests = self.requests.saturating_sub(1);
        if self.requests == 0 {
            self.prefetched.clear();
        }
    }

    fn sessions(&self, tid: u32) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .state
            .registry
            .sessions_of(tid)
            .into_iter()
            .map(|s| SessionInfo {
                nexus_id: s.nexus,
                initiator: s.initiator,
                alias: s.alias,
                connections: s
                    .conns
                    .iter()
                    .map(|&(cid, peer)| ConnInfo {
                        cid: cid as u32,
                        peer,
                    })
                    .collect(),
            })
            .collect();
        v.reverse();
        v
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::TargetCreated { tid, name } => {
                match TargetHandle::spawn(
                    tid,
                    name,
                    self.state.registry.clone(),
                    self.state.portals.clone(),
                    LoopConfig {
                        loops: self.state.target_loops,
                        io_threads: self.state.io_threads,
                        poll_us: self.state.poll_us,
                        cpus: self.state.cpus.clone(),
                        port_group: self.state.port_group,
                    },
                    self.state.stats.target(tid),
                ) {
                    Ok(h) => {
                        self.state.targets.borrow_mut().insert(tid, h);
                        self.push_knobs(tid);
                    }
                    Err(e) => tracing::error!(tid, error = %e, "cannot start target thread"),
                }
            }
            Effect::TargetDeleted { tid, .. } => {
                let h = self.state.targets.borrow_mut().remove(&tid);
                if let Some(h) = h {
                    // Stopping closes every session, waits for the I/O in
                    // flight and flushes the stores: on a thread of its
                    // own, so the management loop (and the watchdog it
                    // pings) never waits on a slow or stuck store.
                    let spawned = std::thread::Builder::new()
                        .name(format!("stop/{tid}"))
                        .spawn(move || h.stop());
                    if let Err(e) = spawned {
                        tracing::error!(tid, error = %e, "cannot stop the target's loops");
                    }
                }
                for s in self.state.registry.sessions_of(tid) {
                    self.state.registry.remove_session(s.tsih);
                }
                self.state.stats.remove_target(tid);
            }
            Effect::LunAdded { tid, spec } => {
                let dev = self.device_for(tid, &spec);
                let cfg = self.with_pr_file(tid, spec.lun, lun_config(tid, &spec));
                self.with_target(tid, |h| h.shared.add_lun(LunId(spec.lun), cfg, dev));
            }
            Effect::LunDeleted { tid, lun } => {
                self.with_target(tid, |h| h.shared.remove_lun(LunId(lun)))
            }
            Effect::LunUpdated { tid, spec } => {
                let dev = self.take_opened(tid, spec.lun);
                let cfg = self.with_pr_file(tid, spec.lun, lun_config(tid, &spec));
                self.with_target(tid, |h| h.shared.update_lun(LunId(spec.lun), cfg, dev));
            }
            Effect::TargetParamsChanged { tid } => self.push_knobs(tid),
            Effect::ConnectionClose { tid, sid, cid } => {
                if let Some(tsih) = self.tsih_of(tid, sid) {
                    let cid = cid as u16;
                    self.with_target(tid, |h| {
                        h.broadcast(|| TargetMsg::CloseConnection { tsih, cid })
                    });
                    // The loop closes the socket a moment later; as far as
                    // management is concerned the connection (and a session
                    // left without any) is gone now, so a `target delete`
                    // that follows, as tgt-admin's does, is not refused as
                    // busy.
                    let reg = &self.state.registry;
                    reg.remove_conn(tsih, cid);
                    if reg.find(tsih).is_some_and(|r| r.conns.is_empty()) {
                        reg.remove_session(tsih);
                    }
                }
            }
            Effect::PortalAdded(_) => {}
            Effect::LldStopped => {
                let addrs: Vec<_> = self.state.listeners.borrow().keys().copied().collect();
                for a in &addrs {
                    self.state.unlisten(*a);
                }
                self.state.stopped_portals.borrow_mut().extend(addrs);
            }
            Effect::LldStarted => {
                let addrs: Vec<_> = self.state.stopped_portals.borrow_mut().drain(..).collect();
                for a in addrs {
                    match super::portal::bind(a) {
                        Ok(l) => self.state.listen(a, l),
                        Err(e) => {
                            tracing::warn!(addr = %a, error = %e, "portal could not be bound again")
                        }
                    }
                }
            }
            Effect::PortalRemoved(addr) => {
                let was_covered = {
                    let mut c = self.state.covered.borrow_mut();
                    let n = c.len();
                    c.retain(|a| *a != addr);
                    c.len() != n
                };
                if !was_covered {
                    self.state.unlisten(addr);
                }
                if addr.ip().is_unspecified() {
                    // Portals the wildcard accepted for get sockets of
                    // their own now.
                    let orphans: Vec<_> = self
                        .state
                        .covered
                        .borrow()
                        .iter()
                        .copied()
                        .filter(|a| a.port() == addr.port() && a.is_ipv4() == addr.is_ipv4())
                        .collect();
                    for a in orphans {
                        match super::portal::bind(a) {
                            Ok(l) => {
                                self.state.covered.borrow_mut().retain(|x| *x != a);
                                self.state.listen(a, l);
                            }
                            Err(e) => tracing::warn!(addr = %a, error = %e, "portal"),
                        }
                    }
                }
            }
            Effect::RequestLogout { tid, sid, cid } => {
                if let Some(tsih) = self.tsih_of(tid, sid) {
                    let (cid, wait) = (cid as u16, mgmt::live::LOGOUT_WAIT);
                    self.with_target(tid, |h| {
                        h.broadcast(|| TargetMsg::RequestLogout { tsih, cid, wait })
                    });
                }
            }
            Effect::HistogramChanged { tid, enable } => {
                self.state.stats.target(tid).set_histogram(enable)
            }
            Effect::SystemDeleted => self.state.shutdown.notify_one(),
            Effect::TargetStateChanged { .. }
            | Effect::AclChanged { .. }
            | Effect::AccountsChanged
            | Effect::SystemStateChanged { .. } => {
                // Read from the table at the next login.
            }
        }
    }

    fn bind_portal(&mut self, addr: std::net::SocketAddr) -> Result<(), TgtadmError> {
        match super::portal::bind(addr) {
            Ok(l) => {
                self.state.listen(addr, l);
                Ok(())
            }
            // A portal our own wildcard listener of its family and port
            // already accepts for (rtgtd's default 0.0.0.0:3260 and an
            // SPDK portal group on 127.0.0.1:3260): recorded, with no
            // socket of its own; logins through it find its group by
            // their local address.
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && self.state.listeners.borrow().keys().any(|l| {
                        l.port() == addr.port()
                            && l.ip().is_unspecified()
                            && l.is_ipv4() == addr.is_ipv4()
                    }) =>
            {
                self.state.covered.borrow_mut().push(addr);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "portal");
                Err(TgtadmError::InvalidRequest)
            }
        }
    }

    fn lun_busy(&self, _tid: u32, _lun: u64) -> bool {
        false
    }

    fn stats(&self) -> Option<Arc<crate::stats::Stats>> {
        Some(self.state.stats.clone())
    }

    fn counters(&self, tid: u32) -> Option<mgmt::TargetCounters> {
        let t = self.state.stats.get(tid)?;
        // The data path keys sessions by TSIH; management names them by
        // I_T nexus id. Counters of a session that has just gone are
        // dropped with it.
        let records = self.state.registry.sessions_of(tid);
        let sessions = t
            .session_snapshots()
            .into_iter()
            .filter_map(|(tsih, total, conns)| {
                let r = records.iter().find(|r| r.tsih == tsih)?;
                let conns = conns.into_iter().map(|(c, s)| (c as u32, s)).collect();
                Some((r.nexus, total, conns))
            })
            .collect();
        Some(mgmt::TargetCounters {
            total: t.total.snapshot(),
            luns: t.lun_snapshots(),
            sessions,
        })
    }

    fn histogram(&self, tid: u32) -> Option<Vec<u64>> {
        Some(self.state.stats.get(tid)?.histogram()?.counts())
    }

    fn backing_size(&mut self, _tid: u32, spec: &LunSpec) -> Result<u64, TgtadmError> {
        // Open read-only and drop it again: the target loop keeps using the
        // store it has (file stores read their size with fstat or
        // BLKGETSIZE64 on each call, an RBD image asks librbd, so it sees
        // the new end too).
        let kind = BackendKind::parse(&spec.bstype).map_err(|_| TgtadmError::InvalidRequest)?;
        let key = OpenKey {
            kind,
            path: spec.path.clone(),
            bsopts: spec.bsopts.clone(),
            flags: OpenFlags {
                sync: false,
                direct: false,
                readonly: true,
            },
            size: spec.size_bytes,
        };
        self.store(key).map(|(d, _)| d.size())
    }
}

fn knobs_of(table: &mgmt::TargetTable, tid: u32) -> Knobs {
    match table.target(tid) {
        Some(t) => Knobs {
            nop_interval: t.nop_interval.max(0) as u32,
            nop_count: t.nop_count.max(0) as u32,
        },
        None => Knobs::default(),
    }
}

/// Create the demo target through the same path tgtadm requests take.
pub fn setup_demo(
    state: &Rc<DaemonState>,
    live: &Rc<RefCell<dyn mgmt::Live>>,
    demo: &Demo,
) -> Result<(), String> {
    std::fs::create_dir_all(&demo.data_dir)
        .map_err(|e| format!("{}: {e}", demo.data_dir.display()))?;
    let path = demo.data_dir.join("demo.img");
    if !path.exists() {
        let f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_len(demo.size)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let path = path.to_string_lossy().into_owned();
    let reqs = [
        (
            mgmt::Mode::Target,
            mgmt::Op::New,
            u64::MAX,
            format!("targetname={DEMO_IQN}"),
        ),
        (
            mgmt::Mode::Device,
            mgmt::Op::New,
            1,
            format!("path={path},bstype=rdwr"),
        ),
        (
            mgmt::Mode::Device,
            mgmt::Op::Update,
            1,
            "thin_provisioning=1".to_string(),
        ),
        (
            mgmt::Mode::Target,
            mgmt::Op::Bind,
            u64::MAX,
            "initiator-address=ALL".to_string(),
        ),
    ];
    for (mode, op, lun, params) in reqs {
        let req = mgmt::Request {
            mode,
            op,
            lld: "iscsi".into(),
            tid: 1,
            lun,
            params,
            ..Default::default()
        };
        let mut t = state.table.borrow_mut();
        let mut l = live.borrow_mut();
        mgmt::handle_blocking(&mut t, &req, &mut *l)
            .map_err(|e| format!("{mode:?} {op:?}: {e}"))?;
    }
    tracing::info!(target = DEMO_IQN, %path, "demo target ready");
    Ok(())
}

/// The demo target's name.
pub const DEMO_IQN: &str = "iqn.2026-11.io.rtgt:demo";
