//! The ClientHello parser on what real clients send: the captured seeds of the fuzz target
//! (OpenSSL, curl, Go, rustls with a post-quantum key share) and a fresh rustls hello, whole,
//! cut short, and split into two TCP segments.
use std::path::PathBuf;

use gateway_user::proxy::sni::client_hello::{Parsed, parse};
use tests::tls::{TestCa, client_hello};

fn seeds() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/client_hello")
}

#[test]
fn every_captured_hello_parses_to_its_server_name() {
    let cases = [
        ("openssl-s_client.bin", Some("www.example.com")),
        ("openssl-tls12.bin", Some("api.example.org")),
        ("openssl-no-sni.bin", None),
        ("curl.bin", Some("shop.example.net")),
        ("curl-http2.bin", Some("h2.example.net")),
        ("go-crypto-tls-tls13-no-sni.bin", None),
        ("rustls-x25519mlkem768.bin", Some("pq.example.com")),
    ];
    let files = std::fs::read_dir(seeds())
        .unwrap_or_else(|e| panic!("{}: {e}", seeds().display()))
        .count();
    assert_eq!(files, cases.len(), "a seed without an expected name");
    for (file, name) in cases {
        let bytes = std::fs::read(seeds().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        match parse(&bytes) {
            Ok(Parsed::Complete(hello)) => {
                assert_eq!(hello.server_name.as_deref(), name, "{file}");
                assert_eq!(
                    hello.len,
                    bytes.len(),
                    "{file}: the seed is one first flight"
                );
            }
            other => panic!("{file}: {other:?}"),
        }
        for end in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(parse(&bytes[..end]), Ok(Parsed::Incomplete { needed }) if needed > end),
                "{file} cut at {end}"
            );
        }
    }
}

#[test]
fn a_post_quantum_hello_is_larger_than_a_segment_and_parses_from_two() {
    let ca = TestCa::new();
    let (_, bytes) = client_hello("split.example.com", ca.client_config());
    assert!(bytes.len() > 1460, "{} bytes", bytes.len());
    // What the gateway has after a first segment cut anywhere: not enough yet.
    for cut in (1..bytes.len()).step_by(97) {
        assert!(matches!(
            parse(&bytes[..cut]),
            Ok(Parsed::Incomplete { .. })
        ));
    }
    let Ok(Parsed::Complete(hello)) = parse(&bytes) else {
        panic!("{:?}", parse(&bytes));
    };
    assert_eq!(hello.server_name.as_deref(), Some("split.example.com"));
}
