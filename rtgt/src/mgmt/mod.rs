//! The management plane: one typed core ([`command`]) with its adapters:
//! tgt's binary IPC on a unix socket, so the stock `tgtadm` and
//! `tgt-admin` drive rtgtd unmodified, SPDK's JSON-RPC ([`rpc`]) and
//! Prometheus metrics ([`metrics`]).
//!
//! - [`command`]: the typed commands, validated once for every adapter.
//! - [`groups`]: SPDK's portal, initiator and auth groups and bdevs.
//! - [`ipc`], [`request`], [`socket`]: tgt's wire format and socket (the
//!   `tgt-ipc` crate, shared with the clients).
//! - [`rpc`]: JSON-RPC 2.0 with SPDK's methods and framing.
//! - [`table`]: the configuration state and the queries the login path uses.
//! - [`handler`]: executing a request with tgt's validation.
//! - [`show`]: `--op show` texts, identical to tgt's.
//! - [`stat`]: `--op stat`, in tgt's layout or rtgt's own (`--counters`).
//! - [`json`]: `rtgtadm --json` documents for show (and the JSON writer).
//! - [`live`]: what the management plane needs from the running daemon.

pub mod attrs;
pub mod command;
pub mod groups;
pub mod handler;
pub mod json;
pub mod live;
pub mod metrics;
pub mod params;
pub mod rpc;
pub mod show;
pub mod stat;
pub use tgt_ipc::{ipc, request, socket};
pub mod table;

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

pub use handler::handle;
pub use ipc::TgtadmError;
pub use live::{
    BackingInfo, ConnInfo, Deferred, DeferredDone, Effect, Live, SessionInfo, TargetCounters,
};
pub use request::{Mode, Op, Request};
pub use table::{LunSpec, TargetTable};

/// How long a client may take to send its request before we drop it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most times one request is handled again after deferred work (each
/// round opens at most one store; a request opens at most one).
const MAX_DEFERRED_ROUNDS: usize = 4;

/// Handle a request, running any deferred work (see [`Deferred`]) right
/// here on this thread: for start-up and tests, where nothing else waits.
pub fn handle_blocking(
    table: &mut TargetTable,
    req: &Request,
    live: &mut dyn Live,
) -> Result<String, TgtadmError> {
    run_request_blocking(table, live, MAX_DEFERRED_ROUNDS + 1, |t, l| {
        handle(t, req, l)
    })
}

/// [`run_request`] with the deferred opens run right here: for start-up
/// and tests, where nothing else waits.
pub fn run_request_blocking<T>(
    table: &mut TargetTable,
    live: &mut dyn Live,
    rounds: usize,
    mut run: impl FnMut(&mut TargetTable, &mut dyn Live) -> T,
) -> T {
    live.begin_request();
    let mut r = run(table, live);
    for _ in 1..rounds {
        let Some(d) = live.take_deferred() else { break };
        live.finish_deferred((d.0)());
        r = run(table, live);
    }
    // An open the last round asked for is not run: the request failed.
    drop(live.take_deferred());
    live.end_request();
    r
}

/// Run one request to its end, for any adapter: `run` is called with both
/// borrows held; when it leaves an open put off to another thread (see
/// [`Deferred`]), the open runs on a blocking thread (logins, discovery and
/// other requests go on meanwhile; nothing is borrowed across the wait)
/// and `run` is called again: it changed nothing the first time, and
/// validates afresh. At most `rounds` calls; `None` if none ran to an end.
pub async fn run_request<T>(
    table: &RefCell<TargetTable>,
    live: &RefCell<dyn Live>,
    rounds: usize,
    mut run: impl FnMut(&mut TargetTable, &mut dyn Live) -> T,
) -> Option<T> {
    let mut result = None;
    live.borrow_mut().begin_request();
    for _ in 0..rounds {
        result = Some({
            let mut t = table.borrow_mut();
            let mut l = live.borrow_mut();
            run(&mut t, &mut *l)
        });
        let deferred = live.borrow_mut().take_deferred();
        let Some(d) = deferred else { break };
        match tokio::task::spawn_blocking(d.0).await {
            Ok(done) => live.borrow_mut().finish_deferred(done),
            Err(_) => break,
        }
    }
    // Stores opened for it and not taken close now.
    live.borrow_mut().end_request();
    result
}

/// Whether a peer may manage us: root or our own user (tgtd requires the
/// peer's uid and gid to equal its own).
pub(crate) fn peer_allowed(stream: &UnixStream) -> bool {
    match stream.peer_cred() {
        Ok(c) => {
            // SAFETY: getuid has no preconditions.
            let me = unsafe { libc::getuid() };
            c.uid() == 0 || c.uid() == me
        }
        Err(_) => false,
    }
}

/// Serve one connection: read a request, handle it, answer. Returns true
/// when the request was a successful `system delete`.
async fn serve_one(
    mut stream: UnixStream,
    table: &RefCell<TargetTable>,
    live: &RefCell<dyn Live>,
) -> bool {
    if !peer_allowed(&stream) {
        tracing::warn!("management connection refused: peer is not root or our user");
        return false;
    }
    let req = match tokio::time::timeout(REQUEST_TIMEOUT, ipc::read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("bad management request: {e}");
            return false;
        }
        Err(_) => {
            tracing::warn!("management request timed out");
            return false;
        }
    };
    tracing::debug!(?req, "management request");
    let result = run_request(table, live, MAX_DEFERRED_ROUNDS + 1, |t, l| {
        handler::handle(t, &req, l)
    })
    .await
    .unwrap_or(Err(TgtadmError::InvalidRequest));
    if let Err(e) = &result {
        tracing::debug!("management request failed: {e}");
    }
    let shutdown = result.is_ok() && req.mode == Mode::System && req.op == Op::Delete;
    if let Err(e) = ipc::write_response(&mut stream, &result).await {
        tracing::debug!("writing management response: {e}");
    }
    shutdown
}

/// Accept management connections, one request each, until a successful
/// `--mode system --op delete`; then stop listening and return (the
/// listener is closed, so tgtadm's wait for ECONNREFUSED ends). Runs on a
/// current-thread runtime: connections are served concurrently on a local
/// task set, and each request is handled while holding both borrows.
pub async fn serve(
    listener: UnixListener,
    table: Rc<RefCell<TargetTable>>,
    live: Rc<RefCell<dyn Live>>,
) -> io::Result<()> {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let stop = Rc::new(Cell::new(false));
            let notify = Rc::new(tokio::sync::Notify::new());
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = notify.notified() => {
                        if stop.get() {
                            break;
                        }
                        continue;
                    }
                };
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("management accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (table, live, stop, notify) =
                    (table.clone(), live.clone(), stop.clone(), notify.clone());
                tokio::task::spawn_local(async move {
                    if serve_one(stream, &table, &live).await {
                        stop.set(true);
                        notify.notify_one();
                    }
                });
            }
            drop(listener);
            Ok(())
        })
        .await
}
