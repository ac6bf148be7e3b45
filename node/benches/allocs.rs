//! Heap allocations per check, counted by a counting global allocator
//! (dhat's), on the paths a check takes in process:
//! - `limiter`: the KeyLimiter registry's check of an active key (the
//!   direct path on the actor's state);
//! - `service`: the service's whole check of a parsed key (key cache,
//!   secret verification, the limiter, usage, the domain outcome);
//! - `batch`: the batch route's grouped decision, 100 checks of one key in
//!   one step (one authentication, one lock of the key's cell);
//! - `http`: the same, plus what the data plane does around it: parsing the
//!   api_key, the IP-block look-up, the status, the RateLimit headers and
//!   the JSON body.
//!
//! Run: `cargo bench -p ringlimit-node --bench allocs`. Prints one line
//! per path; the figure goes in BENCHMARKS.md. A count, not a timing.

use axum::http::HeaderMap;
use ringlimit_actors::core::{Core, CoreConfig};
use ringlimit_actors::keys::{KeyRecord, SecretHash};
use ringlimit_actors::limiter::{Clock, SystemClock};
use ringlimit_actors::storage::Store;
use ringlimit_node::http::data::{answer, ratelimit_headers};
use ringlimit_node::store::embedded::EmbeddedStore;
use ringlimit_protocol::{AlgorithmKind, LimitSpec};
use std::sync::Arc;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CHECKS: u64 = 100_000;
const SECRET: &str = "SecretSecretSecretSecretSecretSecretSecret1";

fn key() -> KeyRecord {
    KeyRecord {
        limits: Some(vec![LimitSpec {
            name: "per-minute".into(),
            algorithm: AlgorithmKind::SlidingWindow,
            limit: 1_000_000_000,
            window_ms: 60_000,
            burst: None,
        }]),
        ..KeyRecord::active(
            "benchkey000000000000",
            "o",
            "free",
            SecretHash::of(SECRET),
            0,
        )
    }
}

fn random(buf: &mut [u8]) {
    buf.fill(7);
}

fn per_check(label: &str, before: dhat::HeapStats, after: dhat::HeapStats) {
    let blocks = after.total_blocks - before.total_blocks;
    let bytes = after.total_bytes - before.total_bytes;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "allocs/{label}: {:.2} allocations and {:.1} bytes per check ({CHECKS} checks)",
            blocks as f64 / CHECKS as f64,
            bytes as f64 / CHECKS as f64
        );
    }
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let core = Core::start(CoreConfig::over(&store).with_keys([key()]))
            .await
            .expect("core");
        let service = core.service(store, random, None);
        let hash = SecretHash::of(SECRET);
        let id = "benchkey000000000000";
        // Activate and load the key, and let the usage buckets open.
        for _ in 0..10 {
            core.limiters
                .check(id, 1, SystemClock.now_us())
                .await
                .expect("reached")
                .expect("checked");
        }

        let before = dhat::HeapStats::get();
        for _ in 0..CHECKS {
            let r = core
                .limiters
                .check(id, 1, SystemClock.now_us())
                .await
                .expect("reached")
                .expect("checked");
            std::hint::black_box(r);
        }
        per_check("limiter", before, dhat::HeapStats::get());

        let before = dhat::HeapStats::get();
        for _ in 0..CHECKS {
            let o = service.validate_hashed(id, &hash, 1, None).await;
            std::hint::black_box(o);
        }
        per_check("service", before, dhat::HeapStats::get());

        // The batch route's grouped decision: 100 checks of one key decided
        // in one step (one authentication, one lock of the cell).
        let group = [(1u64, None); 100];
        let mut out = Vec::with_capacity(group.len());
        let before = dhat::HeapStats::get();
        for _ in 0..CHECKS / 100 {
            out.clear();
            assert!(service.validate_now_many(id, &hash, &group, &mut out));
            std::hint::black_box(&out);
        }
        per_check("batch", before, dhat::HeapStats::get());

        let api_key = ringlimit_protocol::apikey::format(id, SECRET);
        let mut body = Vec::with_capacity(512);
        let before = dhat::HeapStats::get();
        for _ in 0..CHECKS {
            let (key_id, hash) = service.admit_request(&api_key, None).expect("well formed");
            let o = service.validate_hashed(key_id, &hash, 1, None).await;
            let (status, b) = answer(o);
            let mut headers = HeaderMap::new();
            ratelimit_headers(&b.limits, &mut headers);
            body.clear();
            serde_json::to_writer(&mut body, &b).expect("json");
            std::hint::black_box((status, headers, &body));
        }
        per_check("http", before, dhat::HeapStats::get());
    });
}
