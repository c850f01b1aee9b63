//! Test harnesses shared by Sluice's integration tests and `cargo xtask demo`: root gating,
//! network namespaces with RAII teardown, a topology builder, a `sluice` process runner, an
//! admin client, and packet builders for datapath fixtures.
pub mod admin;
pub mod bpffs;
pub mod dns;
pub mod echo;
pub mod example;
pub mod flood;
pub mod grpc;
pub mod http;
pub mod load;
pub mod netns;
pub mod packet_cost;
pub mod packets;
pub mod prog_test;
pub mod root;
pub mod router;
pub mod servers;
pub mod sluice;
pub mod tap;
pub mod tls;
pub mod topology;
pub mod websocket;
