//! The admin plane: keys, tiers, usage. Every route needs the bearer token.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ringlimit_actors::storage::KeyFilter;
use ringlimit_protocol::ErrorCode;
use ringlimit_protocol::admin::{
    CreateKeyRequest, Granularity, KeyStatus, RotateRequest, TierList, UpdateKeyRequest,
    UpdateTierRequest, UsageCurrent, UsageHistory,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Rejects requests without `Authorization: Bearer <admin token>`.
pub async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match presented {
        // Compare digests so the comparison is constant-time whatever the lengths.
        Some(t) => bool::from(Sha256::digest(t.trim().as_bytes()).ct_eq(&app.admin_token_hash)),
        None => false,
    };
    if !ok {
        let msg = if presented.is_none() {
            "missing bearer admin token"
        } else {
            "wrong admin token"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, msg)
            .into_response();
    }
    next.run(req).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    owner: Option<String>,
    tier: Option<String>,
    status: Option<KeyStatus>,
    page: Option<String>,
    limit: Option<usize>,
}

pub async fn create_key(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    let k = app.service.create_key(req).await?;
    tracing::info!(key_id = %k.key.key_id, owner = %k.key.owner, tier = %k.key.tier, "key created");
    Ok((StatusCode::CREATED, Json(k)).into_response())
}

pub async fn list_keys(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = KeyFilter {
        owner: q.owner,
        tier: q.tier,
        status: q.status,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    // A page token is the `next_page` of an earlier answer: a key_id.
    if let Some(p) = &q.page
        && !ringlimit_protocol::apikey::is_key_id(p)
    {
        return Err(ApiError::invalid(
            "page must be the next_page value of an earlier answer",
        ));
    }
    Ok(Json(
        app.service
            .list_keys(&filter, q.page.as_deref(), limit)
            .await?,
    )
    .into_response())
}

pub async fn get_key(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.service.get_key(&id).await?).into_response())
}

pub async fn update_key(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateKeyRequest>,
) -> Result<Response, ApiError> {
    let status_changed = req.status.is_some();
    let v = app.service.update_key(&id, req).await?;
    if status_changed {
        app.service.audit_key_status(&id, &v, "admin");
    }
    tracing::info!(key_id = %id, "key updated");
    let mut res = Json(v).into_response();
    if status_changed {
        // A suspension or revocation is in force on every member before
        // the answer, or the answer says which members have not applied it.
        pending_header(&mut res, &app.router.confirm_key_change(&id).await);
    }
    Ok(res)
}

/// Names the members that did not acknowledge a key change in time.
fn pending_header(res: &mut Response, p: &crate::router::Propagation) {
    if p.pending.is_empty() {
        return;
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&p.pending.join(",")) {
        res.headers_mut().insert(PENDING_MEMBERS, v);
    }
}

/// Header naming the members a key change is still pending on.
pub const PENDING_MEMBERS: &str = "ringlimit-pending-members";

pub async fn revoke_key(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    app.service.revoke_key(&id).await?;
    tracing::info!(key_id = %id, "key revoked");
    // 204 once every member acknowledged the revocation; 202 with what is
    // pending when the bound passed first.
    let p = app.router.confirm_key_change(&id).await;
    if p.pending.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut res = (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "key_id": id,
            "revoked": true,
            "acknowledged_by": p.acknowledged,
            "pending": p.pending,
            "detail": "the key is revoked in the store and on the members that acknowledged; \
                the pending members are retried in the background and reload every key within 30 s",
        })),
    )
        .into_response();
    pending_header(&mut res, &p);
    Ok(res)
}

pub async fn rotate_key(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RotateRequest>,
) -> Result<Response, ApiError> {
    let k = app.service.rotate_key(&id, req.grace_period_ms).await?;
    tracing::info!(key_id = %id, grace_period_ms = req.grace_period_ms, "key rotated");
    let mut res = Json(k).into_response();
    pending_header(&mut res, &app.router.confirm_key_change(&id).await);
    Ok(res)
}

pub async fn usage_current(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let limits = app.service.usage_current(&id).await?;
    Ok(Json(UsageCurrent { key_id: id, limits }).into_response())
}

pub async fn usage_limits(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.service.usage_limits(&id).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from: Option<u64>,
    to: Option<u64>,
    granularity: Option<Granularity>,
}

/// Most buckets one history answer may span.
pub const MAX_HISTORY_BUCKETS: u64 = 10_000;

pub async fn usage_history(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let granularity = q.granularity.unwrap_or(Granularity::Hour);
    let now = app.service.now_ms();
    let to_ms = q.to.unwrap_or(now + 1);
    let from_ms = q
        .from
        .unwrap_or_else(|| to_ms.saturating_sub(granularity.millis() * 24));
    if from_ms >= to_ms {
        return Err(ApiError::invalid(
            "from must be before to (both in ms since the Unix epoch)",
        ));
    }
    if (to_ms - from_ms) / granularity.millis() > MAX_HISTORY_BUCKETS {
        return Err(ApiError::invalid(format!(
            "the range spans more than {MAX_HISTORY_BUCKETS} {} buckets",
            granularity.as_str()
        )));
    }
    let buckets = app
        .service
        .usage_history(&id, granularity, from_ms, to_ms)
        .await?;
    let total = buckets.iter().map(|b| b.units).sum();
    Ok(Json(UsageHistory {
        key_id: id,
        granularity,
        from_ms,
        to_ms,
        total,
        buckets,
    })
    .into_response())
}

pub async fn list_tiers(State(app): State<AppState>) -> Json<TierList> {
    Json(TierList {
        tiers: app.service.list_tiers(),
    })
}

pub async fn get_tier(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(app.service.get_tier(&name)?).into_response())
}

pub async fn put_tier(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateTierRequest>,
) -> Result<Response, ApiError> {
    let t = app.service.put_tier(&name, req.limits).await?;
    tracing::info!(tier = %name, "tier updated");
    Ok(Json(t).into_response())
}

/// `GET /api/v1/node`: this node's limiter and write-behind counters.
pub async fn node_info(State(app): State<AppState>) -> Json<serde_json::Value> {
    let s = app.service.limiter_stats();
    Json(serde_json::json!({
        "node_name": app.config.node_name,
        "keys_cached": app.service.cached_key_count(),
        "active_key_limiters": s.active,
        "activations": s.activations,
        "passivations": s.passivations,
        "restarts": s.restarts,
        "pending_writes": s.pending_writes,
    }))
}

/// `GET /api/v1/cluster`: members, their state, the ring version.
pub async fn cluster_view(State(app): State<AppState>) -> Json<serde_json::Value> {
    let Some(c) = app.router.cluster() else {
        return Json(serde_json::json!({
            "node_name": app.config.node_name,
            "clustered": false,
            "ring_version": 0,
            "members": [{"name": app.config.node_name, "state": "up", "local": true}],
        }));
    };
    let ring = c.ring();
    let members: Vec<serde_json::Value> = c
        .members()
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "state": m.state.as_str(),
                "in_ring": ring.contains(&m.name),
                "incarnation": m.incarnation,
                "last_heartbeat_ms_ago": m.last_heartbeat_ms_ago,
                "down_reason": m.down_reason.map(|r| r.as_str()),
                "connected": m.connected,
                "local": m.local,
            })
        })
        .collect();
    Json(serde_json::json!({
        "node_name": c.node_name(),
        "clustered": true,
        "ring_version": ring.version(),
        "ring_members": ring.members(),
        "members": members,
        "draining": app.router.is_draining(),
        "handoff_in_progress": app.router.gate_closed(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    key_id: String,
}

/// `GET /api/v1/cluster/owner?key_id=`: the key's owner on this node's ring.
pub async fn cluster_owner(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<OwnerQuery>,
) -> Result<Response, ApiError> {
    if q.key_id.is_empty() || q.key_id.len() > 256 {
        return Err(ApiError::invalid("key_id must be 1 to 256 characters"));
    }
    let (owner, version) = match app.router.cluster() {
        Some(c) => {
            let ring = c.ring();
            (ring.owner(&q.key_id).to_string(), ring.version())
        }
        None => (app.config.node_name.clone(), 0),
    };
    Ok(
        Json(serde_json::json!({"key_id": q.key_id, "owner": owner, "ring_version": version}))
            .into_response(),
    )
}

/// `POST /api/v1/cluster/drain`: hand this node's keys over and leave the ring.
pub async fn cluster_drain(State(app): State<AppState>) -> Result<Response, ApiError> {
    if app.router.cluster().is_none() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            "this node is not part of a cluster",
        ));
    }
    let r = app.router.clone();
    tokio::spawn(async move { r.drain().await });
    tracing::info!("drain requested through the admin API");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"draining": true})),
    )
        .into_response())
}
