//! Wire and API types of ringlimit.
//!
//! # Layout
//! - [`limits`]: how a limit is written (`{"name","algorithm","limit","window_ms","burst"}`).
//! - [`validate`]: the data-plane request and response bodies, and
//!   [`validate::ValidateOutcome`], what a check decided before any transport
//!   gives it a form.
//! - [`apikey`]: the `rl_<key_id>_<secret>` form of an api_key and its parser.
//! - [`cluster`]: the messages between nodes (identify, heartbeats, forwarded
//!   checks, admin events, handoff markers) and a cheap frame check.
//! - [`admin`]: key, tier and usage DTOs of the admin plane.
//! - [`pipeline`]: violations, IP blocks, audit, alerts, dead letters, billing.
//! - [`error`]: the error body every 4xx/5xx carries, and its stable codes.
//!
//! This crate does no I/O and knows nothing about tokio; everything here is a
//! plain serde type, so the same types serve HTTP JSON and MessagePack between
//! nodes.

pub mod admin;
pub mod apikey;
pub mod cluster;
pub mod error;
pub mod json;
pub mod limits;
pub mod pipeline;
pub mod validate;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use limits::{AlgorithmKind, LimitSpec, LimitSpecError};
