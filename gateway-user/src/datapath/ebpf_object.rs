//! The eBPF object embedded at build time (see build.rs).

/// The ELF object with Sluice's kernel programs, or empty when the binary was built without
/// one (plain `cargo build`; use `cargo xtask build`).
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice.bpf.o"));

/// Whether this binary carries the kernel programs.
pub fn embedded() -> bool {
    !EBPF_OBJECT.is_empty()
}
