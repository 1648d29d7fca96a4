//! A TCP relay in front of a real server that can stall: after [`StallingRelay::stall`], the
//! connections open at that moment stay open but carry nothing either way (a peer that died
//! without closing: a cable pulled, a VM frozen); connections made afterwards are relayed as
//! usual. The server is real; only the path to it fails.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct StallingRelay {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    /// Connections numbered below this carry nothing.
    stalled_below: AtomicU64,
    next: AtomicU64,
    accepted: AtomicU64,
}

impl StallingRelay {
    /// Listens on a free local port and relays each connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared {
            stalled_below: AtomicU64::new(0),
            next: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn({
            let shared = shared.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = shared.next.fetch_add(1, Ordering::AcqRel);
                    shared.accepted.fetch_add(1, Ordering::AcqRel);
                    let Ok(server) = TcpStream::connect(upstream).await else { continue };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, number, shared.clone()));
                    tokio::spawn(pump(server_read, client_write, number, shared.clone()));
                }
            }
        });
        StallingRelay { addr, shared, accept }
    }

    /// The relay's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Stalls every connection open now, for good.
    pub(crate) fn stall(&self) {
        let now = self.shared.next.load(Ordering::Acquire);
        self.shared.stalled_below.store(now, Ordering::Release);
    }
}

impl Drop for StallingRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    shared: Arc<Shared>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if number < shared.stalled_below.load(Ordering::Acquire) {
            // Hold both halves open and carry nothing more.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
