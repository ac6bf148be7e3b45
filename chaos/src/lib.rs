//! The chaos harness: a ringlimit cluster in network namespaces, under load,
//! one fault at a time, with accounts and reports. See `chaos/README.md`.

pub mod accounts;
pub mod backends;
pub mod cluster;
pub mod guarantees;
pub mod net;
pub mod relay;
pub mod report;
pub mod scenario;
