//! Backend selection shared by the kernel sync and the userspace proxies: a route's
//! endpoints with their effective weights, and the Maglev table that picks one per flow.
pub mod backends;
pub mod maglev;

pub use backends::{BackendRemoval, BackendSet, BackendSets};
