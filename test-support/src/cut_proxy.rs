//! A TCP proxy on 127.0.0.1 that breaks client connections on command, as a flaky
//! network or a gateway that cuts long calls would. It forwards bytes unchanged (TLS
//! passes through end to end) and keeps accepting new connections after a cut, so the
//! client can reconnect. Does not look into the bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running proxy; stops (and drops every connection) when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    /// Cancelled by [`CutProxy::cut`]: the connections open at that moment.
    current: Arc<Mutex<CancellationToken>>,
    /// Counts every connection accepted, for tests that want to see a reconnection.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = tokio::spawn(accept(listener, target, current.clone(), accepted.clone()));
        Ok(Self {
            addr,
            current,
            accepted,
            task,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Breaks every connection open now, both ways; later connections go through.
    pub fn cut(&self) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    current: Arc<Mutex<CancellationToken>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
) {
    // Connection tasks end when their token is cancelled: the proxy's drop cuts them all.
    while let Ok((client, _)) = listener.accept().await {
        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cut = current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tokio::spawn(forward(client, target, cut));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, cut: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    // On a cut both sockets close mid-response: the client reads a truncated stream, the
    // relay a connection that is gone.
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.cancelled() => {}
    }
}
