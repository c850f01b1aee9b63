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
        "3 objects in 1 files: 0 errors, 0 warnings: valid"
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
