//! Property tests: no input, however malformed, panics loading, validation or compile.
use gateway_user::{
    compile::{DnsAnswers, compile},
    config::check_text,
};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

/// Field names of the Istio objects (and some near misses), so generated documents reach
/// deep into the model instead of stopping at the first unknown key.
const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "spec",
    "servers",
    "port",
    "number",
    "protocol",
    "hosts",
    "tls",
    "mode",
    "credentialName",
    "serverCertificate",
    "privateKey",
    "caCertificates",
    "httpsRedirect",
    "minProtocolVersion",
    "cipherSuites",
    "bind",
    "gateways",
    "http",
    "tcp",
    "match",
    "route",
    "destination",
    "host",
    "subset",
    "weight",
    "uri",
    "prefix",
    "exact",
    "regex",
    "headers",
    "redirect",
    "directResponse",
    "status",
    "body",
    "rewrite",
    "timeout",
    "retries",
    "attempts",
    "sniHosts",
    "resolution",
    "endpoints",
    "address",
    "ports",
    "labels",
    "subsets",
    "trafficPolicy",
    "loadBalancer",
    "simple",
    "mirror",
    "items",
    "hostz",
    "",
];

const SCALARS: &[&str] = &[
    "",
    "~",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "80",
    "65536",
    "4294967296",
    "1.5",
    "NaN",
    "HTTP",
    "HTTPS",
    "TLS",
    "TCP",
    "MONGO",
    "SIMPLE",
    "PASSTHROUGH",
    "AUTO_PASSTHROUGH",
    "MUTUAL",
    "STATIC",
    "DNS",
    "*",
    "*.example.com",
    "a.example.com",
    "ns/a.example.com",
    "./*",
    "203.0.113.1",
    "2001:db8::1",
    "mesh",
    "gw",
    "ns/gw",
    "1s",
    "300ms",
    "(",
    "outbound_.80_._.a",
    "\u{0}",
    "é",
    "[x",
    "a/b/c",
];

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        proptest::sample::select(SCALARS).prop_map(|s| Value::String(s.to_owned())),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |entries| {
                    Value::Mapping(
                        entries
                            .into_iter()
                            .map(|(k, v)| (Value::String(k.to_owned()), v))
                            .collect::<Mapping>(),
                    )
                }
            ),
        ]
    })
}

const KINDS: &[&str] = &[
    "Gateway",
    "VirtualService",
    "ServiceEntry",
    "DestinationRule",
    "List",
];

fn object() -> impl Strategy<Value = String> {
    (proptest::sample::select(KINDS), value(), value()).prop_map(|(kind, metadata, spec)| {
        let mut doc = Mapping::new();
        doc.insert("apiVersion".into(), "networking.istio.io/v1".into());
        doc.insert("kind".into(), kind.into());
        doc.insert("metadata".into(), metadata);
        doc.insert("spec".into(), spec);
        serde_yaml::to_string(&Value::Mapping(doc)).unwrap_or_default()
    })
}

fn survives(text: &str) {
    let checked = check_text("fuzz.yaml", text);
    let _ = compile(&checked.objects, &DnsAnswers::default());
    for d in &checked.diagnostics {
        let _ = d.to_string();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn structured_documents_never_panic(docs in proptest::collection::vec(object(), 1..4)) {
        survives(&docs.join("---\n"));
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        survives(&text);
    }

    #[test]
    fn mutated_examples_never_panic(cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let examples = ["seed-gateway.yaml", "bookinfo.yaml", "passthrough.yaml", "egress.yaml", "mongo.yaml", "secure-ingress.yaml"];
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let mut text: Vec<u8> = examples.iter().flat_map(|e| {
            let mut t = std::fs::read(dir.join(e)).unwrap_or_default();
            t.extend_from_slice(b"\n---\n");
            t
        }).collect();
        for (at, byte) in cuts {
            let i = at.index(text.len());
            match byte % 3 {
                0 => { text.remove(i); }
                1 => text.insert(i, byte),
                _ => text[i] = byte,
            }
        }
        survives(&String::from_utf8_lossy(&text));
    }
}
