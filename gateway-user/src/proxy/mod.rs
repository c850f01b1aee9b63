//! The userspace servers: the L4 forwarder (userspace mode, and the fallback for what the
//! kernel does not take) and, next, TLS passthrough by SNI.
/// How long connecting to a backend may take before the client's connection is closed.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub mod http;
pub mod l4;
pub mod listeners;
pub mod relay;
pub mod sni;
pub mod workers;
