//! The ringlimit node: configuration, the data and admin HTTP planes, storage
//! adapters, metrics and the process lifecycle.
//!
//! # Layout
//! - [`config`]: one typed config from file, environment and flags, validated before any port is bound.
//! - [`cli`]: the flags and subcommands.
//! - [`cluster`]: the cluster transport: ring, membership, heartbeats, forwarding between nodes.
//! - [`http`]: the data plane (validate) and the admin plane (keys, tiers, usage).
//! - [`router`]: routing checks to key owners on a cluster, handoff, admin broadcasts.
//! - [`store`]: storage adapters: the embedded default, Redis and ScyllaDB.
//! - [`webhook`]: the HTTP client of alert webhooks.
//! - [`app`]: building a node, serving, draining on shutdown.
//! - [`background`]: the lower-priority thread the pipelines run on.

pub mod app;
pub mod background;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod http;
pub mod private;
pub mod router;
pub mod store;
pub mod webhook;
