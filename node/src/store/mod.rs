//! Storage adapters.

pub mod embedded;
pub mod redis;
pub mod scylla;
mod shared;
