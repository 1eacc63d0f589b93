//! The main thread: portals' accept, login and discovery, the management
//! socket, and the table of running target loops.

mod live;
mod login;
mod metrics;
mod notify;
mod portal;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, RwLock};

use crate::dataplane::TargetHandle;
use crate::mgmt::{self, TargetTable};
use crate::registry::Registry;

pub use live::DaemonLive;
pub use portal::parse_portal;

/// Workers per target for blocking disk I/O unless `-t` says otherwise:
/// twice the cores, at least 4. More only adds context switches (measured
/// with bench/bench.py on 2 cores: 4 workers gave 1.4x the IOPS of 16 and
/// 64); io_uring (`-E aio`) needs none.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .max(4)
}

/// A ready-made target for trying rtgt out.
#[derive(Debug, Clone)]
pub struct Demo {
    pub data_dir: PathBuf,
    pub size: u64,
}

/// Start-up settings (rtgtd's command line). The management socket is at
/// tgt's path, `/var/run/tgtd/socket.<control_port>`, or under
/// `$TGT_IPC_SOCKET` as with tgtd.
#[derive(Debug, Clone)]
pub struct Config {
    pub control_port: u16,
    pub portals: Vec<SocketAddr>,
    pub debug: bool,
    pub io_threads: Option<usize>,
    /// Event-loop threads per target (`--target-loops`).
    pub target_loops: Option<usize>,
    /// Adaptive polling window of the target loops, µs (`--poll-us`).
    pub poll_us: u32,
    /// Cores for the target loops (`--cpus`); empty: no pinning.
    pub cpus: Vec<usize>,
    pub demo: Option<Demo>,
    /// `--iscsi nop_interval=N`: tgtd's default NOP-In interval for new
    /// targets (shown by `show`).
    pub nop_interval: Option<i32>,
    /// `--iscsi nop_count=N`.
    pub nop_count: Option<i32>,
    /// This gateway's port identity for every target (`--port-group`):
    /// iSCSI target portal group tag, SCSI target port group and relative
    /// target port identifier.
    pub port_group: u16,
    /// `--data-dir`: the demo's backing file, and `pr/` with the state of
    /// persistent reservations made with APTPL.
    pub data_dir: PathBuf,
    /// `--metrics ADDR:PORT`: serve Prometheus metrics there.
    pub metrics: Option<SocketAddr>,
    /// `-r PATH`: the JSON-RPC socket (default: per control port).
    pub rpc_socket: Option<PathBuf>,
    /// `--json FILE`: a saved configuration to apply at start-up.
    pub json_config: Option<PathBuf>,
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds this control port's lock, or the socket could
    /// not be created.
    #[error("control port {port}: {source} (is another rtgtd or tgtd running with -C {port}?)")]
    Control {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// A portal could not be bound.
    #[error("portal {addr}: {source}")]
    Portal {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The JSON-RPC socket could not be bound.
    #[error("JSON-RPC socket {path}: {source}")]
    Rpc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The start-up configuration could not be applied.
    #[error("--json: {0}")]
    Config(String),
    /// The metrics endpoint could not be bound.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Runtime or thread creation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The demo target could not be set up.
    #[error("demo target: {0}")]
    Demo(String),
}

/// What the main thread shares between login, portals and management.
pub struct DaemonState {
    pub table: Rc<RefCell<TargetTable>>,
    pub targets: RefCell<HashMap<u32, TargetHandle>>,
    pub registry: Arc<Registry>,
    /// Addresses we listen on, shared with target loops for SendTargets.
    pub portals: Arc<RwLock<Vec<SocketAddr>>>,
    listeners: RefCell<HashMap<SocketAddr, tokio::task::JoinHandle<()>>>,
    /// Portals closed by `--mode lld --op stop`, to reopen on start.
    stopped_portals: RefCell<Vec<SocketAddr>>,
    /// Portals with no socket of their own: one of our wildcard listeners
    /// accepts for them (see `DaemonLive::bind_portal`).
    covered: RefCell<Vec<SocketAddr>>,
    pub shutdown: tokio::sync::Notify,
    /// Blocking-I/O workers per target loop.
    pub io_threads: usize,
    /// Event loops per target.
    pub target_loops: usize,
    pub poll_us: u32,
    pub cpus: Arc<Vec<usize>>,
    /// `--port-group`.
    pub port_group: u16,
    /// Connections in login or discovery, per initiator address.
    pub pending: RefCell<HashMap<std::net::IpAddr, usize>>,
    /// I/O counters of every target (`tgtadm --op stat`).
    pub stats: Arc<crate::stats::Stats>,
    /// `--data-dir`.
    pub data_dir: PathBuf,
}

impl DaemonState {
    /// Start accepting on a bound portal.
    fn listen(self: &Rc<Self>, addr: SocketAddr, l: std::net::TcpListener) {
        let local = l.local_addr().unwrap_or(addr);
        let task = tokio::task::spawn_local(portal::accept_loop(self.clone(), l));
        self.listeners.borrow_mut().insert(addr, task);
        self.portals
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(local);
    }

    fn unlisten(&self, addr: SocketAddr) {
        if let Some(t) = self.listeners.borrow_mut().remove(&addr) {
            t.abort();
        }
        self.portals
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|a| *a != addr);
    }
}

/// Every connection is a descriptor: allow as many as the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn init_tracing(debug: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RTGT_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if debug { "debug" } else { "info" })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the daemon until `--mode system --op delete` or SIGINT/SIGTERM.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    init_tracing(cfg.debug);
    raise_fd_limit();
    let port = cfg.control_port;
    let (mgmt_listener, _lock) = mgmt::socket::bind_prefix(&mgmt::socket::default_prefix(), port)
        .map_err(|source| DaemonError::Control { port, source })?;
    // After the control port's lock: no other daemon owns this path.
    let rpc_path = cfg
        .rpc_socket
        .clone()
        .unwrap_or_else(|| mgmt::rpc::default_path(port));
    let rpc_listener = mgmt::rpc::bind(&rpc_path).map_err(|source| DaemonError::Rpc {
        path: rpc_path.clone(),
        source,
    })?;
    let mut bound = Vec::new();
    for &addr in &cfg.portals {
        let l = portal::bind(addr).map_err(|source| DaemonError::Portal { addr, source })?;
        bound.push((addr, l));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async move {
        let state = Rc::new(DaemonState {
            table: Rc::new(RefCell::new(TargetTable::new())),
            targets: RefCell::new(HashMap::new()),
            registry: Registry::new(),
            portals: Arc::new(RwLock::new(Vec::new())),
            listeners: RefCell::new(HashMap::new()),
            shutdown: tokio::sync::Notify::new(),
            io_threads: cfg
                .io_threads
                .unwrap_or_else(default_io_threads)
                .clamp(1, 1024),
            stats: crate::stats::Stats::new(),
            pending: RefCell::new(HashMap::new()),
            stopped_portals: RefCell::new(Vec::new()),
            covered: RefCell::new(Vec::new()),
            target_loops: cfg
                .target_loops
                .unwrap_or_else(crate::dataplane::default_loops)
                .clamp(1, 64),
            poll_us: cfg.poll_us.min(10_000),
            port_group: cfg.port_group.max(1),
            cpus: Arc::new(cfg.cpus.clone()),
            data_dir: cfg.data_dir.clone(),
        });
        for (addr, l) in bound {
            state.listen(addr, l);
        }
        {
            let mut t = state.table.borrow_mut();
            t.default_nop_interval = cfg.nop_interval.unwrap_or(0);
            t.default_nop_count = cfg.nop_count.unwrap_or(0);
            t.tpgt = state.port_group;
            for a in state
                .portals
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
            {
                t.portals.insert(
                    0,
                    mgmt::table::Portal {
                        addr: *a,
                        tpgt: state.port_group,
                    },
                );
            }
        }
        if let Some(addr) = cfg.metrics {
            let l = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| DaemonError::Metrics { addr, source })?;
            tokio::task::spawn_local(metrics::serve(l, state.clone()));
        }
        let live: Rc<RefCell<dyn mgmt::Live>> =
            Rc::new(RefCell::new(DaemonLive::new(state.clone())));
        if let Some(demo) = &cfg.demo {
            live::setup_demo(&state, &live, demo).map_err(DaemonError::Demo)?;
        }
        if let Some(file) = &cfg.json_config {
            let n = mgmt::rpc::load_file(file, &state.table, &live).map_err(DaemonError::Config)?;
            tracing::info!(file = %file.display(), calls = n, "configuration loaded");
        }
        tokio::task::spawn_local(mgmt::rpc::serve(
            tokio::net::UnixListener::from_std(rpc_listener)?,
            state.table.clone(),
            live.clone(),
        ));
        tracing::info!(control_port = port, portals = ?cfg.portals, rpc = %rpc_path.display(), "rtgtd ready");
        let listener = tokio::net::UnixListener::from_std(mgmt_listener)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Portals bound, the management socket listening: tell systemd
        // (Type=notify), and ping its watchdog from this loop.
        let notifier = notify::Notifier::from_env().map(Rc::new);
        if let Some(n) = &notifier {
            let portals = state.portals.read().map_or(0, |p| p.len());
            n.send(&format!(
                "READY=1\nMAINPID={}\nSTATUS=serving, {portals} portal(s), control port {port}",
                std::process::id()
            ));
            if let Some(every) = notify::watchdog_interval() {
                let n = n.clone();
                tokio::task::spawn_local(async move {
                    let mut tick = tokio::time::interval(every);
                    loop {
                        tick.tick().await;
                        n.send("WATCHDOG=1");
                    }
                });
            }
        }
        tokio::select! {
            r = mgmt::serve(listener, state.table.clone(), live.clone()) => { r?; }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = state.shutdown.notified() => {}
        }
        if let Some(n) = &notifier {
            n.send("STOPPING=1\nSTATUS=stopping");
        }
        let targets: Vec<_> = state.targets.borrow_mut().drain().map(|(_, h)| h).collect();
        for h in targets {
            h.stop();
        }
        // Stores opened for requests never applied go too.
        drop(live);
        crate::backend::rbd::wait_closed(std::time::Duration::from_secs(10));
        Ok::<(), DaemonError>(())
    });
    result
}
