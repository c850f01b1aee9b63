//! `cargo xtask demo`: builds sluice and runs it on a real three-namespace network.
pub fn demo() -> anyhow::Result<()> {
    anyhow::bail!("demo not written yet")
}
