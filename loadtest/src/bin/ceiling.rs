//! `loadtest-ceiling`: the HTTP ceiling. A minimal axum server that parses
//! the same JSON as ringlimit's data plane and answers a fixed "allowed"
//! decision, so a benchmark can say how close ringlimit gets to the cost of
//! HTTP + JSON alone. It allows everything: the over-admission checker must
//! fail against it.
//!
//! Routes: `POST /api/v1/validate`, `POST /api/v1/validate/batch`, and just
//! enough of the admin API for the harness (`POST /api/v1/keys` → 201 with a
//! made-up key, `DELETE /api/v1/keys/{id}` → 204), `GET /healthz`.
//!
//! Address from `--addr` or `LOADTEST_CEILING_ADDR` (default 127.0.0.1:8090;
//! port 0 picks a free one). When ready it prints one line on stdout:
//! `loadtest-ceiling listening data_addr=HOST:PORT admin_addr=HOST:PORT`.

use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ringlimit_protocol::admin::{CreateKeyRequest, KeyStatus, KeyView, KeyWithSecret};
use ringlimit_protocol::validate::{
    BatchRequest, BatchResponse, BatchResult, LimitStatus, ValidateRequest, ValidateResponse,
};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// The fixed decision: allowed, with one limit, like a real answer.
fn decision(req: &ValidateRequest) -> ValidateResponse {
    ValidateResponse {
        allowed: true,
        key_id: Some(key_id_of(&req.api_key).into()),
        tier: Some("free".into()),
        limits: vec![LimitStatus {
            name: "per-minute".into(),
            limit: 100,
            remaining: 99,
            reset_after_ms: 60_000,
            window_ms: 60_000,
        }],
        retry_after_ms: None,
        denied_by: None,
        error: None,
        suspended_until_ms: None,
        fail_open: false,
    }
}

/// `rl_<key_id>_<secret>` → key_id, as ringlimit's keys carry it.
fn key_id_of(api_key: &str) -> String {
    api_key
        .strip_prefix("rl_")
        .and_then(|r| r.split('_').next())
        .unwrap_or("ceiling")
        .to_string()
}

async fn validate(
    Json(req): Json<ValidateRequest>,
) -> ([(HeaderName, HeaderValue); 2], Json<ValidateResponse>) {
    (
        [
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_static("\"per-minute\";q=100;w=60"),
            ),
            (
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("\"per-minute\";r=99;t=60"),
            ),
        ],
        Json(decision(&req)),
    )
}

async fn validate_batch(Json(req): Json<BatchRequest>) -> Json<BatchResponse> {
    Json(BatchResponse {
        results: req
            .checks
            .iter()
            .map(|c| BatchResult {
                status: 200,
                body: decision(c),
            })
            .collect(),
    })
}

async fn create_key(Json(req): Json<CreateKeyRequest>) -> (StatusCode, Json<KeyWithSecret>) {
    let n = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
    let key_id = format!("ceil{n:08x}");
    let view = KeyView {
        key_id: key_id.clone(),
        owner: req.owner,
        tier: req.tier,
        status: KeyStatus::Active,
        effective_limits: req.limits.clone().unwrap_or_default(),
        limits: req.limits,
        metadata: req.metadata.unwrap_or_default(),
        webhook_secret_set: false,
        created_at_ms: 0,
        updated_at_ms: 0,
        previous_secret_expires_at_ms: None,
        suspended_until_ms: None,
    };
    (
        StatusCode::CREATED,
        Json(KeyWithSecret {
            api_key: format!("rl_{key_id}_ceilingsecret"),
            key: view,
        }),
    )
}

async fn delete_key(Path(_id): Path<String>) -> StatusCode {
    StatusCode::NO_CONTENT
}

fn main() -> std::process::ExitCode {
    let mut addr =
        std::env::var("LOADTEST_CEILING_ADDR").unwrap_or_else(|_| "127.0.0.1:8090".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => match args.next() {
                Some(v) => addr = v,
                None => {
                    eprintln!("loadtest-ceiling: --addr needs a value");
                    return std::process::ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                eprintln!(
                    "usage: loadtest-ceiling [--addr HOST:PORT]   (or LOADTEST_CEILING_ADDR; default 127.0.0.1:8090)"
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("loadtest-ceiling: unknown argument '{other}'");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest-ceiling: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(&addr)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest-ceiling: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(addr: &str) -> std::io::Result<()> {
    let app = Router::new()
        .route("/api/v1/validate", post(validate))
        .route("/api/v1/validate/batch", post(validate_batch))
        .route("/api/v1/keys", post(create_key))
        .route("/api/v1/keys/{key_id}", delete(delete_key))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "loadtest-ceiling listening data_addr={local} admin_addr={local}"
        )?;
        out.flush()?;
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
