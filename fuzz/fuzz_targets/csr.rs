//! certd's CSR check, `csr::validate(pem, id)`.
//!
//! The first byte picks the form of the rest: even, it is the PEM text as a
//! proxy would send it; odd, it is DER, wrapped here in a PEM block, so that
//! mutations reach the PKCS#10 parser instead of breaking the base64.
//! A CSR that passes carries the key type's public key and the PEM as given.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use meshlite_certd::csr::{self, KeyType};
use meshlite_contract::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pem = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_string(),
            Err(_) => return,
        }
    } else {
        wrap(rest)
    };
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/default"
        .parse()
        .expect("a valid identity");
    if let Ok(valid) = csr::validate(&pem, &id) {
        assert_eq!(valid.pem, pem);
        let key_len = valid.public_key.len();
        match valid.key_type {
            // An uncompressed or a compressed point.
            KeyType::EcdsaP256 => assert!(matches!(key_len, 65 | 33), "{key_len}"),
            KeyType::Ed25519 => assert_eq!(key_len, 32),
        }
    }
});

fn wrap(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE REQUEST-----\n");
    pem
}
