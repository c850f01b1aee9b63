//! The daemon: `sluice run` (datapath, servers, signals), config reloads, snapshots, DNS,
//! and the state that the servers publish and the admin server reads.
pub mod dns;
pub mod fault;
pub mod health;
pub mod logging;
pub mod privileges;
pub mod reload;
pub mod run;
pub mod snapshot;
pub mod state;
