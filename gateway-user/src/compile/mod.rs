//! Compile: validated Istio objects plus resolved DNS names -> a Plan. Pure (no I/O), so it
//! is tested table by table. Problems between objects are warnings with stable codes; what
//! they affect is left out of the Plan and listed, never resolved silently.
pub mod plan;

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};

use crate::{
    compile::plan::{
        Backend, CertificateSource, ConsistentHash, Endpoint, HashKey, HashTable, HttpAction,
        HttpRoute, L4Route, LeftOut, Listener, ListenerKind, Mirror, OutlierPolicy, Place,
        Placement, Plan, PoolLimits, Retries, RetryBudgetLimit, RouteOrigin, ServerOrigin,
        SniRoute, TlsTermination, UpstreamTls, VirtualHost,
    },
    config::{
        Diagnostic, Object, ObjectRef, Severity, Spec,
        diagnostic::codes,
        model::{
            Delegate, Destination, DestinationRuleSpec, GatewaySpec, HeaderOperations, Headers,
            HttpMatchRequest, HttpRedirect, HttpRoute as ModelHttpRoute, PortSelector,
            RouteDestination, Server, ServiceEntrySpec, TrafficPolicy, VirtualServiceSpec,
            Weighted,
        },
        names::{self, host_matches, hosts_overlap},
    },
};

/// Addresses that DNS names resolved to. `looked_up` is false when nothing was resolved (as
/// in `sluice validate`), so unresolved names are not reported.
#[derive(Debug, Clone, Default)]
pub struct DnsAnswers {
    pub looked_up: bool,
    pub addresses: BTreeMap<String, Vec<IpAddr>>,
}

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub plan: Plan,
    /// Warnings and infos, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

/// The Istio default when a DestinationRule sets no load balancer.
pub const DEFAULT_LOAD_BALANCER: &str = "LEAST_REQUEST";

/// Compiles `objects` (already free of per-object errors, in declaration order).
pub fn compile(objects: &[Object], dns: &DnsAnswers) -> Compiled {
    let mut compiler = Compiler {
        objects,
        dns,
        out: Compiled::default(),
        listeners: Vec::new(),
    };
    compiler.check_virtual_services();
    compiler.collect_servers();
    compiler.bind_routes();
    let mut listeners: Vec<Listener> = compiler
        .listeners
        .into_iter()
        .map(|l| catch_all_to_kernel(l.listener))
        .collect();
    listeners.sort_by_key(|l| (l.port, l.bind));
    fit_kernel(&mut listeners);
    let mut out = compiler.out;
    out.plan.listeners = listeners;
    out
}

/// Places every kernel L4 listener in userspace when the Plan needs more of the kernel
/// than its maps hold (listeners, distinct backend sets: one Maglev table each, backend
/// endpoints), saying why: the daemon's sync would refuse the Plan and withdraw them all,
/// and `sluice plan` should tell that before a packet does. Pure.
pub fn fit_kernel(listeners: &mut [Listener]) {
    use gateway_common::l4::{MAX_BACKENDS, MAX_LISTENERS, MAX_SET_SLOTS};
    /// A destination as its Maglev table sees it: host, weight, weighted endpoints.
    type SetMember = (String, u32, Vec<(std::net::SocketAddr, u32)>);
    let kernel: Vec<usize> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.runs.place == Place::Kernel)
        .filter(|(_, l)| matches!(l.kind, ListenerKind::L4Forward { route: Some(_) }))
        .map(|(i, _)| i)
        .collect();
    let mut sets = std::collections::BTreeSet::new();
    let mut endpoints = std::collections::BTreeSet::new();
    for i in &kernel {
        if let ListenerKind::L4Forward { route: Some(route) } = &listeners[*i].kind {
            let set: Vec<SetMember> = route
                .backends
                .iter()
                .map(|b| {
                    let points = b.endpoints.iter().map(|e| (e.address, e.weight)).collect();
                    (b.host.clone(), b.weight, points)
                })
                .collect();
            endpoints.extend(
                route
                    .backends
                    .iter()
                    .flat_map(|b| b.endpoints.iter().map(|e| e.address)),
            );
            sets.insert(set);
        }
    }
    let over = if kernel.len() > MAX_LISTENERS as usize {
        Some(format!(
            "{} kernel L4 listeners, the kernel holds {MAX_LISTENERS}",
            kernel.len()
        ))
    } else if sets.len() > MAX_SET_SLOTS as usize {
        Some(format!(
            "{} distinct backend sets (a Maglev table each), the kernel holds {MAX_SET_SLOTS}",
            sets.len()
        ))
    } else if endpoints.len() > MAX_BACKENDS as usize {
        Some(format!(
            "{} backend endpoints, the kernel holds {MAX_BACKENDS}",
            endpoints.len()
        ))
    } else {
        None
    };
    let Some(over) = over else { return };
    for i in kernel {
        listeners[i].runs = placement(
            Place::Userspace,
            &format!(
                "the Plan needs {over}: every L4 listener is served by the userspace forwarder"
            ),
        );
    }
}

/// Every DNS name the config asks the daemon to resolve (ServiceEntries with DNS resolution).
pub fn dns_names(objects: &[Object]) -> Vec<String> {
    let mut names = Vec::new();
    for object in objects {
        let Spec::ServiceEntry(se) = &object.spec else {
            continue;
        };
        if !matches!(
            se.resolution
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref(),
            Some("DNS" | "DNS_ROUND_ROBIN")
        ) {
            continue;
        }
        if se.endpoints.is_empty() {
            names.extend(se.hosts.iter().filter(|h| !h.contains('*')).cloned());
        } else {
            names.extend(
                se.endpoints
                    .iter()
                    .filter(|e| e.address.parse::<IpAddr>().is_err())
                    .map(|e| e.address.clone()),
            );
        }
    }
    names.sort();
    names.dedup();
    names
}

/// How a server's traffic is handled, decided by protocol and TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Http,
    Https,
    Sni { auto: bool },
    L4,
}

struct PendingListener<'a> {
    listener: Listener,
    class: Class,
    /// The servers merged into this listener, with their Gateway.
    servers: Vec<(&'a Object, &'a GatewaySpec, usize)>,
    /// TLS matches bound so far (VirtualService, rule, match), and the SNI hosts they took.
    tls_matches: HashSet<(ObjectRef, usize, usize)>,
    sni_hosts: HashSet<String>,
}

struct Compiler<'a> {
    objects: &'a [Object],
    dns: &'a DnsAnswers,
    out: Compiled,
    listeners: Vec<PendingListener<'a>>,
}

fn placement(place: Place, why: &str) -> Placement {
    Placement {
        place,
        why: why.to_owned(),
    }
}

const L4_WHY: &str = "opaque TCP: the kernel forwards every packet (XDP/TC full NAT)";
const SNI_WHY: &str =
    "TLS passthrough: userspace reads the SNI once, then the kernel splices the stream";
const CATCH_ALL_WHY: &str = "TLS passthrough whose only route is a catch-all (sniHosts `*`): every connection goes to one destination, so the kernel forwards it without reading the SNI (XDP/TC full NAT)";
const HTTP_WHY: &str = "HTTP routing needs the userspace proxy";
const HTTPS_WHY: &str =
    "TLS termination and HTTP routing happen in the userspace proxy (no kernel TLS here)";

impl<'a> Compiler<'a> {
    fn warn(&mut self, object: &Object, code: &'static str, path: &str, message: String) {
        self.out
            .diagnostics
            .push(object.diagnostic(Severity::Warning, code, path, message));
    }

    /// A warning whose subject is left out of the Plan.
    fn leave_out(&mut self, object: &Object, code: &'static str, path: &str, reason: String) {
        let left = LeftOut {
            object: object.reference(),
            path: path.to_owned(),
            code,
            reason: reason.clone(),
        };
        // A rule seen once per server that binds it is left out once.
        if self.out.plan.left_out.contains(&left) {
            return;
        }
        self.out.plan.left_out.push(left);
        self.warn(object, code, path, reason);
    }

    fn virtual_services(
        &self,
    ) -> impl Iterator<Item = (&'a Object, &'a VirtualServiceSpec)> + use<'a> {
        self.objects.iter().filter_map(|o| match &o.spec {
            Spec::VirtualService(vs) => Some((o, vs)),
            _ => None,
        })
    }

    fn gateway(&self, namespace: &str, name: &str) -> Option<&'a Object> {
        self.objects.iter().find(|o| {
            matches!(o.spec, Spec::Gateway(_)) && o.namespace() == namespace && o.name() == name
        })
    }

    /// References to Gateways that do not exist, and rules meant only for sidecars.
    fn check_virtual_services(&mut self) {
        for (vs, spec) in self.virtual_services() {
            // Without hosts it is a delegate: its rules come in through a root's.
            let delegate = spec.hosts.is_empty() && spec.gateways.is_empty();
            if !delegate && (spec.gateways.is_empty() || spec.gateways.iter().all(|g| g == "mesh"))
            {
                let message =
                    "applies to sidecars only (gateways: mesh); Sluice does not act on it"
                        .to_owned();
                self.out.diagnostics.push(vs.diagnostic(
                    Severity::Info,
                    codes::MESH_ONLY,
                    "spec.gateways",
                    message,
                ));
                continue;
            }
            for (i, reference) in spec.gateways.iter().enumerate() {
                if reference == "mesh" {
                    continue;
                }
                let (ns, name) = gateway_ref(reference, vs.namespace());
                if self.gateway(ns, name).is_none() {
                    let reason = format!(
                        "Referenced Gateway not found: \"{ns}/{name}\"; its rules are left out until it exists"
                    );
                    self.leave_out(
                        vs,
                        codes::REFERENCE_NOT_FOUND,
                        &format!("spec.gateways[{i}]"),
                        reason,
                    );
                }
            }
            self.check_hosts_in_gateways(vs, spec);
        }
    }

    /// IST0132: VirtualService hosts that no server of a bound Gateway exposes.
    fn check_hosts_in_gateways(&mut self, vs: &Object, spec: &VirtualServiceSpec) {
        for reference in spec.gateways.iter().filter(|g| *g != "mesh") {
            let (ns, name) = gateway_ref(reference, vs.namespace());
            let Some(gateway) = self.gateway(ns, name) else {
                continue;
            };
            let Spec::Gateway(gw) = &gateway.spec else {
                continue;
            };
            let missing: Vec<&str> = spec
                .hosts
                .iter()
                .filter(|host| {
                    !gw.servers
                        .iter()
                        .any(|s| server_admits(gateway, s, vs.namespace(), host))
                })
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                let message = format!(
                    "one or more host {missing:?} defined in VirtualService {}/{} not found in Gateway {ns}/{name}",
                    vs.namespace(),
                    vs.name()
                );
                self.warn(vs, codes::HOST_NOT_IN_GATEWAY, "spec.hosts", message);
            }
        }
    }

    /// Groups Gateway servers into listeners by (bind, port); conflicts leave the later
    /// server out.
    fn collect_servers(&mut self) {
        for gateway in self.objects {
            let Spec::Gateway(spec) = &gateway.spec else {
                continue;
            };
            for (i, server) in spec.servers.iter().enumerate() {
                self.add_server(gateway, spec, i, server);
            }
        }
    }

    fn add_server(
        &mut self,
        gateway: &'a Object,
        spec: &'a GatewaySpec,
        i: usize,
        server: &'a Server,
    ) {
        let at = format!("spec.servers[{i}]");
        let Some(port) = &server.port else { return };
        let (Ok(number), Some(protocol)) = (
            u16::try_from(port.number),
            names::one_of(&port.protocol, names::SERVER_PROTOCOLS),
        ) else {
            return;
        };
        let mode = server.tls.as_ref().map(|t| {
            t.mode
                .as_deref()
                .unwrap_or("PASSTHROUGH")
                .to_ascii_uppercase()
        });
        let class = match (protocol, mode.as_deref()) {
            ("HTTPS", Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL")) => {
                Class::Https
            }
            ("HTTPS" | "TLS", Some("AUTO_PASSTHROUGH")) => Class::Sni { auto: true },
            ("HTTPS" | "TLS", _) => Class::Sni { auto: false },
            ("TCP" | "MONGO" | "REDIS" | "MYSQL", _) => Class::L4,
            _ => Class::Http,
        };
        let bind = server
            .bind
            .as_deref()
            .and_then(|b| b.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let origin = ServerOrigin {
            gateway: gateway.reference(),
            server: i,
            hosts: server.hosts.clone(),
        };
        if let Some(existing) = self
            .listeners
            .iter()
            .position(|l| l.listener.bind == bind && l.listener.port == number)
        {
            let (first, first_class) = {
                let l = &self.listeners[existing];
                (l.listener.servers[0].clone(), l.class)
            };
            if first_class != class {
                let reason = format!(
                    "port {number} is already served as {} by {} spec.servers[{}]; conflicting servers on one port are left out (the first declared wins)",
                    self.listeners[existing].listener.protocol, first.gateway, first.server
                );
                return self.leave_out(
                    gateway,
                    codes::CONFLICTING_PROTOCOLS,
                    &format!("{at}.port"),
                    reason,
                );
            }
            let clash =
                self.listeners[existing]
                    .servers
                    .iter()
                    .find_map(|(other_gw, other_spec, j)| {
                        let other = &other_spec.servers[*j];
                        let overlap = server.hosts.iter().find(|h| {
                            other.hosts.iter().any(|o| {
                                hosts_overlap(
                                    names::split_namespace(h).1,
                                    names::split_namespace(o).1,
                                )
                            })
                        });
                        overlap.map(|h| (other_gw.reference(), *j, h.clone()))
                    });
            if class == Class::L4 || clash.is_some() {
                let (other, j, host) =
                    clash.unwrap_or((first.gateway.clone(), first.server, "*".into()));
                let reason = format!(
                    "Conflict with gateways {other} spec.servers[{j}] (port {number}, hosts [{host}]); the first declared wins"
                );
                return self.leave_out(gateway, codes::CONFLICTING_GATEWAYS, &at, reason);
            }
            let pending = &mut self.listeners[existing];
            pending.listener.servers.push(origin);
            pending.servers.push((gateway, spec, i));
            if let (ListenerKind::Https { certificates, .. }, Some(tls)) =
                (&mut pending.listener.kind, termination(server))
            {
                certificates.push(tls);
            }
            return;
        }
        let (runs, kind) = match class {
            Class::L4 => (
                placement(Place::Kernel, L4_WHY),
                ListenerKind::L4Forward { route: None },
            ),
            Class::Sni { .. } => (
                placement(Place::KernelSplice, SNI_WHY),
                ListenerKind::SniRoute { routes: Vec::new() },
            ),
            Class::Http => (
                placement(Place::Userspace, HTTP_WHY),
                ListenerKind::Http {
                    virtual_hosts: Vec::new(),
                },
            ),
            Class::Https => (
                placement(Place::Userspace, HTTPS_WHY),
                ListenerKind::Https {
                    certificates: termination(server).into_iter().collect(),
                    virtual_hosts: Vec::new(),
                },
            ),
        };
        let listener = Listener {
            bind,
            port: number,
            protocol: protocol.to_owned(),
            servers: vec![origin],
            runs,
            kind,
        };
        self.listeners.push(PendingListener {
            listener,
            class,
            servers: vec![(gateway, spec, i)],
            tls_matches: HashSet::new(),
            sni_hosts: HashSet::new(),
        });
    }

    fn bind_routes(&mut self) {
        for index in 0..self.listeners.len() {
            let servers = self.listeners[index].servers.clone();
            let class = self.listeners[index].class;
            for (gateway, _, i) in servers {
                let Spec::Gateway(spec) = &gateway.spec else {
                    continue;
                };
                let server = &spec.servers[i];
                match class {
                    Class::Http | Class::Https => self.bind_http(index, gateway, server),
                    Class::Sni { auto } => {
                        self.bind_tls(index, gateway, server);
                        if auto {
                            self.bind_auto_passthrough(index, server);
                        }
                    }
                    Class::L4 => self.bind_tcp(index, gateway, i, server),
                }
            }
        }
    }

    /// VirtualServices bound to `gateway` whose hosts meet `server`'s: (vs, spec, hosts
    /// narrowed to what the server exposes).
    fn bound(
        &self,
        gateway: &Object,
        server: &Server,
    ) -> Vec<(&'a Object, &'a VirtualServiceSpec, Vec<String>)> {
        self.virtual_services()
            .filter(|(vs, spec)| {
                spec.gateways.iter().any(|g| {
                    let (ns, name) = gateway_ref(g, vs.namespace());
                    g != "mesh" && ns == gateway.namespace() && name == gateway.name()
                })
            })
            .filter_map(|(vs, spec)| {
                let hosts = narrowed_hosts(gateway, server, vs.namespace(), &spec.hosts);
                (!hosts.is_empty()).then_some((vs, spec, hosts))
            })
            .collect()
    }

    fn bind_http(&mut self, index: usize, gateway: &Object, server: &Server) {
        let port = self.listeners[index].listener.port;
        let https_redirect = server.tls.as_ref().is_some_and(|t| t.https_redirect);
        for (vs, spec, domains) in self.bound(gateway, server) {
            let mut routes = Vec::new();
            for (j, rule) in spec.http.iter().enumerate() {
                if !rule_binds(
                    rule_gateways(rule.matches.iter().map(|m| &m.gateways)),
                    gateway,
                    vs,
                ) {
                    continue;
                }
                let Some(matches) = matches_on_port(rule, port) else {
                    continue;
                };
                if let Some(delegate) = &rule.delegate {
                    let at = format!("spec.http[{j}].delegate");
                    routes.extend(self.delegated(vs, &at, delegate, &matches, port));
                    continue;
                }
                if let Some(route) = self.http_route(vs, &format!("spec.http[{j}]"), rule, matches)
                {
                    routes.push(route);
                }
            }
            let (ListenerKind::Http { virtual_hosts } | ListenerKind::Https { virtual_hosts, .. }) =
                &mut self.listeners[index].listener.kind
            else {
                continue;
            };
            virtual_hosts.push(VirtualHost {
                domains,
                https_redirect,
                routes,
            });
        }
    }

    /// The routes of a `delegate` VirtualService, each of its matches merged with the root
    /// rule's as Istio merges them (a pair that conflicts is dropped).
    fn delegated(
        &mut self,
        root: &Object,
        at: &str,
        delegate: &Delegate,
        root_matches: &[HttpMatchRequest],
        port: u16,
    ) -> Vec<HttpRoute> {
        let namespace = delegate.namespace.as_deref().unwrap_or(root.namespace());
        let found = self
            .virtual_services()
            .find(|(o, _)| o.namespace() == namespace && o.name() == delegate.name);
        let Some((vs, spec)) = found else {
            let reason = format!(
                "delegate VirtualService {namespace}/{} not found",
                delegate.name
            );
            self.leave_out(root, codes::REFERENCE_NOT_FOUND, at, reason);
            return Vec::new();
        };
        if !spec.hosts.is_empty() || !spec.gateways.is_empty() {
            let reason = format!(
                "VirtualService {namespace}/{} has hosts or gateways, so it cannot be a delegate",
                delegate.name
            );
            self.leave_out(root, codes::LEFT_OUT, at, reason);
            return Vec::new();
        }
        let mut routes = Vec::new();
        for (k, rule) in spec.http.iter().enumerate() {
            let path = format!("spec.http[{k}]");
            if rule.delegate.is_some() {
                let reason = "a delegate VirtualService cannot delegate again".to_owned();
                self.leave_out(vs, codes::LEFT_OUT, &path, reason);
                continue;
            }
            let Some(own) = matches_on_port(rule, port) else {
                continue;
            };
            let matches = merge_matches(root_matches, &own);
            if matches.is_empty() && !(root_matches.is_empty() && own.is_empty()) {
                let reason = format!(
                    "every match conflicts with the delegating rule {} {at}, so the rule is left out",
                    root.reference()
                );
                self.leave_out(vs, codes::LEFT_OUT, &path, reason);
                continue;
            }
            if let Some(route) = self.http_route(vs, &path, rule, matches) {
                routes.push(route);
            }
        }
        routes
    }

    fn http_route(
        &mut self,
        vs: &Object,
        at: &str,
        rule: &ModelHttpRoute,
        matches: Vec<HttpMatchRequest>,
    ) -> Option<HttpRoute> {
        let action = if let Some(redirect) = &rule.redirect {
            // Istio reads a zero port or code as unset.
            HttpAction::Redirect(HttpRedirect {
                port: redirect.port.filter(|p| *p != 0),
                redirect_code: redirect.redirect_code.filter(|c| *c != 0),
                ..redirect.clone()
            })
        } else if let Some(response) = &rule.direct_response {
            let body =
                response
                    .body
                    .as_ref()
                    .map_or_else(Vec::new, |b| match (&b.string, &b.bytes) {
                        (Some(text), _) => text.clone().into_bytes(),
                        (None, Some(encoded)) => BASE64.decode(encoded).unwrap_or_default(),
                        (None, None) => Vec::new(),
                    });
            HttpAction::DirectResponse {
                status: u16::try_from(response.status).unwrap_or(500),
                body,
            }
        } else {
            HttpAction::Route {
                backends: self.backends(vs, at, &rule.route)?,
            }
        };
        // Envoy's mirror policies belong to a route action: none on redirects.
        let mirrors = match action {
            HttpAction::Route { .. } => self.mirrors(vs, at, rule),
            _ => Vec::new(),
        };
        let millis = |d: &str| names::parse_duration(d).map(|d| d.as_millis() as u64);
        Some(HttpRoute {
            mirrors,
            origin: RouteOrigin {
                object: vs.reference(),
                path: at.to_owned(),
            },
            name: rule.name.clone(),
            runs: placement(Place::Userspace, HTTP_WHY),
            matches,
            action,
            rewrite: rule.rewrite.clone(),
            timeout_ms: rule.timeout.as_deref().and_then(millis),
            retries: rule.retries.as_ref().map(|r| Retries {
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                per_try_timeout_ms: r.per_try_timeout.as_deref().and_then(millis),
                retry_on: r.retry_on.clone(),
                backoff_ms: r.backoff.as_deref().and_then(millis),
                avoid_tried: r.retry_ignore_previous_hosts.unwrap_or(true),
            }),
            fault: rule.fault.as_ref().map(fault),
            cors: rule.cors_policy.as_ref().map(cors),
            request_headers: rule
                .headers
                .as_ref()
                .and_then(|h| h.request.as_ref())
                .map(as_sent),
            response_headers: rule
                .headers
                .as_ref()
                .and_then(|h| h.response.as_ref())
                .map(as_sent),
        })
    }

    /// TLS routes of the VirtualServices bound to `server`, as Istio's gateways build them:
    /// each match's `sniHosts` as written (a list holding `*` is a catch-all), `port` and
    /// `gateways` decide whether the match applies here; a match naming an SNI host that an
    /// earlier match on this listener took is skipped, the first declared wins.
    fn bind_tls(&mut self, index: usize, gateway: &Object, server: &Server) {
        let port = self.listeners[index].listener.port;
        for (vs, spec, _) in self.bound(gateway, server) {
            for (j, rule) in spec.tls.iter().enumerate() {
                let mut sni_hosts: Vec<String> = Vec::new();
                for (k, m) in rule.matches.iter().enumerate() {
                    let applies = m.port.is_none_or(|p| p == 0 || p == u32::from(port))
                        && (m.gateways.is_empty() || rule_binds(vec![&m.gateways], gateway, vs));
                    // A VirtualService bound to several servers of this port is seen once.
                    if !applies
                        || !self.listeners[index]
                            .tls_matches
                            .insert((vs.reference(), j, k))
                    {
                        continue;
                    }
                    let hosts: Vec<String> = if m.sni_hosts.iter().any(|h| h == "*") {
                        vec!["*".to_owned()]
                    } else {
                        m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
                    };
                    let taken: Vec<&String> = hosts
                        .iter()
                        .filter(|h| {
                            sni_hosts.contains(h) || self.listeners[index].sni_hosts.contains(*h)
                        })
                        .collect();
                    if !taken.is_empty() {
                        let reason = format!(
                            "skipping this match on port {port} of gateway {}/{}: duplicate SNI host names {taken:?} (an earlier route serves them; the first declared wins)",
                            gateway.namespace(),
                            gateway.name()
                        );
                        let at = format!("spec.tls[{j}].match[{k}]");
                        self.leave_out(vs, codes::LEFT_OUT, &at, reason);
                        continue;
                    }
                    sni_hosts.extend(hosts);
                }
                if sni_hosts.is_empty() {
                    continue;
                }
                self.listeners[index]
                    .sni_hosts
                    .extend(sni_hosts.iter().cloned());
                let at = format!("spec.tls[{j}]");
                let Some(backends) = self.backends(vs, &at, &rule.route) else {
                    continue;
                };
                let route = SniRoute {
                    sni_hosts,
                    origin: RouteOrigin {
                        object: vs.reference(),
                        path: at,
                    },
                    runs: placement(Place::KernelSplice, SNI_WHY),
                    backends,
                };
                if let ListenerKind::SniRoute { routes } = &mut self.listeners[index].listener.kind
                {
                    routes.push(route);
                }
            }
        }
    }

    /// AUTO_PASSTHROUGH: one route per `outbound_.<port>_.<subset>_.<host>` SNI name, for every
    /// ServiceEntry host the server exposes.
    fn bind_auto_passthrough(&mut self, index: usize, server: &Server) {
        for se_object in self.objects {
            let Spec::ServiceEntry(se) = &se_object.spec else {
                continue;
            };
            for host in se.hosts.iter().filter(|h| {
                server
                    .hosts
                    .iter()
                    .any(|s| host_matches(names::split_namespace(s).1, h))
            }) {
                let mut subsets: Vec<Option<String>> = vec![None];
                if let Some((_, dr)) = self.destination_rule(host, se_object.namespace()) {
                    subsets.extend(dr.subsets.iter().map(|s| Some(s.name.clone())));
                }
                for port in &se.ports {
                    for subset in &subsets {
                        let destination = RouteDestination {
                            destination: Some(Destination {
                                host: host.clone(),
                                subset: subset.clone(),
                                port: Some(PortSelector {
                                    number: port.number,
                                }),
                            }),
                            weight: None,
                        };
                        let at = "spec.hosts";
                        let Some(backends) =
                            self.backends(se_object, at, std::slice::from_ref(&destination))
                        else {
                            continue;
                        };
                        let sni = format!(
                            "outbound_.{}_.{}_.{host}",
                            port.number,
                            subset.as_deref().unwrap_or("")
                        );
                        let route = SniRoute {
                            sni_hosts: vec![sni],
                            origin: RouteOrigin {
                                object: se_object.reference(),
                                path: at.to_owned(),
                            },
                            runs: placement(Place::KernelSplice, SNI_WHY),
                            backends,
                        };
                        if let ListenerKind::SniRoute { routes } =
                            &mut self.listeners[index].listener.kind
                        {
                            routes.push(route);
                        }
                    }
                }
            }
        }
    }

    fn bind_tcp(&mut self, index: usize, gateway: &Object, i: usize, server: &Server) {
        let port = self.listeners[index].listener.port;
        for (vs, spec, _) in self.bound(gateway, server) {
            for (j, rule) in spec.tcp.iter().enumerate() {
                let applies = rule.matches.is_empty()
                    || rule.matches.iter().any(|m| {
                        m.port.is_none_or(|p| p == 0 || p == u32::from(port))
                            && (m.gateways.is_empty() || rule_binds(vec![&m.gateways], gateway, vs))
                    });
                if !applies {
                    continue;
                }
                let at = format!("spec.tcp[{j}]");
                if let ListenerKind::L4Forward {
                    route: Some(existing),
                } = &self.listeners[index].listener.kind
                {
                    let reason = format!(
                        "port {port} already forwards to the route of {} {}; one TCP route per port (the first declared wins)",
                        existing.origin.object, existing.origin.path
                    );
                    self.leave_out(vs, codes::CONFLICTING_GATEWAYS, &at, reason);
                    continue;
                }
                let Some(backends) = self.backends(vs, &at, &rule.route) else {
                    continue;
                };
                let route = L4Route {
                    origin: RouteOrigin {
                        object: vs.reference(),
                        path: at,
                    },
                    runs: placement(Place::Kernel, L4_WHY),
                    backends,
                };
                self.listeners[index].listener.kind =
                    ListenerKind::L4Forward { route: Some(route) };
            }
        }
        if matches!(
            self.listeners[index].listener.kind,
            ListenerKind::L4Forward { route: None }
        ) {
            let reason = format!(
                "no VirtualService tcp route binds to port {port}; connections to it will be refused"
            );
            self.warn(
                gateway,
                codes::LEFT_OUT,
                &format!("spec.servers[{i}]"),
                reason,
            );
        }
    }

    /// A rule's mirrors (`mirror` with `mirrorPercentage` or the deprecated `mirrorPercent`,
    /// 100 % when neither is given; or `mirrors`); one that cannot be served is left out
    /// with a warning, and the route serves without it.
    fn mirrors(&mut self, vs: &Object, at: &str, rule: &ModelHttpRoute) -> Vec<Mirror> {
        let mut wanted = Vec::new();
        if let Some(destination) = &rule.mirror {
            let percent = rule
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(rule.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            wanted.push((format!("{at}.mirror"), destination, percent));
        }
        for (i, mirror) in rule.mirrors.iter().enumerate() {
            if let Some(destination) = &mirror.destination {
                let percent = mirror.percentage.as_ref().map_or(100.0, |p| p.value);
                wanted.push((
                    format!("{at}.mirrors[{i}].destination"),
                    destination,
                    percent,
                ));
            }
        }
        let mut mirrors = Vec::new();
        for (path, destination, percent) in wanted {
            match self.backend(vs, destination, 100) {
                Ok(backend) => mirrors.push(Mirror {
                    backend,
                    percent: percent.clamp(0.0, 100.0),
                }),
                Err((code, reason)) => {
                    self.warn(
                        vs,
                        code,
                        &path,
                        format!("{reason}; the route serves without this mirror"),
                    );
                }
            }
        }
        mirrors
    }

    /// The backends of a route's destinations; `None` (with a warning, the rule left out)
    /// when any destination cannot be served.
    fn backends<W: Weighted>(
        &mut self,
        object: &Object,
        at: &str,
        routes: &[W],
    ) -> Option<Vec<Backend>> {
        let single = routes.len() == 1;
        let mut backends = Vec::new();
        for (k, route) in routes.iter().enumerate() {
            let (destination, weight) = (route.destination()?, route.weight());
            let weight = match weight {
                Some(w) => u32::try_from(w).unwrap_or(0),
                None if single => 100,
                None => 0,
            };
            let path = format!("{at}.route[{k}].destination");
            match self.backend(object, destination, weight) {
                Ok(backend) => backends.push(Backend {
                    headers: route.headers().map(|h| Headers {
                        request: h.request.as_ref().map(as_sent),
                        response: h.response.as_ref().map(as_sent),
                    }),
                    ..backend
                }),
                Err((code, reason)) => {
                    self.leave_out(object, code, &path, reason);
                    return None;
                }
            }
        }
        Some(backends)
    }

    fn backend(
        &mut self,
        object: &Object,
        destination: &Destination,
        weight: u32,
    ) -> Result<Backend, (&'static str, String)> {
        let port = destination
            .port
            .as_ref()
            .and_then(|p| u16::try_from(p.number).ok());
        if let Ok(ip) = destination.host.parse::<IpAddr>() {
            let port = port.ok_or((
                codes::LEFT_OUT,
                format!(
                    "destination {} is an IP address and needs port.number",
                    destination.host
                ),
            ))?;
            return Ok(Backend {
                host: destination.host.clone(),
                subset: destination.subset.clone(),
                port,
                weight,
                load_balancer: DEFAULT_LOAD_BALANCER.into(),
                endpoints: vec![Endpoint {
                    address: SocketAddr::new(ip, port),
                    weight: 1,
                }],
                ..Backend::default()
            });
        }
        let (se_object, se, host) = self
            .service(&destination.host, object.namespace())
            .ok_or_else(|| (codes::REFERENCE_NOT_FOUND, format!("Referenced host not found: {:?} (no ServiceEntry declares it, and it is not an IP address)", destination.host)))?;
        let service_port = match port {
            Some(number) => se
                .ports
                .iter()
                .find(|p| p.number == u32::from(number))
                .ok_or_else(|| {
                    (
                        codes::REFERENCE_NOT_FOUND,
                        format!(
                            "host {host:?} has no port {number} (ServiceEntry {})",
                            se_object.reference()
                        ),
                    )
                })?,
            None if se.ports.len() == 1 => &se.ports[0],
            None => {
                let ports: Vec<u32> = se.ports.iter().map(|p| p.number).collect();
                return Err((
                    "IST0112",
                    format!(
                        "host {host:?} exposes ports {ports:?}; the destination must name port.number"
                    ),
                ));
            }
        };
        let resolution = se
            .resolution
            .as_deref()
            .unwrap_or("NONE")
            .to_ascii_uppercase();
        if resolution == "NONE" {
            return Err((
                codes::LEFT_OUT,
                format!(
                    "host {host:?} has resolution NONE: a gateway needs endpoints to route to (use STATIC or DNS)"
                ),
            ));
        }
        // The subset's traffic policy wins over the rule's, field by field.
        let (policies, labels) = match &destination.subset {
            None => (
                [
                    None,
                    self.destination_rule(&host, object.namespace())
                        .and_then(|(_, dr)| dr.traffic_policy.as_ref()),
                ],
                None,
            ),
            Some(subset) => {
                let (_, dr) = self
                    .destination_rule(&host, object.namespace())
                    .ok_or_else(|| (codes::REFERENCE_NOT_FOUND, format!("Referenced subset not found: {subset:?} (no DestinationRule for host {host:?})")))?;
                let found = dr.subsets.iter().find(|s| &s.name == subset).ok_or_else(|| {
                    (codes::REFERENCE_NOT_FOUND, format!("Referenced subset not found: {subset:?} in the DestinationRule for host {host:?}"))
                })?;
                (
                    [found.traffic_policy.as_ref(), dr.traffic_policy.as_ref()],
                    Some(&found.labels),
                )
            }
        };
        // Each policy's settings for the service port first (`portLevelSettings`), then its
        // own: the subset's, then the rule's, field by field as Istio merges them.
        let service_number = service_port.number;
        let at_port: Vec<Option<TrafficPolicy>> = policies
            .iter()
            .flat_map(|p| {
                let port = p.and_then(|p| {
                    p.port_level_settings
                        .iter()
                        .find(|s| s.port.as_ref().is_some_and(|n| n.number == service_number))
                        .map(|s| s.as_policy())
                });
                [port, p.cloned()]
            })
            .collect();
        // Each field whole from the first policy that sets it, as Istio's MergeTrafficPolicy
        // replaces `loadBalancer`, `connectionPool`, `outlierDetection` and `tls` whole.
        let first = |field: fn(&TrafficPolicy) -> bool| at_port.iter().flatten().find(|p| field(p));
        let merged = TrafficPolicy {
            load_balancer: first(|p| p.load_balancer.is_some())
                .and_then(|p| p.load_balancer.clone()),
            connection_pool: first(|p| p.connection_pool.is_some())
                .and_then(|p| p.connection_pool.clone()),
            outlier_detection: first(|p| p.outlier_detection.is_some())
                .and_then(|p| p.outlier_detection.clone()),
            tls: first(|p| p.tls.is_some()).and_then(|p| p.tls.clone()),
            retry_budget: first(|p| p.retry_budget.is_some()).and_then(|p| p.retry_budget.clone()),
            port_level_settings: Vec::new(),
        };
        let policy = Some(&merged);
        // ISTIO_MUTUAL checks the names the ServiceEntry gives when the rule gives none, as
        // Istio takes the service's identities for it.
        let tls = upstream_tls(policy, &host).flatten().map(|mut tls| {
            if tls.mesh && tls.subject_alt_names.is_empty() {
                tls.subject_alt_names = se.subject_alt_names.clone();
            }
            tls
        });
        let load_balancer = lb_of(policy);
        let consistent_hash = affinity(policy);
        let upgrade = h2_upgrade_policy(policy);
        let outlier = outlier_policy(policy);
        let mut pool = pool_limits(policy);
        if let Some(budget) = merged.retry_budget.as_ref() {
            pool.get_or_insert_with(PoolLimits::unlimited).retry_budget = Some(RetryBudgetLimit {
                basis_points: (budget.percent.unwrap_or(20.0).clamp(0.0, 100.0) * 100.0) as u32,
                min_retry_concurrency: budget.min_retry_concurrency.unwrap_or(3),
            });
        }
        let protocol = service_port.protocol.to_ascii_uppercase();
        let http2 = matches!(protocol.as_str(), "HTTP2" | "GRPC" | "GRPC-WEB")
            || (protocol == "HTTP" && upgrade == Some("UPGRADE"));
        let mut endpoints = Vec::new();
        let target = service_port
            .target_port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(u16::try_from(service_port.number).unwrap_or(0));
        if se.endpoints.is_empty() {
            endpoints.extend(self.resolve(object, &host).into_iter().map(|ip| Endpoint {
                address: SocketAddr::new(ip, target),
                weight: 1,
            }));
        }
        for endpoint in &se.endpoints {
            if labels
                .is_some_and(|want| want.iter().any(|(k, v)| endpoint.labels.get(k) != Some(v)))
            {
                continue;
            }
            let port = endpoint
                .ports
                .get(&service_port.name)
                .and_then(|p| u16::try_from(*p).ok())
                .unwrap_or(target);
            let weight = endpoint.weight.unwrap_or(1);
            let ips = match endpoint.address.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => self.resolve(object, &endpoint.address),
            };
            endpoints.extend(ips.into_iter().map(|ip| Endpoint {
                address: SocketAddr::new(ip, port),
                weight,
            }));
        }
        Ok(Backend {
            host,
            subset: destination.subset.clone(),
            port: u16::try_from(service_port.number).unwrap_or(0),
            weight,
            load_balancer: load_balancer.unwrap_or(DEFAULT_LOAD_BALANCER).to_owned(),
            consistent_hash,
            http2,
            headers: None,
            outlier,
            pool,
            tls,
            endpoints,
        })
    }

    fn resolve(&mut self, object: &Object, name: &str) -> Vec<IpAddr> {
        match self.dns.addresses.get(name) {
            Some(ips) if !ips.is_empty() => ips.clone(),
            _ => {
                if self.dns.looked_up {
                    let message = format!(
                        "DNS name {name:?} did not resolve; its backend has no endpoints until it does"
                    );
                    self.warn(object, codes::UNRESOLVED, "spec", message);
                }
                Vec::new()
            }
        }
    }

    /// The ServiceEntry declaring `host` (short names are taken relative to `namespace`, as
    /// Kubernetes service names are), and the host as declared.
    fn service(
        &self,
        host: &str,
        namespace: &str,
    ) -> Option<(&'a Object, &'a ServiceEntrySpec, String)> {
        let candidates = expand_host(host, namespace);
        self.objects.iter().find_map(|o| match &o.spec {
            Spec::ServiceEntry(se) => se
                .hosts
                .iter()
                .find(|h| !h.contains('*') && candidates.iter().any(|c| c.eq_ignore_ascii_case(h)))
                .map(|h| (o, se, h.clone())),
            _ => None,
        })
    }

    fn destination_rule(
        &self,
        host: &str,
        namespace: &str,
    ) -> Option<(&'a Object, &'a DestinationRuleSpec)> {
        self.objects.iter().find_map(|o| match &o.spec {
            Spec::DestinationRule(dr) => {
                let dr_hosts = expand_host(&dr.host, o.namespace());
                let hosts = expand_host(host, namespace);
                dr_hosts
                    .iter()
                    .any(|d| hosts.iter().any(|h| host_matches(d, h)))
                    .then_some((o, dr))
            }
            _ => None,
        })
    }
}

/// A TLS passthrough listener whose routes send every name to one destination (only `*`
/// catch-alls: the first one wins) needs no SNI: the kernel forwards it as L4.
fn catch_all_to_kernel(listener: Listener) -> Listener {
    let ListenerKind::SniRoute { routes } = &listener.kind else {
        return listener;
    };
    let all_catch_all =
        !routes.is_empty() && routes.iter().all(|r| r.sni_hosts.iter().all(|h| h == "*"));
    if !all_catch_all {
        return listener;
    }
    let first = routes[0].clone();
    Listener {
        runs: placement(Place::Kernel, CATCH_ALL_WHY),
        kind: ListenerKind::L4Forward {
            route: Some(L4Route {
                origin: first.origin,
                runs: placement(Place::Kernel, CATCH_ALL_WHY),
                backends: first.backends,
            }),
        },
        ..listener
    }
}

fn lb_of(policy: Option<&TrafficPolicy>) -> Option<&'static str> {
    let simple = policy?.load_balancer.as_ref()?.simple.as_deref()?;
    names::one_of(simple, names::LOAD_BALANCERS).filter(|lb| *lb != "UNSPECIFIED")
}

fn h2_upgrade_policy(policy: Option<&TrafficPolicy>) -> Option<&'static str> {
    let http = policy?.connection_pool.as_ref()?.http.as_ref()?;
    let upgrade = http.h2_upgrade_policy.as_deref()?;
    names::one_of(upgrade, names::H2_UPGRADE_POLICIES).filter(|p| *p != "DEFAULT")
}

/// `outlierDetection` with Envoy's defaults where Istio leaves a field to them: 5
/// consecutive 5xx, gateway errors not counted, 5 local failures when split, a 10 s
/// interval, 30 s base ejection, 10 % at most ejected; `minHealthPercent` is Envoy's panic
/// threshold, 0 (no panic) unless set. The deprecated `consecutiveErrors` is ignored, as
/// Istio does now.
fn outlier_policy(policy: Option<&TrafficPolicy>) -> Option<OutlierPolicy> {
    let outlier = policy?.outlier_detection.as_ref()?;
    let ms = |text: &Option<String>, default: u64| {
        text.as_deref()
            .and_then(names::parse_duration)
            .map_or(default, |d| d.as_millis() as u64)
    };
    let percent = |value: Option<i32>| value.and_then(|v| u32::try_from(v).ok());
    Some(OutlierPolicy {
        consecutive_5xx: outlier.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway: outlier.consecutive_gateway_errors.unwrap_or(0),
        split_local: outlier.split_external_local_origin_errors,
        consecutive_local: outlier.consecutive_local_origin_failures.unwrap_or(5),
        interval_ms: ms(&outlier.interval, 10_000),
        base_ejection_ms: ms(&outlier.base_ejection_time, 30_000),
        max_ejection_percent: percent(outlier.max_ejection_percent)
            .filter(|p| *p > 0)
            .unwrap_or(10),
        min_health_percent: percent(outlier.min_health_percent).unwrap_or(0),
    })
}

/// `tls` as the proxy originates it: `Some(None)` for DISABLE (which overrides a policy
/// further down), `Some(Some(_))` for SIMPLE, MUTUAL and ISTIO_MUTUAL. The server name is `sni`, else the
/// destination's host (Envoy's auto SNI would take the request's authority, the same name
/// for the egress configs this serves).
fn upstream_tls(policy: Option<&TrafficPolicy>, host: &str) -> Option<Option<UpstreamTls>> {
    let tls = policy?.tls.as_ref()?;
    let mode = tls
        .mode
        .as_deref()
        .unwrap_or("DISABLE")
        .to_ascii_uppercase();
    if !matches!(mode.as_str(), "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL") {
        return Some(None);
    }
    let given = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    Some(Some(UpstreamTls {
        mutual: mode != "SIMPLE",
        mesh: mode == "ISTIO_MUTUAL",
        client_certificate: given(&tls.client_certificate),
        private_key: given(&tls.private_key),
        ca_certificates: given(&tls.ca_certificates),
        credential_name: given(&tls.credential_name),
        subject_alt_names: tls.subject_alt_names.clone(),
        sni: given(&tls.sni).unwrap_or_else(|| host.to_owned()),
        insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
    }))
}

/// `connectionPool` as limits, when it sets any (`h2UpgradePolicy` alone sets none); 0 and
/// unset mean no limit, as Istio leaves Envoy's thresholds at their maximum.
fn pool_limits(policy: Option<&TrafficPolicy>) -> Option<PoolLimits> {
    let pool = policy?.connection_pool.as_ref()?;
    let (tcp, http) = (pool.tcp.as_ref(), pool.http.as_ref());
    let limit = |value: Option<i32>| {
        value
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(u32::MAX)
    };
    let ms = |text: Option<&String>| {
        text.and_then(|t| names::parse_duration(t))
            .map(|d| d.as_millis() as u64)
    };
    let seconds = |text: Option<&String>| {
        text.and_then(|t| names::parse_duration(t))
            .map(|d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32)
    };
    let limits = PoolLimits {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        max_pending: limit(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_retries: limit(http.and_then(|h| h.max_retries)),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
        connect_timeout_ms: ms(tcp.and_then(|t| t.connect_timeout.as_ref())),
        idle_timeout_ms: ms(http.and_then(|h| h.idle_timeout.as_ref())),
        retry_budget: None,
        keepalive: tcp.and_then(|t| t.tcp_keepalive.as_ref()).map(|k| {
            (
                seconds(k.time.as_ref()),
                seconds(k.interval.as_ref()),
                k.probes,
            )
        }),
    };
    (limits != PoolLimits::unlimited()).then_some(limits)
}

/// A `consistentHash` load balancer as the proxy applies it: the hash key and the table
/// (ring by default, with Envoy's default of 1024 points; Maglev's default 65537 slots).
fn affinity(policy: Option<&TrafficPolicy>) -> Option<ConsistentHash> {
    let hash = policy?.load_balancer.as_ref()?.consistent_hash.as_ref()?;
    let key = if let Some(name) = &hash.http_header_name {
        HashKey::Header(name.to_ascii_lowercase())
    } else if let Some(cookie) = &hash.http_cookie {
        HashKey::Cookie {
            name: cookie.name.clone(),
            path: cookie.path.clone(),
            ttl_s: cookie
                .ttl
                .as_deref()
                .and_then(names::parse_duration)
                .map(|d| d.as_secs())
                .filter(|s| *s > 0),
        }
    } else if hash.use_source_ip == Some(true) {
        HashKey::SourceIp
    } else {
        HashKey::QueryParameter(hash.http_query_parameter_name.clone()?)
    };
    let table = match (&hash.maglev, &hash.ring_hash) {
        (Some(maglev), _) => HashTable::Maglev {
            size: maglev.table_size.filter(|s| *s > 0).unwrap_or(65537),
        },
        (None, ring) => HashTable::Ring {
            minimum_size: ring
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(hash.minimum_ring_size)
                .filter(|s| *s > 0)
                .unwrap_or(1024),
        },
    };
    Some(ConsistentHash { key, table })
}

/// `host` and, for Kubernetes short names, its fully qualified forms.
fn expand_host(host: &str, namespace: &str) -> Vec<String> {
    let mut hosts = vec![host.to_owned()];
    match host.matches('.').count() {
        0 => hosts.push(format!("{host}.{namespace}.svc.cluster.local")),
        1 => hosts.push(format!("{host}.svc.cluster.local")),
        _ => {}
    }
    hosts
}

/// `name` or `namespace/name`, the namespace defaulting to the referring object's.
fn gateway_ref<'r>(reference: &'r str, namespace: &'r str) -> (&'r str, &'r str) {
    reference.split_once('/').unwrap_or((namespace, reference))
}

/// The gateways a rule's matches name (empty when they name none).
fn rule_gateways<'r>(matches: impl Iterator<Item = &'r Vec<String>>) -> Vec<&'r Vec<String>> {
    matches.filter(|g| !g.is_empty()).collect()
}

/// Whether a rule whose matches name `gateways` (none: the VirtualService's own) applies
/// on `gateway`.
/// Header operations as the proxy applies them: values with Envoy's `%%` escape undone
/// (validation refused every other `%`), and `:authority` written as the `host` header an
/// HTTP/1.1 upstream sees.
fn as_sent(ops: &HeaderOperations) -> HeaderOperations {
    let name = |n: &String| {
        if n == ":authority" {
            "host".to_owned()
        } else {
            n.to_ascii_lowercase()
        }
    };
    let value = |v: &String| v.replace("%%", "%");
    HeaderOperations {
        set: ops.set.iter().map(|(n, v)| (name(n), value(v))).collect(),
        add: ops.add.iter().map(|(n, v)| (name(n), value(v))).collect(),
        remove: ops.remove.iter().map(name).collect(),
    }
}

/// The matches of `rule` that apply on `port` (a match's port 0 or none: any); `None` when
/// every match names another port.
fn matches_on_port(rule: &ModelHttpRoute, port: u16) -> Option<Vec<HttpMatchRequest>> {
    let matches: Vec<HttpMatchRequest> = rule
        .matches
        .iter()
        .filter(|m| m.port.is_none_or(|p| p == 0 || p == u32::from(port)))
        .cloned()
        .collect();
    (rule.matches.is_empty() || !matches.is_empty()).then_some(matches)
}

/// A delegate rule's matches under its root rule's: every pair merged, conflicts dropped.
/// Either side without matches leaves the other's as they are.
fn merge_matches(
    root: &[HttpMatchRequest],
    delegate: &[HttpMatchRequest],
) -> Vec<HttpMatchRequest> {
    match (root.is_empty(), delegate.is_empty()) {
        (true, _) => delegate.to_vec(),
        (false, true) => root.to_vec(),
        (false, false) => root
            .iter()
            .flat_map(|r| delegate.iter().filter_map(move |d| merge_match(r, d)))
            .collect(),
    }
}

/// Istio's merge of a root match with a delegate's (`mergeHTTPMatchRequest`): what the
/// delegate leaves unset it inherits from the root; a URI both set must lie within the
/// root's (a root regex takes no delegate URI), and every other field both set must agree.
/// `None` when they conflict.
fn merge_match(root: &HttpMatchRequest, delegate: &HttpMatchRequest) -> Option<HttpMatchRequest> {
    let mut out = delegate.clone();
    if let (Some(r), Some(d)) = (&root.uri, &delegate.uri) {
        let within = match (&r.exact, &r.prefix, &d.exact, &d.prefix) {
            (Some(re), _, Some(de), _) => re == de,
            (_, Some(rp), Some(de), _) => de.starts_with(rp.as_str()),
            (_, Some(rp), _, Some(dp)) => dp.starts_with(rp.as_str()),
            _ => false,
        };
        if !within {
            return None;
        }
    }
    fn inherit<T: Clone + PartialEq>(root: &Option<T>, out: &mut Option<T>) -> bool {
        match (root, &*out) {
            (Some(r), Some(d)) => r == d,
            (Some(r), None) => {
                *out = Some(r.clone());
                true
            }
            _ => true,
        }
    }
    if out.uri.is_none() {
        out.uri = root.uri.clone();
    }
    let agree = inherit(&root.scheme, &mut out.scheme)
        && inherit(&root.method, &mut out.method)
        && inherit(&root.authority, &mut out.authority)
        && inherit(&root.port, &mut out.port);
    if !agree {
        return None;
    }
    for (root_map, out_map) in [
        (&root.headers, &mut out.headers),
        (&root.query_params, &mut out.query_params),
        (&root.without_headers, &mut out.without_headers),
    ] {
        for (key, value) in root_map {
            match out_map.get(key) {
                Some(v) if v != value => return None,
                Some(_) => {}
                None => {
                    out_map.insert(key.clone(), value.clone());
                }
            }
        }
    }
    if root.ignore_uri_case {
        out.ignore_uri_case = true;
    }
    out.name = match (&root.name, &delegate.name) {
        (Some(r), Some(d)) => Some(format!("{r}-{d}")),
        (r, d) => d.clone().or_else(|| r.clone()),
    };
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    Some(out)
}

fn rule_binds(gateways: Vec<&Vec<String>>, gateway: &Object, vs: &Object) -> bool {
    gateways.is_empty()
        || gateways.iter().flat_map(|g| g.iter()).any(|g| {
            let (ns, name) = gateway_ref(g, vs.namespace());
            ns == gateway.namespace() && name == gateway.name()
        })
}

/// Whether `server` of `gateway` exposes `host` to VirtualServices in `namespace`.
fn server_admits(gateway: &Object, server: &Server, namespace: &str, host: &str) -> bool {
    server.hosts.iter().any(|h| {
        let (ns, name) = names::split_namespace(h);
        namespace_admits(ns, gateway.namespace(), namespace) && hosts_overlap(name, host)
    })
}

fn namespace_admits(server_ns: Option<&str>, gateway_ns: &str, vs_ns: &str) -> bool {
    match server_ns {
        None | Some("*") => true,
        Some(".") => gateway_ns == vs_ns,
        Some(ns) => ns == vs_ns,
    }
}

/// The narrower of `host` and the server host it overlaps, if any.
fn narrow(host: &str, gateway: &Object, server: &Server, namespace: &str) -> Option<String> {
    server.hosts.iter().find_map(|h| {
        let (ns, name) = names::split_namespace(h);
        if !namespace_admits(ns, gateway.namespace(), namespace) {
            None
        } else if host_matches(name, host) {
            Some(host.to_owned())
        } else if host_matches(host, name) {
            Some(name.to_owned())
        } else {
            None
        }
    })
}

/// A VirtualService's hosts narrowed to what `server` exposes, deduplicated, in order.
fn narrowed_hosts(
    gateway: &Object,
    server: &Server,
    namespace: &str,
    hosts: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for host in hosts {
        if let Some(h) = narrow(host, gateway, server, namespace)
            && !out.contains(&h)
        {
            out.push(h);
        }
    }
    out
}

fn termination(server: &Server) -> Option<TlsTermination> {
    let tls = server.tls.as_ref()?;
    let credential = |name: &String| CertificateSource::Credential { name: name.clone() };
    let files = |cert: &Option<String>, key: &Option<String>| match (cert, key) {
        (Some(cert), Some(key)) => Some(CertificateSource::Files {
            certificate: cert.clone(),
            private_key: key.clone(),
        }),
        _ => None,
    };
    let credential_source = tls.credential_name.is_some() || !tls.credential_names.is_empty();
    let istio_mutual = tls
        .mode
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("ISTIO_MUTUAL"));
    let certificates: Vec<CertificateSource> = if istio_mutual {
        vec![CertificateSource::MeshIdentity]
    } else if let Some(name) = &tls.credential_name {
        vec![credential(name)]
    } else if !tls.credential_names.is_empty() {
        tls.credential_names.iter().map(credential).collect()
    } else if !tls.tls_certificates.is_empty() {
        tls.tls_certificates
            .iter()
            .map(|c| files(&c.server_certificate, &c.private_key))
            .collect::<Option<_>>()?
    } else {
        vec![files(&tls.server_certificate, &tls.private_key)?]
    };
    // The client CA: the server's, else the first certificate pair's.
    let ca_certificates = tls.ca_certificates.clone().or_else(|| {
        tls.tls_certificates
            .iter()
            .find_map(|c| c.ca_certificates.clone())
    });
    let version = |v: Option<&str>, default: &str| match v.map(str::to_ascii_uppercase).as_deref() {
        Some("TLSV1_3") => "1.3".to_owned(),
        Some("TLSV1_2") => "1.2".to_owned(),
        _ => default.to_owned(),
    };
    Some(TlsTermination {
        hosts: server.hosts.clone(),
        mode: tls.mode.clone().unwrap_or_default().to_ascii_uppercase(),
        certificates,
        ca_certificates,
        // With a credential, the CRL is the credential's own `ca.crl`.
        ca_crl: tls.ca_crl.clone().filter(|_| !credential_source),
        subject_alt_names: tls.subject_alt_names.clone(),
        verify_spki: tls.verify_certificate_spki.clone(),
        verify_hash: tls.verify_certificate_hash.clone(),
        min_version: version(tls.min_protocol_version.as_deref(), "1.2"),
        max_version: version(tls.max_protocol_version.as_deref(), "1.3"),
        cipher_suites: tls.cipher_suites.clone(),
    })
}

/// A validated CORS policy as the proxy applies it.
fn cors(cors: &crate::config::model::CorsPolicy) -> plan::Cors {
    let exact = cors
        .allow_origin
        .iter()
        .map(|origin| crate::config::model::StringMatch {
            exact: Some(origin.clone()),
            ..Default::default()
        });
    plan::Cors {
        allow_origins: cors.allow_origins.iter().cloned().chain(exact).collect(),
        allow_methods: cors.allow_methods.join(","),
        allow_headers: cors.allow_headers.join(","),
        expose_headers: cors.expose_headers.join(","),
        max_age_seconds: cors
            .max_age
            .as_deref()
            .and_then(names::parse_duration)
            .map(|d| d.as_secs()),
        allow_credentials: cors.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights: cors.unmatched_preflights.as_deref() != Some("IGNORE"),
    }
}

/// A validated fault injection as the proxy applies it. A percentage left out means no
/// request (Envoy's default, as Istio passes it on); an abort without an error type aborts
/// nothing.
fn fault(fault: &crate::config::model::HttpFaultInjection) -> plan::Fault {
    let percent = |p: Option<&crate::config::model::Percent>| p.map_or(0.0, |p| p.value);
    plan::Fault {
        delay: fault.delay.as_ref().and_then(|d| {
            Some(plan::FaultDelay {
                fixed_ms: d
                    .fixed_delay
                    .as_deref()
                    .and_then(names::parse_duration)?
                    .as_millis() as u64,
                percent: match (&d.percentage, d.percent) {
                    (Some(p), _) => p.value,
                    (None, Some(whole)) => whole as f64,
                    (None, None) => 0.0,
                },
            })
        }),
        abort: fault.abort.as_ref().and_then(|a| {
            let with = match (a.http_status, a.grpc_status.as_deref()) {
                (Some(status), _) => plan::AbortWith::HttpStatus(u16::try_from(status).ok()?),
                (None, Some(name)) => plan::AbortWith::GrpcStatus(
                    names::GRPC_STATUS.iter().position(|n| *n == name)? as u8,
                ),
                (None, None) => return None,
            };
            Some(plan::FaultAbort {
                with,
                percent: percent(a.percentage.as_ref()),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> HttpMatchRequest {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    #[test]
    fn delegate_matches_merge_as_istio_merges_them() {
        // (root, delegate, merged or None for a conflict)
        let cases = [
            (
                "{uri: {prefix: /reviews}}",
                "{uri: {prefix: /reviews/v2}}",
                Some("{uri: {prefix: /reviews/v2}}"),
            ),
            (
                "{uri: {prefix: /reviews}, headers: {x-a: {exact: '1'}}}",
                "{method: {exact: GET}}",
                Some(
                    "{uri: {prefix: /reviews}, method: {exact: GET}, headers: {x-a: {exact: '1'}}}",
                ),
            ),
            (
                "{uri: {prefix: /reviews}}",
                "{uri: {prefix: /ratings}}",
                None,
            ),
            (
                "{uri: {prefix: /reviews}}",
                "{uri: {exact: /reviews/1}}",
                Some("{uri: {exact: /reviews/1}}"),
            ),
            ("{uri: {exact: /a}}", "{uri: {exact: /b}}", None),
            ("{uri: {regex: '/a.*'}}", "{uri: {prefix: /a}}", None),
            (
                "{headers: {x-a: {exact: '1'}}}",
                "{headers: {x-a: {exact: '2'}}}",
                None,
            ),
            ("{port: 80}", "{port: 8080}", None),
            (
                "{name: root, queryParams: {q: {exact: a}}}",
                "{name: leaf}",
                Some("{name: root-leaf, queryParams: {q: {exact: a}}}"),
            ),
        ];
        for (root, delegate, want) in cases {
            let got = merge_match(&m(root), &m(delegate));
            assert_eq!(got, want.map(m), "{root} + {delegate}");
        }
        // Either side without matches keeps the other's.
        let sent = as_sent(
            &serde_yaml::from_str::<HeaderOperations>(
                "{set: {':authority': a.test, X-Pct: '100%%'}, remove: [X-Old]}",
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(sent.set.get("host").map(String::as_str), Some("a.test"));
        assert_eq!(sent.set.get("x-pct").map(String::as_str), Some("100%"));
        assert_eq!(sent.remove, ["x-old"]);
        assert_eq!(merge_matches(&[], &[m("{uri: {prefix: /a}}")]).len(), 1);
        assert_eq!(merge_matches(&[m("{uri: {prefix: /a}}")], &[]).len(), 1);
        assert_eq!(
            merge_matches(
                &[m("{uri: {prefix: /a}}"), m("{uri: {prefix: /b}}")],
                &[m("{uri: {prefix: /a/1}}"), m("{uri: {prefix: /b/1}}")]
            ),
            [m("{uri: {prefix: /a/1}}"), m("{uri: {prefix: /b/1}}")]
        );
    }
}
