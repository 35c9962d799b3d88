//! The byte relay between the two legs of a proxied connection.
//!
//! Both directions are pumped from one task, without splitting the streams.
//! When one side finishes sending (EOF, or a TLS close_notify), the relay shuts
//! down the write half of the other leg and keeps the opposite direction
//! flowing, so half-close propagates both ways.
//!
//! Each direction's buffer starts small and doubles whenever a read fills it,
//! up to [`RELAY_BUFFER_MAX`]: request/response traffic keeps a few KiB per
//! connection, while a bulk stream quickly moves to large reads and writes, and
//! so to few syscalls per byte. Nothing is allocated per read.
//!
//! An idle timer closes a connection on which neither side has sent anything
//! for the idle timeout.

use crate::metrics::{Direction, Metrics, Peer};
use prometheus_client::metrics::counter::Counter;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// First buffer size per direction: holds any small request or response.
pub const RELAY_BUFFER: usize = 8 * 1024;
/// Largest buffer per direction, reached only by streams that keep filling it.
pub const RELAY_BUFFER_MAX: usize = 128 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished.
    Closed,
    /// Neither side sent anything for the idle timeout.
    Idle,
    /// An I/O error on either leg (often a reset).
    Error(io::Error),
}

/// Bytes each side sent, and how it ended.
#[derive(Debug)]
pub struct RelayStats {
    pub from_client: u64,
    pub from_server: u64,
    pub end: RelayEnd,
}

/// One direction: read from one leg, write to the other.
#[derive(Debug)]
struct Pump {
    buf: Vec<u8>,
    /// `buf[pos..end]` is read but not yet written.
    pos: usize,
    end: usize,
    eof: bool,
    need_flush: bool,
    done: bool,
    total: u64,
    bytes: Counter,
}

impl Pump {
    fn new(bytes: Counter) -> Self {
        Pump {
            buf: vec![0; RELAY_BUFFER],
            pos: 0,
            end: 0,
            eof: false,
            need_flush: false,
            done: false,
            total: 0,
            bytes,
        }
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        activity: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.end && !self.eof {
                self.pos = 0;
                self.end = 0;
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(res) => res?,
                    Poll::Pending => {
                        // Nothing more to read for now: push out what was written.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = rb.filled().len();
                if n == 0 {
                    self.eof = true;
                } else {
                    self.end = n;
                    self.total += n as u64;
                    self.bytes.inc_by(n as u64);
                    activity.fetch_add(1, Ordering::Relaxed);
                    if n == self.buf.len() && self.buf.len() < RELAY_BUFFER_MAX {
                        let grown = (self.buf.len() * 2).min(RELAY_BUFFER_MAX);
                        self.buf.resize(grown, 0);
                    }
                }
            }
            while self.pos < self.end {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relays until both directions are done, an error occurs, or the connection idles.
pub async fn relay<C, S>(
    mut client: C,
    mut server: S,
    direction: Direction,
    metrics: &Metrics,
    idle_timeout: Duration,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = AtomicU64::new(0);
    let mut up = Pump::new(metrics.bytes_counter(direction, Peer::Client));
    let mut down = Pump::new(metrics.bytes_counter(direction, Peer::Server));
    let copy = poll_fn(|cx| {
        if !up.done
            && let Poll::Ready(Err(e)) =
                up.poll(cx, Pin::new(&mut client), Pin::new(&mut server), &activity)
        {
            return Poll::Ready(Err(e));
        }
        if !down.done
            && let Poll::Ready(Err(e)) =
                down.poll(cx, Pin::new(&mut server), Pin::new(&mut client), &activity)
        {
            return Poll::Ready(Err(e));
        }
        if up.done && down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    });
    let end = tokio::select! {
        res = copy => match res {
            Ok(()) => RelayEnd::Closed,
            Err(e) => RelayEnd::Error(e),
        },
        () = idle(&activity, idle_timeout) => RelayEnd::Idle,
    };
    RelayStats {
        from_client: up.total,
        from_server: down.total,
        end,
    }
}

/// Resolves once the activity counter has not moved for `timeout`.
async fn idle(activity: &AtomicU64, timeout: Duration) {
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_grows_its_buffer() {
        let metrics = Metrics::new();
        let (client, mut client_peer) = tokio::io::duplex(1 << 20);
        let (server, mut server_peer) = tokio::io::duplex(1 << 20);
        let relay = tokio::spawn(async move {
            relay(
                client,
                server,
                Direction::Inbound,
                &metrics,
                Duration::from_secs(60),
            )
            .await
        });
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        client_peer.write_all(&data).await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data, "client to server, then EOF");
        server_peer.write_all(b"answer after EOF").await.unwrap();
        server_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"answer after EOF");
        let stats = relay.await.unwrap();
        assert!(matches!(stats.end, RelayEnd::Closed), "{:?}", stats.end);
        assert_eq!((stats.from_client, stats.from_server), (1_000_000, 16));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_timeout() {
        let metrics = Metrics::new();
        let (client, _client_peer) = tokio::io::duplex(1024);
        let (server, _server_peer) = tokio::io::duplex(1024);
        let stats = relay(
            client,
            server,
            Direction::Outbound,
            &metrics,
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(stats.end, RelayEnd::Idle));
    }
}
