//! A key missing from a node's cache (created on another node whose
//! broadcast has not arrived yet) is read from the shared store on the check
//! path, instead of answering a valid key with 401.
#![allow(clippy::unwrap_used)]

use ringlimit_actors::core::{Core, CoreConfig};
use ringlimit_actors::service::{Service, ValidateOutcome};
use ringlimit_actors::storage::Store;
use ringlimit_node::store::embedded::EmbeddedStore;
use ringlimit_protocol::admin::CreateKeyRequest;
use std::sync::Arc;

fn random(buf: &mut [u8]) {
    getrandom::fill(buf).unwrap();
}

/// A node of its own (key cache, limiters) over the shared `store`.
async fn node(store: Arc<dyn Store>) -> Arc<Service> {
    let config = CoreConfig::over(&store).with_tiers(ringlimit_node::config::default_tiers());
    Core::start(config)
        .await
        .unwrap()
        .service(store, random, None)
}

#[tokio::test]
async fn a_key_created_elsewhere_is_found_in_the_store_on_a_cache_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let a = node(Arc::clone(&store)).await;
    let b = node(store).await;
    let k = a
        .create_key(CreateKeyRequest {
            owner: "acme".into(),
            tier: "free".into(),
            limits: None,
            metadata: None,
        })
        .await
        .unwrap();
    // Node b never heard of the key: its cache misses, the store has it.
    assert!(b.key(&k.key.key_id).is_none());
    assert!(matches!(
        b.validate(&k.api_key, 1, None).await,
        ValidateOutcome::Allowed(_)
    ));
    assert!(b.key(&k.key.key_id).is_some(), "now cached on b");
    // A wrong secret for the same key is still refused.
    let last = if k.api_key.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &k.api_key[..k.api_key.len() - 1]);
    assert!(matches!(
        b.validate(&wrong, 1, None).await,
        ValidateOutcome::Unauthorized
    ));
    // A key id the store does not have is refused too.
    let unknown = format!("rl_{}_{}", "z".repeat(20), "A".repeat(43));
    assert!(matches!(
        b.validate(&unknown, 1, None).await,
        ValidateOutcome::Unauthorized
    ));
    // A revocation that reached b's cache is not undone by a later miss
    // path: the cached record wins over nothing.
    a.revoke_key(&k.key.key_id).await.unwrap();
    b.reload_key(&k.key.key_id).await.unwrap();
    assert!(matches!(
        b.validate(&k.api_key, 1, None).await,
        ValidateOutcome::Unauthorized
    ));
}
