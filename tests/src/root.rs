//! Gating for tests that need root: skipped with a printed reason, or failed when CI sets
//! `SLUICE_REQUIRE_ROOT_TESTS=1`.
use std::path::PathBuf;

/// Environment variable that turns a skip into a failure.
pub const REQUIRE_ROOT_TESTS: &str = "SLUICE_REQUIRE_ROOT_TESTS";

fn required() -> bool {
    std::env::var(REQUIRE_ROOT_TESTS).is_ok_and(|v| v == "1")
}

/// Returns true when the calling test may run; otherwise prints why it is skipped (or panics
/// when skips are not allowed).
pub fn can_run(test: &str) -> bool {
    match missing_requirement() {
        None => true,
        Some(why) if required() => {
            panic!("{test}: {why}, and {REQUIRE_ROOT_TESTS}=1 forbids skipping")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn missing_requirement() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (BPF, network namespaces)".into());
    }
    if std::env::var_os("SLUICE_EBPF_OBJECT").is_none() || std::env::var_os("SLUICE_BIN").is_none()
    {
        return Some(
            "SLUICE_EBPF_OBJECT/SLUICE_BIN not set: run the tests with `cargo xtask test`".into(),
        );
    }
    None
}

/// The eBPF object built by `cargo xtask build-ebpf`.
pub fn ebpf_object() -> Vec<u8> {
    let path = std::env::var_os("SLUICE_EBPF_OBJECT")
        .unwrap_or_else(|| panic!("SLUICE_EBPF_OBJECT not set"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", PathBuf::from(path).display()))
}

/// The `sluice` binary built by `cargo xtask build`.
pub fn sluice_bin() -> PathBuf {
    PathBuf::from(std::env::var_os("SLUICE_BIN").unwrap_or_else(|| panic!("SLUICE_BIN not set")))
}
