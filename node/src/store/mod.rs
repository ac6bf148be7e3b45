//! Storage adapters.

pub mod embedded;
pub mod redis;
