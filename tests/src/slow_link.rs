//! A slow link for tests: a TCP proxy that holds every chunk of bytes it relays for a fixed
//! delay, each way, without limiting throughput (chunks in flight overlap), as a long network
//! path does. It stands in for `tc qdisc ... netem delay`, which this machine's kernel lacks
//! (`CONFIG_NET_SCH_NETEM` is off); packet loss comes from [`crate::netns::Namespace::lose`].

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A proxy to one server, listening on a free port; stops (dropping its connections) when
/// dropped.
pub struct DelayProxy {
    port: u16,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `address` (a free port) and relays each connection to `target`, every
    /// chunk `delay` late in each direction.
    pub async fn start(address: Ipv4Addr, target: SocketAddr, delay: Duration) -> Self {
        let listener = TcpListener::bind((address, 0))
            .await
            .expect("the proxy listens");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            // Dropped with this task: aborts every relay.
            let mut relays = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                relays.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        relay(in_read, out_write, delay),
                        relay(out_read, in_write, delay)
                    );
                });
            }
        });
        DelayProxy { port, task }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, until either side closes.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            if chunks
                .send((Instant::now() + delay, buffer[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
