//! iSCSI portals: listening sockets on the main thread. Each accepted
//! connection logs in there; see [`super::login`].

use std::net::SocketAddr;
use std::rc::Rc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use super::DaemonState;

/// Parse tgt's portal syntax: `IP:PORT`, `[IPv6]:PORT`, or an address alone
/// (port 3260).
pub fn parse_portal(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Ok(ip) = s
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        return Some(SocketAddr::new(ip, 3260));
    }
    None
}

/// Bind one portal. IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can
/// share a port, as tgtd's two default portals do.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Most connections one address may have in login or discovery at once.
pub const MAX_PENDING_PER_ADDRESS: usize = 64;
/// Most connections in login or discovery at once, from everyone.
pub const MAX_PENDING: usize = 1024;

/// A connection counted as in login or discovery until dropped.
pub struct Pending {
    state: Rc<DaemonState>,
    ip: std::net::IpAddr,
}

impl Pending {
    fn admit(state: &Rc<DaemonState>, ip: std::net::IpAddr) -> Option<Pending> {
        let mut m = state.pending.borrow_mut();
        let total: usize = m.values().sum();
        let mine = m.entry(ip).or_insert(0);
        if *mine >= MAX_PENDING_PER_ADDRESS || total >= MAX_PENDING {
            return None;
        }
        *mine += 1;
        Some(Pending {
            state: state.clone(),
            ip,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut m = self.state.pending.borrow_mut();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Accept connections until the listener is dropped (its task aborted).
pub async fn accept_loop(state: Rc<DaemonState>, listener: std::net::TcpListener) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "portal listener");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Connections still logging in (or in discovery) live on
                // this thread: bound them per address and in all, so a
                // flood of idle sockets cannot starve real logins.
                let Some(guard) = Pending::admit(&state, peer.ip()) else {
                    tracing::info!(%peer, "too many connections in login: refused");
                    drop(stream);
                    continue;
                };
                let local = stream.local_addr().unwrap_or(peer);
                let st = state.clone();
                tokio::task::spawn_local(async move {
                    super::login::serve(st, stream, peer, local).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_syntax() {
        assert_eq!(
            parse_portal("127.0.0.1:3261"),
            Some("127.0.0.1:3261".parse().unwrap())
        );
        assert_eq!(
            parse_portal("[::1]:3262"),
            Some("[::1]:3262".parse().unwrap())
        );
        assert_eq!(
            parse_portal("10.0.0.1"),
            Some("10.0.0.1:3260".parse().unwrap())
        );
        assert_eq!(parse_portal("[::1]"), Some("[::1]:3260".parse().unwrap()));
        assert_eq!(parse_portal("bogus"), None);
    }
}
