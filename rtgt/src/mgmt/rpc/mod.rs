//! JSON-RPC 2.0 on a unix socket, framed as SPDK frames it, so SPDK's
//! `rpc.py` drives rtgtd unmodified:
//!
//! - requests are consecutive JSON values on the stream (no delimiter);
//!   an array is a batch;
//! - each response is one compact JSON value followed by a newline;
//! - a notification (no `id`) gets no result, but does get its error;
//! - invalid JSON is answered with -32700 and the connection is closed
//!   (a stream has no point to resynchronise at).
//!
//! Limits, so no client can grow our memory or hold the socket: 256 KiB of
//! a request not yet complete (SPDK's receive buffer), 64 connections at
//! once (SPDK's), 1024 requests per batch, 60 s of silence, JSON nested at
//! most 128 deep (serde_json's limit). Requests are handled one at a time
//! per connection on the main thread; opening a store runs on a blocking
//! thread meanwhile, as for tgt's IPC.

pub mod methods;
pub mod params;
pub mod views;

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::live::Live;
use super::table::TargetTable;

/// Largest incomplete request kept.
pub const MAX_REQUEST: usize = 256 * 1024;
/// Most connections served at once; more are closed at accept.
pub const MAX_CLIENTS: usize = 64;
/// Most requests in one batch.
pub const MAX_BATCH: usize = 1024;
/// A connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Most times one request runs again after an open off the thread (a
/// target node with many LUNs opens one store per round).
const MAX_ROUNDS: usize = super::command::MAX_NODE_LUNS + 4;

/// A JSON-RPC error (JSON-RPC 2.0 §5.1 codes, or SPDK's negative errno
/// codes for bdev methods).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
}

impl RpcError {
    /// -32700.
    pub fn parse_error() -> Self {
        Self::new(-32700, "Parse error")
    }

    /// -32600.
    pub fn invalid_request() -> Self {
        Self::new(-32600, "Invalid request")
    }

    /// -32601.
    pub fn method_not_found() -> Self {
        Self::new(-32601, "Method not found")
    }

    /// -32602 with a message.
    pub fn invalid_params(msg: impl Into<String>) -> Self {
        Self::new(-32602, msg)
    }

    /// -32603 with a message.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(-32603, msg)
    }

    /// SPDK's errno errors: the negative errno and its text.
    pub fn errno(code: i64, msg: &str) -> Self {
        Self::new(code, msg)
    }

    fn new(code: i64, msg: impl Into<String>) -> Self {
        RpcError {
            code,
            message: msg.into(),
        }
    }
}

/// The default socket: beside tgt's, per control port
/// (`/var/run/tgtd/socket.<port>.rpc`, or under `$TGT_IPC_SOCKET`), so
/// daemons on other control ports do not collide.
pub fn default_path(control_port: u16) -> PathBuf {
    let mut p =
        super::socket::socket_path(&super::socket::default_prefix(), control_port).into_os_string();
    p.push(".rpc");
    PathBuf::from(p)
}

/// Bind the socket (mode 0600), replacing a stale file. The caller holds
/// the control port's lock, so no live daemon owns the path.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// What one request is, before it runs.
enum Parsed {
    /// A method call; `id` is `None` for a notification.
    Call {
        id: Option<Value>,
        method: String,
        params: Option<Value>,
    },
    /// Not a valid request object.
    Invalid,
}

/// Check a request object (JSON-RPC 2.0 §4, with SPDK's strictness: no
/// other members).
fn parse_request(v: Value) -> Parsed {
    let Value::Object(mut m) = v else {
        return Parsed::Invalid;
    };
    if m.keys()
        .any(|k| !matches!(k.as_str(), "jsonrpc" | "method" | "params" | "id"))
    {
        return Parsed::Invalid;
    }
    match m.get("jsonrpc") {
        None => {}
        Some(Value::String(s)) if s == "2.0" => {}
        Some(_) => return Parsed::Invalid,
    }
    let id = match m.remove("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => return Parsed::Invalid,
    };
    let Some(Value::String(method)) = m.remove("method") else {
        return Parsed::Invalid;
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return Parsed::Invalid,
    };
    Parsed::Call { id, method, params }
}

fn response(id: Option<&Value>, r: Result<Value, RpcError>) -> Value {
    let id = id.cloned().unwrap_or(Value::Null);
    match r {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": e.code, "message": e.message}}),
    }
}

/// Run one method to its end: opens put off to a blocking thread run there
/// and the method runs again (it changed nothing the first time).
async fn run_method(
    table: &RefCell<TargetTable>,
    live: &RefCell<dyn Live>,
    method: &str,
    params: Option<&Value>,
) -> Result<Value, RpcError> {
    super::run_request(table, live, MAX_ROUNDS, |t, l| {
        methods::call(t, l, method, params)
    })
    .await
    .unwrap_or_else(|| Err(RpcError::internal("not run")))
}

/// Answer one request value; `None` when nothing is to be sent.
async fn answer(v: Value, table: &RefCell<TargetTable>, live: &RefCell<dyn Live>) -> Option<Value> {
    match v {
        Value::Array(items) => {
            if items.is_empty() || items.len() > MAX_BATCH {
                return Some(response(None, Err(RpcError::invalid_request())));
            }
            let mut out = Vec::new();
            for it in items {
                if let Some(r) = answer_one(it, table, live).await {
                    out.push(r);
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        v => answer_one(v, table, live).await,
    }
}

async fn answer_one(
    v: Value,
    table: &RefCell<TargetTable>,
    live: &RefCell<dyn Live>,
) -> Option<Value> {
    match parse_request(v) {
        Parsed::Invalid => Some(response(None, Err(RpcError::invalid_request()))),
        Parsed::Call { id, method, params } => {
            tracing::debug!(%method, "JSON-RPC request");
            let r = run_method(table, live, &method, params.as_ref()).await;
            if let Err(e) = &r {
                tracing::debug!(%method, code = e.code, message = %e.message, "JSON-RPC error");
            }
            match (&id, &r) {
                // A notification's result is not sent; its error is.
                (None, Ok(_)) => None,
                _ => Some(response(id.as_ref(), r)),
            }
        }
    }
}

/// What the bytes received so far hold.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// Complete values, and how many bytes they took.
    Values(Vec<Value>, usize),
    /// Invalid JSON (after any complete values before it).
    Bad(Vec<Value>),
}

/// Split `buf` into the complete JSON values at its start; a value cut
/// off at the end waits for more bytes.
pub fn split(buf: &[u8]) -> Frame {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    let mut out = Vec::new();
    loop {
        let at = it.byte_offset();
        match it.next() {
            None => return Frame::Values(out, buf.len()),
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) if e.is_eof() => return Frame::Values(out, at),
            Some(Err(_)) => return Frame::Bad(out),
        }
    }
}

async fn write_value(stream: &mut UnixStream, v: &Value) -> bool {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    stream.write_all(&b).await.is_ok()
}

/// Serve one connection until it closes, errs or idles.
async fn serve_conn(
    mut stream: UnixStream,
    table: Rc<RefCell<TargetTable>>,
    live: Rc<RefCell<dyn Live>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let (values, used, bad) = match split(&buf) {
            Frame::Values(v, used) => (v, used, false),
            Frame::Bad(v) => (v, buf.len(), true),
        };
        buf.drain(..used);
        for v in values {
            if let Some(r) = answer(v, &table, &live).await {
                if !write_value(&mut stream, &r).await {
                    return;
                }
            }
        }
        if bad {
            let _ = write_value(&mut stream, &response(None, Err(RpcError::parse_error()))).await;
            return;
        }
        if buf.len() > MAX_REQUEST {
            let e = RpcError::new(-32600, format!("request larger than {MAX_REQUEST} bytes"));
            let _ = write_value(&mut stream, &response(None, Err(e))).await;
            return;
        }
        // Keep what a long session left small.
        if buf.is_empty() && buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
    }
}

/// Accept JSON-RPC connections forever (the daemon's main loop ends it).
/// Peers are checked as on tgt's socket: root or our own user.
pub async fn serve(
    listener: UnixListener,
    table: Rc<RefCell<TargetTable>>,
    live: Rc<RefCell<dyn Live>>,
) {
    let clients = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("JSON-RPC accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !super::peer_allowed(&stream) {
            tracing::warn!("JSON-RPC connection refused: peer is not root or our user");
            continue;
        }
        if clients.get() >= MAX_CLIENTS {
            tracing::warn!("JSON-RPC connection refused: {MAX_CLIENTS} already open");
            continue;
        }
        clients.set(clients.get() + 1);
        let (table, live, clients) = (table.clone(), live.clone(), clients.clone());
        tokio::task::spawn_local(async move {
            serve_conn(stream, table, live).await;
            clients.set(clients.get() - 1);
        });
    }
}

/// Apply a saved configuration (`save_config`'s file, as `spdk_tgt --json`
/// loads one) at start-up: each subsystem's calls in order. Stops at the
/// first error, naming the call.
pub fn load_file(
    path: &Path,
    table: &RefCell<TargetTable>,
    live: &RefCell<dyn Live>,
) -> Result<usize, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let subsystems = doc
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: no \"subsystems\" array", path.display()))?;
    // bdevs first: targets name them.
    let order = |s: &Value| match s.get("subsystem").and_then(Value::as_str) {
        Some("bdev") => 0,
        _ => 1,
    };
    let mut subs: Vec<&Value> = subsystems.iter().collect();
    subs.sort_by_key(|s| order(s));
    let mut n = 0;
    for s in subs {
        let calls = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(_) => return Err("a subsystem's config is not an array".into()),
        };
        for c in flatten(calls) {
            let method = c
                .get("method")
                .and_then(Value::as_str)
                .ok_or("a config entry has no method")?;
            let params = c.get("params");
            let (mut t, mut l) = (table.borrow_mut(), live.borrow_mut());
            super::run_request_blocking(&mut t, &mut *l, MAX_ROUNDS, |t, l| {
                methods::call(t, l, method, params)
            })
            .map_err(|e| format!("{method}: {}", e.message))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Batches inside a saved config are flattened (as `load_config` does).
fn flatten(calls: &[Value]) -> Vec<&Value> {
    let mut out = Vec::new();
    for c in calls {
        match c {
            Value::Array(inner) => out.extend(inner.iter()),
            v => out.push(v),
        }
    }
    out
}

#[cfg(test)]
mod tests;
