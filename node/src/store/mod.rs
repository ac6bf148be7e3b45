//! Storage adapters.

pub mod embedded;
