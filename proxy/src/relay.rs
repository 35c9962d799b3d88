//! The byte relay between the two legs of a proxied connection.
//!
//! Both directions are pumped from one task, without splitting the streams.
//! When one side finishes sending (EOF, or a TLS close_notify), the relay shuts
//! down the write half of the other leg and keeps the opposite direction
//! flowing, so half-close propagates both ways.
//!
//! A direction holds a buffer only while it has data in flight: it takes one
//! from a per-thread [`pool`] when it reads, and gives it back as soon as
//! everything read has been written and the next read would block. An idle
//! connection therefore holds no relay buffer at all (it held 2 × 8 KiB, half
//! of its memory, before), and the buffers in use are bounded by the
//! connections that are moving data at that moment, not by those open.
//!
//! Each direction's buffer size starts small and doubles whenever a read
//! fills it, up to [`RELAY_BUFFER_MAX`]: request/response traffic reads into a
//! few KiB, while a bulk stream quickly moves to large reads and writes, and
//! so to few syscalls per byte. Nothing is allocated per read: the pool hands
//! back the buffers it was given.
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

pub mod pool;

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
    /// Held only while data is in flight (or during a poll); from [`pool`].
    buf: Option<Box<[u8]>>,
    /// The size class of the next buffer taken (see [`pool`]).
    class: usize,
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
            buf: None,
            class: 0,
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
                let class = self.class;
                let buf = self.buf.get_or_insert_with(|| pool::take(class));
                let mut rb = ReadBuf::new(&mut buf[..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(res) => res?,
                    Poll::Pending => {
                        // Nothing in flight: the buffer goes back until the next read.
                        self.release();
                        // Nothing more to read for now: push out what was written.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = rb.filled().len();
                let filled = n == rb.capacity();
                if n == 0 {
                    self.eof = true;
                    self.release();
                } else {
                    self.end = n;
                    self.total += n as u64;
                    self.bytes.inc_by(n as u64);
                    activity.fetch_add(1, Ordering::Relaxed);
                    if filled && pool::size(self.class) < RELAY_BUFFER_MAX {
                        // Taken at the next read, once this one is written.
                        self.class += 1;
                    }
                }
            }
            while self.pos < self.end {
                let Some(buf) = self.buf.as_deref() else {
                    // Bytes in flight are always in a held buffer; were they
                    // not, dropping them beats spinning on them.
                    self.pos = self.end;
                    break;
                };
                let n = ready!(w.as_mut().poll_write(cx, &buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self
                .buf
                .as_ref()
                .is_some_and(|b| b.len() < pool::size(self.class))
            {
                // Grown: the next read takes a buffer of the new class.
                self.release();
            }
            if self.eof {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Gives the buffer back to the pool (only when nothing is in flight).
    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            pool::give(b);
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.release();
    }
}

/// Relays until both directions are done, an error occurs, or the connection idles.
///
/// The legs are borrowed, so the caller's task holds them once (an async fn
/// taking them by value keeps a second copy of each in its state).
pub async fn relay<C, S>(
    client: &mut C,
    server: &mut S,
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
            && let Poll::Ready(Err(e)) = up.poll(
                cx,
                Pin::new(&mut *client),
                Pin::new(&mut *server),
                &activity,
            )
        {
            return Poll::Ready(Err(e));
        }
        if !down.done
            && let Poll::Ready(Err(e)) = down.poll(
                cx,
                Pin::new(&mut *server),
                Pin::new(&mut *client),
                &activity,
            )
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
mod tests;
