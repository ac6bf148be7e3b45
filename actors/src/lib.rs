//! ringlimit's limiter core: algorithms, per-key actors, write-behind, and
//! the storage traits.
//!
//! # Layout
//! - [`algo`]: the five algorithms as pure state machines (`check(now, cost)`).
//! - [`limitset`]: the limits of one key, checked all-or-nothing.
//! - [`cell`]: a key's state and usage counters, shared by its actor and the write-behind.
//! - [`limiter`]: KeyLimiter actors, their registry (activation, passivation) and supervisor.
//! - [`writebehind`]: batched snapshot and usage writes.
//! - [`clock`]: the one place that reads the system clocks.
//! - [`keys`], [`catalog`]: API key records, secret hashing, tiers and limit resolution.
//! - [`blocks`]: IP/CIDR blocks and the block list checked on the hot path.
//! - [`storage`]: the traits every backend implements, and their conformance suite.
//! - [`pipeline`]: violation, billing and alert pipelines under a supervisor actor:
//!   - `pipeline/mod.rs`: the [`pipeline::Host`] trait, config, shared context
//!     and the [`pipeline::Pipelines`] handle (start, flush, drain);
//!   - `pipeline/events.rs`: the events and the hot path's hand-off;
//!   - `pipeline/worker.rs`: the worker actor; `pipeline/supervisor.rs`: the
//!     [`pipeline::PipelineSupervisor`];
//!   - [`pipeline::violations`], [`pipeline::billing`], [`pipeline::alerts`]
//!     (with `alerts/delivery.rs`: webhooks, signatures, retries): the three
//!     pipelines; [`pipeline::queue`], [`pipeline::short`]: their bounded
//!     queues and inline strings.
//! - [`service`]: validate and key administration on top of all this:
//!   - `service/mod.rs`: [`service::Service`], its errors and accessors;
//!   - `service/check.rs`: the validate (check) path and key-cache misses;
//!   - `service/keys.rs`: key administration; `service/tiers.rs`: tiers;
//!     `service/blocks.rs`: IP blocks; `service/usage.rs`: usage reads.
//! - [`redact`]: keeping secrets (tokens, passwords in URLs, webhook paths)
//!   out of logs and printed configuration.
//! - [`core`]: the assembly of catalog, key cache, write-behind, KeyLimiters
//!   and service ([`Core::start`](crate::core::Core::start)), shared by the node, tests and benches.

pub mod algo;
pub mod blocks;
pub mod catalog;
pub mod cell;
pub mod clock;
pub mod core;
pub mod courtesy;
pub mod keys;
pub mod limiter;
pub mod limitset;
pub mod pipeline;
pub mod redact;
pub mod service;
pub mod storage;
pub mod writebehind;

/// The hasher of the maps a check looks keys up in. Key ids are short, so
/// SipHash dominated those look-ups; foldhash is seeded per map, and entries
/// are only ever added for keys an operator created.
pub type HotHasher = foldhash::fast::RandomState;
