//! Mesh TLS streams on rustls's unbuffered API: the stream owns its buffers.
//!
//! rustls's buffered connections (what tokio-rustls wraps) keep a 4 KiB
//! receive buffer for as long as a connection lives, busy or idle: it is
//! re-grown before every read and never released. That was 4.2 of the
//! 10.4 KiB a held idle mTLS connection cost. Here the ciphertext buffers
//! belong to the stream, which takes them from the relay's per-thread
//! [`pool`] when bytes arrive or leave and gives them back as soon as they
//! are empty and the socket would block, so an idle connection holds none.
//! A read also fills the whole buffer (the buffered API reads at most 4 KiB
//! per call), so a bulk stream needs fewer syscalls per record.
//!
//! Behaviour on the wire and to the caller is tokio-rustls's:
//! - reads end (EOF) after the peer's close_notify; a TCP EOF without one is
//!   an `UnexpectedEof` error, so a truncation is never taken for the end;
//! - `poll_shutdown` sends close_notify, then shuts down the socket's write
//!   half (half-close, which the relay propagates);
//! - a TLS failure is an `io::Error` of kind `InvalidData` wrapping the
//!   [`rustls::Error`] ([`super::handshake_failure_reason`] reads it), and the
//!   alert rustls queued for it is sent, without waiting, before giving up;
//! - key updates and session tickets are rustls's business: their records are
//!   encoded and sent in order with the application data.

use crate::relay::pool;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
};
use rustls::{ClientConfig, CommonState, ServerConfig};
use std::future::poll_fn;
use std::io;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest plaintext one `poll_write` encrypts: its records and their
/// overhead fit the pool's largest buffer.
const MAX_ENCRYPT: usize = crate::relay::RELAY_BUFFER_MAX - 1024;
/// Bytes a TLS 1.3 record adds to its plaintext, rounded up: a 5-byte header,
/// the inner content type and a 16-byte AEAD tag.
const RECORD_OVERHEAD: usize = 32;
/// Plaintext per record (rustls's default maximum fragment).
const MAX_FRAGMENT: usize = 16 * 1024;
/// The largest size class reads move to: a bulk stream reads several records
/// per syscall, and a held connection gives even this back when idle.
const MAX_READ_CLASS: usize = 3;

/// One side of the handshake: rustls's two unbuffered connection types.
pub trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Unpin {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// The accepting side's stream.
pub type ServerStream<IO> = TlsStream<IO, UnbufferedServerConnection>;
/// The connecting side's stream.
pub type ClientStream<IO> = TlsStream<IO, UnbufferedClientConnection>;

/// Runs the server side of a handshake on `io`. `prefix` holds bytes already
/// read from `io` (by protocol detection); they are the first the handshake
/// reads.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
    prefix: &[u8],
) -> io::Result<ServerStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream::new(io, conn);
    if !prefix.is_empty() {
        write_into(&mut stream.rx, prefix.len(), |room| {
            room[..prefix.len()].copy_from_slice(prefix);
            Ok(prefix.len())
        })
        .map_err(invalid)?;
    }
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// Runs the client side of a handshake with `name` on `io`.
pub async fn connect<IO>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    io: IO,
) -> io::Result<ClientStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedClientConnection::new(config, name).map_err(invalid)?;
    let mut stream = TlsStream::new(io, conn);
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS connection over `io` whose buffers are taken only while in use.
pub struct TlsStream<IO, C> {
    io: IO,
    conn: C,
    /// Ciphertext read and not yet processed.
    rx: Bytes,
    /// The size class the next receive buffer is taken from.
    rx_class: usize,
    /// Ciphertext encoded and not yet written.
    tx: Bytes,
    /// Plaintext decrypted and not yet read (only what did not fit the
    /// caller's buffer, or arrived while writing).
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer's close_notify has arrived: reads are at EOF.
    read_closed: bool,
    /// Ours has been queued: no more writes.
    write_closed: bool,
    /// Writing rustls's own records failed during a read; the next write
    /// returns it.
    write_error: Option<io::Error>,
    /// A TLS error ended the session: rustls is not called again.
    broken: bool,
}

impl<IO, C: Side> std::fmt::Debug for TlsStream<IO, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("rx", &(self.rx.end - self.rx.start))
            .field("tx", &(self.tx.end - self.tx.start))
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

/// What a [`TlsStream::step`] should do once rustls may send application data.
enum Want<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where a [`TlsStream::step`] stopped.
enum Step {
    /// Encoded records wait in `tx`: write them, then step again.
    Transmit,
    /// Nothing more can be processed without reading from the socket.
    Read,
    /// The [`Want`] was done; this many plaintext bytes were taken.
    Done(usize),
    /// Both sides have sent close_notify.
    Closed,
}

impl<IO, C> TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    fn new(io: IO, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            rx: Bytes::default(),
            rx_class: 0,
            tx: Bytes::default(),
            plain: Vec::new(),
            plain_pos: 0,
            read_closed: false,
            write_closed: false,
            write_error: None,
            broken: false,
        }
    }

    /// The socket and the TLS session (peer certificates, ALPN, resumption).
    pub fn get_ref(&self) -> (&IO, &CommonState) {
        (&self.io, &self.conn)
    }

    /// Bytes of buffer this stream holds now (for tests of the idle cost).
    #[cfg(test)]
    fn held(&self) -> usize {
        let len = |b: &Bytes| b.buf.as_ref().map_or(0, |b| b.len());
        len(&self.rx) + len(&self.tx) + self.plain.capacity()
    }

    /// Runs rustls's state machine over the received bytes until it needs the
    /// socket, decrypting application data into `out` (what does not fit goes
    /// to `plain`), encoding rustls's own records into `tx`, and doing `want`
    /// once application data may be sent.
    fn step(
        &mut self,
        mut out: Option<&mut ReadBuf<'_>>,
        want: Want<'_>,
    ) -> Result<Step, rustls::Error> {
        if self.broken {
            return Err(rustls::Error::General(
                "the TLS session failed earlier".into(),
            ));
        }
        loop {
            let TlsStream {
                conn,
                rx,
                tx,
                plain,
                read_closed,
                ..
            } = &mut *self;
            let UnbufferedStatus { mut discard, state } = conn.process(rx.filled_mut());
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    rx.consume(discard);
                    return Err(e);
                }
            };
            let next = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record?;
                        discard += record.discard;
                        let mut payload = record.payload;
                        if let Some(out) = out.as_deref_mut() {
                            let n = payload.len().min(out.remaining());
                            out.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        plain.extend_from_slice(payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut enc) => {
                    write_into(tx, 512, |room| enc.encode(room).map_err(Short::from))?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    if tx.is_empty() {
                        // What was encoded has been written.
                        t.done();
                        None
                    } else {
                        Some(Step::Transmit)
                    }
                }
                ConnectionState::WriteTraffic(mut w) => match want {
                    Want::Nothing => Some(Step::Read),
                    Want::Encrypt(data) => {
                        let chunk = data.len().min(MAX_ENCRYPT);
                        let need = chunk + RECORD_OVERHEAD * (chunk / MAX_FRAGMENT + 1);
                        write_into(tx, need, |room| {
                            w.encrypt(&data[..chunk], room).map_err(Short::from)
                        })?;
                        Some(Step::Done(chunk))
                    }
                    Want::CloseNotify => {
                        write_into(tx, 64, |room| {
                            w.queue_close_notify(room).map_err(Short::from)
                        })?;
                        Some(Step::Done(0))
                    }
                },
                ConnectionState::BlockedHandshake => Some(Step::Read),
                ConnectionState::PeerClosed => {
                    *read_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    *read_closed = true;
                    Some(Step::Closed)
                }
                // The server configs accept no early data (max_early_data_size 0).
                ConnectionState::ReadEarlyData(_) => {
                    return Err(rustls::Error::General("unexpected early data".into()));
                }
                other => {
                    return Err(rustls::Error::General(format!(
                        "unexpected TLS state {other:?}"
                    )));
                }
            };
            rx.consume(discard);
            if let Some(step) = next {
                return Ok(step);
            }
        }
    }

    /// Sends, without waiting, the alert rustls queued for `e`, and returns
    /// `e` as an I/O error.
    fn fail(&mut self, cx: &mut Context<'_>, e: rustls::Error) -> io::Error {
        if self.broken {
            return invalid(e);
        }
        self.broken = true;
        // One more call returns the alert rustls queued with the error, if
        // any, before it would process anything else. (rustls's deframer
        // keeps offsets into the received bytes, so they are passed again,
        // never an empty slice in their place; and it must not see them a
        // third time, which would fail, and queue an alert, again.)
        let TlsStream { conn, rx, tx, .. } = &mut *self;
        let UnbufferedStatus { discard, state } = conn.process(rx.filled_mut());
        if let Ok(ConnectionState::EncodeTlsData(mut enc)) = state
            && let Some(room) = tx.room(512, 0)
            && let Ok(n) = enc.encode(room)
        {
            tx.end += n;
        }
        rx.consume(discard);
        // Best effort: what the socket takes now, nothing waited for.
        let _ = self.poll_flush_tx(cx);
        self.tx.clear();
        invalid(e)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.step(None, Want::Nothing) {
                Err(e) => return Poll::Ready(Err(self.fail(cx, e))),
                // Done, and only session tickets to send: they go now if the
                // socket takes them, else with the first write or read. A
                // client that already left (after sending its data and
                // close_notify) does not make us drop what it sent.
                Ok(Step::Transmit) if !self.conn.is_handshaking() => match self.poll_flush_tx(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) | Poll::Pending => return Poll::Ready(Ok(())),
                },
                Ok(Step::Transmit) => ready!(self.poll_flush_tx(cx))?,
                Ok(Step::Read) if !self.conn.is_handshaking() => {
                    self.rx.release();
                    return Poll::Ready(Ok(()));
                }
                Ok(Step::Read) => {
                    if ready!(self.poll_fill_rx(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        )));
                    }
                }
                Ok(Step::Closed | Step::Done(_)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed during the TLS handshake",
                    )));
                }
            }
        }
    }

    /// Writes `tx` out, then gives its buffer back.
    fn poll_flush_tx(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tx.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.tx.filled()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx.consume(n);
        }
        self.tx.release();
        Poll::Ready(Ok(()))
    }

    /// Reads from the socket into `rx`; 0 is the socket's EOF. Would it block
    /// with nothing received, the buffer goes back to the pool.
    fn poll_fill_rx(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(room) = self.rx.room(1, self.rx_class) else {
            return Poll::Ready(Err(invalid(too_large())));
        };
        let cap = room.len();
        let mut rb = ReadBuf::new(room);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.rx.end += n;
                if n == cap && self.rx_class < MAX_READ_CLASS {
                    self.rx_class += 1;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.rx.release();
                Poll::Pending
            }
        }
    }
}

/// Why rustls did not write a record into the room it was given.
enum Short {
    /// It needs this many bytes.
    Needs(usize),
    Failed(String),
}

impl From<EncodeError> for Short {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::InsufficientSize(s) => Short::Needs(s.required_size),
            e => Short::Failed(e.to_string()),
        }
    }
}

impl From<EncryptError> for Short {
    fn from(e: EncryptError) -> Self {
        match e {
            EncryptError::InsufficientSize(s) => Short::Needs(s.required_size),
            e => Short::Failed(e.to_string()),
        }
    }
}

/// Lets `write` put bytes at the end of `buf`, starting with room for
/// `need` bytes and giving more whenever it asks for more.
fn write_into(
    buf: &mut Bytes,
    mut need: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> Result<(), rustls::Error> {
    loop {
        let room = buf.room(need, 0).ok_or_else(too_large)?;
        match write(room) {
            Ok(n) => {
                buf.end += n;
                return Ok(());
            }
            Err(Short::Needs(required)) if required > need => need = required,
            Err(Short::Needs(_)) => return Err(too_large()),
            Err(Short::Failed(e)) => return Err(rustls::Error::General(e)),
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "peer closed connection without sending TLS close_notify",
    )
}

fn too_large() -> rustls::Error {
    rustls::Error::General("a TLS message larger than meshlite's largest buffer".into())
}

impl<IO, C> AsyncRead for TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plain_pos < this.plain.len() {
            let n = (this.plain.len() - this.plain_pos).min(buf.remaining());
            buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
            this.plain_pos += n;
            if this.plain_pos == this.plain.len() {
                this.plain = Vec::new();
                this.plain_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let start = buf.filled().len();
        loop {
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.step(Some(buf), Want::Nothing) {
                Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
                // rustls's own records (a key update's answer, tickets):
                // sent if the socket takes them, but a read never fails or
                // waits for a write. A broken write side is the next
                // write's error.
                Ok(Step::Transmit) => match this.poll_flush_tx(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => {
                        this.tx.clear();
                        this.write_error = Some(e);
                        continue;
                    }
                    // Everything received is processed: read on.
                    Poll::Pending => {}
                },
                Ok(Step::Closed) => return Poll::Ready(Ok(())),
                Ok(Step::Read | Step::Done(_)) => {}
            }
            if buf.filled().len() > start || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if ready!(this.poll_fill_rx(cx))? == 0 {
                return Poll::Ready(Err(truncated()));
            }
        }
    }
}

impl<IO, C> AsyncWrite for TlsStream<IO, C>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: Side,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.write_error.take() {
            this.write_closed = true;
            return Poll::Ready(Err(e));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // An earlier write's records go first.
        ready!(this.poll_flush_tx(cx))?;
        loop {
            match this.step(None, Want::Encrypt(data)) {
                Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
                Ok(Step::Done(n)) => {
                    // Out now if the socket takes it; else at the next write or flush.
                    if let Poll::Ready(Err(e)) = this.poll_flush_tx(cx) {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Step::Transmit) => ready!(this.poll_flush_tx(cx))?,
                Ok(Step::Read) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the TLS handshake has not completed",
                    )));
                }
                Ok(Step::Closed) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_tx(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.write_closed {
            match this.step(None, Want::CloseNotify) {
                Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
                Ok(Step::Transmit) => ready!(this.poll_flush_tx(cx))?,
                // Queued, or nothing to close the TLS side of.
                Ok(Step::Done(_) | Step::Closed | Step::Read) => this.write_closed = true,
            }
        }
        ready!(this.poll_flush_tx(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            // Not being connected any more is as good as shut down.
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// `buf[start..end]` holds bytes; the buffer is the pool's and is held only
/// while it does.
#[derive(Default)]
struct Bytes {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
}

impl Bytes {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn filled(&self) -> &[u8] {
        self.buf
            .as_deref()
            .map_or(&[], |b| &b[self.start..self.end])
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        match self.buf.as_deref_mut() {
            Some(b) => &mut b[self.start..self.end],
            None => &mut [],
        }
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.release();
    }

    /// Gives the buffer back once it holds nothing.
    fn release(&mut self) {
        if self.is_empty()
            && let Some(b) = self.buf.take()
        {
            pool::give(b);
        }
    }

    /// Room for at least `need` more bytes after those held: this buffer,
    /// compacted, or one of a larger class holding a copy (at least
    /// `class`). `None` past the pool's largest class.
    fn room(&mut self, need: usize, class: usize) -> Option<&mut [u8]> {
        let held = self.end - self.start;
        let cap = self.buf.as_ref().map_or(0, |b| b.len());
        if cap - self.end < need {
            if cap - held >= need {
                if let Some(b) = self.buf.as_deref_mut() {
                    b.copy_within(self.start..self.end, 0);
                }
            } else {
                let class = (class..pool::CLASSES).find(|&c| pool::size(c) >= held + need)?;
                let mut bigger = pool::take(class);
                if let Some(old) = self.buf.take() {
                    bigger[..held].copy_from_slice(&old[self.start..self.end]);
                    pool::give(old);
                }
                self.buf = Some(bigger);
            }
            self.start = 0;
            self.end = held;
        }
        let end = self.end;
        self.buf.as_deref_mut().map(|b| &mut b[end..])
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            pool::give(b);
        }
    }
}

#[cfg(test)]
mod tests;
