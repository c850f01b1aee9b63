//! TLS passthrough by SNI: the ClientHello is read without consuming it, the route chosen by
//! its server name, and the stream handed to a byte path that keeps it out of userspace.
pub mod client_hello;
pub mod metrics;
pub mod server;
pub mod table;

pub use server::{SniOptions, SniProxy};
