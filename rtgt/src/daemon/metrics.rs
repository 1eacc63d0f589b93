//! The `--metrics` endpoint: a small HTTP/1.1 server on the main thread
//! that answers `GET /metrics` with the Prometheus exposition of a
//! [`Scrape`] taken there and then. Requests are bounded (8 KiB of
//! header, 5 s to send it, 16 connections at once); anything else gets
//! 404 or 400, or is dropped; the data plane never waits on it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::DaemonState;
use crate::mgmt::metrics::{openmetrics_to_text, render, LunScrape, Scrape, TargetScrape};
use crate::stats::Login;

const MAX_REQUEST: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: tokio::net::TcpListener, state: Rc<DaemonState>) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: the listener stays readable,
                // so pause rather than spin.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS {
            // Busy: close at once rather than queue.
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let (state, open) = (state.clone(), open.clone());
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(&mut stream, &state)).await;
            open.set(open.get() - 1);
        });
    }
}

async fn answer(stream: &mut tokio::net::TcpStream, state: &DaemonState) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > MAX_REQUEST {
            return reply(
                stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
    }
    let line = req.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next().unwrap_or(&[]), words.next().unwrap_or(&[]));
    if !words.next().is_some_and(|v| v.starts_with(b"HTTP/1.")) {
        return reply(stream, "400 Bad Request", "text/plain", "").await;
    }
    if method != b"GET" && method != b"HEAD" {
        return reply(stream, "405 Method Not Allowed", "text/plain", "").await;
    }
    let path = path.split(|&b| b == b'?').next().unwrap_or(&[]);
    if path != b"/metrics" {
        return reply(stream, "404 Not Found", "text/plain", "see /metrics\n").await;
    }
    // Prometheus asks for OpenMetrics; others (curl, promtool) get the
    // older text format.
    let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
    let openmetrics = head
        .lines()
        .any(|l| l.starts_with("accept:") && l.contains("application/openmetrics-text"));
    let om = render(scrape(state));
    let (body, content_type) = if openmetrics {
        (
            om,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            openmetrics_to_text(&om),
            "text/plain; version=0.0.4; charset=utf-8",
        )
    };
    reply_with(stream, "200 OK", content_type, &body, method == b"HEAD").await
}

async fn reply(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    reply_with(stream, status, content_type, body, false).await
}

/// An answer; for HEAD (`head_only`) the GET's headers without its body.
async fn reply_with(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// A copy of every counter, taken now.
pub fn scrape(state: &DaemonState) -> Scrape {
    let names: Vec<(u32, String)> = state
        .table
        .borrow()
        .targets()
        .map(|t| (t.tid, t.name.clone()))
        .collect();
    let mut targets = Vec::new();
    for (tid, name) in names {
        let Some(st) = state.stats.get(tid) else {
            continue;
        };
        let initiators: std::collections::HashMap<u16, String> = state
            .registry
            .sessions_of(tid)
            .into_iter()
            .map(|s| (s.tsih, s.initiator))
            .collect();
        targets.push(TargetScrape {
            name,
            total: st.total.snapshot(),
            in_flight: st.in_flight() as i64,
            luns: st
                .lun_counters()
                .into_iter()
                .map(|(lun, c)| LunScrape {
                    lun,
                    counters: c.snapshot(),
                    conflicts: c.conflicts.load(std::sync::atomic::Ordering::Relaxed),
                    unit_attentions: c.unit_attentions.load(std::sync::atomic::Ordering::Relaxed),
                    latency: [
                        c.latency[0].snapshot(),
                        c.latency[1].snapshot(),
                        c.latency[2].snapshot(),
                    ],
                })
                .collect(),
            sessions: st
                .session_snapshots()
                .into_iter()
                .filter_map(|(tsih, c, _)| Some((initiators.get(&tsih)?.clone(), tsih, c)))
                .collect(),
        });
    }
    Scrape {
        targets,
        logins: Login::ALL
            .iter()
            .map(|l| {
                (
                    l.label(),
                    state.stats.logins[*l as usize].load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect(),
        loop_cpu: loop_cpu(),
    }
}

/// CPU seconds of this process's target loop threads, from
/// /proc/self/task/*/stat (utime and stime, in clock ticks).
fn loop_cpu() -> Vec<(String, f64)> {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let threads = dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        // "pid (comm) state ...": comm may hold spaces; fields after it.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        // Loop threads are tgt/<tid> and tgt/<tid>.<n>; worker pool
        // threads (tgt/<tid>.io<k>) are not.
        let id = comm.strip_prefix("tgt/")?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return None;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After comm: state is field 3, utime 14, stime 15.
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((comm.to_string(), (utime + stime) / hz))
    });
    // Names are cut at 15 bytes: threads that share one are summed.
    for (name, secs) in threads {
        *out.entry(name).or_default() += secs;
    }
    out.into_iter().collect()
}
