//! The byte relay between the two legs of a proxied connection.
//!
//! Both directions run concurrently; when one side finishes sending (EOF, or a
//! TLS close_notify), the relay shuts down the write half of the other leg and
//! keeps the opposite direction flowing, so half-close propagates both ways.
//! Buffers are fixed per connection, allocated once. An idle timer closes a
//! connection on which neither side has sent anything for `idle_timeout`.

use crate::io::Metered;
use crate::metrics::{Direction, Metrics, Peer};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Per-direction buffer: one maximal TLS record of plaintext, so each read on
/// the plaintext leg fills at most one record on the TLS leg.
pub const RELAY_BUFFER: usize = 16 * 1024;

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

/// Relays until both directions are done, an error occurs, or the connection idles.
pub async fn relay<C, S>(
    client: C,
    server: S,
    direction: Direction,
    metrics: &Metrics,
    idle_timeout: Duration,
) -> RelayStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(AtomicU64::new(0));
    let mut client = Metered::new(
        client,
        metrics.bytes_counter(direction, Peer::Client),
        activity.clone(),
    );
    let mut server = Metered::new(
        server,
        metrics.bytes_counter(direction, Peer::Server),
        activity.clone(),
    );
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut server,
        RELAY_BUFFER,
        RELAY_BUFFER,
    );
    let end = tokio::select! {
        res = copy => match res {
            Ok(_) => RelayEnd::Closed,
            Err(e) => RelayEnd::Error(e),
        },
        () = idle(&activity, idle_timeout) => RelayEnd::Idle,
    };
    RelayStats {
        from_client: client.total(),
        from_server: server.total(),
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
