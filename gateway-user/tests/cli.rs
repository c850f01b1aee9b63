//! The `sluice` command line as an operator meets it: exit codes and messages.
use std::process::Command;

fn sluice(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running sluice: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn demo_config() -> String {
    format!("{}/../config/demo", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_accepts_the_demo_config() {
    let (code, stdout, stderr) = sluice(&["validate", "-f", &demo_config()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "11 objects in 2 files: 0 errors, 0 warnings: valid"
    );
}

#[test]
fn validate_reports_every_error_with_file_and_line_and_fails() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: [x\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout, stderr) = sluice(&["validate", "-f", &dir.path().to_string_lossy()]);
    assert_eq!(code, 1, "{stderr}");
    // The parser notices the unclosed sequence at the end of input.
    let at = format!("{}:5:1: error: invalid YAML:", broken.display());
    assert!(stderr.contains(&at), "{stderr}");
    assert!(stderr.contains("expected ',' or ']'"), "{stderr}");
    let at = format!(
        "{}:2:1: error: kind: kind \"Service\" is not supported",
        unknown.display()
    );
    assert!(stderr.contains(&at), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "0 objects in 2 files: 2 errors, 0 warnings: invalid"
    );
}

#[test]
fn run_rejects_a_bad_config_before_touching_the_datapath() {
    let (code, _, stderr) = sluice(&[
        "run",
        "-f",
        "/nonexistent/sluice.yaml",
        "--datapath",
        "userspace",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/sluice.yaml: error: cannot read"),
        "{stderr}"
    );
}

#[test]
fn version_says_whether_the_kernel_programs_are_embedded() {
    let (code, stdout, _) = sluice(&["version"]);
    assert_eq!(code, 0);
    assert!(
        stdout.starts_with(&format!(
            "sluice {} (eBPF object: ",
            env!("CARGO_PKG_VERSION")
        )),
        "{stdout}"
    );
}

fn example(name: &str) -> String {
    format!("{}/../config/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn warnings_pass_unless_strict() {
    let vs = example("bookinfo.yaml");
    let (code, stdout, stderr) = sluice(&["validate", "-f", &vs]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: spec.gateways[0]: Referenced Gateway not found"),
        "{stderr}"
    );
    assert_eq!(
        stdout.trim(),
        "3 objects in 1 files: 0 errors, 1 warnings: valid"
    );
    let (code, stdout, _) = sluice(&["validate", "--strict", "-f", &vs]);
    assert_eq!(code, 1);
    assert!(stdout.trim().ends_with("invalid"), "{stdout}");
}

#[test]
fn validate_speaks_json_for_machines() {
    let (code, stdout, _) = sluice(&[
        "validate",
        "--output",
        "json",
        "-f",
        &example("bookinfo.yaml"),
    ]);
    assert_eq!(code, 0);
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["valid"], true);
    assert_eq!(
        (report["errors"].as_u64(), report["warnings"].as_u64()),
        (Some(0), Some(1))
    );
    let d = &report["diagnostics"][0];
    assert_eq!(
        (
            d["severity"].as_str(),
            d["code"].as_str(),
            d["path"].as_str()
        ),
        (Some("warning"), Some("IST0101"), Some("spec.gateways[0]"))
    );
    assert_eq!(
        (d["mark"]["line"].as_u64(), d["mark"]["column"].as_u64()),
        (Some(14), Some(5))
    );
}

#[test]
fn plan_shows_where_each_listener_runs() {
    let (code, stdout, stderr) = sluice(&["plan", "-f", &example("passthrough.yaml")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("listener 0.0.0.0:443 HTTPS  [kernel-splice: TLS passthrough"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sni [\"nginx.example.com\"] <- VirtualService edge/nginx spec.tls[0]"),
        "{stdout}"
    );
    assert!(stdout.contains("-> my-nginx.edge.svc.cluster.local:443 weight 100 LEAST_REQUEST endpoints [\"203.0.113.42:443\"]"), "{stdout}");
    let (code, json, _) = sluice(&[
        "plan",
        "--output",
        "json",
        "-f",
        &example("passthrough.yaml"),
    ]);
    assert_eq!(code, 0);
    let plan: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(plan["listeners"][0]["type"], "SniRoute");
    assert_eq!(plan["listeners"][0]["runs"]["where"], "kernel-splice");
}

#[test]
fn plan_refuses_a_config_with_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\nspec: {servers: []}\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, stdout, stderr) = sluice(&["plan", "-f", &bad.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("gateway must have at least one server"),
        "{stderr}"
    );
}
