//! Test support (feature `test-util`): a raw HTTP/1 client, over TLS or
//! not, that can misbehave the ways the gate must survive — half-sent
//! headers held open (slowloris) and bodies over the limit sent without
//! `Expect` — shared by the tests of all three servers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpSocket;

/// The client's `SO_SNDBUF` (the kernel doubles it).
const CLIENT_SEND_BUFFER: u32 = 32 * 1024;
use tokio::task::JoinSet;

/// A connection to the server under test.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: SocketAddr,
    /// `None`: plaintext (the proxy's admin port).
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

/// An answer as the client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The header block, lower-cased.
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the {} answer's body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How an oversized body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, without `Expect: 100-continue`.
    ContentLength,
    /// `Transfer-Encoding: chunked`, in 16 KiB chunks.
    Chunked,
}

impl Client {
    /// A TLS client trusting `roots`, verifying `server_name`, offering no ALPN.
    pub fn tls(addr: SocketAddr, roots: rustls::RootCertStore, server_name: &str) -> Self {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string())
            .unwrap_or_else(|e| panic!("server name {server_name:?}: {e}"));
        Client {
            addr,
            tls: Some((Arc::new(config), name)),
        }
    }

    pub async fn connect(&self) -> io::Result<Box<dyn Stream>> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A small send buffer, as over a real network: a body the server does
        // not read cannot vanish into loopback's large socket buffers, so the
        // client is still sending when the server answers and closes.
        socket.set_send_buffer_size(CLIENT_SEND_BUFFER)?;
        let tcp = socket.connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await?;
                Ok(Box::new(tls))
            }
        }
    }

    /// `GET path`, closing the connection after the answer.
    pub async fn get(&self, path: &str) -> io::Result<Answer> {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n"), &[], None)
            .await
    }

    /// Sends `head` (request line and headers, each ending in CRLF, without
    /// framing headers), then `body` framed as `framing` (no framing: no
    /// body), and reads the answer to the end. The body is sent whole before
    /// reading, as a client that does not use `Expect` does; if the server
    /// refuses a write (a reset), that is the error.
    pub async fn request(
        &self,
        head: &str,
        body: &[u8],
        framing: Option<Framing>,
    ) -> io::Result<Answer> {
        let mut s = self.connect().await?;
        let mut out = head.to_string();
        match framing {
            None => {}
            Some(Framing::ContentLength) => {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()))
            }
            Some(Framing::Chunked) => out.push_str("Transfer-Encoding: chunked\r\n"),
        }
        out.push_str("Connection: close\r\n\r\n");
        s.write_all(out.as_bytes()).await?;
        let sent = async {
            match framing {
                None => Ok(()),
                Some(Framing::ContentLength) => s.write_all(body).await,
                Some(Framing::Chunked) => {
                    for chunk in body.chunks(16 * 1024) {
                        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await?;
                        s.write_all(chunk).await?;
                        s.write_all(b"\r\n").await?;
                    }
                    s.write_all(b"0\r\n\r\n").await
                }
            }
        };
        // Like most clients, this one gives up when the server stops taking
        // the body: a server that answers early must read the rest (or
        // close cleanly) for the answer to be seen.
        sent.await.map_err(|e| {
            io::Error::new(e.kind(), format!("the server stopped taking the body: {e}"))
        })?;
        s.flush().await?;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got)).await;
        match read {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in 30 s")),
            // A TLS peer that closes without close_notify still gave us its answer.
            Ok(Err(e)) if got.is_empty() || e.kind() != io::ErrorKind::UnexpectedEof => {
                return Err(e);
            }
            Ok(_) => {}
        }
        parse_answer(&got)
    }

    /// Opens `n` connections that each send half a request header and then
    /// wait, each for at most `give_up`, for the server to close it. Returns
    /// once every connection is open and its half header sent.
    pub async fn slowloris(&self, n: usize, give_up: Duration) -> Slowloris {
        let (opened_tx, mut opened_rx) = tokio::sync::mpsc::channel::<bool>(n.max(1));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let client = self.clone();
            let opened = opened_tx.clone();
            tasks.spawn(async move {
                let mut s = match client.connect().await {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = opened.send(false).await;
                        return Held::NeverOpened;
                    }
                };
                let half = b"POST /v1/certificates HTTP/1.1\r\nHost: slow\r\nContent-Ty";
                if s.write_all(half).await.is_err() {
                    let _ = opened.send(false).await;
                    return Held::ClosedByServer;
                }
                let _ = opened.send(true).await;
                let mut buf = [0u8; 256];
                match tokio::time::timeout(give_up, s.read(&mut buf)).await {
                    Ok(_) => Held::ClosedByServer,
                    Err(_) => Held::GaveUp,
                }
            });
        }
        drop(opened_tx);
        // Each task reports once, then keeps its sender until it ends.
        let mut open = 0;
        for _ in 0..n {
            match opened_rx.recv().await {
                Some(ok) => open += usize::from(ok),
                None => break,
            }
        }
        Slowloris { open, tasks }
    }
}

fn parse_answer(raw: &[u8]) -> io::Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no complete answer: {:?}", String::from_utf8_lossy(raw)),
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("status line: {head}"))
        })?;
    Ok(Answer {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    })
}

/// What happened to one slow connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    NeverOpened,
    ClosedByServer,
    GaveUp,
}

/// Slow connections held open against a server.
#[derive(Debug)]
pub struct Slowloris {
    /// How many connected and sent their half header.
    pub open: usize,
    tasks: JoinSet<Held>,
}

impl Slowloris {
    /// Waits for every connection to end; how many the server closed.
    pub async fn closed_by_server(mut self) -> usize {
        let mut closed = 0;
        while let Some(held) = self.tasks.join_next().await {
            closed += usize::from(matches!(held, Ok(Held::ClosedByServer)));
        }
        closed
    }
}
