//! The HTTP gateway: HTTP/1.1 and HTTP/2 listeners, TLS termination, and VirtualService HTTP
//! routing as Istio's gateways apply it.
pub mod access_log;
pub mod activity;
pub mod body;
pub mod certificates;
pub mod circuit;
pub mod client_cert;
pub mod h2_pool;
pub mod metrics;
pub mod mirror;
pub mod origination;
pub mod outlier;
pub mod pool;
pub mod query;
pub mod records;
pub mod request;
pub mod retry;
pub mod server;
pub mod server_names;
pub mod table;
pub mod tls;
pub mod upstream;

pub use server::{HttpOptions, HttpProxy};
