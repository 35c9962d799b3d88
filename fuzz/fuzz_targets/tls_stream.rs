//! The mesh TLS stream (`meshlite_proxy::tls::stream`, our own driver of
//! rustls's unbuffered API) fed by a peer that sends anything.
//!
//! The first input byte picks the case (`% 3`); the second seeds the sizes of
//! the pieces in which the transport delivers bytes, so records arrive split
//! anywhere:
//! - 0: our server's `accept` reads the rest of the input as a client's bytes,
//!   then EOF. 1: our client's `connect` reads it as a server's answer to its
//!   ClientHello. Besides never panicking, the handshake must fail: these
//!   bytes come from no holder of a mesh key, so they cannot authenticate.
//! - 2: our client and our server over a wire that cuts what the client sends
//!   into pieces and may flip one byte at an input-chosen offset. The client
//!   sends an input-chosen number of bytes and closes. What the server reads
//!   is always a prefix of what was sent (a flipped byte is never delivered
//!   as data), and with nothing flipped it reads all of it and then a clean
//!   EOF (close_notify).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_contract::TrustDomain;
use meshlite_proxy::testing::TestCa;
use meshlite_proxy::tls::stream::{accept, connect};
use meshlite_proxy::tls::{CredStore, TlsConfigs};
use rustls_pki_types::ServerName;
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

struct Mesh {
    server: Arc<TlsConfigs>,
    client: Arc<TlsConfigs>,
}

/// One CA and two identities for the whole run: minting them is slow.
static MESH: LazyLock<Mesh> = LazyLock::new(|| {
    meshlite_proxy::tls::install_provider();
    let ca = TestCa::new("fuzz root");
    let configs = |id: &str| {
        CredStore::new(TrustDomain::default())
            .publish(ca.credentials(id))
            .expect("test credentials are valid")
    };
    Mesh {
        server: configs("spiffe://cluster.local/ns/app/sa/server"),
        client: configs("spiffe://cluster.local/ns/app/sa/client"),
    }
});

/// How long, on the paused clock, both ends may wait on each other.
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

fn name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Piece sizes, 1 to 700 bytes (a TLS record header is 5, a full record
/// about 16 KiB), from a seed and a counter.
fn piece(seed: u8, n: usize) -> usize {
    let x = (usize::from(seed) + 1).wrapping_mul(n.wrapping_add(1).wrapping_mul(2_654_435_761));
    1 + (x >> 7) % 700
}

/// A peer that sends `data` in pieces, then EOF, and swallows what it is sent.
struct Script<'a> {
    data: &'a [u8],
    seed: u8,
    reads: usize,
}

impl AsyncRead for Script<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = piece(self.seed, self.reads)
            .min(self.data.len())
            .min(buf.remaining());
        self.reads += 1;
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The server's end of the wire: reads in pieces, and flips the byte at
/// `flip` (counted from the first byte the client sent) with `mask`.
struct Tap {
    inner: DuplexStream,
    seed: u8,
    reads: usize,
    offset: usize,
    flip: Option<(usize, u8)>,
    /// Shared with the check, which needs it whether or not the handshake
    /// (which owns the tap) got through.
    flipped: Rc<Cell<bool>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let want = piece(this.seed, this.reads).min(buf.remaining());
        let mut room = vec![0; want];
        let mut part = ReadBuf::new(&mut room);
        match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                this.reads += 1;
                let got = part.filled_mut();
                if let Some((at, mask)) = this.flip
                    && (this.offset..this.offset + got.len()).contains(&at)
                {
                    got[at - this.offset] ^= mask;
                    this.flipped.set(true);
                }
                this.offset += got.len();
                buf.put_slice(got);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Tap {
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

/// Bytes that differ from offset to offset.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 8) as u8)
        .collect()
}

async fn scripted(server_side: bool, seed: u8, data: &[u8]) {
    let mesh = &*MESH;
    let peer = Script {
        data,
        seed,
        reads: 0,
    };
    let authenticated = if server_side {
        accept(mesh.server.server.clone(), peer, &[]).await.is_ok()
    } else {
        connect(mesh.client.client.clone(), name(), peer)
            .await
            .is_ok()
    };
    assert!(
        !authenticated,
        "a handshake with a peer that holds no mesh key succeeded"
    );
}

async fn wire(seed: u8, rest: &[u8]) {
    let mesh = &*MESH;
    let at = |i: usize| rest.get(i).copied().unwrap_or(0);
    let flip_at = usize::from(u16::from_le_bytes([at(0), at(1)]));
    let mask = at(2);
    let len = usize::from(u16::from_le_bytes([at(3), at(4)])) % 40_000;
    let sent = pattern(len);
    let (a, b) = tokio::io::duplex(64 * 1024);
    let flipped = Rc::new(Cell::new(false));
    let tap = Tap {
        inner: a,
        seed,
        reads: 0,
        offset: 0,
        flip: (mask != 0 && flip_at != usize::from(u16::MAX)).then_some((flip_at, mask)),
        flipped: flipped.clone(),
    };
    let server = async {
        let mut stream = match accept(mesh.server.server.clone(), tap, &[]).await {
            Ok(s) => s,
            Err(e) => return (Vec::new(), Err(e)),
        };
        let mut got = Vec::new();
        let mut buf = vec![0; 1 + usize::from(seed) * 64];
        let end = loop {
            match stream.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        (got, end)
    };
    let client = async {
        if let Ok(mut stream) = connect(mesh.client.client.clone(), name(), b).await {
            // The server may refuse at any point; the client's errors are not
            // what is checked.
            let _ = stream.write_all(&sent).await;
            let _ = stream.shutdown().await;
        }
    };
    // A flipped length can leave both sides waiting for bytes the other will
    // never send, as TCP would; the proxy bounds that with its handshake and
    // idle timeouts. The clock is paused and jumps ahead when nothing can
    // run, so a stall ends here at once.
    let Ok(((got, end), ())) =
        tokio::time::timeout(STALL, async { tokio::join!(server, client) }).await
    else {
        assert!(flipped.get(), "an unaltered stream stalled");
        return;
    };
    assert!(
        sent.starts_with(&got),
        "the server read {} bytes that were not sent",
        got.len()
    );
    if !flipped.get() {
        // Nothing was flipped: the handshake succeeds, everything arrives,
        // then a clean EOF.
        assert!(end.is_ok(), "an unaltered stream failed: {end:?}");
        assert_eq!(got.len(), sent.len(), "an unaltered stream lost bytes");
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

fuzz_target!(|data: &[u8]| {
    let (Some(&case), Some(&seed)) = (data.first(), data.get(1)) else {
        return;
    };
    let rest = &data[2..];
    RT.with(|rt| match case % 3 {
        0 => rt.block_on(scripted(true, seed, rest)),
        1 => rt.block_on(scripted(false, seed, rest)),
        _ => rt.block_on(wire(seed, rest)),
    });
});
