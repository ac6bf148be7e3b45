//! `/api/v1/authorize`, any method: the check for proxies that ask with
//! headers (nginx `auth_request`, Traefik `forwardAuth`, Kong, Envoy's
//! `ext_authz` over HTTP, which keeps the original request's method).
//!
//! - The api_key comes from `Authorization: Bearer <key>` or, failing that,
//!   `X-Api-Key: <key>`.
//! - The cost from `X-RateLimit-Cost` (a whole number ≥ 1; default 1).
//! - The caller's address for IP blocks from `X-Real-IP`, when the proxy
//!   sets it (nginx: `proxy_set_header X-Real-IP $remote_addr;`). Like
//!   `client_ip` in a validate body, it is trusted: the data plane is for
//!   the services and proxies in front of them, not for the public.
//!
//! The answer is the validate answer's status (200, 429, 401, 403, 503) with
//! the same `RateLimit-Policy`/`RateLimit` headers and `Retry-After` on 429,
//! and on 200 `X-RateLimit-Key-Id` and `X-RateLimit-Tier` naming the key, so
//! a proxy can pass them on upstream. Admitted and denied answers have an
//! empty body (a proxy reads only the status and headers); every other
//! answer carries the usual JSON error body naming the problem. The request
//! body, if any, is not read.

use super::AppState;
use super::error::ApiError;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ringlimit_protocol::ErrorCode;
use ringlimit_protocol::validate::MAX_COST;

pub const AUTHORIZE: &str = "/api/v1/authorize";

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_RATELIMIT_COST: HeaderName = HeaderName::from_static("x-ratelimit-cost");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_RATELIMIT_KEY_ID: HeaderName = HeaderName::from_static("x-ratelimit-key-id");
static X_RATELIMIT_TIER: HeaderName = HeaderName::from_static("x-ratelimit-tier");

/// The api_key a request carries: a Bearer credential, or `X-Api-Key`.
fn api_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |m: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            m.to_string(),
        )
    };
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not visible ASCII"))?;
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthorized(
                "the Authorization header must be `Bearer <api_key>`",
            ));
        }
        let key = rest.trim();
        if key.is_empty() {
            return Err(unauthorized("the Authorization header holds no api_key"));
        }
        return Ok(key);
    }
    if let Some(v) = headers.get(&X_API_KEY) {
        let key = v
            .to_str()
            .map_err(|_| unauthorized("the X-Api-Key header is not visible ASCII"))?
            .trim();
        if key.is_empty() {
            return Err(unauthorized("the X-Api-Key header is empty"));
        }
        return Ok(key);
    }
    Err(unauthorized(
        "no api_key: send `Authorization: Bearer <api_key>` or `X-Api-Key: <api_key>`",
    ))
}

/// `X-RateLimit-Cost`, 1 when absent.
fn cost(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(v) = headers.get(&X_RATELIMIT_COST) else {
        return Ok(1);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("X-RateLimit-Cost must be a whole number from 1 to {MAX_COST}"),
        )
    };
    let n = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(bad)?;
    if n == 0 || n > MAX_COST {
        return Err(bad());
    }
    Ok(n)
}

/// `X-Real-IP`, when present.
fn client_ip(headers: &HeaderMap) -> Result<Option<std::net::IpAddr>, ApiError> {
    headers
        .get(&X_REAL_IP)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidRequest,
                        "X-Real-IP is not an IPv4 or IPv6 address",
                    )
                })
        })
        .transpose()
}

/// The answer to an authorize request (see the module docs).
pub async fn authorize_answer(app: &AppState, headers: &HeaderMap) -> Response {
    let parsed = api_key(headers).and_then(|k| {
        if k.len() > super::data::MAX_API_KEY_CHARS {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                format!(
                    "the api_key is longer than {} characters",
                    super::data::MAX_API_KEY_CHARS
                ),
            ));
        }
        Ok((k, cost(headers)?, client_ip(headers)?))
    });
    let (key, cost, ip) = match parsed {
        Ok(p) => p,
        Err(e) => {
            let unauthorized = e.status == StatusCode::UNAUTHORIZED;
            let mut res = e.into_response();
            if unauthorized {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return res;
        }
    };
    let outcome = match app.router.validate_now(key, cost, ip) {
        Some(o) => o,
        None => app.router.validate(key, cost, ip).await,
    };
    let (status, b) = super::data::answer(outcome);
    let mut res = if status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS {
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = status;
        r
    } else {
        let mut buf = Vec::with_capacity(160);
        ringlimit_protocol::json::write_validate(&mut buf, &b);
        let mut r = Response::new(axum::body::Body::from(buf));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let h = res.headers_mut();
    super::data::ratelimit_headers(&b.limits, h);
    match status {
        StatusCode::OK => {
            for (name, v) in [
                (&X_RATELIMIT_KEY_ID, &b.key_id),
                (&X_RATELIMIT_TIER, &b.tier),
            ] {
                if let Some(v) = v.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    h.insert(name.clone(), v);
                }
            }
        }
        StatusCode::TOO_MANY_REQUESTS => {
            let secs = b.retry_after_ms.unwrap_or(1_000).div_ceil(1_000).max(1);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        StatusCode::UNAUTHORIZED => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    res
}

/// The route in the data router (the fast path answers it first; this
/// serves the same answer wherever the router is used on its own).
pub async fn authorize(State(app): State<AppState>, headers: HeaderMap) -> Response {
    authorize_answer(&app, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn the_key_comes_from_a_bearer_credential_then_x_api_key() {
        let k = |p: &[(&str, &str)]| api_key(&headers(p)).map(str::to_owned);
        assert_eq!(
            k(&[("authorization", "Bearer rl_a_b")]).ok().as_deref(),
            Some("rl_a_b")
        );
        assert_eq!(
            k(&[("authorization", "bearer  rl_a_b ")]).ok().as_deref(),
            Some("rl_a_b")
        );
        assert_eq!(
            k(&[("x-api-key", "rl_c_d")]).ok().as_deref(),
            Some("rl_c_d")
        );
        assert_eq!(
            k(&[("authorization", "Bearer rl_a_b"), ("x-api-key", "rl_c_d")])
                .ok()
                .as_deref(),
            Some("rl_a_b")
        );
        for bad in [
            vec![],
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            vec![("authorization", "Bearer ")],
            vec![("x-api-key", " ")],
        ] {
            let e = k(&bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
    }

    #[test]
    fn the_cost_is_a_whole_number_from_one_to_the_maximum() {
        let c = |v: &str| cost(&headers(&[("x-ratelimit-cost", v)])).map_err(|e| e.status);
        assert_eq!(cost(&HeaderMap::new()).ok(), Some(1));
        assert_eq!(c("7").ok(), Some(7));
        assert_eq!(c(" 3 ").ok(), Some(3));
        assert_eq!(c(&MAX_COST.to_string()).ok(), Some(MAX_COST));
        for bad in [
            "0",
            "-1",
            "1.5",
            "abc",
            "",
            "+2",
            &(MAX_COST + 1).to_string(),
            "99999999999999999999999",
        ] {
            assert_eq!(c(bad).err(), Some(StatusCode::BAD_REQUEST), "{bad:?}");
        }
    }

    #[test]
    fn the_client_address_is_x_real_ip_when_present() {
        assert_eq!(client_ip(&HeaderMap::new()).ok(), Some(None));
        assert_eq!(
            client_ip(&headers(&[("x-real-ip", "192.0.2.7")]))
                .ok()
                .flatten(),
            "192.0.2.7".parse().ok()
        );
        assert!(client_ip(&headers(&[("x-real-ip", "nope")])).is_err());
    }
}
