//! The one-shot commands: `sluice validate` and `sluice plan`.
use std::{fmt::Write as _, process::ExitCode};

use super::args::{OutputFormat, PlanArgs, ValidateArgs};
use crate::{
    compile::{
        self, DnsAnswers,
        plan::{Backend, HttpAction, ListenerKind, Plan},
    },
    config::{self, Diagnostic, Severity},
};

/// `sluice validate`: prints every diagnostic; fails on errors (and on warnings with
/// `--strict`). DNS names are not resolved.
pub fn validate(args: &ValidateArgs) -> ExitCode {
    let checked =
        config::visibility::for_gateway(config::check(&args.config), &args.gateway_namespace);
    let mut diagnostics = checked.diagnostics.clone();
    if checked.count(Severity::Error) == 0 {
        diagnostics.extend(compile::compile(&checked.objects, &DnsAnswers::default()).diagnostics);
    }
    let count = |s| diagnostics.iter().filter(|d| d.severity == s).count();
    let (errors, warnings) = (count(Severity::Error), count(Severity::Warning));
    let failed = errors > 0 || (args.strict && warnings > 0);
    match args.output {
        OutputFormat::Json => {
            let report = serde_json::json!({
                "valid": !failed,
                "objects": checked.objects.len(),
                "files": checked.sources.len(),
                "errors": errors,
                "warnings": warnings,
                "diagnostics": diagnostics,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        }
        OutputFormat::Text => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            let verdict = if failed { "invalid" } else { "valid" };
            println!(
                "{} objects in {} files: {errors} errors, {warnings} warnings: {verdict}",
                checked.objects.len(),
                checked.sources.len()
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `sluice plan`: compiles the config (without resolving DNS) and prints the Plan.
pub fn plan(args: &PlanArgs) -> ExitCode {
    let checked =
        config::visibility::for_gateway(config::check(&args.config), &args.gateway_namespace);
    if checked.count(Severity::Error) > 0 {
        print_diagnostics(&checked.diagnostics);
        eprintln!("the config has errors: no Plan");
        return ExitCode::FAILURE;
    }
    let compiled = compile::compile(&checked.objects, &DnsAnswers::default());
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&compiled.plan).unwrap_or_default()
        ),
        OutputFormat::Text => {
            print_diagnostics(&checked.diagnostics);
            print_diagnostics(&compiled.diagnostics);
            print!("{}", plan_text(&compiled.plan));
        }
    }
    ExitCode::SUCCESS
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        eprintln!("{diagnostic}");
    }
}

/// The Plan as an operator reads it.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    for listener in &plan.listeners {
        let _ = writeln!(
            out,
            "listener {} {}  [{}: {}]",
            listener.address(),
            listener.protocol,
            serde_json::to_value(listener.runs.place)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            listener.runs.why
        );
        for server in &listener.servers {
            let _ = writeln!(
                out,
                "  server {} spec.servers[{}] hosts {:?}",
                server.gateway, server.server, server.hosts
            );
        }
        match &listener.kind {
            ListenerKind::L4Forward { route: None } => {
                let _ = writeln!(out, "  no route: connections are refused");
            }
            ListenerKind::L4Forward { route: Some(route) } => {
                let _ = writeln!(out, "  tcp {} {}", route.origin.object, route.origin.path);
                backends_text(&mut out, &route.backends);
            }
            ListenerKind::SniRoute { routes } => {
                for route in routes {
                    let _ = writeln!(
                        out,
                        "  sni {:?} <- {} {}",
                        route.sni_hosts, route.origin.object, route.origin.path
                    );
                    backends_text(&mut out, &route.backends);
                }
            }
            ListenerKind::Http { virtual_hosts } | ListenerKind::Https { virtual_hosts, .. } => {
                if let ListenerKind::Https { certificates, .. } = &listener.kind {
                    for c in certificates {
                        let _ = writeln!(
                            out,
                            "  tls {} hosts {:?} certificates {:?} TLS {}..{}",
                            c.mode, c.hosts, c.certificates, c.min_version, c.max_version
                        );
                    }
                }
                for vhost in virtual_hosts {
                    let redirect = if vhost.https_redirect {
                        " (redirects to https)"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "  virtual host {:?}{redirect}", vhost.domains);
                    for route in &vhost.routes {
                        let matches = serde_json::to_string(&route.matches).unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "    route {} {} match {matches}",
                            route.origin.object, route.origin.path
                        );
                        match &route.action {
                            HttpAction::Route { backends } => backends_text(&mut out, backends),
                            HttpAction::Redirect(r) => {
                                let _ = writeln!(
                                    out,
                                    "      redirect {}",
                                    serde_json::to_string(r).unwrap_or_default()
                                );
                            }
                            HttpAction::DirectResponse { status, .. } => {
                                let _ = writeln!(out, "      direct response {status}");
                            }
                        }
                        for mirror in &route.mirrors {
                            let b = &mirror.backend;
                            let subset = b
                                .subset
                                .as_deref()
                                .map(|s| format!(" subset {s}"))
                                .unwrap_or_default();
                            let endpoints: Vec<String> =
                                b.endpoints.iter().map(|e| e.address.to_string()).collect();
                            let _ = writeln!(
                                out,
                                "      mirror {} % -> {}:{}{subset} endpoints {endpoints:?}",
                                mirror.percent, b.host, b.port
                            );
                        }
                        // What applies before the action, as `/config_dump` shows it whole.
                        for (what, value) in [
                            ("cors", serde_json::to_string(&route.cors).ok()),
                            ("fault", serde_json::to_string(&route.fault).ok()),
                        ] {
                            if let Some(value) = value.filter(|v| v != "null") {
                                let _ = writeln!(out, "      {what} {value}");
                            }
                        }
                    }
                }
            }
        }
    }
    for left_out in &plan.left_out {
        let _ = writeln!(
            out,
            "left out: {} {}: {} [{}]",
            left_out.object, left_out.path, left_out.reason, left_out.code
        );
    }
    out
}

fn backends_text(out: &mut String, backends: &[Backend]) {
    for b in backends {
        let subset = b
            .subset
            .as_deref()
            .map(|s| format!(" subset {s}"))
            .unwrap_or_default();
        let endpoints: Vec<String> = b.endpoints.iter().map(|e| e.address.to_string()).collect();
        let _ = writeln!(
            out,
            "      -> {}:{}{subset} weight {} {} endpoints {endpoints:?}",
            b.host, b.port, b.weight, b.load_balancer
        );
        if let Some(pool) = &b.pool {
            let limit = |n: u32| {
                if n == u32::MAX {
                    "-".to_owned()
                } else {
                    n.to_string()
                }
            };
            let _ = writeln!(
                out,
                "         circuit breakers: connections {} pending {} requests {} retries {} per connection {}",
                limit(pool.max_connections),
                limit(pool.max_pending),
                limit(pool.max_requests),
                match pool.retry_budget {
                    Some(b) => format!(
                        "budget {} % (at least {})",
                        f64::from(b.basis_points) / 100.0,
                        b.min_retry_concurrency
                    ),
                    None => limit(pool.max_retries),
                },
                if pool.max_requests_per_connection == 0 {
                    "-".to_owned()
                } else {
                    pool.max_requests_per_connection.to_string()
                }
            );
        }
        if let Some(tls) = &b.tls {
            let mode = match (tls.mesh, tls.mutual) {
                (true, _) => "ISTIO_MUTUAL",
                (false, true) => "MUTUAL",
                (false, false) => "SIMPLE",
            };
            let _ = writeln!(
                out,
                "         tls origination: {mode} sni {}{}",
                tls.sni,
                if tls.insecure_skip_verify {
                    " (certificate not verified)"
                } else {
                    ""
                }
            );
        }
        if let Some(o) = &b.outlier {
            let _ = writeln!(
                out,
                "         outlier detection: {} consecutive 5xx, {} gateway errors, ejected {} ms x count, at most {} %",
                o.consecutive_5xx,
                o.consecutive_gateway,
                o.base_ejection_ms,
                o.max_ejection_percent
            );
        }
    }
}
