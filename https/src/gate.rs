//! The limits every meshlite HTTP server puts on its clients, so that no one
//! client can starve it (DESIGN §2, "Every server has limits"):
//!
//! - a **connection cap**: past it a connection is accepted and reset at
//!   once, so it costs one fd for a moment, not one for as long as the client
//!   likes;
//! - a **header-read timeout**: a client that does not finish its request
//!   header in time (slowloris) is closed. It also bounds how long an idle
//!   keep-alive connection is held, but an idle close is not a refusal;
//! - a **request timeout** on the handler, answered with a JSON 503;
//! - a **lingering close**: when a connection ends, the write side is shut
//!   first and whatever the client still sends (the rest of a body refused
//!   with 413 before it was read) is read and thrown away for a bounded time
//!   and size, so the client reads the answer instead of a reset.
//!
//! Each server owns its own [`Gate`]; nothing here is shared between servers,
//! so the proxy's admin port can never use up the data plane's limits.
//! Refusals are logged and counted in the server's [`Refusals`] metric.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a lingering close keeps reading what the client still sends, at
/// most (nginx's `lingering_time` has the same default)...
pub const LINGER_TIME: Duration = Duration::from_secs(30);
/// ...and how long it waits for more once the client goes quiet (nginx's
/// `lingering_timeout`).
pub const LINGER_IDLE: Duration = Duration::from_secs(5);
/// How much a lingering close reads at most before it gives up and closes.
/// Twice the largest body limit of our servers (the injector's 7 MiB) lets a
/// client that sent a little over the limit finish and read the 413.
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// The three limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte a request header may take (and the TLS handshake
    /// before the first request), and how long an idle keep-alive connection
    /// is kept.
    pub header_read_timeout: Duration,
    /// From the complete header to the complete answer.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Why a client was shed; [`Refusal::label`] is the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The connection cap was reached; the connection was reset.
    TooManyConnections,
    /// The TLS handshake did not finish within the header-read timeout.
    HandshakeTimeout,
    /// A request header was started but not finished in time.
    HeaderTimeout,
    /// The handler did not answer in time; the client got a 503.
    RequestTimeout,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "too_many_connections",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::RequestTimeout => "request_timeout",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// A server's count of shed clients by `reason`: the gate's
/// [`Refusal::label`]s, plus any the server adds (the admin port's
/// `not_loopback`).
#[derive(Debug, Clone, Default)]
pub struct Refusals(Family<ReasonLabels, Counter>);

impl Refusals {
    /// Registers the counter as `name` (`_total` is appended) in `registry`.
    pub fn register(registry: &mut Registry, name: &str, what: &str) -> Self {
        let refusals = Refusals::default();
        registry.register(
            name,
            format!(
                "{what} refused by reason (too_many_connections, handshake_timeout, \
                 header_timeout, request_timeout)"
            ),
            refusals.0.clone(),
        );
        refusals
    }

    pub fn inc(&self, reason: &'static str) {
        self.0.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many were refused for `reason`.
    pub fn get(&self, reason: &'static str) -> u64 {
        self.0.get(&ReasonLabels { reason }).map_or(0, |c| c.get())
    }
}

/// One server's limits and its connection slots.
#[derive(Debug, Clone)]
pub struct Gate {
    limits: Limits,
    slots: Arc<Semaphore>,
    refusals: Refusals,
}

/// A connection slot, held for as long as the connection is served.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

impl Gate {
    /// Each refusal is counted in `refusals` (the server's metric).
    pub fn new(limits: Limits, refusals: Refusals) -> Self {
        Gate {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            refusals,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts and logs a refusal of `peer`.
    pub fn refuse(&self, why: Refusal, peer: SocketAddr) {
        self.refusals.inc(why.label());
        tracing::info!(%peer, reason = why.label(), "refused an HTTP client");
    }

    /// Takes a slot for a just-accepted connection, or resets the connection
    /// (SO_LINGER 0, so no TIME_WAIT and no fd held) when none is free.
    pub fn admit(&self, tcp: TcpStream, peer: SocketAddr) -> Option<(TcpStream, Slot)> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some((tcp, Slot(permit))),
            Err(_) => {
                self.refuse(Refusal::TooManyConnections, peer);
                let _ = tcp.set_zero_linger();
                None
            }
        }
    }

    /// Serves HTTP/1 on `io` with the header-read and request timeouts, then
    /// closes it with a lingering close.
    pub async fn serve_http1<I, S, B>(&self, io: I, peer: SocketAddr, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: hyper::body::Body + From<Bytes> + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Bytes read since the last answer: tells a half-sent header (a
        // refusal) from an idle keep-alive connection when the timer fires.
        let pending = Arc::new(AtomicU64::new(0));
        let read_since_answer = pending.clone();
        let io = Counted {
            inner: io,
            read: pending.clone(),
        };
        let gate = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let answer = tokio::time::timeout(gate.limits.request_timeout, service.call(req));
            let gate = gate.clone();
            let pending = pending.clone();
            async move {
                let resp = match answer.await {
                    Ok(Ok(resp)) => resp,
                    Err(_) => {
                        gate.refuse(Refusal::RequestTimeout, peer);
                        request_timeout_response(gate.limits.request_timeout)
                    }
                };
                pending.store(0, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let conn = builder
            .serve_connection(TokioIo::new(io), svc)
            .without_shutdown();
        match conn.await {
            Ok(parts) => linger(parts.io.into_inner()).await,
            Err(e) if e.is_timeout() => {
                if read_since_answer.load(Ordering::Relaxed) > 0 {
                    self.refuse(Refusal::HeaderTimeout, peer);
                } else {
                    tracing::debug!(%peer, "closed an idle HTTP connection");
                }
            }
            Err(e) => tracing::debug!(%peer, error = %e, "HTTP connection ended with an error"),
        }
    }
}

/// A 503 with certd's error JSON shape (`{"error", "message"}`), closing the
/// connection: the handler may have left the body half read.
fn request_timeout_response<B: From<Bytes>>(limit: Duration) -> Response<B> {
    let body = format!(
        r#"{{"error":"request_timeout","message":"no answer within {} s; retry later"}}"#,
        limit.as_secs_f64()
    );
    let mut resp = Response::new(B::from(Bytes::from(body)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// Shuts the write side (the client sees the end of our answer), then reads
/// and discards until the client closes, goes quiet for [`LINGER_IDLE`],
/// [`LINGER_TIME`] passes or [`LINGER_BYTES`] were read, so that closing does
/// not reset a client that is still sending a body we refused.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let drain = async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tokio::time::timeout(LINGER_IDLE, io.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return,
                Ok(Ok(n)) => left = left.saturating_sub(n as u64),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Counts the bytes read through it into `read`.
struct Counted<I> {
    inner: I,
    read: Arc<AtomicU64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
