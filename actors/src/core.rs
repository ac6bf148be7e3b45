//! The assembly of one node's limiter core: the key cache and catalog, the
//! write-behind, the KeyLimiters and, over a store, the [`Service`].
//!
//! ```text
//!  CoreConfig ──Core::start──▶ Core { source, write_behind, limiters, clock }
//!                               ├─ host() ──▶ (NodeHost, Suspensions)   for the pipelines
//!                               └─ service(store, random, pipelines) ──▶ Arc<Service>
//! ```
//!
//! A node builds, in this order: the core (its write-behind given the
//! billing feed as its usage sink), the pipelines (given the core's host and
//! the same feed), then the service (given the pipelines), which then serves
//! the host's suspension requests. Nothing is attached after construction.
//!
//! The node, its tests and the benches all build the core this way; what
//! differs between them (sinks, tiers, tuning, clock) is in the config.

use crate::catalog::{Catalog, LimitsSource};
use crate::clock::{Clock, SystemClock};
use crate::keys::KeyRecord;
use crate::limiter::{KeyLimiters, LimiterConfig};
use crate::pipeline::Pipelines;
use crate::service::{NodeHost, Service, Suspensions};
use crate::storage::{SnapshotStore, Store, TierRecord, UsageStore};
use crate::writebehind::{UsageSink, WriteBehind, WriteBehindConfig};
use std::sync::Arc;

/// What a [`Core`] is built from.
#[derive(Clone)]
pub struct CoreConfig {
    /// The tiers the catalog starts with.
    pub tiers: Vec<TierRecord>,
    /// Keys put in the key cache before the limiters start (tests and
    /// benches; a node warms its cache from the store instead).
    pub keys: Vec<KeyRecord>,
    /// Where the write-behind writes counter state, in order; loads take the
    /// first sink that has a key's snapshot.
    pub snapshot_sinks: Vec<Arc<dyn SnapshotStore>>,
    /// Where the write-behind writes usage rows, if anywhere.
    pub usage: Option<Arc<dyn UsageStore>>,
    /// Told about the usage rows of every flush (billing), if anything.
    pub usage_sink: Option<Arc<dyn UsageSink>>,
    pub write_behind: WriteBehindConfig,
    pub limiter: LimiterConfig,
    /// Wall-clock time of the limiters and the service.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreConfig")
            .field("tiers", &self.tiers.len())
            .field("keys", &self.keys.len())
            .field("snapshot_sinks", &self.snapshot_sinks.len())
            .field("usage", &self.usage.is_some())
            .field("usage_sink", &self.usage_sink.is_some())
            .field("write_behind", &self.write_behind)
            .field("limiter", &self.limiter)
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for CoreConfig {
    /// No tiers, no keys, no sinks, default tuning, the system clock.
    fn default() -> Self {
        CoreConfig {
            tiers: Vec::new(),
            keys: Vec::new(),
            snapshot_sinks: Vec::new(),
            usage: None,
            usage_sink: None,
            write_behind: WriteBehindConfig::default(),
            limiter: LimiterConfig::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl CoreConfig {
    /// Counter state and usage both go to `store`; everything else default.
    pub fn over(store: &Arc<dyn Store>) -> Self {
        let snapshots: Arc<dyn SnapshotStore> = Arc::clone(store) as Arc<dyn SnapshotStore>;
        let usage: Arc<dyn UsageStore> = Arc::clone(store) as Arc<dyn UsageStore>;
        CoreConfig {
            snapshot_sinks: vec![snapshots],
            usage: Some(usage),
            ..CoreConfig::default()
        }
    }

    /// The same config with these tiers.
    pub fn with_tiers(mut self, tiers: impl IntoIterator<Item = TierRecord>) -> Self {
        self.tiers = tiers.into_iter().collect();
        self
    }

    /// The same config with these keys in the cache from the start.
    pub fn with_keys(mut self, keys: impl IntoIterator<Item = KeyRecord>) -> Self {
        self.keys = keys.into_iter().collect();
        self
    }
}

/// One node's limiter core, started.
#[derive(Debug, Clone)]
pub struct Core {
    /// The key cache and the catalog the limiters resolve limits from.
    pub source: Arc<LimitsSource>,
    pub write_behind: Arc<WriteBehind>,
    pub limiters: KeyLimiters,
    pub clock: Arc<dyn Clock>,
}

impl Core {
    /// Builds the catalog and key cache, the write-behind (not yet flushing:
    /// see [`WriteBehind::spawn`]) and starts the KeyLimiters over them.
    pub async fn start(config: CoreConfig) -> Result<Core, ractor::SpawnErr> {
        let source = Arc::new(LimitsSource {
            catalog: Catalog::new(config.tiers),
            keys: Default::default(),
        });
        for k in config.keys {
            source.keys.insert(k);
        }
        let write_behind = Arc::new(WriteBehind::new(
            config.snapshot_sinks,
            config.usage,
            config.usage_sink,
            config.write_behind,
        ));
        let limiters = KeyLimiters::start(
            Arc::clone(&source),
            Arc::clone(&write_behind),
            config.limiter,
            Arc::clone(&config.clock),
        )
        .await?;
        Ok(Core {
            source,
            write_behind,
            limiters,
            clock: config.clock,
        })
    }

    /// Loads the stored tiers and keys into the cache (before anything that
    /// reads the cache, such as the pipelines, starts). Returns the keys.
    pub async fn warm(&self, store: &dyn Store) -> Result<usize, crate::storage::StoreError> {
        load_keys(&self.source, store).await
    }

    /// A [`Service`] over this core and `store`. `random` fills a buffer
    /// from a cryptographically secure source. Several services may share
    /// one core (they share its keys, limiters and write-behind).
    pub fn service(
        &self,
        store: Arc<dyn Store>,
        random: fn(&mut [u8]),
        pipelines: Option<Pipelines>,
    ) -> Arc<Service> {
        Arc::new(Service::new(
            Arc::clone(&self.source),
            self.limiters.clone(),
            store,
            Arc::clone(&self.clock),
            random,
            pipelines,
        ))
    }

    /// What the pipelines see of this core (its key cache and write-behind),
    /// and where their suspension requests arrive (for
    /// [`Service::serve_suspensions`]).
    pub fn host(&self) -> (NodeHost, Suspensions) {
        NodeHost::new(Arc::clone(&self.source), Arc::clone(&self.write_behind))
    }
}

/// Puts the stored tiers and keys in the cache; returns how many keys.
pub(crate) async fn load_keys(
    source: &LimitsSource,
    store: &dyn Store,
) -> Result<usize, crate::storage::StoreError> {
    for t in store.list_tiers().await? {
        source.catalog.set_tier(t);
    }
    let keys = store.load_all_keys().await?;
    let n = keys.len();
    for k in keys {
        source.keys.insert(k);
    }
    source.catalog.bump();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::SecretHash;
    use ringlimit_protocol::{AlgorithmKind, LimitSpec};

    #[tokio::test]
    async fn a_core_checks_its_preloaded_keys_on_its_clock() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let limit = LimitSpec {
            name: "l".into(),
            algorithm: AlgorithmKind::FixedWindow,
            limit: 2,
            window_ms: 60_000,
            burst: None,
        };
        let key = KeyRecord {
            limits: Some(vec![limit]),
            ..KeyRecord::active("k1", "o", "t", SecretHash::of("s"), 0)
        };
        let core = Core::start(CoreConfig {
            clock: clock.clone(),
            ..CoreConfig::default().with_keys([key])
        })
        .await
        .expect("core");
        let now = core.clock.now_us();
        for expected in [true, true, false] {
            let r = core
                .limiters
                .check("k1", 1, now)
                .await
                .expect("limiter")
                .expect("check");
            assert_eq!(r.allowed, expected);
        }
        assert!(core.source.keys.get("k1").is_some());
        assert_eq!(core.write_behind.pending_len(), 1, "the changed cell waits");
        core.limiters.stop();
    }
}
