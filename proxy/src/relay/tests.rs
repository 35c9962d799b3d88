//! The relay's behaviours: both directions and half-close, buffers held only
//! while data is in flight, growth for bulk, the idle timeout.
//!
//! The tests run on `#[tokio::test]`'s current-thread runtime, so every relay
//! shares the test thread's [`pool`] and [`pool::out_bytes`] is what the open
//! connections hold.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// A relay between two in-memory legs of `cap` bytes each; returns the
/// relay's task and the far ends (the client's and the server's).
fn start(cap: usize, idle: Duration) -> (JoinHandle<RelayStats>, DuplexStream, DuplexStream) {
    let (mut client, client_peer) = tokio::io::duplex(cap);
    let (mut server, server_peer) = tokio::io::duplex(cap);
    let task = tokio::spawn(async move {
        let metrics = Metrics::new();
        relay(&mut client, &mut server, Direction::Inbound, &metrics, idle).await
    });
    (task, client_peer, server_peer)
}

/// Lets the spawned relays run until they block.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

async fn exchange(client: &mut DuplexStream, server: &mut DuplexStream, req: usize, resp: usize) {
    client.write_all(&vec![7; req]).await.unwrap();
    let mut got = vec![0; req];
    server.read_exact(&mut got).await.unwrap();
    server.write_all(&vec![9; resp]).await.unwrap();
    let mut back = vec![0; resp];
    client.read_exact(&mut back).await.unwrap();
}

#[tokio::test]
async fn relays_both_ways_with_half_close_and_grows_its_buffer() {
    let (relay, mut client_peer, mut server_peer) = start(1 << 20, Duration::from_secs(60));
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
    // The bulk direction doubled its buffer up to the largest class...
    assert_eq!(
        pool::free_count(pool::CLASSES - 1),
        1,
        "a {RELAY_BUFFER_MAX}-byte buffer was used"
    );
    // ...and every buffer, small and grown, is back in the pool.
    assert_eq!(pool::out_bytes(), 0);
}

#[tokio::test]
async fn an_idle_connection_holds_no_relay_buffer() {
    let mut conns = Vec::new();
    for _ in 0..100 {
        let (relay, mut client_peer, mut server_peer) = start(1 << 16, Duration::from_secs(60));
        exchange(&mut client_peer, &mut server_peer, 100, 3000).await;
        exchange(&mut client_peer, &mut server_peer, 64, 1024).await;
        conns.push((relay, client_peer, server_peer));
    }
    settle().await;
    // 100 open connections, each idle in a read in both directions: none
    // holds a buffer, and they all took turns with the same one.
    assert_eq!(pool::out_bytes(), 0, "idle connections hold relay buffers");
    assert_eq!(pool::free_bytes(), RELAY_BUFFER);
    // Still relaying afterwards, and closing cleanly.
    for (relay, mut client_peer, mut server_peer) in conns {
        exchange(&mut client_peer, &mut server_peer, 10, 10).await;
        drop((client_peer, server_peer));
        let stats = relay.await.unwrap();
        assert_eq!((stats.from_client, stats.from_server), (174, 4034));
    }
    assert_eq!(pool::out_bytes(), 0);
}

#[tokio::test]
async fn a_buffer_is_held_while_its_data_waits_for_the_other_side() {
    // The server leg takes 1 KiB at a time and its peer does not read yet.
    let (relay, mut client_peer, mut server_peer) = start(1024, Duration::from_secs(60));
    client_peer.write_all(&[5; 1000]).await.unwrap();
    client_peer.write_all(&[6; 24]).await.unwrap();
    let mut first = [0; 1024];
    server_peer.read_exact(&mut first).await.unwrap();
    client_peer.write_all(&[1; 1024]).await.unwrap();
    client_peer.write_all(&[2; 1024]).await.unwrap();
    settle().await;
    // 2 KiB read from the client, only 1 KiB of it written: in flight.
    assert_eq!(pool::out_bytes(), RELAY_BUFFER as isize);
    let mut rest = vec![0; 2048];
    server_peer.read_exact(&mut rest).await.unwrap();
    settle().await;
    assert_eq!(pool::out_bytes(), 0, "written out, so given back");
    drop((client_peer, server_peer));
    relay.await.unwrap();
}

#[tokio::test]
async fn buffers_go_back_to_the_pool_when_a_relay_fails_with_data_in_flight() {
    let (relay, mut client_peer, server_peer) = start(1024, Duration::from_secs(60));
    client_peer.write_all(&[3; 1024]).await.unwrap();
    settle().await;
    client_peer.write_all(&[4; 1024]).await.unwrap();
    settle().await;
    assert!(pool::out_bytes() > 0, "data waits for the server's peer");
    // The server's peer goes away: the pending write fails.
    drop(server_peer);
    let stats = relay.await.unwrap();
    assert!(matches!(stats.end, RelayEnd::Error(_)), "{:?}", stats.end);
    assert_eq!(pool::out_bytes(), 0);
    // The one held with the data, and the one the other direction took for
    // its reads meanwhile.
    assert_eq!(pool::free_bytes(), 2 * RELAY_BUFFER);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_after_the_timeout() {
    let (relay, mut client_peer, mut server_peer) = start(1024, Duration::from_secs(5));
    exchange(&mut client_peer, &mut server_peer, 10, 10).await;
    settle().await;
    assert_eq!(pool::out_bytes(), 0);
    let stats = relay.await.unwrap();
    assert!(matches!(stats.end, RelayEnd::Idle), "{:?}", stats.end);
    assert_eq!(pool::out_bytes(), 0);
}

#[tokio::test(start_paused = true)]
async fn traffic_keeps_a_connection_past_the_idle_timeout() {
    let (relay, mut client_peer, mut server_peer) = start(1024, Duration::from_secs(5));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        exchange(&mut client_peer, &mut server_peer, 10, 10).await;
    }
    assert!(!relay.is_finished(), "closed while in use");
    let stats = relay.await.unwrap();
    assert!(matches!(stats.end, RelayEnd::Idle), "{:?}", stats.end);
    assert_eq!((stats.from_client, stats.from_server), (40, 40));
}

#[test]
fn the_pool_keeps_at_most_its_cap_per_class() {
    // A fresh thread: an empty pool.
    std::thread::spawn(|| {
        let bufs: Vec<_> = (0..100).map(|_| pool::take(0)).collect();
        for b in bufs {
            pool::give(b);
        }
        assert_eq!(pool::free_bytes(), pool::KEEP_BYTES);
        // Sizes outside the classes are not kept.
        pool::give(vec![0; 1000].into_boxed_slice());
        assert_eq!(pool::free_bytes(), pool::KEEP_BYTES);
        assert_eq!(pool::take(pool::CLASSES + 3).len(), RELAY_BUFFER_MAX);
    })
    .join()
    .unwrap();
}
