//! Protocol detection on the inbound port: is this a mesh mTLS ClientHello?
//!
//! The inbound proxy reads the first bytes of a connection (bounded in time and
//! size, see `inbound`) and classifies them with [`detect`], a pure function over
//! the bytes seen so far. Only a TLS ClientHello that offers ALPN `meshlite/1` is
//! mesh traffic; anything else, including the application's own TLS, is not.
//! The parser never panics and never reads past the buffer: every length is
//! checked, since every byte here comes from an unauthenticated peer.

use meshlite_contract::ALPN;

/// The most bytes detection will look at. A ClientHello fits in one TLS record
/// (at most 2^14 bytes of payload); real ones with a post-quantum key share are
/// about 1.5 KiB. Anything longer is not one of ours.
pub const MAX_DETECT_BYTES: usize = 5 + (1 << 14);

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_ALPN: u16 = 0x0010;

/// What the bytes seen so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// A TLS ClientHello offering `meshlite/1`.
    Mesh,
    /// A TLS ClientHello without `meshlite/1`: the application's own TLS.
    OtherTls,
    /// Not a TLS ClientHello at all.
    NotTls,
}

/// A tiny bounds-checked reader.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// Classifies the first bytes of a connection.
pub fn detect(buf: &[u8]) -> Detection {
    let mut handshake = Vec::new();
    let mut rest = buf;
    // Reassemble the handshake message from as many records as it spans.
    loop {
        if rest.is_empty() {
            return Detection::NeedMore;
        }
        if rest[0] != RECORD_HANDSHAKE {
            return Detection::NotTls;
        }
        if rest.len() < 5 {
            return Detection::NeedMore;
        }
        // Legacy record version: 0x0301 for a first ClientHello, up to 0x0303.
        if rest[1] != 0x03 || rest[2] > 0x04 {
            return Detection::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 1 << 14 {
            return Detection::NotTls;
        }
        if rest.len() < 5 + len {
            // The record is incomplete; a partial one still tells us the type.
            if handshake.is_empty() && rest.len() > 5 && rest[5] != HANDSHAKE_CLIENT_HELLO {
                return Detection::NotTls;
            }
            return Detection::NeedMore;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake[0] != HANDSHAKE_CLIENT_HELLO {
            return Detection::NotTls;
        }
        if handshake.len() >= 4 {
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if 4 + body_len > MAX_DETECT_BYTES {
                return Detection::NotTls;
            }
            if handshake.len() >= 4 + body_len {
                return classify_client_hello(&handshake[4..4 + body_len]);
            }
        }
    }
}

/// Looks for `meshlite/1` in a complete ClientHello body.
fn classify_client_hello(body: &[u8]) -> Detection {
    match offers_mesh_alpn(body) {
        Some(true) => Detection::Mesh,
        Some(false) => Detection::OtherTls,
        None => Detection::NotTls,
    }
}

fn offers_mesh_alpn(body: &[u8]) -> Option<bool> {
    let mut c = Cursor(body);
    c.take(2)?; // legacy_version
    c.take(32)?; // random
    c.vec8()?; // legacy_session_id
    c.vec16()?; // cipher_suites
    c.vec8()?; // legacy_compression_methods
    if c.0.is_empty() {
        return Some(false); // no extensions at all
    }
    let mut exts = Cursor(c.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let data = exts.vec16()?;
        if ty == EXT_ALPN {
            let mut list = Cursor(Cursor(data).vec16()?);
            while !list.0.is_empty() {
                if list.vec8()? == ALPN {
                    return Some(true);
                }
            }
            return Some(false);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests;
