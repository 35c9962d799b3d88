use super::*;
use proptest::prelude::*;

/// Builds a ClientHello handshake message with the given ALPN protocols.
fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    let mut exts = Vec::new();
    // An unrelated extension first (supported_versions).
    exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p);
        }
        exts.extend_from_slice(&EXT_ALPN.to_be_bytes());
        exts.extend_from_slice(&((list.len() + 2) as u16).to_be_bytes());
        exts.extend_from_slice(&(list.len() as u16).to_be_bytes());
        exts.extend_from_slice(&list);
    }
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![HANDSHAKE_CLIENT_HELLO];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    hs
}

/// Wraps a handshake message in records of at most `max` payload bytes.
fn records(hs: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in hs.chunks(max) {
        out.extend_from_slice(&[RECORD_HANDSHAKE, 0x03, 0x01]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn mesh_alpn_is_detected() {
    let bytes = records(&client_hello(&[b"h2", ALPN]), 1 << 14);
    assert_eq!(detect(&bytes), Detection::Mesh);
}

#[test]
fn other_alpn_is_application_tls() {
    let bytes = records(&client_hello(&[b"h2", b"http/1.1"]), 1 << 14);
    assert_eq!(detect(&bytes), Detection::OtherTls);
    let bytes = records(&client_hello(&[]), 1 << 14);
    assert_eq!(detect(&bytes), Detection::OtherTls);
}

#[test]
fn a_client_hello_split_across_records_is_reassembled() {
    let bytes = records(&client_hello(&[ALPN]), 17);
    assert_eq!(detect(&bytes), Detection::Mesh);
}

#[test]
fn every_strict_prefix_needs_more() {
    let bytes = records(&client_hello(&[ALPN]), 40);
    for n in 0..bytes.len() {
        assert_eq!(detect(&bytes[..n]), Detection::NeedMore, "prefix {n}");
    }
}

#[test]
fn plaintext_protocols_are_not_tls() {
    for first in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"SSH-2.0-x",
        b"\x00\x00",
        b"PING",
    ] {
        assert_eq!(detect(first), Detection::NotTls);
    }
}

#[test]
fn malformed_headers_are_not_tls() {
    // Wrong record version, zero and oversized lengths, a non-ClientHello message.
    assert_eq!(detect(&[0x16, 0x02, 0x00, 0x00, 0x10]), Detection::NotTls);
    assert_eq!(detect(&[0x16, 0x03, 0x01, 0x00, 0x00]), Detection::NotTls);
    assert_eq!(detect(&[0x16, 0x03, 0x01, 0xff, 0xff]), Detection::NotTls);
    assert_eq!(
        detect(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x02]),
        Detection::NotTls
    );
}

#[test]
fn a_truncated_body_inside_a_complete_message_is_not_tls() {
    // The handshake header claims 3 bytes of body; a ClientHello needs far more.
    let bytes = records(&[HANDSHAKE_CLIENT_HELLO, 0, 0, 3, 3, 3, 0], 100);
    assert_eq!(detect(&bytes), Detection::NotTls);
}

#[test]
fn an_oversized_handshake_is_not_tls() {
    let hs = [HANDSHAKE_CLIENT_HELLO, 0x01, 0x00, 0x00];
    assert_eq!(detect(&records(&hs, 100)), Detection::NotTls);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = detect(&bytes);
    }

    #[test]
    fn corrupted_client_hellos_never_panic(flip in 0usize..200, value: u8) {
        let mut bytes = records(&client_hello(&[ALPN]), 1 << 14);
        let i = flip % bytes.len();
        bytes[i] = value;
        let _ = detect(&bytes);
    }
}
