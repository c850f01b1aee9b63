//! The userspace servers: the L4 forwarder (userspace mode, and the fallback for what the
//! kernel does not take) and, next, TLS passthrough by SNI.
pub mod l4;
pub mod listeners;
pub mod relay;
pub mod sni;
