//! Building the eBPF object and the daemon, running it, and running every check CI runs.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::setup::{self, LLVM_PREFIX};

#[derive(Args, Default)]
pub struct EbpfArgs {
    /// Compile per-packet debug logging (aya-log) into the kernel programs.
    #[arg(long)]
    pub packet_log: bool,
}

#[derive(Args, Default)]
pub struct BuildArgs {
    #[command(flatten)]
    pub ebpf: EbpfArgs,
    /// Build the daemon in release mode.
    #[arg(long)]
    pub release: bool,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative to the workspace,
/// as cargo reads it), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    target_dir_from(std::env::var_os("CARGO_TARGET_DIR"))
}

fn target_dir_from(configured: Option<std::ffi::OsString>) -> PathBuf {
    match configured.filter(|dir| !dir.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .env("PATH", setup::path_with_cargo_bin());
    cmd
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    eprintln!(
        "xtask: {:?} done in {:.1}s",
        cmd.get_args().take(3).collect::<Vec<_>>(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The flags that make the inner build a BPF build. `RUSTC_BOOTSTRAP` is set only here:
/// setting it for host builds would change every fingerprint and rebuild everything.
fn bpf_cargo(subcommand: &str) -> Command {
    let mut cmd = cargo();
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .args([
            subcommand,
            "-p",
            "gateway-ebpf",
            "--bins",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ]);
    cmd
}

/// Builds the release eBPF object and returns its path.
pub fn build_ebpf(args: &EbpfArgs) -> anyhow::Result<PathBuf> {
    let mut cmd = bpf_cargo("build");
    cmd.arg("--release");
    if args.packet_log {
        cmd.args(["--features", "packet-log"]);
    }
    run(&mut cmd).context("building the eBPF object")?;
    let object = target_dir().join("bpfel-unknown-none/release/gateway-ebpf");
    check_no_panics(&object)?;
    Ok(object)
}

/// A reachable panic fails the verifier with an obscure message; catch it at build time.
fn check_no_panics(object: &Path) -> anyhow::Result<()> {
    let objdump = Path::new(LLVM_PREFIX).join("bin/llvm-objdump");
    let out = Command::new(&objdump)
        .arg("-t")
        .arg(object)
        .output()
        .with_context(|| format!("running {}", objdump.display()))?;
    let symbols = String::from_utf8_lossy(&out.stdout);
    let panics: Vec<&str> = symbols.lines().filter(|l| l.contains("panic")).collect();
    if !panics.is_empty() {
        bail!(
            "the eBPF object references panic symbols (the verifier will reject it):\n{}",
            panics.join("\n")
        );
    }
    Ok(())
}

/// Builds the eBPF object and the `sluice` binary embedding it; returns the binary's path.
pub fn build(args: &BuildArgs) -> anyhow::Result<PathBuf> {
    build_both(args).map(|(bin, _)| bin)
}

/// [`build`], also returning the eBPF object's path.
pub fn build_both(args: &BuildArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let object = build_ebpf(&args.ebpf)?;
    let mut cmd = cargo();
    cmd.env("SLUICE_EBPF_OBJECT", &object)
        .args(["build", "-p", "gateway-user", "--bin", "sluice"]);
    if args.release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building sluice")?;
    let profile = if args.release { "release" } else { "debug" };
    Ok((target_dir().join(profile).join("sluice"), object))
}

pub fn run_sluice(args: &BuildArgs, sluice_args: &[String]) -> anyhow::Result<()> {
    let bin = build(args)?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "xtask: not root: the kernel datapath needs root; sluice will run in userspace mode"
        );
    }
    let status = Command::new(&bin)
        .args(sluice_args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("sluice exited with {status}");
    }
    Ok(())
}

/// A libFuzzer target under `fuzz/` and what it starts from.
struct FuzzTarget {
    name: &'static str,
    /// What it exercises, for the error message.
    what: &'static str,
    /// Seed directories, relative to the workspace.
    seeds: &'static [&'static str],
    /// The longest input tried.
    max_len: usize,
}

const FUZZ_TARGETS: &[FuzzTarget] = &[
    FuzzTarget {
        name: "client_hello",
        what: "the ClientHello parser",
        seeds: &["fuzz/seeds/client_hello"],
        // The parser's cap plus room for what follows it.
        max_len: 17_000,
    },
    FuzzTarget {
        name: "config",
        what: "the config loader",
        seeds: &["config/examples", "config/demo"],
        max_len: 64 * 1024,
    },
];

/// The libFuzzer targets under `fuzz/` for `seconds` each, from their seeds (real
/// ClientHellos, the config examples), copied into a scratch corpus so the repository keeps
/// only the seeds. The fuzz crate builds with `-Z` sanitizer flags, which the pinned stable
/// toolchain takes with `RUSTC_BOOTSTRAP=1`, set for that build only (its own target
/// directory).
pub fn fuzz(seconds: u64) -> anyhow::Result<()> {
    for target in FUZZ_TARGETS {
        let corpus = tempfile::tempdir().context("creating a scratch corpus")?;
        let mut cmd = cargo();
        cmd.env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target.name])
            .arg(corpus.path());
        for seeds in target.seeds {
            cmd.arg(workspace_root().join(seeds));
        }
        cmd.args([
            "--".to_owned(),
            format!("-max_total_time={seconds}"),
            format!("-max_len={}", target.max_len),
            "-timeout=5".to_owned(),
            "-rss_limit_mb=1024".to_owned(),
        ]);
        run(&mut cmd).with_context(|| {
            format!(
                "fuzzing {} (target {}; a crash input is under fuzz/artifacts/)",
                target.what, target.name
            )
        })?;
    }
    Ok(())
}

/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SECONDS: u64 = 60;

/// Everything CI checks, in the order that fails fastest.
pub fn test(extra: &[String]) -> anyhow::Result<()> {
    let started = Instant::now();
    run(cargo().args(["fmt", "--all", "--check"])).context("formatting: run `cargo fmt --all`")?;
    let object = build_ebpf(&EbpfArgs::default())?;
    run(bpf_cargo("clippy").args(["--release", "--", "-D", "warnings"]))
        .context("clippy on the eBPF crate")?;
    run(cargo().env("SLUICE_EBPF_OBJECT", &object).args([
        "clippy",
        "--workspace",
        "--exclude",
        "gateway-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy")?;
    let bin = build(&BuildArgs::default())?;
    let mut cmd = cargo();
    cmd.env("SLUICE_EBPF_OBJECT", &object)
        .env("SLUICE_BIN", &bin)
        .args(["test", "--workspace", "--exclude", "gateway-ebpf"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    run(&mut cmd).context("tests")?;
    if extra.is_empty() {
        fuzz(FUZZ_SECONDS)?;
    }
    eprintln!(
        "xtask test: all checks passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_follows_cargo_target_dir() {
        assert_eq!(target_dir_from(None), workspace_root().join("target"));
        assert_eq!(
            target_dir_from(Some("".into())),
            workspace_root().join("target")
        );
        assert_eq!(
            target_dir_from(Some("/tmp/elsewhere".into())),
            PathBuf::from("/tmp/elsewhere")
        );
        assert_eq!(
            target_dir_from(Some("out".into())),
            workspace_root().join("out")
        );
    }
}
