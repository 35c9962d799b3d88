//! The inbound listener: the pod's side of a connection from elsewhere.
//!
//! bind → accept → [`handle`]: read the first bytes (bounded in time and size),
//! then either terminate mesh mTLS and authorise the peer, or pass plaintext
//! through (permissive) or refuse it (strict). The plaintext leg goes to the
//! original destination, inside the pod, from the client's own address when
//! client address preservation is on ([`crate::client_addr`]).

use crate::client_addr::connect_app;
use crate::detect::{Detection, MAX_DETECT_BYTES, detect};
use crate::metrics::Direction;
use crate::proxy::{ConnLog, Ctx, resolve_target};
use crate::tls::{handshake_failure_reason, verify::check_identity};
use meshlite_contract::Mode;
use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DIR: Direction = Direction::Inbound;

/// What the first bytes of a connection turned out to be.
#[derive(Debug)]
enum FirstBytes {
    Mesh,
    /// Not mesh traffic, with the metric label saying why.
    Plain(&'static str),
    /// The client closed before sending anything.
    Closed,
}

/// Reads up to [`MAX_DETECT_BYTES`] within the detect timeout and classifies them.
async fn read_first_bytes(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    ctx: &Ctx,
) -> std::io::Result<FirstBytes> {
    let read = async {
        loop {
            let n = tcp.read_buf(buf).await?;
            match detect(buf) {
                Detection::Mesh => return Ok(FirstBytes::Mesh),
                Detection::OtherTls => return Ok(FirstBytes::Plain("other_tls")),
                Detection::NotTls => return Ok(FirstBytes::Plain("not_meshed")),
                Detection::NeedMore if n == 0 && buf.is_empty() => return Ok(FirstBytes::Closed),
                // EOF mid-detection: forward what there is as plaintext.
                Detection::NeedMore if n == 0 => return Ok(FirstBytes::Plain("not_meshed")),
                Detection::NeedMore if buf.len() >= MAX_DETECT_BYTES => {
                    return Ok(FirstBytes::Plain("not_meshed"));
                }
                Detection::NeedMore => {
                    buf.reserve(1024.min(MAX_DETECT_BYTES - buf.len()));
                }
            }
        }
    };
    match tokio::time::timeout(ctx.config.timeouts.detect, read).await {
        Ok(r) => r,
        // Silence is what server-first protocols look like from an unmeshed
        // client: it waits for the banner. Treat it as plaintext, promptly.
        Err(_) => Ok(FirstBytes::Plain("detect_timeout")),
    }
}

/// Handles one accepted inbound connection.
pub(crate) async fn handle(
    mut tcp: TcpStream,
    client: SocketAddr,
    listener: SocketAddr,
    ctx: &Ctx,
) {
    let Some(cfg) = ctx.config.inbound.as_ref() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let Some(target) = resolve_target(cfg.target, &tcp, client, listener, ctx, DIR) else {
        return;
    };
    let mut log = ConnLog::new(DIR, client, target);

    let mut buf = Vec::with_capacity(2048);
    let first = match read_first_bytes(&mut tcp, &mut buf, ctx).await {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(%client, error = %e, "read error during protocol detection");
            return;
        }
    };
    match first {
        FirstBytes::Closed => {}
        FirstBytes::Mesh => mesh(tcp, buf, target, ctx, &mut log).await,
        FirstBytes::Plain(reason) if cfg.mode == Mode::Strict => {
            ctx.metrics.refuse(DIR, "strict_mode_plaintext");
            tracing::info!(%client, %target, reason, "strict mode: refused a connection that is not mesh mTLS");
        }
        FirstBytes::Plain(reason) => {
            ctx.metrics.plaintext(DIR, reason);
            log.tls = reason;
            plaintext(tcp, buf, target, ctx, &log).await;
        }
    }
}

async fn mesh(tcp: TcpStream, prefix: Vec<u8>, target: SocketAddr, ctx: &Ctx, log: &mut ConnLog) {
    let Some(tls) = ctx.creds.current() else {
        ctx.metrics.refuse(DIR, "no_credentials");
        tracing::warn!(client = %log.client, "no valid workload certificate: refusing mTLS");
        return;
    };
    let accepted = tokio::time::timeout(
        ctx.config.timeouts.handshake,
        crate::tls::stream::accept(tls.server.clone(), tcp, &prefix),
    )
    .await;
    // The handshake copied it; a held connection's task must not keep it.
    drop(prefix);
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = handshake_failure_reason(&e);
            ctx.metrics.handshake_failed(DIR, reason);
            tracing::info!(client = %log.client, reason, error = %e, "inbound mTLS handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.handshake_failed(DIR, "timeout");
            tracing::info!(client = %log.client, "inbound mTLS handshake timed out");
            return;
        }
    };
    let (_, conn) = stream.get_ref();
    // The verifier already checked the chain and identity during a full
    // handshake. A resumed session carries the identity from the ticket, so the
    // peer's leaf is re-read here, including its expiry.
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| check_identity(leaf, ctx.creds.trust_domain()));
    let peer = match peer {
        Some(Ok(info)) if info.not_after > SystemTime::now() => info.id,
        Some(Ok(_)) => {
            ctx.metrics.handshake_failed(DIR, "expired_certificate");
            tracing::info!(client = %log.client, "refused a resumed session whose client certificate expired");
            return;
        }
        Some(Err(e)) => {
            ctx.metrics.handshake_failed(DIR, e.label());
            tracing::info!(client = %log.client, error = %e, "refused peer identity");
            return;
        }
        None => {
            ctx.metrics.handshake_failed(DIR, "no_client_certificate");
            return;
        }
    };
    if !ctx.policy.allows(&peer) {
        ctx.metrics.policy_denials.inc();
        tracing::warn!(client = %log.client, peer = %peer, %target, "allow list denied the peer identity");
        let mut stream = stream;
        let _ = stream.shutdown().await;
        return;
    }
    let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    log.mtls(&ctx.metrics, Some(peer), resumed);
    let Some(backend) = connect_app(target, log.client, ctx).await else {
        return;
    };
    log.relay(stream, backend, ctx).await;
}

async fn plaintext(tcp: TcpStream, prefix: Vec<u8>, target: SocketAddr, ctx: &Ctx, log: &ConnLog) {
    let Some(mut backend) = connect_app(target, log.client, ctx).await else {
        return;
    };
    if !prefix.is_empty() {
        if backend.write_all(&prefix).await.is_err() {
            return;
        }
        ctx.metrics
            .bytes_counter(DIR, crate::metrics::Peer::Client)
            .inc_by(prefix.len() as u64);
    }
    log.relay(tcp, backend, ctx).await;
}
