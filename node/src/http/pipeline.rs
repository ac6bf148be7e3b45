//! Admin endpoints of the pipelines: violations, IP blocks, audit, alerts and
//! dead letters, billing, usage analytics, abuse rules.

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringlimit_actors::pipeline::{AbuseRule, Pipelines, alerts, billing};
use ringlimit_actors::service::AdminError;
use ringlimit_actors::storage::{Range, StoreError};
use ringlimit_protocol::ErrorCode;
use ringlimit_protocol::admin::Granularity;
use ringlimit_protocol::pipeline::{
    AlertPage, AuditPage, BillingList, BillingRecord, BillingView, BlockList, CreateBlockRequest,
    DeadLetterPage, KeyUsageTotal, TierUsageTotal, UsageAnalytics, ViolationPage, nanos_to_decimal,
};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Largest page.
pub const MAX_PAGE_SIZE: usize = 1_000;

fn store_err(e: StoreError) -> ApiError {
    ApiError::from(AdminError::Store(e))
}

fn pipelines(app: &AppState) -> Result<&Pipelines, ApiError> {
    app.service.pipelines().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the pipelines are not running",
        )
    })
}

fn now_ms(app: &AppState) -> u64 {
    app.service.now_ms()
}

/// `from`/`to`/`page`/`limit` of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    key_id: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    page: Option<u32>,
    limit: Option<usize>,
}

impl PageQuery {
    /// The range asked for, with one extra row to learn whether a next page exists.
    fn range(&self, now_ms: u64) -> Result<(Range, u32, usize), ApiError> {
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err(ApiError::invalid("page: pages are numbered from 1"));
        }
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit: must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let from_ms = self.from.unwrap_or(0);
        let to_ms = self.to.unwrap_or(now_ms.saturating_add(1));
        if from_ms >= to_ms {
            return Err(ApiError::invalid(
                "from must be before to (both in ms since the Unix epoch)",
            ));
        }
        if let Some(k) = &self.key_id
            && (k.is_empty() || k.len() > 64)
        {
            return Err(ApiError::invalid("key_id: must be 1 to 64 characters"));
        }
        let offset = (page as usize - 1).saturating_mul(limit);
        if offset > 1_000_000 {
            return Err(ApiError::invalid(
                "page: too far; narrow the time range instead",
            ));
        }
        Ok((
            Range {
                from_ms,
                to_ms,
                offset,
                limit: limit + 1,
            },
            page,
            limit,
        ))
    }
}

/// One page of a listing by time: the rows, the page number and the next
/// page's number when there is one. `by_time_only` names the listing when
/// it cannot be filtered by key.
async fn page_of<T, F, Fut>(
    app: &AppState,
    q: &PageQuery,
    by_time_only: Option<&str>,
    fetch: F,
) -> Result<(Vec<T>, u32, Option<u32>), ApiError>
where
    F: FnOnce(Range) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>>,
{
    if let (Some(what), Some(_)) = (by_time_only, &q.key_id) {
        return Err(ApiError::invalid(format!(
            "key_id: {what} are listed by time only"
        )));
    }
    let (range, page, limit) = q.range(now_ms(app))?;
    let mut rows = fetch(range).await.map_err(store_err)?;
    let next = (rows.len() > limit).then_some(page + 1);
    rows.truncate(limit);
    Ok((rows, page, next))
}

/// A listing handler: `GET` with a [`PageQuery`], answering one page whose
/// rows go in `$field` of `$page`. `$by_time_only` names what cannot be
/// filtered by key (or is `None`); `$fetch` reads a range from the store.
macro_rules! listing {
    ($(#[$doc:meta])* $name:ident, $page:ident, $field:ident, $by_time_only:expr,
     |$store:ident, $key:ident, $range:ident| $fetch:expr) => {
        $(#[$doc])*
        pub async fn $name(
            State(app): State<AppState>,
            ApiQuery(q): ApiQuery<PageQuery>,
        ) -> Result<Json<$page>, ApiError> {
            let $store = app.service.store();
            let $key = q.key_id.as_deref();
            let ($field, page, next_page) =
                page_of(&app, &q, $by_time_only, |$range| $fetch).await?;
            Ok(Json($page {
                $field,
                page,
                next_page,
            }))
        }
    };
}

listing!(
    /// `GET /api/v1/violations?key_id=&from=&to=&page=&limit=`.
    list_violations, ViolationPage, violations, None,
    |store, key, r| store.list_violations(key, r)
);
listing!(
    /// `GET /api/v1/audit?from=&to=&page=&limit=`.
    list_audit, AuditPage, entries, Some("audit entries"),
    |store, _key, r| store.list_audit(r)
);
listing!(
    /// `GET /api/v1/alerts?key_id=&from=&to=&page=&limit=`.
    list_alerts, AlertPage, alerts, None,
    |store, key, r| store.list_alerts(key, r)
);
listing!(
    /// `GET /api/v1/dead-letters?from=&to=&page=&limit=`.
    list_dead_letters, DeadLetterPage, dead_letters, Some("dead letters"),
    |store, _key, r| store.list_dead_letters(r)
);

/// `POST /api/v1/dead-letters/{id}/redrive`: sends the payload again.
/// 200 when delivered (the letter is gone), 502 when it failed again (the
/// letter stays with the new error).
pub async fn redrive(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found(format!("dead letter {id} not found")));
    }
    let p = pipelines(&app)?;
    match alerts::redrive(&p.ctx, &id).await.map_err(store_err)? {
        alerts::Redrive::Delivered { attempts } => {
            tracing::info!(dead_letter = %id, attempts, "dead letter re-driven and delivered");
            Ok(
                Json(serde_json::json!({ "id": id, "delivered": true, "attempts": attempts }))
                    .into_response(),
            )
        }
        alerts::Redrive::Failed { attempts, error } => Ok((
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({
                "id": id, "delivered": false, "attempts": attempts,
                "error": { "code": "delivery_failed", "message": error }
            })),
        )
            .into_response()),
        alerts::Redrive::NotFound => {
            Err(ApiError::not_found(format!("dead letter {id} not found")))
        }
    }
}

/// `POST /api/v1/blocks`.
pub async fn create_block(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CreateBlockRequest>,
) -> Result<Response, ApiError> {
    let b = app
        .service
        .create_block(&req.cidr, req.expires_in_ms, req.reason, "admin")
        .await?;
    tracing::info!(block_id = %b.id, cidr = %b.cidr, expires_at_ms = ?b.expires_at_ms, "IP block added");
    Ok((StatusCode::CREATED, Json(b)).into_response())
}

/// `GET /api/v1/blocks`: the blocks in force (expired ones left out).
pub async fn list_blocks(State(app): State<AppState>) -> Result<Json<BlockList>, ApiError> {
    let now = now_ms(&app);
    let mut blocks = app.service.store().list_blocks().await.map_err(store_err)?;
    blocks.retain(|b| b.expires_at_ms.is_none_or(|t| t > now));
    Ok(Json(BlockList { blocks }))
}

/// `DELETE /api/v1/blocks/{id}`.
pub async fn delete_block(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found(format!("block {id} not found")));
    }
    app.service
        .delete_block(&id, "admin", "block.delete")
        .await?;
    tracing::info!(block_id = %id, "IP block removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodQuery {
    period: Option<String>,
}

fn period_start(app: &AppState, p: &Pipelines, s: Option<&str>) -> Result<u64, ApiError> {
    let period = p.ctx.config.billing.period;
    match s {
        Some(s) => period.parse_label(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "period: '{s}' is not {} or a time in ms since the Unix epoch",
                if period == billing::Period::Monthly {
                    "YYYY-MM"
                } else {
                    "a period start"
                }
            ))
        }),
        // The last closed period.
        None => Ok(period.prev(period.start_of(now_ms(app)))),
    }
}

fn view(p: &Pipelines, r: BillingRecord) -> BillingView {
    BillingView {
        amount: nanos_to_decimal(r.amount_nanos),
        period: p.ctx.config.billing.period.label(r.period_start_ms),
        record: r,
    }
}

/// `GET /api/v1/billing/{key_id}?period=`: the key's record of one period,
/// or its latest records when `period` is absent.
pub async fn key_billing(
    State(app): State<AppState>,
    ApiPath(key_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<BillingList>, ApiError> {
    let p = pipelines(&app)?;
    if app.service.key(&key_id).is_none()
        && app
            .service
            .store()
            .get_key(&key_id)
            .await
            .map_err(store_err)?
            .is_none()
    {
        return Err(ApiError::not_found(format!("key {key_id} not found")));
    }
    let records = match q.period.as_deref() {
        Some(s) => {
            let start = period_start(&app, p, Some(s))?;
            app.service
                .store()
                .get_billing(&key_id, start)
                .await
                .map_err(store_err)?
                .into_iter()
                .collect()
        }
        None => app
            .service
            .store()
            .list_billing_for_key(&key_id, 24)
            .await
            .map_err(store_err)?,
    };
    Ok(Json(BillingList {
        records: records.into_iter().map(|r| view(p, r)).collect(),
    }))
}

/// `GET /api/v1/billing?period=`: every key's record of one period (default:
/// the last closed one).
pub async fn list_billing(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<BillingList>, ApiError> {
    let p = pipelines(&app)?;
    let start = period_start(&app, p, q.period.as_deref())?;
    let records = app
        .service
        .store()
        .list_billing_for_period(start)
        .await
        .map_err(store_err)?;
    Ok(Json(BillingList {
        records: records.into_iter().map(|r| view(p, r)).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    period: String,
}

/// `POST /api/v1/billing/close {"period": …}`: computes (again) the records
/// of a closed period. Idempotent: the same records, never a second one.
pub async fn close_billing(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<CloseRequest>,
) -> Result<Json<BillingList>, ApiError> {
    let p = pipelines(&app)?;
    let start = period_start(&app, p, Some(&req.period))?;
    let end = p.ctx.config.billing.period.end_of(start);
    let now = now_ms(&app);
    if end > now {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!(
                "period {} has not ended yet (it ends at {end} ms)",
                p.ctx.config.billing.period.label(start)
            ),
        ));
    }
    // Usage admitted before the period's end must be written first: wait a
    // few flushes for it, then say what blocks the close.
    let g = p.ctx.config.billing.period.granularity();
    let mut waited = 0;
    while p.ctx.host().unwritten_usage_before(g, end) {
        if waited >= 40 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                format!(
                    "period {} cannot close yet: usage admitted before its end is not written \
                     (is the usage store reachable?); retry later",
                    p.ctx.config.billing.period.label(start)
                ),
            ));
        }
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let records = billing::close_period(&p.ctx, start, now)
        .await
        .map_err(store_err)?;
    Ok(Json(BillingList {
        records: records.into_iter().map(|r| view(p, r)).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsQuery {
    from: Option<u64>,
    to: Option<u64>,
    granularity: Option<Granularity>,
    top: Option<usize>,
}

/// `GET /api/v1/analytics/usage?from=&to=&granularity=&top=`: top keys by
/// usage and usage by tier over a range, from the usage rollups.
pub async fn usage_analytics(
    State(app): State<AppState>,
    ApiQuery(q): ApiQuery<AnalyticsQuery>,
) -> Result<Json<UsageAnalytics>, ApiError> {
    let granularity = q.granularity.unwrap_or(Granularity::Hour);
    let to_ms = q.to.unwrap_or(now_ms(&app) + 1);
    let from_ms = q
        .from
        .unwrap_or_else(|| to_ms.saturating_sub(granularity.millis() * 24));
    if from_ms >= to_ms {
        return Err(ApiError::invalid(
            "from must be before to (both in ms since the Unix epoch)",
        ));
    }
    if (to_ms - from_ms) / granularity.millis() > super::admin::MAX_HISTORY_BUCKETS {
        return Err(ApiError::invalid(format!(
            "the range spans more than {} {} buckets",
            super::admin::MAX_HISTORY_BUCKETS,
            granularity.as_str()
        )));
    }
    let top = q.top.unwrap_or(10);
    if !(1..=1_000).contains(&top) {
        return Err(ApiError::invalid("top: must be between 1 and 1000"));
    }
    let mut keys = app.service.cached_keys();
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let mut totals = Vec::new();
    let mut tiers: BTreeMap<String, TierUsageTotal> = BTreeMap::new();
    for k in keys {
        let units: u64 = app
            .service
            .store()
            .usage_history(&k.key_id, granularity, from_ms, to_ms)
            .await
            .map_err(store_err)?
            .iter()
            .map(|b| b.units)
            .sum();
        if units == 0 {
            continue;
        }
        let t = tiers
            .entry(k.tier.clone())
            .or_insert_with(|| TierUsageTotal {
                tier: k.tier.clone(),
                units: 0,
                active_keys: 0,
            });
        t.units += units;
        t.active_keys += 1;
        totals.push(KeyUsageTotal {
            key_id: k.key_id.clone(),
            owner: k.owner.clone(),
            tier: k.tier.clone(),
            units,
        });
    }
    let total_units = totals.iter().map(|t| t.units).sum();
    totals.sort_by(|a, b| b.units.cmp(&a.units).then_with(|| a.key_id.cmp(&b.key_id)));
    totals.truncate(top);
    let mut by_tier: Vec<_> = tiers.into_values().collect();
    by_tier.sort_by(|a, b| b.units.cmp(&a.units).then_with(|| a.tier.cmp(&b.tier)));
    Ok(Json(UsageAnalytics {
        from_ms,
        to_ms,
        granularity,
        total_units,
        top_keys: totals,
        by_tier,
    }))
}

/// `GET /api/v1/abuse/rules`.
pub async fn get_abuse_rules(
    State(app): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = pipelines(&app)?;
    Ok(Json(serde_json::json!({ "rules": p.abuse_rules() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesRequest {
    rules: Vec<AbuseRule>,
}

/// `PUT /api/v1/abuse/rules {"rules":[…]}`: replaces the rules on every node
/// (until restart; the config file gives the rules at start).
pub async fn put_abuse_rules(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<RulesRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = pipelines(&app)?;
    if req.rules.len() > 32 {
        return Err(ApiError::invalid("rules: at most 32 rules"));
    }
    for (i, r) in req.rules.iter().enumerate() {
        r.validate()
            .map_err(|(f, m)| ApiError::invalid(format!("rules[{i}].{f}: {m}")))?;
    }
    p.set_abuse_rules(req.rules.clone());
    app.service.rules_changed();
    tracing::info!(rules = req.rules.len(), "abuse rules replaced");
    Ok(Json(serde_json::json!({ "rules": req.rules })))
}

/// `GET /api/v1/pipelines`: queue counters and restarts.
pub async fn pipeline_stats(
    State(app): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = pipelines(&app)?;
    let queues: BTreeMap<_, _> = p
        .stats()
        .into_iter()
        .map(|(n, s)| {
            (
                n,
                serde_json::json!({
                    "accepted": s.accepted, "dropped": s.dropped, "processed": s.processed,
                    "queued": s.queued, "inflight": s.inflight
                }),
            )
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "queues": queues, "restarts": p.restarts() }),
    ))
}
