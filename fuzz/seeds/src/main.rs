//! Writes the seed inputs of `fuzz/corpus/<target>/`: real ClientHellos from
//! rustls, real CSRs from rcgen, identities, allow lists and AdmissionReviews.
//! Run from `fuzz/` with `cargo run -p meshlite-fuzz-seeds`; it overwrites only
//! the files it names, so inputs added by hand (crashes) stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair, SanType, SignatureAlgorithm};

const ID: &str = "spiffe://cluster.local/ns/default/sa/default";

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    client_hellos(&corpus.join("detect"))?;
    tls_stream(&corpus.join("tls_stream"))?;
    text_seeds(&corpus)?;
    csrs(&corpus)?;
    admission_reviews(&corpus.join("admission_review"))?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> Result {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// The first flight of a rustls client: one ClientHello in one record.
fn client_hello(alpn: &[&[u8]], tls12: bool, post_quantum: bool) -> Result<Vec<u8>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if post_quantum {
        // Its key share makes the ClientHello about 1.3 KiB.
        provider.kx_groups = vec![
            rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
            rustls::crypto::aws_lc_rs::kx_group::X25519,
        ];
    }
    let provider = Arc::new(provider);
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = "meshlite-certd.meshlite-system.svc".try_into()?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// The same handshake bytes, re-framed into records of at most `max` bytes.
fn reframe(single_record: &[u8], max: usize) -> Vec<u8> {
    let (header, handshake) = single_record.split_at(5);
    let mut out = Vec::new();
    for chunk in handshake.chunks(max) {
        let len = u16::try_from(chunk.len()).expect("a chunk fits a record");
        out.extend_from_slice(&header[..3]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

fn client_hellos(dir: &Path) -> Result {
    let mesh = client_hello(&[b"meshlite/1"], false, false)?;
    let post_quantum = client_hello(&[b"meshlite/1"], false, true)?;
    write(dir, "mesh_post_quantum", &post_quantum)?;
    write(
        dir,
        "mesh_post_quantum_in_records_of_512",
        reframe(&post_quantum, 512),
    )?;
    write(dir, "mesh", &mesh)?;
    write(dir, "mesh_in_records_of_200", reframe(&mesh, 200))?;
    write(dir, "mesh_truncated", &mesh[..mesh.len() / 2])?;
    write(
        dir,
        "app_h2",
        client_hello(&[b"h2", b"http/1.1"], true, false)?,
    )?;
    write(dir, "app_no_alpn", client_hello(&[], true, false)?)?;
    write(
        dir,
        "mesh_among_others",
        client_hello(&[b"h2", b"meshlite/1"], false, false)?,
    )?;
    write(dir, "http", "GET /ready HTTP/1.1\r\nHost: app\r\n\r\n")?;
    write(dir, "ssh", "SSH-2.0-OpenSSH_9.6\r\n")?;
    Ok(())
}

/// `tls_stream` inputs: a case byte, a piece-size seed, then the case's bytes
/// (fuzz_targets/tls_stream.rs).
fn tls_stream(dir: &Path) -> Result {
    let input = |case: u8, seed: u8, body: &[u8]| [&[case, seed][..], body].concat();
    let post_quantum = client_hello(&[b"meshlite/1"], false, true)?;
    write(dir, "server_client_hello", input(0, 7, &post_quantum))?;
    write(
        dir,
        "server_client_hello_in_records_of_512",
        input(0, 200, &reframe(&post_quantum, 512)),
    )?;
    // What a client reads back: a ClientHello is no ServerHello.
    write(
        dir,
        "client_reads_a_client_hello",
        input(1, 3, &post_quantum),
    )?;
    // The wire: flip offset (u16 LE; 0xffff or a zero mask: none), mask, and
    // how many bytes the client sends (u16 LE).
    let wire = |seed: u8, flip: u16, mask: u8, len: u16| {
        let [f0, f1] = flip.to_le_bytes();
        let [l0, l1] = len.to_le_bytes();
        input(2, seed, &[f0, f1, mask, l0, l1])
    };
    write(dir, "wire_intact", wire(9, u16::MAX, 0, 20_000))?;
    write(dir, "wire_flip_in_client_hello", wire(30, 100, 0x80, 1_000))?;
    write(
        dir,
        "wire_flip_in_a_record_header",
        wire(30, 6, 0x01, 1_000),
    )?;
    write(dir, "wire_flip_in_data", wire(255, 9_000, 0x10, 30_000))?;
    Ok(())
}

fn numbered(dir: &Path, prefix: &str, texts: &[&str]) -> Result {
    for (i, text) in texts.iter().enumerate() {
        write(dir, &format!("{prefix}{i}"), text)?;
    }
    Ok(())
}

fn text_seeds(corpus: &Path) -> Result {
    let ids = [
        ID,
        "spiffe://example.org/ns/shop/sa/cart.v2",
        "spiffe://td_1.x-y/ns/a0/sa/a.b-c",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/-a/sa/b",
        "spiffe:///ns/a/sa/b",
        "ns/a/sa/b",
    ];
    numbered(&corpus.join("spiffe_id"), "id", &ids)?;
    let allow = [
        "ns/shop/sa/cart, ns/ops/sa/*",
        "spiffe://cluster.local/ns/*/sa/web-*",
        "spiffe://other.org/ns/x/sa/y,ns/*-prod/sa/*a*b",
        "ns/**/sa/*.*",
        " , ",
        "ns/a/sa/b/c",
        "kubernetes.io/config.seen=\"2026-01-01T00:00:00Z\"\nmeshlite.io/allow=\"ns/shop/sa/cart,spiffe://other.org/ns/x/sa/*\"\n",
        "meshlite.io/allow=\"ns/a/sa/\\u0062\\x63\"\n",
        "meshlite.io/allow=\"\"\n",
        "meshlite.io/allow=\"ns/a/sa/b\\\"\"\n",
    ];
    numbered(&corpus.join("allow_list"), "allow", &allow)?;
    for (name, body) in [
        ("naming_v4", r#"{"addr":"10.0.0.7:8080"}"#),
        ("naming_v6", r#"{"addr":"[fd00::7]:443"}"#),
        ("naming_extra_field", r#"{"addr":"10.0.0.7:80","x":1}"#),
        ("certificate_junk_csr", r#"{"csr":"junk"}"#),
    ] {
        write(&corpus.join("certd_request"), name, body)?;
    }
    Ok(())
}

fn csr(alg: &'static SignatureAlgorithm, sans: Vec<SanType>) -> Result<(String, Vec<u8>)> {
    let key = KeyPair::generate_for(alg)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = sans;
    let request = params.serialize_request(&key)?;
    Ok((request.pem()?, request.der().to_vec()))
}

fn csrs(corpus: &Path) -> Result {
    let uri = |s: &str| -> Result<SanType> { Ok(SanType::URI(s.try_into()?)) };
    let cases = [
        ("p256", csr(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(ID)?])?),
        ("ed25519", csr(&rcgen::PKCS_ED25519, vec![uri(ID)?])?),
        ("p256_no_san", csr(&rcgen::PKCS_ECDSA_P256_SHA256, vec![])?),
        (
            "p256_other_id",
            csr(
                &rcgen::PKCS_ECDSA_P256_SHA256,
                vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")?],
            )?,
        ),
        (
            "p256_dns_san",
            csr(
                &rcgen::PKCS_ECDSA_P256_SHA256,
                vec![uri(ID)?, SanType::DnsName("evil.example".try_into()?)],
            )?,
        ),
        ("p384", csr(&rcgen::PKCS_ECDSA_P384_SHA384, vec![uri(ID)?])?),
    ];
    for (name, (pem, der)) in cases {
        // The csr target's first byte: even for PEM text, odd for DER.
        write(
            &corpus.join("csr"),
            &format!("{name}.pem"),
            [b"\0", pem.as_bytes()].concat(),
        )?;
        write(
            &corpus.join("csr"),
            &format!("{name}.der"),
            [&b"\x01"[..], &der].concat(),
        )?;
        let body = serde_json::json!({ "csr": pem }).to_string();
        write(
            &corpus.join("certd_request"),
            &format!("certificate_{name}"),
            body,
        )?;
    }
    Ok(())
}

fn admission_reviews(dir: &Path) -> Result {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../injector/fixtures");
    for entry in std::fs::read_dir(&fixtures)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if value["kind"] != "AdmissionReview" {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("fixture");
        // Compact: fewer bytes for the fuzzer to spend mutations on whitespace.
        write(dir, name, value.to_string())?;
    }
    let review = |operation: &str, object: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "operation": operation,
                "namespace": "ns",
                "object": object,
            }
        })
        .to_string()
    };
    let minimal = serde_json::json!({
        "metadata": { "annotations": { "meshlite.io/mode": "strict", "meshlite.io/allow": "ns/a/sa/*" } },
        "spec": { "containers": [{ "name": "app", "ports": [{ "containerPort": 8080 }] }] }
    });
    write(dir, "minimal", review("CREATE", minimal.clone()))?;
    write(dir, "update", review("UPDATE", minimal))?;
    write(
        dir,
        "no_spec",
        review("CREATE", serde_json::json!({ "metadata": {} })),
    )?;
    write(
        dir,
        "skip_annotations",
        review(
            "CREATE",
            serde_json::json!({
                "metadata": { "annotations": {
                    "meshlite.io/skip-inbound-ports": "22, 9090",
                    "meshlite.io/skip-outbound-ports": "5432",
                    "meshlite.io/skip-outbound-cidrs": "10.0.0.0/8,fd00::/8",
                } },
                "spec": { "containers": [{ "name": "app" }], "volumes": [{ "name": "data", "emptyDir": {} }] }
            }),
        ),
    )?;
    write(
        dir,
        "wrong_version",
        r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}"#,
    )?;
    Ok(())
}
