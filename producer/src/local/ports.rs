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

/// A loopback port that was free a moment ago, chosen by the operating
/// system (binds `127.0.0.1:0`).
///
/// Another process may take it before the caller binds it; for test servers
/// on a developer machine that race is rare enough to accept.
///
/// # Errors
///
/// Fails only if the OS refuses to hand out an ephemeral port.
pub fn free_port() -> io::Result<u16> {
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
