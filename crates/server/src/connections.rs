//! The connections the server holds, so that slow or idle clients cannot take it down.
//!
//! A client that opens connections and sends a request head a line at a time holds one file
//! descriptor each for as long as it likes, unless the server says otherwise; a thousand of
//! them used every descriptor of a server with systemd's default limit (1024), and `/healthz`
//! stopped answering. Here every connection is tracked, and:
//! - the whole request head must arrive within [`ConnLimits::head_timeout`] of its first
//!   byte (of the connection being accepted, for the first request), however it trickles in;
//!   on HTTPS the TLS handshake counts in that first deadline, so a client that handshakes
//!   slowly is as bounded as one that sends its head slowly;
//! - a kept-alive connection that sends nothing for [`ConnLimits::idle_timeout`] after an
//!   answer is closed;
//! - at most [`ConnLimits::max_connections`] are held (see [`descriptor_budget`]); a new
//!   connection beyond that closes the one that has waited longest for a head (idle or
//!   unfinished, or whose request's body is still awaited), never one whose request is
//!   being answered.
//!
//! Plain HTTP and HTTPS go through the same accept loop ([`serve`]); they differ only in
//! how an accepted TCP connection becomes the stream HTTP is spoken on ([`Handshake`]:
//! [`Plain`], or [`crate::tls::TlsState`]). The handshake runs in the connection's own
//! task, never in the accept loop, and a connection in its handshake is held, counted and
//! shed like one waiting for its first head.
//!
//! Requests in progress are not this module's business: the body deadline and the request
//! timeout of [`crate::http`] bound them. The body wrapper there also sets the flag by which
//! a connection whose request waits for its body is known here (`http::AwaitingBody` in
//! the request's extensions): one wrapper records the wait for both, rather than one
//! here and one there.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::apikeys::ClientCertificate;
use crate::http::AwaitingBody;

/// How long connections may wait, and how many there may be.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest time from the first byte of a request head to its end, and from accepting a
    /// connection to the end of its first head (TLS handshake included). Default 10 s.
    pub head_timeout: Duration,
    /// Longest time a kept-alive connection may send nothing after an answer. Default 30 s.
    pub idle_timeout: Duration,
    /// Most connections held at once. Default 1024; the server derives it from its
    /// descriptor limit ([`descriptor_budget`]).
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Descriptors the server needs besides its clients' connections: standard streams, the
/// listener, the async runtime, files, and per store connection a few (SQLite: the database
/// and its write-ahead log; PostgreSQL: a socket).
pub fn reserved_descriptors(store_connections: usize) -> u64 {
    64 + 3 * store_connections as u64
}

/// Raises the soft limit on open descriptors to the hard limit (a process may, and systemd
/// starts services with a soft limit of 1024 under a far higher hard one), and returns the
/// connections that fit beside `reserved` other descriptors (at least 16), with the limit.
pub fn descriptor_budget(reserved: u64) -> (usize, Option<u64>) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!("codereader-verifier: cannot raise the descriptor limit ({e})");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    // No limit at all: a cap still bounds memory; a million idle connections is plenty.
    let budget = soft.unwrap_or(1 << 20).saturating_sub(reserved).max(16);
    (usize::try_from(budget).unwrap_or(usize::MAX), soft)
}

/// What the server knows of one connection.
#[derive(Debug)]
struct Tracked {
    /// Milliseconds after the registry's start at which the connection became ready for a
    /// request head: accepted, or its last answer given.
    ready_at: AtomicU64,
    /// 1 + the milliseconds at which the first byte of the next head arrived; 0: none yet.
    head_started_at: AtomicU64,
    /// Whether a request was answered on it (then waiting is idleness, not a slow head).
    answered: AtomicBool,
    /// Requests being answered (more than one only with pipelining).
    busy: AtomicUsize,
    /// The request's handler is waiting for body bytes the client has not sent: the request
    /// is unfinished, and nothing of it has reached the store.
    /// Set by the request's body ([`crate::http::AwaitingBody`]).
    awaiting_body: Arc<AtomicBool>,
    /// Told to close.
    shed: Notify,
}

/// Every open connection, in accept order.
struct Registry {
    start: Instant,
    limits: ConnLimits,
    connections: Mutex<BTreeMap<u64, Arc<Tracked>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `c`, not being answered, has waited longer than its deadline allows.
    fn overdue(&self, c: &Tracked, now: u64) -> bool {
        if c.busy.load(Relaxed) > 0 {
            return false;
        }
        let since = |at: u64| Duration::from_millis(now.saturating_sub(at));
        let answered = c.answered.load(Relaxed);
        match c.head_started_at.load(Relaxed) {
            0 if answered => since(c.ready_at.load(Relaxed)) > self.limits.idle_timeout,
            // The first head (and the handshake before it) counts from the accept: waiting
            // 9 s to send a first byte does not buy another 10 s for the rest.
            _ if !answered => since(c.ready_at.load(Relaxed)) > self.limits.head_timeout,
            started => since(started - 1) > self.limits.head_timeout,
        }
    }

    /// Registers a new connection; at the cap, first closes the one that has waited longest
    /// for a head. `None`: every held connection is being answered, so the new one is refused.
    fn admit(&self) -> Option<(u64, Arc<Tracked>)> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if connections.len() >= self.limits.max_connections && !shed_oldest(&mut connections) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Relaxed);
        let tracked = Arc::new(Tracked {
            ready_at: AtomicU64::new(self.now_ms()),
            head_started_at: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            awaiting_body: Arc::new(AtomicBool::new(false)),
            shed: Notify::new(),
        });
        connections.insert(id, tracked.clone());
        Some((id, tracked))
    }

    fn remove(&self, id: u64) {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Closes every connection past its deadline.
    fn reap(&self) {
        let now = self.now_ms();
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connections.retain(|_, c| {
            let overdue = self.overdue(c, now);
            if overdue {
                c.shed.notify_one();
            }
            !overdue
        });
    }

    fn is_empty(&self) -> bool {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}

/// Marks a connection busy while a request is answered; ready again when dropped.
struct Answering {
    registry: Arc<Registry>,
    tracked: Arc<Tracked>,
}

impl Answering {
    fn begin(registry: &Arc<Registry>, tracked: &Arc<Tracked>) -> Self {
        tracked.busy.fetch_add(1, Relaxed);
        tracked.head_started_at.store(0, Relaxed);
        tracked.answered.store(true, Relaxed);
        Answering {
            registry: registry.clone(),
            tracked: tracked.clone(),
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.tracked.awaiting_body.store(false, Relaxed);
        self.tracked.ready_at.store(self.registry.now_ms(), Relaxed);
        self.tracked.busy.fetch_sub(1, Relaxed);
    }
}

/// A connection's stream (after any handshake) that notes when the bytes of a new request
/// begin to arrive.
struct Watched<S> {
    stream: S,
    tracked: Arc<Tracked>,
    registry: Arc<Registry>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        let tracked = &this.tracked;
        if buf.filled().len() > before
            && tracked.busy.load(Relaxed) == 0
            && tracked.head_started_at.load(Relaxed) == 0
        {
            let now = this.registry.now_ms();
            tracked
                .head_started_at
                .store(now.saturating_add(1), Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How an accepted TCP connection becomes the stream HTTP is spoken on.
pub trait Handshake: Send + Sync + 'static {
    /// The stream after the handshake.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Turns `tcp` into [`Self::Stream`]. It need not bound its own time: [`serve`] drops
    /// it when the connection's first head deadline passes or the connection is shed.
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// The client certificate `stream`'s handshake verified, if any; every request on the
    /// connection carries it (see [`crate::http`]'s API-key check).
    fn client_certificate(_stream: &Self::Stream) -> Option<ClientCertificate> {
        None
    }
}

/// Plain HTTP: the TCP stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// Serves `router` on `listener` within `limits`, each connection through `handshake`
/// first, until `shutdown` completes; then stops accepting, lets the requests in flight
/// finish (for at most `grace`) and closes the rest.
///
/// # Errors
/// None so far: a failed accept (out of descriptors, say) sheds the oldest waiting
/// connection and retries.
pub async fn serve<H: Handshake>(
    listener: TcpListener,
    handshake: Arc<H>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: ConnLimits,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        start: Instant::now(),
        limits,
        connections: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let reaper = tokio::spawn(reap_every(registry.clone(), limits));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Most likely out of descriptors: make room, and do not spin.
                    shed_oldest(&mut registry.connections.lock().unwrap_or_else(PoisonError::into_inner));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Some((id, tracked)) = registry.admit() else {
            // Every connection held is being answered: this one waits for none of them.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            Held {
                registry: registry.clone(),
                id,
                tracked,
            },
            handshake.clone(),
            stream,
            remote,
            router.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = async {
        while !registry.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        eprintln!(
            "codereader-verifier: in-flight requests did not finish within {}s; exiting",
            grace.as_secs()
        );
    }
    reaper.abort();
    Ok(())
}

/// Closes the connection that has waited longest for a head (idle or unfinished, or whose
/// request's body is still awaited), if there is one; says whether there was.
fn shed_oldest(connections: &mut BTreeMap<u64, Arc<Tracked>>) -> bool {
    let victim = connections
        .iter()
        .filter(|(_, c)| c.busy.load(Relaxed) == 0 || c.awaiting_body.load(Relaxed))
        .min_by_key(|(id, c)| (c.ready_at.load(Relaxed), **id))
        .map(|(id, _)| *id);
    match victim.and_then(|id| connections.remove(&id)) {
        Some(c) => {
            c.shed.notify_one();
            true
        }
        None => false,
    }
}

async fn reap_every(registry: Arc<Registry>, limits: ConnLimits) {
    // A deadline is kept to within a quarter of the shorter one (at least 50 ms apart).
    let tick = (limits.head_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        registry.reap();
    }
}

/// A connection's place in the registry, given up when dropped (however its task ends).
struct Held {
    registry: Arc<Registry>,
    id: u64,
    tracked: Arc<Tracked>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// Serves one connection, after its handshake, until it ends, is shed, or the server stops.
async fn connection<H: Handshake>(
    held: Held,
    handshake: Arc<H>,
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let (registry, tracked) = (held.registry.clone(), held.tracked.clone());
    // A connection still in its handshake has no request in flight: stopping closes it.
    let stream = tokio::select! {
        stream = handshake.handshake(tcp) => match stream {
            Ok(stream) => stream,
            // Plain HTTP on the HTTPS port, no client certificate under mutual TLS...
            Err(_) => return,
        },
        () = tracked.shed.notified() => return,
        _ = stop.changed() => return,
    };
    let certificate = H::client_certificate(&stream);
    let service = TowerToHyperService::new(router);
    let marks = (registry.clone(), tracked.clone());
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request
            .extensions_mut()
            .insert(AwaitingBody(marks.1.awaiting_body.clone()));
        if let Some(certificate) = certificate {
            request.extensions_mut().insert(certificate);
        }
        let answering = Answering::begin(&marks.0, &marks.1);
        let answer = hyper::service::Service::call(&service, request);
        async move {
            let response = answer.await;
            drop(answering);
            response
        }
    });
    let io = TokioIo::new(Watched {
        stream,
        tracked: tracked.clone(),
        registry: registry.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            () = tracked.shed.notified() => break,
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_err() || *stop.borrow() {
                    // Finishes a request in progress, then closes; an idle one closes now.
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    drop(held);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(max_connections: usize) -> Arc<Registry> {
        Arc::new(Registry {
            start: Instant::now(),
            limits: ConnLimits {
                head_timeout: Duration::from_millis(100),
                idle_timeout: Duration::from_millis(300),
                max_connections,
            },
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn ids(registry: &Registry) -> Vec<u64> {
        registry
            .connections
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect()
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_goes_never_a_busy_one() {
        let r = registry(3);
        let (a, ta) = r.admit().unwrap();
        let (b, _tb) = r.admit().unwrap();
        let (c, _tc) = r.admit().unwrap();
        // `a` is being answered; `b` has waited longest of the others (or as long as `c`,
        // and came first).
        let busy = Answering::begin(&r, &ta);
        let (d, _) = r.admit().unwrap();
        assert_eq!(ids(&r), [a, c, d], "{b} stays");
        let (e, _) = r.admit().unwrap();
        assert_eq!(ids(&r), [a, d, e]);
        // When every held connection is being answered, a new one is refused.
        let all: Vec<Answering> = r
            .connections
            .lock()
            .unwrap()
            .values()
            .map(|t| Answering::begin(&r, t))
            .collect();
        assert!(r.admit().is_none());
        // Unless one of them waits for a body its client does not send: that one goes.
        let (waiting, tracked) = {
            let connections = r.connections.lock().unwrap();
            let (id, t) = connections.iter().nth(1).unwrap();
            (*id, t.clone())
        };
        tracked.awaiting_body.store(true, Relaxed);
        let (f, _) = r.admit().unwrap();
        assert!(!ids(&r).contains(&waiting));
        assert!(ids(&r).contains(&f));
        drop((all, busy));
        assert!(r.admit().is_some());
    }

    #[test]
    fn deadlines_head_from_its_first_byte_idle_after_an_answer() {
        let r = registry(10);
        let (_, t) = r.admit().unwrap();
        let now = r.now_ms();
        // A new connection must send its first head within the head timeout...
        assert!(!r.overdue(&t, now + 100));
        assert!(r.overdue(&t, now + 101));
        // ...counted from the accept even when its first byte came late.
        t.head_started_at.store(now + 90 + 1, Relaxed);
        assert!(r.overdue(&t, now + 101));
        t.head_started_at.store(0, Relaxed);
        // Once answered, it may stay silent for the idle timeout...
        drop(Answering::begin(&r, &t));
        let answered = t.ready_at.load(Relaxed);
        assert!(!r.overdue(&t, answered + 300));
        assert!(r.overdue(&t, answered + 301));
        // ...and a head begun then has the head timeout from its first byte.
        t.head_started_at.store(answered + 250 + 1, Relaxed);
        assert!(!r.overdue(&t, answered + 350));
        assert!(r.overdue(&t, answered + 351));
        // Never while it is being answered.
        let _busy = Answering::begin(&r, &t);
        assert!(!r.overdue(&t, u64::MAX));
    }
}
