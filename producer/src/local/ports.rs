//! Loopback TCP ports: is one free, find a free one, wait until one is
//! listening or released.
//!
//! Everything `rask::local` starts listens on 127.0.0.1 only, so these
//! helpers only ever look at that address.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// How often the waiting helpers look again.
const POLL: Duration = Duration::from_millis(50);

/// Whether nothing listens on `127.0.0.1:port`, so a server of ours could
/// bind it.
///
/// Checked by binding the port and letting it go at once; a listener on
/// `0.0.0.0` (as a system-wide RabbitMQ or Redis has) also makes the port
/// count as taken.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A loopback port that was free a moment ago, for a private server.
///
/// Chosen at random below Linux's ephemeral range (32768 and up), where the operating system
/// hands out the local ports of outgoing connections: a port from that range can be taken by any
/// client connection between this check and the server's bind (seen with RabbitMQ's
/// distribution port while tests ran in parallel). Another process may still take it first;
/// random choice in a range of 10,000 (20000-29999; the test script keeps 30000 and up for its
/// suite servers) makes that rare.
///
/// # Errors
///
/// Fails only if no port in the range is free and the OS refuses an ephemeral one.
pub fn free_port() -> io::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 10_000;
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64..200 {
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        hasher.write_u32(std::process::id());
        let port = LOW + (hasher.finish() % u64::from(SPAN)) as u16;
        if port_is_free(port) {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether a TCP connection to `127.0.0.1:port` is accepted right now.
pub(crate) async fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// Waits until every port in `ports` is free again, e.g. after a server
/// stopped; `what` names the server in the error.
///
/// # Errors
///
/// `TimedOut` if a port is still taken after `timeout`.
pub(crate) async fn wait_until_free(
    ports: &[u16],
    what: &str,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let taken: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|p| !port_is_free(*p))
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} stopped, but port(s) {taken:?} are still in use after {timeout:?}"),
            ));
        }
        sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_free_and_a_bound_port_is_not() {
        let port = free_port().expect("an ephemeral port");
        assert!(port_is_free(port));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("bind the free port");
        assert!(!port_is_free(port));
        drop(listener);
        assert!(port_is_free(port));
    }

    #[tokio::test]
    async fn accepts_connections_only_while_listening() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(accepts_connections(port).await);
        drop(listener);
        assert!(!accepts_connections(port).await);
        wait_until_free(&[port], "test listener", Duration::from_secs(1))
            .await
            .expect("port released");
    }
}
