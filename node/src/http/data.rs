//! The data plane: `POST /api/v1/validate` and `/api/v1/validate/batch`.

use super::AppState;
use super::error::ApiError;
use super::extract::ApiJson;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use ringlimit_protocol::validate::{
    BatchRequest, BatchResult, Checked, LimitStatus, ValidateOutcome, ValidateRequest,
    ValidateResponse,
};
use ringlimit_protocol::{ErrorCode, ErrorDetail};

/// Longest api_key looked at; longer ones are malformed, not unknown.
pub const MAX_API_KEY_CHARS: usize = 256;

/// Metric names.
pub mod metric {
    pub const VALIDATE: &str = "ringlimit_validate_total";
}

/// `ringlimit_validate_total` by outcome: the handles are made once, so a
/// check does not look its counter up in the registry.
fn count(outcome: &ValidateOutcome) {
    use std::sync::OnceLock;
    const LABELS: [&str; 8] = ValidateOutcome::LABELS;
    static COUNTERS: OnceLock<Vec<metrics::Counter>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| {
        LABELS
            .iter()
            .map(|l| metrics::counter!(metric::VALIDATE, "outcome" => *l))
            .collect()
    });
    let label = outcome.label();
    match LABELS.iter().position(|l| *l == label) {
        Some(i) => counters[i].increment(1),
        None => metrics::counter!(metric::VALIDATE, "outcome" => label).increment(1),
    }
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn body(key_id: Option<String>, tier: Option<String>) -> ValidateResponse {
    ValidateResponse {
        allowed: false,
        key_id: key_id.map(Into::into),
        tier: tier.map(Into::into),
        limits: vec![],
        retry_after_ms: None,
        denied_by: None,
        error: None,
        suspended_until_ms: None,
        fail_open: false,
    }
}

fn checked(allowed: bool, c: Checked) -> ValidateResponse {
    ValidateResponse {
        allowed,
        key_id: Some(c.key_id),
        tier: Some(c.tier),
        limits: c.limits,
        retry_after_ms: c.retry_after_ms,
        denied_by: c.denied_by,
        error: None,
        suspended_until_ms: None,
        fail_open: false,
    }
}

fn with_error(
    mut b: ValidateResponse,
    code: ErrorCode,
    message: impl Into<String>,
) -> ValidateResponse {
    b.error = Some(ErrorDetail {
        code,
        message: message.into(),
    });
    b
}

/// Status and body of one check: the one place a [`ValidateOutcome`]
/// becomes HTTP.
pub fn answer(outcome: ValidateOutcome) -> (StatusCode, ValidateResponse) {
    count(&outcome);
    match outcome {
        ValidateOutcome::Allowed(c) => (StatusCode::OK, checked(true, c)),
        ValidateOutcome::Denied(c) => {
            let msg = format!(
                "rate limit '{}' exceeded",
                c.denied_by.as_deref().unwrap_or("?")
            );
            (
                StatusCode::TOO_MANY_REQUESTS,
                with_error(checked(false, c), ErrorCode::RateLimited, msg),
            )
        }
        ValidateOutcome::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            with_error(
                body(None, None),
                ErrorCode::Unauthorized,
                "unknown or revoked api_key",
            ),
        ),
        ValidateOutcome::Suspended {
            key_id,
            tier,
            reason,
            until_ms,
        } => {
            let mut b = with_error(
                body(Some(key_id), Some(tier)),
                ErrorCode::Suspended,
                suspension_message(reason.as_deref()),
            );
            b.suspended_until_ms = until_ms;
            (StatusCode::FORBIDDEN, b)
        }
        ValidateOutcome::CostExceedsCapacity {
            key_id,
            tier,
            message,
        } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            with_error(
                body(Some(key_id), Some(tier)),
                ErrorCode::CostExceedsCapacity,
                message,
            ),
        ),
        // Checked before the key is: the caller may not be the key's owner,
        // so the answer names no block, range, expiry or reason.
        ValidateOutcome::IpBlocked { .. } => (
            StatusCode::FORBIDDEN,
            with_error(body(None, None), ErrorCode::Forbidden, "forbidden"),
        ),
        ValidateOutcome::Unavailable {
            key_id,
            tier,
            message,
        } => (
            StatusCode::SERVICE_UNAVAILABLE,
            with_error(body(key_id, tier), ErrorCode::Unavailable, message),
        ),
        ValidateOutcome::FailOpen { key_id, tier } => {
            let mut b = body(Some(key_id), Some(tier));
            b.allowed = true;
            b.fail_open = true;
            (StatusCode::OK, b)
        }
    }
}

/// What a suspended key's caller is told: who suspended it (an operator,
/// or an abuse rule by name), never a rule's thresholds, which the audit
/// log and the admin plane keep.
fn suspension_message(reason: Option<&str>) -> String {
    match reason {
        None => "the key is suspended by an operator".into(),
        Some(r) => match ringlimit_actors::pipeline::abuse_rule_of(r) {
            Some(rule) => format!("the key is suspended by abuse rule '{rule}'"),
            None => format!("the key is suspended: {r}"),
        },
    }
}

fn window_secs(ms: u64) -> u64 {
    ms.div_ceil(1_000).max(1)
}

/// `RateLimit-Policy` and `RateLimit` in the IETF draft's structured-field
/// syntax, written without the formatting machinery.
pub fn ratelimit_headers(limits: &[LimitStatus], headers: &mut HeaderMap) {
    if limits.is_empty() {
        return;
    }
    let mut policy = Vec::with_capacity(48 * limits.len());
    let mut state = Vec::with_capacity(40 * limits.len());
    let mut num = itoa::Buffer::new();
    for (i, l) in limits.iter().enumerate() {
        if i > 0 {
            policy.extend_from_slice(b", ");
            state.extend_from_slice(b", ");
        }
        for (out, a, x, b, y) in [
            (&mut policy, "q", l.limit, "w", window_secs(l.window_ms)),
            (
                &mut state,
                "r",
                l.remaining,
                "t",
                l.reset_after_ms.div_ceil(1_000),
            ),
        ] {
            out.push(b'"');
            out.extend_from_slice(l.name.as_bytes());
            out.extend_from_slice(b"\";");
            out.extend_from_slice(a.as_bytes());
            out.push(b'=');
            out.extend_from_slice(num.format(x).as_bytes());
            out.push(b';');
            out.extend_from_slice(b.as_bytes());
            out.push(b'=');
            out.extend_from_slice(num.format(y).as_bytes());
        }
    }
    // A name a header cannot carry leaves the headers out, never the answer.
    if let Ok(v) = HeaderValue::from_maybe_shared(axum::body::Bytes::from(policy)) {
        headers.insert(RATELIMIT_POLICY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(axum::body::Bytes::from(state)) {
        headers.insert(RATELIMIT.clone(), v);
    }
}

/// Checks one validate request; its `client_ip`, parsed.
fn check_request(req: &ValidateRequest) -> Result<Option<std::net::IpAddr>, ApiError> {
    if req.api_key.is_empty() {
        return Err(ApiError::invalid("api_key must not be empty"));
    }
    if req.api_key.len() > MAX_API_KEY_CHARS {
        return Err(ApiError::invalid(format!(
            "api_key is longer than {MAX_API_KEY_CHARS} characters"
        )));
    }
    if req.resource.as_ref().is_some_and(|r| r.len() > 256) {
        return Err(ApiError::invalid("resource is longer than 256 characters"));
    }
    req.client_ip
        .as_deref()
        .map(|ip| {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::invalid("client_ip is not an IPv4 or IPv6 address"))
        })
        .transpose()
}

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A JSON body already written, with its status.
fn json_response(status: StatusCode, buf: Vec<u8>) -> Response {
    let mut res = Response::new(axum::body::Body::from(buf));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, APPLICATION_JSON.clone());
    res
}

/// The answer to one validate request: status, RateLimit headers,
/// `Retry-After` on 429, and the body.
pub async fn validate_answer(app: &AppState, req: &ValidateRequest) -> Result<Response, ApiError> {
    let client_ip = check_request(req)?;
    let outcome = match app.router.validate_now(&req.api_key, req.cost.0, client_ip) {
        Some(o) => o,
        None => {
            app.router
                .validate(&req.api_key, req.cost.0, client_ip)
                .await
        }
    };
    let (status, b) = answer(outcome);
    let mut buf = Vec::with_capacity(256);
    ringlimit_protocol::json::write_validate(&mut buf, &b);
    let mut res = json_response(status, buf);
    let headers = res.headers_mut();
    ratelimit_headers(&b.limits, headers);
    if status == StatusCode::TOO_MANY_REQUESTS {
        let secs = b.retry_after_ms.unwrap_or(1_000).div_ceil(1_000).max(1);
        headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Ok(res)
}

/// `POST /api/v1/validate`.
pub async fn validate(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> Result<Response, ApiError> {
    validate_answer(&app, &req).await
}

/// The answer to a batch: every check answered, in order.
pub async fn batch_answer(app: &AppState, req: &BatchRequest) -> Result<Response, ApiError> {
    if req.checks.is_empty() {
        return Err(ApiError::invalid("checks must hold at least one check"));
    }
    if req.checks.len() > app.config.max_batch {
        return Err(ApiError::invalid(format!(
            "checks holds {} checks; at most {} per request",
            req.checks.len(),
            app.config.max_batch
        )));
    }
    let client_ips = req
        .checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            check_request(c).map_err(|e| ApiError::invalid(format!("checks[{i}]: {}", e.message)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes = decide_batch(app, &req.checks, &client_ips).await;
    // `{"results":[…]}`, each result written as soon as it is formed.
    let mut buf = Vec::with_capacity(16 + 200 * outcomes.len());
    buf.extend_from_slice(b"{\"results\":[");
    for (i, outcome) in outcomes.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        let (status, body) = answer(outcome);
        ringlimit_protocol::json::write_batch_result(
            &mut buf,
            &BatchResult {
                status: status.as_u16(),
                body,
            },
        );
    }
    buf.extend_from_slice(b"]}");
    Ok(json_response(StatusCode::OK, buf))
}

/// Every check of a batch decided, in request order. The checks are
/// grouped by api_key, and the checks of an active key owned here are
/// decided in one step: the api_key hashed once, the key's cell locked
/// once, its checks in request order. The rest (keys to activate or load,
/// keys owned elsewhere) are sent on one by one, and wait together.
async fn decide_batch(
    app: &AppState,
    checks: &[ValidateRequest],
    client_ips: &[Option<std::net::IpAddr>],
) -> Vec<ValidateOutcome> {
    let n = checks.len();
    let mut outcomes: Vec<Option<ValidateOutcome>> = Vec::with_capacity(n);
    outcomes.resize_with(n, || None);
    // Request order within a key is kept by the index as the tie-break.
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        checks[a as usize]
            .api_key
            .cmp(&checks[b as usize].api_key)
            .then(a.cmp(&b))
    });
    let mut group: Vec<(u64, Option<std::net::IpAddr>)> = Vec::with_capacity(n);
    let mut group_at: Vec<usize> = Vec::with_capacity(n);
    let mut decided: Vec<ValidateOutcome> = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let api_key = checks[order[start] as usize].api_key.as_str();
        let mut end = start + 1;
        while end < n && checks[order[end] as usize].api_key == api_key {
            end += 1;
        }
        group.clear();
        group_at.clear();
        for &i in &order[start..end] {
            let i = i as usize;
            match app.router.ip_blocked(client_ips[i]) {
                Some(blocked) => outcomes[i] = Some(blocked),
                None => {
                    group.push((checks[i].cost.0, client_ips[i]));
                    group_at.push(i);
                }
            }
        }
        decided.clear();
        if !group.is_empty() && app.router.validate_now_many(api_key, &group, &mut decided) {
            for (&i, o) in group_at.iter().zip(decided.drain(..)) {
                outcomes[i] = Some(o);
            }
        }
        start = end;
    }
    // The checks left wait key by key: one key's checks one after another
    // in request order (the first activates the key, the rest usually take
    // the direct path), different keys together. Sent all at once, a later
    // check of a key could be decided before an earlier one that is still
    // on its way to the actor, and be admitted after the earlier's denial.
    let mut waiting: Vec<Vec<usize>> = Vec::new();
    let mut last_key: Option<&str> = None;
    for &i in &order {
        let i = i as usize;
        if outcomes[i].is_some() {
            continue;
        }
        let key = checks[i].api_key.as_str();
        match waiting.last_mut() {
            Some(g) if last_key == Some(key) => g.push(i),
            _ => waiting.push(vec![i]),
        }
        last_key = Some(key);
    }
    if !waiting.is_empty() {
        let futures = waiting.iter().map(|group| async move {
            let mut decided = Vec::with_capacity(group.len());
            for &i in group {
                let c = &checks[i];
                decided.push(
                    app.router
                        .validate(&c.api_key, c.cost.0, client_ips[i])
                        .await,
                );
            }
            decided
        });
        let decided = futures_util::future::join_all(futures).await;
        for (group, d) in waiting.iter().zip(decided) {
            for (&i, o) in group.iter().zip(d) {
                outcomes[i] = Some(o);
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| ValidateOutcome::unavailable("the check was not decided")))
        .collect()
}

/// `POST /api/v1/validate/batch`: every check answered, in order.
pub async fn validate_batch(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<Response, ApiError> {
    batch_answer(&app, &req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_actors::pipeline::{AbuseRule, suspension_reason};

    #[test]
    fn a_blocked_caller_learns_nothing_of_the_block() {
        let (s, b) = answer(ValidateOutcome::IpBlocked {
            cidr: "203.0.113.0/24".into(),
            expires_at_ms: Some(1_234_567),
        });
        assert_eq!(s, StatusCode::FORBIDDEN);
        let text = serde_json::to_string(&b).unwrap_or_default();
        assert!(!text.contains("203.0.113"), "{text}");
        assert!(!text.contains("1234567"), "{text}");
        let e = b.error.expect("an error");
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(b.suspended_until_ms, None);
    }

    #[test]
    fn a_suspended_caller_is_told_the_rule_but_not_its_thresholds() {
        let rule: AbuseRule = serde_json::from_value(serde_json::json!({
            "name": "denial-storm", "type": "violations", "max": 5,
            "window_ms": 10000, "suspend_for_ms": 3000
        }))
        .expect("a rule");
        let reason = suspension_reason(&rule);
        assert!(
            reason.contains("10000"),
            "the record keeps the thresholds: {reason}"
        );
        let (s, b) = answer(ValidateOutcome::Suspended {
            key_id: "k".into(),
            tier: "free".into(),
            reason: Some(reason),
            until_ms: Some(9),
        });
        assert_eq!(s, StatusCode::FORBIDDEN);
        let m = b.error.expect("an error").message;
        assert!(m.contains("denial-storm"), "{m}");
        assert!(!m.contains('5') && !m.contains("10000"), "{m}");
        assert_eq!(b.suspended_until_ms, Some(9));
        let (_, b) = answer(ValidateOutcome::Suspended {
            key_id: "k".into(),
            tier: "free".into(),
            reason: Some("unpaid invoice".into()),
            until_ms: None,
        });
        assert!(
            b.error
                .expect("an error")
                .message
                .contains("unpaid invoice")
        );
    }

    #[test]
    fn a_fail_open_answer_says_so_and_a_checked_one_does_not() {
        let (s, b) = answer(ValidateOutcome::FailOpen {
            key_id: "k".into(),
            tier: "free".into(),
        });
        assert_eq!(s, StatusCode::OK);
        assert!(b.allowed && b.fail_open);
        let text = serde_json::to_string(&b).unwrap_or_default();
        assert!(text.contains(r#""fail_open":true"#), "{text}");
        let (_, b) = answer(ValidateOutcome::Unauthorized);
        let text = serde_json::to_string(&b).unwrap_or_default();
        assert!(!text.contains("fail_open"), "{text}");
    }
}
