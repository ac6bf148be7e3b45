//! The data plane's front service: `POST /api/v1/validate` and
//! `POST /api/v1/validate/batch` are answered here, without the router's
//! per-request service clone, the boxed layers and the trace layer; every
//! other request (health, readiness, metrics, wrong methods, unknown paths)
//! goes to the axum router with its layers, unchanged.
//!
//! The check routes keep the contract of the rest of the plane: the body
//! limit (413), JSON errors naming the problem (400/422), an `X-Request-Id`
//! taken from the request or made, and returned. A debug event per request
//! is logged when the `debug` level is on for this module.

use super::error::ApiError;
use super::{AppState, RequestIds, X_REQUEST_ID};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use ringlimit_protocol::ErrorCode;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

const VALIDATE: &str = "/api/v1/validate";
const VALIDATE_BATCH: &str = "/api/v1/validate/batch";

/// The data plane as one service (see the module docs).
#[derive(Clone, Debug)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    app: AppState,
    ids: RequestIds,
    rest: Router,
}

#[derive(Clone, Copy)]
enum Route {
    Validate,
    Batch,
    Authorize,
}

impl DataPlane {
    /// `rest` answers every request this service does not.
    pub fn new(app: AppState, ids: RequestIds, rest: Router) -> Self {
        DataPlane {
            inner: Arc::new(Inner { app, ids, rest }),
        }
    }
}

fn route_of(req: &Request<Body>) -> Option<Route> {
    let post = req.method() == Method::POST;
    match req.uri().path() {
        VALIDATE if post => Some(Route::Validate),
        VALIDATE_BATCH if post => Some(Route::Batch),
        // Any method: proxies ask with the original request's method
        // (Envoy's ext_authz) or with GET (Traefik), and the body is never read.
        super::authorize::AUTHORIZE => Some(Route::Authorize),
        _ => None,
    }
}

/// The request body, at most `limit` bytes, within `timeout`.
async fn read_body(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, ApiError> {
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| super::extract::body_timed_out())?
    {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the configured limit",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("could not read the body: {e}"),
        )),
    }
}

/// Parses a body as the plane's extractor does: blank reads as `{}`.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return super::extract::parse(b"{}");
    }
    super::extract::parse(bytes)
}

impl Inner {
    async fn check(&self, route: Route, req: Request<Body>) -> Response {
        if let Route::Authorize = route {
            // Headers only: the body, if any, is not read.
            return super::authorize::authorize_answer(&self.app, req.headers()).await;
        }
        let limit = self.app.config.max_body_bytes;
        if let Err(e) = super::extract::require_json(req.headers()) {
            return e.into_response();
        }
        let content_length = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|n| n > limit as u64) {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                "the request body is larger than the configured limit",
            )
            .into_response();
        }
        let timeout = self.app.config.http.body_timeout;
        let bytes = match read_body(req.into_body(), limit, timeout).await {
            Ok(b) => b,
            Err(e) => return e.into_response(),
        };
        let answer = if let Route::Batch = route {
            match parse(&bytes) {
                Ok(v) => super::data::batch_answer(&self.app, &v).await,
                Err(e) => Err(e),
            }
        } else {
            match parse(&bytes) {
                Ok(v) => super::data::validate_answer(&self.app, &v).await,
                Err(e) => Err(e),
            }
        };
        answer.unwrap_or_else(IntoResponse::into_response)
    }

    async fn call(self: Arc<Self>, req: Request<Body>) -> Response {
        let Some(route) = route_of(&req) else {
            return match tower::ServiceExt::oneshot(self.rest.clone(), req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        };
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) => v.clone(),
            None => self.ids.next(),
        };
        let started =
            tracing::enabled!(tracing::Level::DEBUG).then(ringlimit_actors::clock::monotonic);
        let path = match route {
            Route::Validate => VALIDATE,
            Route::Batch => VALIDATE_BATCH,
            Route::Authorize => super::authorize::AUTHORIZE,
        };
        let mut res = self.check(route, req).await;
        if let Some(t) = started {
            tracing::debug!(
                path,
                status = res.status().as_u16(),
                latency_us = t.elapsed().as_micros() as u64,
                request_id = id.to_str().unwrap_or(""),
                "finished processing request"
            );
        }
        res.headers_mut().insert(X_REQUEST_ID.clone(), id);
        res
    }
}

impl tower::Service<Request<Body>> for DataPlane {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(guarded(inner.call(req)).await) })
    }
}

/// Runs a request's future; a panic in it becomes a JSON 500 (see
/// [`super::error::panicked`]) instead of a reset connection.
async fn guarded(f: impl Future<Output = Response>) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r,
        Err(p) => super::error::panicked(&*p),
    }
}

/// A request id as a header value.
pub(super) fn request_id(prefix: &str, n: u64) -> HeaderValue {
    let mut buf = Vec::with_capacity(prefix.len() + 17);
    buf.extend_from_slice(prefix.as_bytes());
    buf.push(b'-');
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
    HeaderValue::from_maybe_shared(axum::body::Bytes::from(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("request"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_request_is_answered_with_a_json_500() {
        let r = guarded(async {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            Response::new(Body::empty())
        })
        .await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(r.into_body(), 4096)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["error"]["code"], "internal", "{v}");
    }

    #[tokio::test]
    async fn a_panicking_route_of_the_routers_is_answered_with_a_json_500() {
        let app = super::super::with_common_layers(
            Router::new().route(
                "/boom",
                axum::routing::get(|| async {
                    if std::hint::black_box(true) {
                        panic!("boom");
                    }
                    "never"
                }),
            ),
            1024,
            RequestIds::new("t".into()),
        );
        let req = Request::builder()
            .uri("/boom")
            .body(Body::empty())
            .expect("request");
        let r = tower::ServiceExt::oneshot(app, req)
            .await
            .expect("answered");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(r.headers().contains_key("x-request-id"));
        let body = axum::body::to_bytes(r.into_body(), 4096)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["error"]["code"], "internal", "{v}");
    }

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_hex() {
        assert_eq!(request_id("ab12", 1), "ab12-1");
        assert_eq!(request_id("ab12", 0x1f), "ab12-1f");
        assert_eq!(request_id("ab12", u64::MAX), "ab12-ffffffffffffffff");
        assert_eq!(request_id("ab12", 0), "ab12-0");
    }
}
