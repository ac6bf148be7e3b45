//! The node's config file: TOML into `RawConfig`, then `Config::from_raw`
//! (defaults and every check). Never panics; merging a file's settings over
//! nothing gives the file's settings.
#![no_main]

// The node crate pulls in axum, redis, scylla and reqwest; its config
// module needs only the protocol and actors crates, serde, toml and
// tracing-subscriber's filter parser (and the cluster's plain settings), so the target compiles that module
// from the node's source.
#[allow(dead_code, clippy::all)]
#[path = "../../node/src/config/mod.rs"]
mod config;

#[allow(dead_code, clippy::all)]
#[path = "../../node/src/cluster/settings.rs"]
pub mod cluster_settings;

/// What the config module uses of the cluster layer: plain settings.
mod cluster {
    pub use super::cluster_settings as settings;
}

use config::{Config, RawConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(raw) = RawConfig::from_toml(text) else {
        return;
    };
    assert_eq!(RawConfig::default().merge(raw.clone()), raw);
    let _ = Config::from_raw(raw);
});
