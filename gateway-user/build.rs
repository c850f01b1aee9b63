//! Embeds the eBPF object that `cargo xtask build-ebpf` produced, named by
//! `SLUICE_EBPF_OBJECT`. Without it the binary still builds (host-only `cargo test`,
//! clippy, unprivileged use) and runs in userspace mode only.
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-env-changed=SLUICE_EBPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("sluice.bpf.o");
    match env::var_os("SLUICE_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo::rerun-if-changed={}", path.display());
            fs::copy(&path, &out).map_err(|e| {
                format!(
                    "SLUICE_EBPF_OBJECT={}: {e}; run `cargo xtask build-ebpf`",
                    path.display()
                )
            })?;
        }
        None => fs::write(&out, b"")?,
    }
    Ok(())
}
