//! Validation as a table: each row is a config and the exact set of error field paths it
//! must produce (with a fragment of each message), after Istio's documented rules. Valid rows
//! must produce no error.
use gateway_user::config::{Severity, check_text};

/// One Gateway with the given servers (flow or block YAML, indented for `servers:`).
fn gateway(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: ns}}\nspec:\n  servers:\n{servers}"
    )
}

fn server(port: &str, hosts: &str, extra: &str) -> String {
    format!("  - port: {port}\n    hosts: {hosts}\n{extra}")
}

const HTTP80: &str = "{number: 80, name: http, protocol: HTTP}";
const HTTPS443: &str = "{number: 443, name: https, protocol: HTTPS}";

fn virtual_service(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs, namespace: ns}}\nspec:\n{spec}"
    )
}

fn service_entry(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {{name: se, namespace: ns}}\nspec:\n{spec}"
    )
}

fn destination_rule(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: dr, namespace: ns}}\nspec:\n{spec}"
    )
}

const VS_HEAD: &str = "  hosts: [a.example.com]\n  gateways: [gw]\n";

fn route(rule: &str) -> String {
    virtual_service(&format!("{VS_HEAD}  http:\n  - {rule}\n"))
}

/// Expected errors as (field path, message fragment).
type Expected = Vec<(&'static str, &'static str)>;

/// (description, YAML, expected errors).
fn rows() -> Vec<(&'static str, String, Expected)> {
    let tls = |body: &str| format!("    tls: {body}\n");
    let cert = "serverCertificate: /c.pem, privateKey: /k.pem";
    vec![
        // Gateways
        ("valid HTTP server", gateway(&server(HTTP80, "[a.example.com]", "")), vec![]),
        ("protocol is case-insensitive", gateway(&server("{number: 80, name: http, protocol: http}", "[a.example.com]", "")), vec![]),
        ("namespaced and wildcard hosts", gateway(&server(HTTP80, "['ns1/*.example.com', './a.example.com', '*/b.example.com', '*']", "")), vec![]),
        ("TLS mode defaults to PASSTHROUGH", gateway(&server(HTTPS443, "[a.example.com]", &tls("{}"))), vec![]),
        ("SIMPLE with certificate files", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}}}")))), vec![]),
        ("MUTUAL with a credential", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: MUTUAL, credentialName: c}"))), vec![]),
        ("no servers", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {servers: []}\n".into(), vec![("spec.servers", "at least one server")]),
        ("server without hosts", gateway(&server(HTTP80, "[]", "")), vec![("spec.servers[0].hosts", "at least one host")]),
        ("partial wildcard", gateway(&server(HTTP80, "['*foo.example.com']", "")), vec![("spec.servers[0].hosts[0]", "partial wildcards")]),
        ("wildcard not left-most", gateway(&server(HTTP80, "['foo.*.com']", "")), vec![("spec.servers[0].hosts[0]", "left-most label")]),
        ("short name", gateway(&server(HTTP80, "[reviews]", "")), vec![("spec.servers[0].hosts[0]", "short name")]),
        ("bad host namespace", gateway(&server(HTTP80, "['Bad_NS/a.example.com']", "")), vec![("spec.servers[0].hosts[0]", "namespace")]),
        ("port 0", gateway(&server("{number: 0, name: http, protocol: HTTP}", "[a.example.com]", "")), vec![("spec.servers[0].port.number", "out of range")]),
        ("port 70000", gateway(&server("{number: 70000, name: http, protocol: HTTP}", "[a.example.com]", "")), vec![("spec.servers[0].port.number", "out of range")]),
        ("port not a number", gateway(&server("{number: eighty, name: http, protocol: HTTP}", "[a.example.com]", "")), vec![("spec.servers[0].port.number", "expected a non-negative integer")]),
        ("unknown protocol", gateway(&server("{number: 80, name: http, protocol: HTTPX}", "[a.example.com]", "")), vec![("spec.servers[0].port.protocol", "unknown protocol \"HTTPX\"; expected one of HTTP")]),
        ("missing protocol", gateway(&server("{number: 80, name: http}", "[a.example.com]", "")), vec![("spec.servers[0].port.protocol", "protocol must be set")]),
        ("missing port name", gateway(&server("{number: 80, protocol: HTTP}", "[a.example.com]", "")), vec![("spec.servers[0].port.name", "port name must be set")]),
        ("missing port", gateway("  - hosts: [a.example.com]\n"), vec![("spec.servers[0].port", "must have a port")]),
        ("duplicate port names", gateway(&(server(HTTP80, "[a.example.com]", "") + &server("{number: 81, name: http, protocol: HTTP}", "[b.example.com]", ""))), vec![("spec.servers[1].port.name", "must be unique")]),
        ("bind is not an IP", gateway(&server(HTTP80, "[a.example.com]", "    bind: localhost\n")), vec![("spec.servers[0].bind", "not an IP address")]),
        ("HTTPS without tls", gateway(&server(HTTPS443, "[a.example.com]", "")), vec![("spec.servers[0].tls", "must have TLS settings")]),
        ("SIMPLE without a certificate", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: SIMPLE}"))), vec![("spec.servers[0].tls.serverCertificate", "server certificate"), ("spec.servers[0].tls.privateKey", "private key")]),
        ("SIMPLE with two certificate sources", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, credentialName: c, {cert}}}")))), vec![("spec.servers[0].tls", "not both")]),
        ("MUTUAL without a CA", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: MUTUAL, {cert}}}")))), vec![("spec.servers[0].tls.caCertificates", "requires caCertificates")]),
        ("ISTIO_MUTUAL with a certificate", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: ISTIO_MUTUAL, {cert}}}")))), vec![("spec.servers[0].tls", "ISTIO_MUTUAL TLS cannot have")]),
        ("ISTIO_MUTUAL (the mesh identity)", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: ISTIO_MUTUAL, subjectAltNames: [spiffe://cluster.local/ns/a/sa/b]}"))), vec![]),
        ("ISTIO_MUTUAL in front of opaque TCP", gateway(&server("{number: 15443, name: tls, protocol: TLS}", "[a.example.com]", &tls("{mode: ISTIO_MUTUAL}"))), vec![("spec.servers[0].tls.mode", "terminating TLS in front of opaque TCP")]),
        ("unknown TLS mode", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: STRICT}"))), vec![("spec.servers[0].tls.mode", "unknown TLS mode \"STRICT\"")]),
        ("TLS 1.0 minimum", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}, minProtocolVersion: TLSV1_0}}")))), vec![("spec.servers[0].tls.minProtocolVersion", "rustls implements TLS 1.2 and 1.3 only")]),
        ("min above max", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}}")))), vec![("spec.servers[0].tls.minProtocolVersion", "above maxProtocolVersion")]),
        ("CBC cipher suite", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, AES128-SHA]}}")))), vec![("spec.servers[0].tls.cipherSuites[1]", "no CBC, 3DES or static-RSA")]),
        ("tlsCertificates: an RSA and an ECDSA pair", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: SIMPLE, tlsCertificates: [{serverCertificate: /rsa.pem, privateKey: /rsa.key}, {serverCertificate: /ec.pem, privateKey: /ec.key}]}"))), vec![]),
        ("credentialNames", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: MUTUAL, credentialNames: [rsa, ecdsa]}"))), vec![]),
        ("three credentialNames", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: SIMPLE, credentialNames: [a, b, c]}"))), vec![("spec.servers[0].tls.credentialNames", "at most 2")]),
        ("credentialName and credentialNames", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: SIMPLE, credentialName: a, credentialNames: [b]}"))), vec![("spec.servers[0].tls.credentialNames", "only one of credentialName or credentialNames")]),
        ("tlsCertificates with serverCertificate", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}, tlsCertificates: [{{serverCertificate: /a, privateKey: /b}}]}}")))), vec![("spec.servers[0].tls.tlsCertificates", "only one of serverCertificate/privateKey or tlsCertificates")]),
        ("a tlsCertificates pair without its key", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: SIMPLE, tlsCertificates: [{serverCertificate: /a}]}"))), vec![("spec.servers[0].tls.tlsCertificates[0].privateKey", "requires privateKey")]),
        ("MUTUAL with tlsCertificates and a pair's CA", gateway(&server(HTTPS443, "[a.example.com]", &tls("{mode: MUTUAL, tlsCertificates: [{serverCertificate: /a, privateKey: /b, caCertificates: /ca}]}"))), vec![]),
        ("MUTUAL with a CRL, SANs and pinned digests", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: MUTUAL, {cert}, caCertificates: /ca.pem, caCrl: /crl.pem, subjectAltNames: [client.example.com], verifyCertificateSpki: [NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=], verifyCertificateHash: ['DF:6F:F7:2F:E9:11:65:21:26:8F:6F:2D:D4:96:6F:51:DF:47:98:83:FE:70:37:B3:9F:75:91:6A:C3:04:9D:1A']}}")))), vec![]),
        ("CRL with SIMPLE", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}, caCrl: /crl.pem}}")))), vec![("spec.servers[0].tls.caCrl", "CRL is not supported with SIMPLE TLS")]),
        ("SPKI digest that is not SHA-256", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: MUTUAL, {cert}, caCertificates: /ca.pem, verifyCertificateSpki: [AAAA]}}")))), vec![("spec.servers[0].tls.verifyCertificateSpki[0]", "invalid base64-encoded SHA-256")]),
        ("certificate hash that is not hex", gateway(&server(HTTPS443, "[a.example.com]", &tls(&format!("{{mode: OPTIONAL_MUTUAL, {cert}, caCertificates: /ca.pem, verifyCertificateHash: [nothex]}}")))), vec![("spec.servers[0].tls.verifyCertificateHash[0]", "invalid hex-encoded SHA-256")]),
        ("TLS settings on plain HTTP", gateway(&server(HTTP80, "[a.example.com]", &tls(&format!("{{mode: SIMPLE, {cert}}}")))), vec![("spec.servers[0].tls", "need protocol HTTPS or TLS")]),
        ("httpsRedirect on plain HTTP", gateway(&server(HTTP80, "[a.example.com]", &tls("{httpsRedirect: true}"))), vec![]),
        ("unknown field suggests the right one", gateway("  - port: {number: 80, name: http, protocol: HTTP}\n    hostz: [a.example.com]\n"), vec![("spec.servers[0].hostz", "did you mean `hosts`?"), ("spec.servers[0].hosts", "at least one host")]),
        ("field not supported yet", gateway(&server(HTTP80, "[a.example.com]", "    defaultEndpoint: 127.0.0.1:8080\n")), vec![("spec.servers[0].defaultEndpoint", "is not supported yet")]),
        ("TLS origination per port, as Istio's egress task writes it", destination_rule("  host: edition.cnn.com\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    portLevelSettings:\n    - port: {number: 443}\n      tls: {mode: SIMPLE}\n"), vec![]),
        ("mutual origination with a credential", destination_rule("  host: nginx\n  trafficPolicy: {tls: {mode: MUTUAL, credentialName: client-credential, sni: my-nginx.example.com}}\n"), vec![]),
        ("ISTIO_MUTUAL origination", destination_rule("  host: istio-egressgateway.istio-system.svc.cluster.local\n  subsets: [{name: cnn, trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: ISTIO_MUTUAL, sni: edition.cnn.com}}]}}]\n"), vec![]),
        ("mutual origination without its files", destination_rule("  host: nginx\n  trafficPolicy: {tls: {mode: MUTUAL}}\n"), vec![("spec.trafficPolicy.tls.clientCertificate", "client certificate required for mutual tls"), ("spec.trafficPolicy.tls.privateKey", "private key required for mutual tls")]),
        ("a credential and files", destination_rule("  host: nginx\n  trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}\n"), vec![("spec.trafficPolicy.tls", "cannot specify client certificates or CA certificate or CA CRL If credentialName is set")]),
        ("insecureSkipVerify with a CA", destination_rule("  host: nginx\n  trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}}\n"), vec![("spec.trafficPolicy.tls", "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true")]),
        ("port level settings without a port", destination_rule("  host: nginx\n  trafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}\n"), vec![("spec.trafficPolicy.portLevelSettings[0]", "portLevelSettings must specify port")]),
        ("unknown origination mode", destination_rule("  host: nginx\n  trafficPolicy: {tls: {mode: STRICT}}\n"), vec![("spec.trafficPolicy.tls.mode", "unknown TLS mode \"STRICT\"")]),
        ("exportTo namespaces", destination_rule("  host: ratings\n  exportTo: [., istio-system]\n"), vec![]),
        ("exportTo the own namespace and .", destination_rule("  host: ratings\n  exportTo: [ns, .]\n"), vec![("spec.exportTo[1]", "duplicate entries in exportTo: . and current namespace ns")]),
        ("exportTo * with others", virtual_service("  hosts: [a.example.com]\n  exportTo: ['*', team-a]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![("spec.exportTo", "cannot have both public (*) and non-public exportTo values")]),
        ("exportTo ~ outside ServiceEntries", destination_rule("  host: ratings\n  exportTo: ['~']\n"), vec![("spec.exportTo[0]", "exportTo ~ (none) is not allowed")]),
        ("a ServiceEntry exported to none", service_entry("  hosts: [a.example.com]\n  exportTo: ['~']\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: DNS\n"), vec![]),
        ("exportTo a bad namespace", destination_rule("  host: ratings\n  exportTo: [Team_A]\n"), vec![("spec.exportTo[0]", "only .,*, or a valid DNS 1123 label")]),
        ("a retry budget", destination_rule("  host: ratings\n  trafficPolicy: {retryBudget: {percent: 20, minRetryConcurrency: 1}}\n"), vec![]),
        ("a retry budget over 100 %", destination_rule("  host: ratings\n  trafficPolicy: {retryBudget: {percent: 120}}\n"), vec![("spec.trafficPolicy.retryBudget.percent", "not in range 0..100")]),
        ("outlier detection as Istio's task writes it", destination_rule("  host: httpbin\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}}\n"), vec![]),
        ("outlier detection out of range", destination_rule("  host: httpbin\n  trafficPolicy: {outlierDetection: {interval: 0s, maxEjectionPercent: 120, minHealthPercent: -1, consecutiveLocalOriginFailures: 3}}\n"), vec![("spec.trafficPolicy.outlierDetection.interval", "duration must be greater than 1ms"), ("spec.trafficPolicy.outlierDetection.maxEjectionPercent", "percentage 120 is not in range 0..100"), ("spec.trafficPolicy.outlierDetection.minHealthPercent", "percentage -1 is not in range 0..100"), ("spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "split external local origin errors is set to false")]),
        // VirtualServices
        ("valid HTTP route", route("route: [{destination: {host: b.example.com}}]"), vec![]),
        ("a delegate (no hosts) cannot name gateways", virtual_service("  gateways: [gw]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![("spec.gateways", "delegate virtual service must have no gateways specified")]),
        ("no rules", virtual_service(VS_HEAD), vec![("spec", "http, tcp or tls must be provided")]),
        ("route and redirect", route("{route: [{destination: {host: b}}], redirect: {uri: /x}}"), vec![("spec.http[0]", "HTTP route cannot contain both route and redirect")]),
        ("no action", route("{match: [{uri: {prefix: /}}]}"), vec![("spec.http[0]", "HTTP route, redirect or direct_response is required")]),
        ("redirect with rewrite", route("{redirect: {uri: /x}, rewrite: {uri: /y}}"), vec![("spec.http[0].rewrite", "HTTP route rule cannot contain both rewrite and redirect")]),
        ("empty redirect", route("{redirect: {}}"), vec![("spec.http[0].redirect", "must specify")]),
        ("redirect code 200", route("{redirect: {uri: /x, redirectCode: 200}}"), vec![("spec.http[0].redirect.redirectCode", "must be 3xx")]),
        ("direct response status 700", route("{directResponse: {status: 700}}"), vec![("spec.http[0].directResponse.status", "HTTP status 700 is not in range 200-599")]),
        ("string match with two kinds", route("{match: [{uri: {prefix: /a, exact: /b}}], route: [{destination: {host: b}}]}"), vec![("spec.http[0].match[0].uri", "only one of exact, prefix or regex")]),
        ("invalid regex", route("{match: [{headers: {x-a: {regex: '('}}}], route: [{destination: {host: b}}]}"), vec![("spec.http[0].match[0].headers.x-a.regex", "Istio uses RE2 style regex-based match")]),
        ("negative weight", route("{route: [{destination: {host: b}, weight: -1}]}"), vec![("spec.http[0].route[0].weight", "negative")]),
        ("weights add up to 0", route("{route: [{destination: {host: b}, weight: 0}, {destination: {host: c}, weight: 0}]}"), vec![("spec.http[0].route", "total destination weight = 0")]),
        ("destination without host", route("{route: [{destination: {subset: v1}}]}"), vec![("spec.http[0].route[0].destination.host", "host is required")]),
        ("invalid timeout", route("{route: [{destination: {host: b}}], timeout: 5}"), vec![("spec.http[0].timeout", "invalid duration")]),
        ("unknown retry policy", route("{route: [{destination: {host: b}}], retries: {attempts: 2, retryOn: '5xx,sometimes'}}"), vec![("spec.http[0].retries.retryOn", "\"sometimes\" is not a valid retryOn policy")]),
        ("mirror with a percentage", route("{route: [{destination: {host: b}}], mirror: {host: c, subset: v2}, mirrorPercentage: {value: 12.5}}"), vec![]),
        ("mirrors with percentages", route("{route: [{destination: {host: b}}], mirrors: [{destination: {host: c}, percentage: {value: 50}}, {destination: {host: d}}]}"), vec![]),
        ("mirror and mirrors", route("{route: [{destination: {host: b}}], mirror: {host: c}, mirrors: [{destination: {host: d}}]}"), vec![("spec.http[0].mirrors", "`mirror` and `mirrors` cannot be used together")]),
        ("mirror percentages out of range", route("{route: [{destination: {host: b}}], mirror: {host: '*'}, mirrorPercentage: {value: 101}, mirrorPercent: 150}"), vec![("spec.http[0].mirror.host", "invalid destination host *"), ("spec.http[0].mirrorPercentage.value", "mirror_percentage must have a max value of 100"), ("spec.http[0].mirrorPercent", "mirror_percent must have a max value of 100 (it has 150)")]),
        ("a mirror without a destination", route("{route: [{destination: {host: b}}], mirrors: [{percentage: {value: -1}}]}"), vec![("spec.http[0].mirrors[0].destination", "destination is required for mirrors"), ("spec.http[0].mirrors[0].percentage.value", "mirror percentage must have a min value of 0")]),
        // Istio's HTTP route rules (pkg/config/validation/virtualservice.go), accept and reject.
        ("delegate VirtualService (no hosts)", virtual_service("  http: [{match: [{uri: {prefix: /reviews/v2}}], route: [{destination: {host: b}}]}]\n"), vec![]),
        ("a delegate has no tls or tcp routes", virtual_service("  tcp: [{route: [{destination: {host: b}}]}]\n  tls: [{match: [{sniHosts: [a.example.com]}], route: [{destination: {host: b}}]}]\n"), vec![("spec.tcp", "delegate virtual service must have no tcp route specified"), ("spec.tls", "delegate virtual service must have no tls route specified"), ("spec.tls[0].match[0].sniHosts[0]", "not a subset")]),
        ("a delegate cannot delegate", virtual_service("  http: [{delegate: {name: other}}]\n"), vec![("spec.http[0].delegate", "delegate HTTP route cannot contain delegate")]),
        ("root route delegates", route("{match: [{uri: {prefix: /reviews}}], delegate: {name: reviews, namespace: ns}}"), vec![]),
        ("root route with a delegate and a route", route("{name: r, delegate: {name: reviews}, route: [{destination: {host: b}}]}"), vec![("spec.http[0].route", "root HTTP route r must not specify route")]),
        ("root route with a delegate and a redirect", route("{name: r, delegate: {name: reviews}, redirect: {uri: /x}}"), vec![("spec.http[0].redirect", "root HTTP route r must not specify redirect")]),
        ("duplicate hosts", virtual_service("  hosts: [a.example.com, a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![("spec.hosts[1]", "duplicate hosts in virtual service: a.example.com & a.example.com")]),
        ("a wildcard host covering another", virtual_service("  hosts: ['*.example.com', a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![("spec.hosts[1]", "duplicate hosts in virtual service: *.example.com & a.example.com")]),
        ("hosts that do not overlap", virtual_service("  hosts: ['*.a.example.com', b.example.com, 203.0.113.9]\n  gateways: [gw]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![]),
        ("* bound to the mesh", virtual_service("  hosts: ['*']\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![("spec.hosts", "wildcard host * is not allowed for virtual services bound to the mesh gateway")]),
        ("* bound to a gateway", virtual_service("  hosts: ['*']\n  gateways: [gw]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![]),
        ("route and direct response", route("{route: [{destination: {host: b}}], directResponse: {status: 200}}"), vec![("spec.http[0]", "HTTP route cannot contain both route and direct_response")]),
        ("direct response and redirect", route("{redirect: {uri: /x}, directResponse: {status: 200}}"), vec![("spec.http[0]", "HTTP route rule cannot contain both direct_response and redirect")]),
        ("direct response with rewrite", route("{directResponse: {status: 404}, rewrite: {uri: /x}}"), vec![("spec.http[0].rewrite", "HTTP route rule cannot contain both rewrite and direct_response")]),
        ("empty rewrite", route("{route: [{destination: {host: b}}], rewrite: {uri: ''}}"), vec![("spec.http[0].rewrite", "rewrite must specify at least one of URI, UriRegexRewrite, or authority")]),
        ("uriRegexRewrite", route("{route: [{destination: {host: b}}], rewrite: {uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}}"), vec![]),
        ("uri and uriRegexRewrite", route("{route: [{destination: {host: b}}], rewrite: {uri: /a, uriRegexRewrite: {match: '^/b', rewrite: /c}}}"), vec![("spec.http[0].rewrite", "rewrite may only contain one of URI or UriRegexRewrite")]),
        ("uriRegexRewrite without rewrite", route("{route: [{destination: {host: b}}], rewrite: {uriRegexRewrite: {match: '^/b'}}}"), vec![("spec.http[0].rewrite.uriRegexRewrite", "UriRegexRewrite requires both Rewrite and Match fields to be specified")]),
        ("uriRegexRewrite with a bad regex", route("{route: [{destination: {host: b}}], rewrite: {uriRegexRewrite: {match: '(', rewrite: /c}}}"), vec![("spec.http[0].rewrite.uriRegexRewrite.match", "\"HTTPRewrite.UriRegexRewrite.Match\"")]),
        ("authority rewritten and set", route("{route: [{destination: {host: b}}], rewrite: {authority: a.test}, headers: {request: {set: {host: b.test}}}}"), vec![("spec.http[0].headers.request", "authority header cannot be set multiple times: have \"a.test\", attempting to set \"b.test\"")]),
        ("redirect scheme", route("{redirect: {scheme: ftp}}"), vec![("spec.http[0].redirect.scheme", "invalid redirect scheme, must be \"http\" or \"https\"")]),
        ("redirect code 0 and port 0 mean unset", route("{redirect: {uri: /x, redirectCode: 0, port: 0}}"), vec![]),
        ("empty match means present", route("{match: [{uri: {}, headers: {x-user: {}}, withoutHeaders: {x-debug: {regex: '*'}}, queryParams: {'': {exact: a}}}], route: [{destination: {host: b}}]}"), vec![]),
        ("empty prefix (not uri)", route("{match: [{uri: {prefix: ''}, method: {prefix: ''}}], route: [{destination: {host: b}}]}"), vec![("spec.http[0].match[0].method.prefix", "\"method\": prefix string match should not be empty")]),
        ("empty regex", route("{match: [{uri: {regex: ''}}], route: [{destination: {host: b}}]}"), vec![("spec.http[0].match[0].uri.regex", "\"uri\": regex string match should not be empty")]),
        ("regex longer than 1024", route(&format!("{{match: [{{uri: {{regex: '{}'}}}}], route: [{{destination: {{host: b}}}}]}}", "a".repeat(1025))), vec![("spec.http[0].match[0].uri.regex", "regex is too large, max length allowed is 1024")]),
        ("invalid header name in a match", route("{match: [{headers: {'x y': {exact: a}}}], route: [{destination: {host: b}}]}"), vec![("spec.http[0].match[0].headers.x y", "header name x y is not a valid header name")]),
        ("JWT claim match", route("{match: [{headers: {'@request.auth.claims.group': {exact: a}}}], route: [{destination: {host: b}}]}"), vec![("spec.http[0].match[0].headers.@request.auth.claims.group", "not supported yet")]),
        ("match port 0 means any", route("{match: [{port: 0}], route: [{destination: {host: b}}]}"), vec![]),
        ("sidecar-only HTTP match fields are accepted", route("{match: [{sourceLabels: {app: x}, sourceNamespace: ns}], route: [{destination: {host: b}}]}"), vec![]),
        ("header operations", route("{route: [{destination: {host: b}, headers: {request: {set: {x-d: '1'}}, response: {remove: [x-e]}}}], headers: {request: {set: {host: a.test, ':authority': a.test, x-a: 'tab\there'}, add: {x-b: '100%%'}, remove: [x-c]}, response: {add: {x-gw: sluice}}}}"), vec![]),
        ("header operation on a pseudo-header", route("{route: [{destination: {host: b}}], headers: {request: {set: {':path': /x}}}}"), vec![("spec.http[0].headers.request.set", "invalid header \":path\": header cannot have \":\" prefix")]),
        ("Host removed or set on a response", route("{route: [{destination: {host: b}, headers: {request: {remove: [Host]}, response: {set: {host: x}}}}]}"), vec![("spec.http[0].route[0].headers.request.remove", "invalid header \"Host\": cannot set Host header"), ("spec.http[0].route[0].headers.response.set", "invalid header \"host\": cannot set Host header")]),
        ("header value with a newline", route("{route: [{destination: {host: b}}], headers: {response: {set: {x-a: \"a\\nb\"}}}}"), vec![("spec.http[0].headers.response.set", "header value configuration a\nb is invalid")]),
        ("header value with a lone %", route("{route: [{destination: {host: b}}], headers: {response: {set: {x-a: '100% %'}}}}"), vec![("spec.http[0].headers.response.set", "Un-escaped %")]),
        ("header value with an unterminated %", route("{route: [{destination: {host: b}}], headers: {response: {set: {x-a: '100%'}}}}"), vec![("spec.http[0].headers.response.set", "Un-terminated variable expression '%'")]),
        ("header value with an Envoy variable", route("{route: [{destination: {host: b}}], headers: {request: {set: {x-a: '%DOWNSTREAM_REMOTE_ADDRESS%'}}}}"), vec![("spec.http[0].headers.request.set", "the variable %DOWNSTREAM_REMOTE_ADDRESS% is not supported yet")]),
        ("two destinations without weights", route("{route: [{destination: {host: b}}, {destination: {host: c}}]}"), vec![("spec.http[0].route", "total destination weight = 0")]),
        ("subset name not a DNS label", route("{route: [{destination: {host: b, subset: v1.0}}]}"), vec![("spec.http[0].route[0].destination.subset", "subset name is invalid: v1.0")]),
        ("wildcard destination host", route("{route: [{destination: {host: '*.ext.example.com'}}]}"), vec![]),
        ("destination host *", route("{route: [{destination: {host: '*'}}]}"), vec![("spec.http[0].route[0].destination.host", "invalid destination host *")]),
        ("retries disabled but configured", route("{route: [{destination: {host: b}}], retries: {attempts: 0, retryOn: 5xx}}"), vec![("spec.http[0].retries", "http retry policy configured when attempts are set to 0 (disabled)")]),
        ("retryOn with a space", route("{route: [{destination: {host: b}}], retries: {attempts: 2, retryOn: '5xx, reset'}}"), vec![("spec.http[0].retries.retryOn", "\" reset\" is not a valid retryOn policy")]),
        ("retryOn with an unknown status", route("{route: [{destination: {host: b}}], retries: {attempts: 2, retryOn: '503,499'}}"), vec![("spec.http[0].retries.retryOn", "\"499\" is not a valid retryOn policy")]),
        ("Bookinfo's fault delay", route("{route: [{destination: {host: b}}], fault: {delay: {percentage: {value: 100.0}, fixedDelay: 7s}}}"), vec![]),
        ("Bookinfo's fault abort", route("{route: [{destination: {host: b}}], fault: {abort: {percentage: {value: 100}, httpStatus: 500}}}"), vec![]),
        ("fault with neither", route("{route: [{destination: {host: b}}], fault: {}}"), vec![("spec.http[0].fault", "HTTP fault injection must have an abort and/or a delay")]),
        ("fault percentage over 100", route("{route: [{destination: {host: b}}], fault: {abort: {percentage: {value: 150}, httpStatus: 503}}}"), vec![("spec.http[0].fault.abort.percentage", "percentage 150 is not in range 0-100")]),
        ("fault exponential delay", route("{route: [{destination: {host: b}}], fault: {delay: {exponentialDelay: 1s}}}"), vec![("spec.http[0].fault.delay.exponentialDelay", "exponentialDelay not supported yet")]),
        ("fault delay without duration", route("{route: [{destination: {host: b}}], fault: {delay: {percentage: {value: 10}}}}"), vec![("spec.http[0].fault.delay", "a delay needs fixedDelay")]),
        ("fault HTTP/2 error", route("{route: [{destination: {host: b}}], fault: {abort: {http2Error: REFUSED_STREAM}}}"), vec![("spec.http[0].fault.abort.http2Error", "HTTP/2 abort fault injection not supported yet")]),
        ("fault unknown gRPC status", route("{route: [{destination: {host: b}}], fault: {abort: {grpcStatus: SOMETIMES}}}"), vec![("spec.http[0].fault.abort.grpcStatus", "gRPC status \"SOMETIMES\" is not supported")]),
        ("fault status out of range", route("{route: [{destination: {host: b}}], fault: {abort: {httpStatus: 700}}}"), vec![("spec.http[0].fault.abort.httpStatus", "HTTP status 700 is not in range 200-599")]),
        ("fault two error types", route("{route: [{destination: {host: b}}], fault: {abort: {httpStatus: 503, grpcStatus: UNAVAILABLE}}}"), vec![("spec.http[0].fault.abort", "only one of httpStatus, grpcStatus and http2Error may be set")]),
        ("CORS policy", route("{route: [{destination: {host: b}}], corsPolicy: {allowOrigins: [{exact: 'https://a.example'}, {regex: 'https://.*[.]b[.]example'}], allowMethods: [GET, POST], allowHeaders: [x-a], exposeHeaders: [x-b], maxAge: 24h, allowCredentials: true, unmatchedPreflights: IGNORE}}"), vec![]),
        ("CORS empty origin match", route("{route: [{destination: {host: b}}], corsPolicy: {allowOrigins: [{exact: ''}]}}"), vec![("spec.http[0].corsPolicy.allowOrigins[0]", "not a valid match type for CORS allow origins")]),
        ("CORS unknown method", route("{route: [{destination: {host: b}}], corsPolicy: {allowOrigins: [{exact: x}], allowMethods: [FETCH]}}"), vec![("spec.http[0].corsPolicy.allowMethods[0]", "\"FETCH\" is not a supported HTTP method")]),
        ("CORS bad header name", route("{route: [{destination: {host: b}}], corsPolicy: {allowOrigins: [{exact: x}], exposeHeaders: ['x b']}}"), vec![("spec.http[0].corsPolicy.exposeHeaders[0]", "is not a valid header name")]),
        ("CORS max age below seconds", route("{route: [{destination: {host: b}}], corsPolicy: {allowOrigins: [{exact: x}], maxAge: 1500ms}}"), vec![("spec.http[0].corsPolicy.maxAge", "max_age duration is accurate only to seconds precision")]),
        ("CORS unknown unmatchedPreflights", route("{route: [{destination: {host: b}}], corsPolicy: {allowOrigins: [{exact: x}], unmatchedPreflights: DROP}}"), vec![("spec.http[0].corsPolicy.unmatchedPreflights", "unknown value \"DROP\"")]),
        ("retries with Istio's other fields", route("{route: [{destination: {host: b}}], retries: {attempts: 3, retryOn: 5xx, backoff: 100ms, retryIgnorePreviousHosts: false, retryRemoteLocalities: true}}"), vec![]),
        ("retry backoff below ms precision", route("{route: [{destination: {host: b}}], retries: {attempts: 3, backoff: 1500us}}"), vec![("spec.http[0].retries.backoff", "only durations to ms precision are supported")]),
        ("Go-style durations", route("{route: [{destination: {host: b}}], timeout: 1m30s, retries: {attempts: 2, perTryTimeout: 1.5s}}"), vec![]),
        ("duration below ms precision", route("{route: [{destination: {host: b}}], timeout: 1500us}"), vec![("spec.http[0].timeout", "only durations to ms precision are supported")]),
        ("duration past what fits", route("{route: [{destination: {host: b}}], timeout: 100000000000000000000s}"), vec![("spec.http[0].timeout", "invalid duration")]),
        ("direct response body in base64", route("{directResponse: {status: 200, body: {bytes: aGk=}}}"), vec![]),
        ("direct response bytes that are not base64", route("{directResponse: {status: 200, body: {bytes: 'not base64!'}}}"), vec![("spec.http[0].directResponse.body.bytes", "illegal base64 data")]),
        ("direct response with an empty body", route("{directResponse: {status: 204, body: {}}}"), vec![]),
        ("direct response over 1 MiB", route(&format!("{{directResponse: {{status: 200, body: {{string: '{}'}}}}}}", "x".repeat((1 << 20) + 1))), vec![("spec.http[0].directResponse.body", "must be less than 1MB")]),
        ("invalid gateway reference", virtual_service("  hosts: [a.example.com]\n  gateways: [a/b/c]\n  http: [{route: [{destination: {host: b}}]}]\n"), vec![("spec.gateways[0]", "invalid gateway reference")]),
        ("TLS route without SNI hosts", virtual_service(&format!("{VS_HEAD}  tls: [{{match: [{{port: 443}}], route: [{{destination: {{host: b}}}}]}}]\n")), vec![("spec.tls[0].match[0].sniHosts", "at least one SNI host")]),
        ("SNI host outside the VirtualService hosts", virtual_service(&format!("{VS_HEAD}  tls: [{{match: [{{sniHosts: [z.example.com]}}], route: [{{destination: {{host: b}}}}]}}]\n")), vec![("spec.tls[0].match[0].sniHosts[0]", "not a subset")]),
        ("TLS route without a match", virtual_service(&format!("{VS_HEAD}  tls: [{{route: [{{destination: {{host: b}}}}]}}]\n")), vec![("spec.tls[0].match", "at least one match")]),
        ("sidecar-only TLS match fields are accepted", virtual_service(&format!("{VS_HEAD}  tls: [{{match: [{{sniHosts: [a.example.com], destinationSubnets: ['203.0.113.0/24', '2001:db8::1'], sourceLabels: {{app: x}}, sourceNamespace: ns}}], route: [{{destination: {{host: b}}}}]}}]\n")), vec![]),
        ("a destination subnet that is not one", virtual_service(&format!("{VS_HEAD}  tls: [{{match: [{{sniHosts: [a.example.com], destinationSubnets: ['203.0.113.0/33', 'nope']}}], route: [{{destination: {{host: b}}}}]}}]\n")), vec![("spec.tls[0].match[0].destinationSubnets[0]", "not a valid IP address or CIDR"), ("spec.tls[0].match[0].destinationSubnets[1]", "not a valid IP address or CIDR")]),
        ("TCP match sidecar fields", virtual_service(&format!("{VS_HEAD}  tcp: [{{match: [{{port: 7000, destinationSubnets: [192.0.2.0/24], sourceLabels: {{'': x}}}}], route: [{{destination: {{host: b}}}}]}}]\n")), vec![("spec.tcp[0].match[0].sourceLabels", "cannot be empty")]),
        ("TCP route without destinations", virtual_service(&format!("{VS_HEAD}  tcp: [{{match: [{{port: 27017}}]}}]\n")), vec![("spec.tcp[0].route", "at least one destination")]),
        // ServiceEntries
        ("valid STATIC entry", service_entry("  hosts: [db.example.com]\n  ports: [{number: 5432, name: pg, protocol: TCP}]\n  resolution: STATIC\n  endpoints: [{address: 203.0.113.5, labels: {v: '1'}}]\n"), vec![]),
        ("STATIC without endpoints", service_entry("  hosts: [db.example.com]\n  ports: [{number: 5432, name: pg}]\n  resolution: STATIC\n"), vec![("spec.endpoints", "needs endpoints")]),
        ("STATIC with a DNS name", service_entry("  hosts: [db.example.com]\n  ports: [{number: 5432, name: pg}]\n  resolution: STATIC\n  endpoints: [{address: db1.example.com}]\n"), vec![("spec.endpoints[0].address", "needs IP addresses")]),
        ("no ports", service_entry("  hosts: [db.example.com]\n  resolution: DNS\n"), vec![("spec.ports", "at least one port")]),
        ("wildcard with DNS", service_entry("  hosts: ['*.example.com']\n  ports: [{number: 443, name: tls}]\n  resolution: DNS\n"), vec![("spec.hosts[0]", "resolution NONE")]),
        ("unknown resolution", service_entry("  hosts: [db.example.com]\n  ports: [{number: 1, name: a}]\n  resolution: MAGIC\n"), vec![("spec.resolution", "unknown resolution")]),
        ("endpoint port for an unknown port name", service_entry("  hosts: [db.example.com]\n  ports: [{number: 1, name: a}]\n  resolution: STATIC\n  endpoints: [{address: 203.0.113.5, ports: {b: 2}}]\n"), vec![("spec.endpoints[0].ports.b", "no service port is named")]),
        // DestinationRules
        ("valid subsets", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n  subsets: [{name: v1, labels: {version: v1}}]\n"), vec![]),
        ("missing host", destination_rule("  subsets: [{name: v1}]\n"), vec![("spec.host", "host is required")]),
        ("duplicate subsets", destination_rule("  host: reviews\n  subsets: [{name: v1}, {name: v1}]\n"), vec![("spec.subsets[1].name", "already defined")]),
        ("unknown load balancer", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n"), vec![("spec.trafficPolicy.loadBalancer.simple", "unknown load balancer")]),
        ("empty traffic policy", destination_rule("  host: reviews\n  trafficPolicy: {}\n"), vec![("spec.trafficPolicy", "traffic policy must have at least one field")]),
        ("consistent hash on a header with a Maglev table", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}}\n"), vec![]),
        ("consistent hash on a cookie with a ring", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}, ringHash: {minimumRingSize: 4096}}}}\n"), vec![]),
        ("consistent hash cookie without a name", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 0s}}}}\n"), vec![("spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "name required for HttpCookie")]),
        ("consistent hash with two keys", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}\n"), vec![("spec.trafficPolicy.loadBalancer.consistentHash", "only one of httpHeaderName")]),
        ("simple and consistent hash", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}\n"), vec![("spec.trafficPolicy.loadBalancer", "only one of simple or consistentHash")]),
        ("Maglev table size not prime", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}}\n"), vec![("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "tableSize must be a prime number for maglev")]),
        ("Maglev table size missing", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {}}}}\n"), vec![("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "tableSize must be set for maglev")]),
        ("Maglev table too large", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}}\n"), vec![("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "tableSize must be less than 5000011 for maglev")]),
        ("minimumRingSize with a table", destination_rule("  host: reviews\n  trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 1024, ringHash: {minimumRingSize: 1024}}}}\n"), vec![("spec.trafficPolicy.loadBalancer.consistentHash", "only one of MinimumRingSize or Maglev/Ringhash can be specified")]),
        ("h2UpgradePolicy", destination_rule("  host: reviews\n  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}\n"), vec![]),
        ("unknown h2UpgradePolicy", destination_rule("  host: reviews\n  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: SOMETIMES}}}\n"), vec![("spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "unknown h2UpgradePolicy")]),
        ("circuit breakers as Istio's task writes them", destination_rule("  host: httpbin\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, http2MaxRequests: 10, maxRetries: 3, idleTimeout: 1h}}}\n"), vec![]),
        ("negative pool limits", destination_rule("  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: -1, connectTimeout: 1ns}, http: {http1MaxPendingRequests: -1, maxRetries: -2, idleTimeout: x}}}\n"), vec![("spec.trafficPolicy.connectionPool.tcp.maxConnections", "max connections must be non-negative"), ("spec.trafficPolicy.connectionPool.tcp.connectTimeout", "ms precision"), ("spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests", "http1 max pending requests must be non-negative"), ("spec.trafficPolicy.connectionPool.http.maxRetries", "max retries must be non-negative"), ("spec.trafficPolicy.connectionPool.http.idleTimeout", "invalid duration")]),
        ("other HTTP pool fields are not supported yet", destination_rule("  host: reviews\n  trafficPolicy: {connectionPool: {http: {maxConcurrentStreams: 3}}}\n"), vec![("spec.trafficPolicy.connectionPool.http.maxConcurrentStreams", "is not supported yet")]),
        // Object names
        ("Gateway name with a dot", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: my.gw}\nspec:\n  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com]}]\n".into(), vec![("metadata.name", "invalid gateway name: \"my.gw\"")]),
        ("object name with upper case", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: My_DR}\nspec: {host: reviews}\n".into(), vec![("metadata.name", "a lowercase RFC 1123 subdomain")]),
        ("object name with dots", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews.v1}\nspec: {host: reviews}\n".into(), vec![]),
        ("TCP connection lifetime is not supported yet", destination_rule("  host: reviews\n  trafficPolicy: {connectionPool: {tcp: {maxConnectionDuration: 1h}}}\n"), vec![("spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration", "is not supported yet")]),
        // Envelopes
        ("missing apiVersion", "kind: Gateway\nmetadata: {name: a}\nspec: {}\n".into(), vec![("apiVersion", "`apiVersion` is required")]),
        ("kind not read by Sluice", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n".into(), vec![("kind", "kind \"Service\" is not supported")]),
        ("API version Istio does not serve", "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: a}\nspec: {}\n".into(), vec![("apiVersion", "not served")]),
        ("missing name", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {}\nspec: {servers: []}\n".into(), vec![("metadata.name", "`metadata.name` is required")]),
        ("missing spec", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: a}\n".into(), vec![("spec", "`spec` is required")]),
        ("defined twice", format!("{}---\n{}", gateway(&server(HTTP80, "[a.example.com]", "")), gateway(&server(HTTP80, "[a.example.com]", ""))), vec![("metadata.name", "defined twice")]),
        ("kubectl List of objects", format!("apiVersion: v1\nkind: List\nitems:\n- {}\n", route("route: [{destination: {host: b}}]").replace('\n', "\n  ").trim_end()), vec![]),
    ]
}

#[test]
fn validation_table() {
    let mut failures = Vec::new();
    for (description, text, expected) in rows() {
        let checked = check_text("test.yaml", &text);
        let mut got: Vec<(String, String)> = checked
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.path.clone(), d.to_string()))
            .collect();
        got.sort();
        let mut want: Vec<&str> = expected.iter().map(|(path, _)| *path).collect();
        want.sort();
        let got_paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        if got_paths != want {
            failures.push(format!(
                "{description}: expected errors at {want:?}, got {got:#?}"
            ));
            continue;
        }
        for (path, fragment) in &expected {
            if !got
                .iter()
                .any(|(p, text)| p == path && text.contains(fragment))
            {
                failures.push(format!(
                    "{description}: the error at {path} lacks {fragment:?}: {got:#?}"
                ));
            }
        }
        if expected.is_empty() && checked.objects.is_empty() {
            failures.push(format!("{description}: valid but no object was kept"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn errors_name_file_line_column_and_path() {
    let text = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: edge\nspec:\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [a.example.com]\n  - port:\n      number: 8080\n      name: other\n      protocol: HTTPX\n    hosts: [b.example.com]\n";
    let checked = check_text("gateway.yaml", text);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "gateway.yaml:12:7: error: spec.servers[1].port.protocol: unknown protocol \"HTTPX\"; expected one of HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS, MYSQL [IST0106 Gateway default/edge]"
        ]
    );
}

#[test]
fn every_error_of_an_object_is_reported_at_once() {
    let text = route(
        "{match: [{uri: {prefix: /a, exact: /b}}], route: [{destination: {host: b}, weight: -1}], mirror: {host: '*'}, timeout: soon}",
    );
    let checked = check_text("vs.yaml", &text);
    let mut paths: Vec<&str> = checked
        .diagnostics
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "spec.http[0].match[0].uri",
            "spec.http[0].mirror.host",
            "spec.http[0].route[0].weight",
            "spec.http[0].timeout"
        ]
    );
    assert!(
        checked.objects.is_empty(),
        "an object with errors is not kept"
    );
}

#[test]
fn sidecar_only_match_fields_are_reported_as_ignored_on_a_gateway() {
    let text = virtual_service(&format!(
        "{VS_HEAD}  tls: [{{match: [{{sniHosts: [a.example.com], sourceLabels: {{app: x}}}}], route: [{{destination: {{host: b}}}}]}}]\n"
    ));
    let checked = check_text("vs.yaml", &text);
    let infos: Vec<(String, &str)> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Info)
        .map(|d| (d.path.clone(), d.code))
        .collect();
    assert_eq!(
        infos,
        [("spec.tls[0].match[0].sourceLabels".to_owned(), "SLU0002")]
    );
}
