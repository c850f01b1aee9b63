//! The config reference moves with the code: every field rejected as "not supported yet"
//! is listed in docs/config.md.
use gateway_user::config::model::unsupported_fields;

const STRUCTS: &[&str] = &[
    "Server",
    "ServerTlsSettings",
    "VirtualServiceSpec",
    "HttpRoute",
    "HttpMatchRequest",
    "HttpRewrite",
    "HttpRedirect",
    "HttpRetry",
    "TlsMatchAttributes",
    "L4MatchAttributes",
    "ServiceEntrySpec",
    "WorkloadEntry",
    "DestinationRuleSpec",
    "TrafficPolicy",
    "LoadBalancerSettings",
    "ConnectionPoolSettings",
    "HttpPoolSettings",
];

#[test]
fn config_reference_lists_every_unsupported_field() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md"))
        .unwrap_or_else(|e| panic!("docs/config.md: {e}"));
    let missing: Vec<String> = STRUCTS
        .iter()
        .flat_map(|s| unsupported_fields(s).iter().map(move |(f, _)| (*s, *f)))
        .filter(|(_, field)| {
            !doc.contains(&format!("`{field}`")) && !doc.contains(&format!(".{field}`"))
        })
        .map(|(s, f)| format!("{s}.{f}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md does not mention: {missing:?}"
    );
}
