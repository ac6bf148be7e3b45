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
//! - [`storage`]: the traits every backend implements, and their conformance suite.
//! - [`pipeline`]: violation, billing and alert pipelines under a supervisor actor.
//! - [`service`]: validate and key administration on top of all this.

pub mod algo;
pub mod blocks;
pub mod catalog;
pub mod clock;
pub mod cell;
pub mod keys;
pub mod limiter;
pub mod limitset;
pub mod pipeline;
pub mod service;
pub mod storage;
pub mod writebehind;
