//! The two HTTP planes: data (validate) and admin (keys, tiers, usage).
//! Both answer errors as `{"error":{"code":"…","message":"…"}}`, take an
//! `X-Request-Id` (or make one) and return it.

pub mod admin;
pub mod authorize;
pub mod data;
pub mod error;
pub mod extract;
pub mod fast;
pub mod pipeline;
pub mod server;

use crate::config::Config;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use ringlimit_actors::service::Service;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub service: Arc<Service>,
    pub router: Arc<crate::router::Router>,
    pub config: Arc<Config>,
    pub admin_token_hash: [u8; 32],
    pub ready: Arc<AtomicBool>,
    pub metrics: Option<PrometheusHandle>,
}

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a per-process random prefix and a counter.
#[derive(Clone, Debug)]
pub struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    pub fn new(prefix: String) -> Self {
        RequestIds {
            prefix: prefix.into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The next id: `<prefix>-<counter in hex>`.
    pub fn next(&self) -> axum::http::HeaderValue {
        fast::request_id(&self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(self.next()))
    }
}

fn with_common_layers(router: Router, max_body_bytes: usize, ids: RequestIds) -> Router {
    router
        .fallback(error::no_route)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |p: Box<dyn std::any::Any + Send>| error::panicked(&*p),
        ))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), ids))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if app.ready.load(Ordering::Acquire) && app.router.gate_closed() {
        // Joining: checks of the keys this node takes over wait until the
        // previous owners flushed them. Not ready yet, so a rolling restart
        // that waits for readiness does not stop the next node while keys
        // are still moving to this one.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "handing over"})),
        )
    } else if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, Json(serde_json::json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready"})),
        )
    }
}

async fn metrics(State(app): State<AppState>) -> String {
    app.metrics.as_ref().map(|h| h.render()).unwrap_or_default()
}

/// The data plane: the check routes answered by [`fast::DataPlane`], the
/// rest by [`data_router`].
pub fn data_plane(state: AppState, ids: RequestIds) -> fast::DataPlane {
    let rest = data_router(state.clone(), ids.clone());
    fast::DataPlane::new(state, ids, rest)
}

/// The data plane router.
pub fn data_router(state: AppState, ids: RequestIds) -> Router {
    let r = Router::new()
        .route(
            "/api/v1/validate",
            post(data::validate).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/validate/batch",
            post(data::validate_batch).fallback(error::wrong_method),
        )
        .route(
            authorize::AUTHORIZE,
            axum::routing::any(authorize::authorize),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    with_common_layers(r, state.config.max_body_bytes, ids)
}

/// The admin plane router.
pub fn admin_router(state: AppState, ids: RequestIds) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/keys",
            post(admin::create_key)
                .get(admin::list_keys)
                .fallback(error::wrong_method),
        )
        .route(
            "/api/v1/keys/{key_id}",
            get(admin::get_key)
                .patch(admin::update_key)
                .put(admin::update_key)
                .delete(admin::revoke_key)
                .fallback(error::wrong_method),
        )
        .route(
            "/api/v1/keys/{key_id}/rotate",
            post(admin::rotate_key).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/usage/{key_id}/current",
            get(admin::usage_current).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/usage/{key_id}/history",
            get(admin::usage_history).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/usage/{key_id}/limits",
            get(admin::usage_limits).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/tiers",
            get(admin::list_tiers).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/tiers/{name}",
            get(admin::get_tier)
                .put(admin::put_tier)
                .fallback(error::wrong_method),
        )
        .route(
            "/api/v1/violations",
            get(pipeline::list_violations).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/blocks",
            post(pipeline::create_block)
                .get(pipeline::list_blocks)
                .fallback(error::wrong_method),
        )
        .route(
            "/api/v1/blocks/{id}",
            axum::routing::delete(pipeline::delete_block).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/audit",
            get(pipeline::list_audit).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/alerts",
            get(pipeline::list_alerts).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/dead-letters",
            get(pipeline::list_dead_letters).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/dead-letters/{id}/redrive",
            post(pipeline::redrive).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/billing",
            get(pipeline::list_billing).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/billing/close",
            post(pipeline::close_billing).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/billing/{key_id}",
            get(pipeline::key_billing).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/analytics/usage",
            get(pipeline::usage_analytics).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/abuse/rules",
            get(pipeline::get_abuse_rules)
                .put(pipeline::put_abuse_rules)
                .fallback(error::wrong_method),
        )
        .route(
            "/api/v1/pipelines",
            get(pipeline::pipeline_stats).fallback(error::wrong_method),
        )
        .route("/api/v1/node", get(admin::node_info))
        .route(
            "/api/v1/cluster",
            get(admin::cluster_view).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/cluster/owner",
            get(admin::cluster_owner).fallback(error::wrong_method),
        )
        .route(
            "/api/v1/cluster/drain",
            post(admin::cluster_drain).fallback(error::wrong_method),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::require_token,
        ));
    let r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(state.clone());
    with_common_layers(r, state.config.max_body_bytes, ids)
}
