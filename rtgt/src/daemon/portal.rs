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
                let local = stream.local_addr().unwrap_or(peer);
                let st = state.clone();
                tokio::task::spawn_local(super::login::serve(st, stream, peer, local));
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
