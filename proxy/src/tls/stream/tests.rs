//! The unbuffered streams against tokio-rustls (the buffered API, as a peer
//! that is not ours) and against each other: data both ways, half-close,
//! truncation, key updates, alerts, and no buffer held while idle.

use super::*;
use crate::testing::TestCa;
use crate::tls::{CredStore, TlsConfigs, handshake_failure_reason};
use meshlite_contract::TrustDomain;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const SERVER_ID: &str = "spiffe://cluster.local/ns/app/sa/server";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/app/sa/client";

fn configs(ca: &TestCa, id: &str) -> Arc<TlsConfigs> {
    crate::tls::install_provider();
    let store = CredStore::new(TrustDomain::default());
    store
        .publish(ca.credentials(id))
        .expect("test credentials are valid")
}

fn name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}

/// Bytes that differ from offset to offset, so a lost, doubled or reordered
/// chunk shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// Our server on one end of an in-memory pipe, our client on the other.
async fn pair(cap: usize) -> (ServerStream<DuplexStream>, ClientStream<DuplexStream>) {
    let ca = TestCa::new("mesh root");
    let (s, c) = (configs(&ca, SERVER_ID), configs(&ca, CLIENT_ID));
    let (a, b) = tokio::io::duplex(cap);
    let server = tokio::spawn(async move { accept(s.server.clone(), a, &[]).await });
    let client = connect(c.client.clone(), name(), b)
        .await
        .expect("client handshake");
    let server = server.await.unwrap().expect("server handshake");
    (server, client)
}

/// Sends `data` one way and reads it back on the other side with reads of
/// `chunk` bytes, while the writer writes in pieces of `piece`.
async fn send<W, R>(w: &mut W, r: &mut R, data: &[u8], piece: usize, chunk: usize) -> Vec<u8>
where
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let writing = async {
        for p in data.chunks(piece) {
            w.write_all(p).await.unwrap();
        }
        w.flush().await.unwrap();
    };
    let reading = async {
        let mut got = Vec::with_capacity(data.len());
        let mut buf = vec![0; chunk];
        while got.len() < data.len() {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF after {} of {} bytes", got.len(), data.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    };
    let ((), got) = tokio::join!(writing, reading);
    got
}

#[tokio::test]
async fn bytes_cross_both_ways_intact_in_any_piece_and_read_size() {
    let (mut server, mut client) = pair(64 * 1024).await;
    let up = pattern(1 << 20, 1);
    let down = pattern(300_000, 2);
    // Large writes (several records each), small writes, and reads smaller
    // than a record (what does not fit waits in the stream).
    assert!(send(&mut client, &mut server, &up, 200_000, 65_536).await == up);
    assert!(send(&mut server, &mut client, &down, 1_000, 100).await == down);
    assert!(send(&mut client, &mut server, b"ping", 4, 1).await == b"ping");
    let (_, session) = client.get_ref();
    assert_eq!(session.alpn_protocol(), Some(meshlite_contract::ALPN));
    let (_, session) = server.get_ref();
    assert!(session.peer_certificates().is_some_and(|c| !c.is_empty()));
}

#[tokio::test]
async fn half_close_ends_one_direction_and_the_other_keeps_flowing() {
    let (mut server, mut client) = pair(16 * 1024).await;
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut req = Vec::new();
    server.read_to_end(&mut req).await.unwrap();
    assert_eq!(
        req, b"request",
        "the server reads all, then EOF (close_notify)"
    );
    let reply = pattern(100_000, 3);
    let writing = async {
        server.write_all(&reply).await.unwrap();
        server.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let ((), read) = tokio::join!(writing, client.read_to_end(&mut got));
    read.unwrap();
    assert!(
        got == reply,
        "the reply crossed after the client's half-close"
    );
    assert!(
        client.write_all(b"late").await.is_err(),
        "no write after shutdown"
    );
}

#[tokio::test]
async fn a_tcp_eof_without_close_notify_is_an_error_not_the_end() {
    let ca = TestCa::new("mesh root");
    let (s, c) = (configs(&ca, SERVER_ID), configs(&ca, CLIENT_ID));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut tls = accept(s.server.clone(), tcp, &[]).await.unwrap();
        tls.write_all(b"partial").await.unwrap();
        tls.flush().await.unwrap();
        // Close the socket's write half under TLS: a truncation.
        let (tcp, _) = tls.get_ref();
        socket2::SockRef::from(tcp)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = connect(c.client.clone(), name(), tcp).await.unwrap();
    let mut got = Vec::new();
    let err = client.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(
        got, b"partial",
        "what arrived before the truncation was delivered"
    );
    server.abort();
}

#[tokio::test]
async fn an_idle_stream_holds_no_buffer() {
    let (mut server, mut client) = pair(256 * 1024).await;
    let data = pattern(200_000, 4);
    assert!(send(&mut client, &mut server, &data, 200_000, 100).await == data);
    assert!(send(&mut server, &mut client, &data, 200_000, 65_536).await == data);
    // Poll both for a read with nothing sent: each blocks holding nothing.
    for side in [&mut server as &mut (dyn AsyncRead + Unpin), &mut client] {
        let mut buf = [0; 64];
        let pending = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut *side).poll_read(cx, &mut rb).is_pending())
        })
        .await;
        assert!(pending, "nothing was sent, so the read blocks");
    }
    assert_eq!(server.held(), 0, "{server:?}");
    assert_eq!(client.held(), 0, "{client:?}");
}

/// A tokio-rustls server that echoes, and requests a key update (which our
/// client must answer with its own) after every `update_every` bytes.
async fn buffered_echo_server(
    cfg: Arc<ServerConfig>,
    io: DuplexStream,
    update_every: usize,
) -> io::Result<()> {
    let mut tls = tokio_rustls::TlsAcceptor::from(cfg).accept(io).await?;
    let mut buf = vec![0; update_every];
    loop {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return tls.shutdown().await;
        }
        tls.get_mut().1.refresh_traffic_keys().map_err(invalid)?;
        tls.write_all(&buf[..n]).await?;
    }
}

#[tokio::test]
async fn our_client_talks_to_a_buffered_server_through_key_updates() {
    let ca = TestCa::new("mesh root");
    let (s, c) = (configs(&ca, SERVER_ID), configs(&ca, CLIENT_ID));
    let (a, b) = tokio::io::duplex(32 * 1024);
    let server = tokio::spawn(buffered_echo_server(s.server.clone(), a, 10_000));
    let mut client = connect(c.client.clone(), name(), b).await.unwrap();
    let (mut r, mut w) = tokio::io::split(&mut client);
    let data = pattern(500_000, 5);
    // Fifty key updates each way (the server's, and our answers) mid-stream.
    assert!(send(&mut w, &mut r, &data, 7_000, 4_096).await == data);
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    server
        .await
        .unwrap()
        .expect("the buffered server saw a clean TLS session");
}

#[tokio::test]
async fn our_server_talks_to_a_buffered_client_and_resumes_it() {
    let ca = TestCa::new("mesh root");
    let (s, c) = (configs(&ca, SERVER_ID), configs(&ca, CLIENT_ID));
    let connector = tokio_rustls::TlsConnector::from(c.client.clone());
    for round in 0..2 {
        let (a, b) = tokio::io::duplex(32 * 1024);
        let cfg = s.server.clone();
        let server = tokio::spawn(async move {
            let mut tls = accept(cfg, a, &[]).await?;
            let kind = tls.get_ref().1.handshake_kind();
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.shutdown().await?;
            io::Result::Ok(kind)
        });
        let mut tls = connector.connect(name(), b).await.unwrap();
        let data = pattern(100_000 + round, 6);
        tls.write_all(&data).await.unwrap();
        tls.shutdown().await.unwrap();
        let mut back = Vec::new();
        tls.read_to_end(&mut back).await.unwrap();
        assert!(back == data);
        let kind = server.await.unwrap().unwrap();
        let want = if round == 0 {
            rustls::HandshakeKind::Full
        } else {
            rustls::HandshakeKind::Resumed
        };
        assert_eq!(kind, Some(want), "round {round}: our tickets resume");
    }
}

#[tokio::test]
async fn a_refused_certificate_fails_both_sides_with_its_reason() {
    let ca = TestCa::new("mesh root");
    let other = TestCa::new("another root");
    let s = configs(&ca, SERVER_ID);
    let c = configs(&other, CLIENT_ID);
    let (a, b) = tokio::io::duplex(32 * 1024);
    let server = tokio::spawn(async move { accept(s.server.clone(), a, &[]).await.map(drop) });
    let err = connect(c.client.clone(), name(), b).await.unwrap_err();
    assert_eq!(handshake_failure_reason(&err), "unknown_ca", "{err}");
    // The client's alert reached the server, which names it.
    let err = server.await.unwrap().unwrap_err();
    assert_eq!(handshake_failure_reason(&err), "alert_received", "{err}");
}

#[tokio::test]
async fn the_detected_prefix_is_the_start_of_the_handshake() {
    let ca = TestCa::new("mesh root");
    let (s, c) = (configs(&ca, SERVER_ID), configs(&ca, CLIENT_ID));
    let (mut a, b) = tokio::io::duplex(32 * 1024);
    let client = tokio::spawn(async move {
        let mut tls = connect(c.client.clone(), name(), b).await?;
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        io::Result::Ok(())
    });
    // What protocol detection would have read: the first bytes of the
    // ClientHello.
    let mut prefix = [0; 11];
    a.read_exact(&mut prefix).await.unwrap();
    assert_eq!(prefix[0], 22, "a TLS handshake record");
    let mut tls = match accept(s.server.clone(), a, &prefix).await {
        Ok(tls) => tls,
        Err(e) => panic!("server: {e}; client: {:?}", client.await),
    };
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    client.await.unwrap().unwrap();
}

#[tokio::test]
async fn garbage_after_the_handshake_is_an_error_every_time_not_a_panic() {
    let ca = TestCa::new("mesh root");
    let (s, c) = (configs(&ca, SERVER_ID), configs(&ca, CLIENT_ID));
    let (a, b) = tokio::io::duplex(32 * 1024);
    let server = tokio::spawn(async move { accept(s.server.clone(), a, &[]).await });
    let connector = tokio_rustls::TlsConnector::from(c.client.clone());
    let mut tls = connector.connect(name(), b).await.unwrap();
    tls.write_all(b"fine").await.unwrap();
    tls.flush().await.unwrap();
    let mut server = server.await.unwrap().unwrap();
    let mut buf = [0; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"fine");
    // An application-data record whose ciphertext is not the peer's: it
    // cannot authenticate.
    let mut forged = vec![23, 3, 3, 0, 40];
    forged.extend(pattern(40, 7));
    tls.get_mut().0.write_all(&forged).await.unwrap();
    let err = server.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::DecryptError)),
        "{err}"
    );
    // Polled again, the stream fails again without asking rustls.
    for _ in 0..3 {
        assert!(server.read(&mut buf).await.is_err());
        assert!(server.write_all(b"x").await.is_err());
    }
    // The peer was told why (bad_record_mac).
    let err = tls.read(&mut buf).await.unwrap_err();
    assert_eq!(handshake_failure_reason(&err), "alert_received", "{err}");
}
