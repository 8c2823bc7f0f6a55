//! A loopback TCP proxy that cuts every connection at a random byte, for
//! testing delivery across broken links.
//!
//! Each accepted connection is relayed to `upstream` in both directions
//! until the bytes relayed (both ways together) reach a budget drawn from
//! `min..max` with a seeded generator; the bytes up to the budget are
//! forwarded (so a cut lands mid-frame as often as not) and both sockets are
//! dropped. [`CuttingProxy::set_cutting`] turns cutting off, so a test can
//! let everything settle at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
pub struct CuttingProxy {
    pub addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
    cutting: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl CuttingProxy {
    pub fn start(upstream: SocketAddr, min: u64, max: u64, seed: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cuts = Arc::new(AtomicUsize::new(0));
        let cutting = Arc::new(AtomicBool::new(true));
        let rng = Arc::new(AtomicU64::new(seed | 1));
        let (c, k) = (Arc::clone(&cuts), Arc::clone(&cutting));
        runtime.spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let budget = if k.load(Ordering::SeqCst) {
                    min + next(&rng) % (max - min).max(1)
                } else {
                    u64::MAX
                };
                tokio::spawn(relay(down, up, budget, Arc::clone(&c), Arc::clone(&k)));
            }
        });
        Self {
            addr,
            cuts,
            cutting,
            _runtime: runtime,
        }
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// New connections are cut (true) or relayed whole (false).
    pub fn set_cutting(&self, on: bool) {
        self.cutting.store(on, Ordering::SeqCst);
    }
}

/// xorshift64: reproducible cut points for a seed.
fn next(state: &AtomicU64) -> u64 {
    let mut x = state.load(Ordering::SeqCst);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    state.store(x, Ordering::SeqCst);
    x
}

async fn relay(
    down: TcpStream,
    up: TcpStream,
    budget: u64,
    cuts: Arc<AtomicUsize>,
    cutting: Arc<AtomicBool>,
) {
    let left = Arc::new(AtomicU64::new(budget));
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let mut a = tokio::spawn(pipe(dr, uw, Arc::clone(&left), Arc::clone(&cutting)));
    let mut b = tokio::spawn(pipe(ur, dw, Arc::clone(&left), cutting));
    // Either direction ending (a cut, or a close) ends both: aborting a
    // task drops its halves, which closes the sockets.
    let cut = tokio::select! {
        r = &mut a => r.unwrap_or(false),
        r = &mut b => r.unwrap_or(false),
    };
    a.abort();
    b.abort();
    if cut {
        cuts.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies until EOF (false) or the shared budget runs out (true: a cut).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    left: Arc<AtomicU64>,
    cutting: Arc<AtomicBool>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let have = left.load(Ordering::SeqCst);
        if cutting.load(Ordering::SeqCst) && (n as u64) >= have {
            let part = usize::try_from(have).unwrap_or(n).min(n);
            let _ = to.write_all(&buf[..part]).await;
            left.store(0, Ordering::SeqCst);
            return true;
        }
        left.fetch_sub((n as u64).min(have), Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}

/// A loopback link with a one-way delay: every byte reaches the other side
/// `one_way` after it was sent, in order, both ways. The upstream
/// connection is opened when the client's is accepted, so the server sees
/// a connection at once and its first bytes one delay later (on a real
/// link they come nearly together: this is the harder case).
///
/// Usable from async tests: it runs on a runtime of its own, started and
/// dropped without blocking the caller's.
#[derive(Debug)]
pub struct SlowLink {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SlowLink {
    pub fn start(upstream: SocketAddr, one_way: std::time::Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("link runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the link");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("link address");
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("the link's listener");
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(delayed(dr, uw, one_way));
                tokio::spawn(delayed(ur, dw, one_way));
            }
        });
        Self {
            addr,
            runtime: Some(runtime),
        }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; EOF
/// travels the same way.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if bytes.is_empty() || to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        let at = tokio::time::Instant::now() + delay;
        if tx.send((at, buf[..n].to_vec())).is_err() || n == 0 {
            break;
        }
    }
    let _ = writer.await;
}
