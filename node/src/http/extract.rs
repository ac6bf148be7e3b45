//! A JSON body extractor whose every rejection is a JSON error naming the
//! problem (axum's own answers in plain text).

use super::AppState;
use super::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use ringlimit_protocol::ErrorCode;
use serde::de::DeserializeOwned;

/// `ApiJson<T>`: the body parsed as JSON into `T`. An empty body reads as `{}`.
/// A body must be declared JSON (415 otherwise, see [`require_json`]) and
/// arrive within the body timeout (408, see [`body_timed_out`]).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json(req.headers())?;
        let read = axum::body::Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(state.config.http.body_timeout, read)
            .await
            .map_err(|_| body_timed_out())?
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::PayloadTooLarge,
                        "the request body is larger than the configured limit",
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidRequest,
                        format!("could not read the body: {r}"),
                    )
                }
            })?;
        let slice: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse(slice).map(ApiJson)
    }
}

/// 408: the body did not arrive within the body timeout (the answer closes
/// the connection).
pub fn body_timed_out() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        "the request body did not arrive within the body timeout",
    )
}

/// Whether a request declares a body: a `Content-Length` above 0, or a
/// `Transfer-Encoding` (a chunked body of unknown length).
pub fn declares_body(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_LENGTH) {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_none_or(|n| n > 0),
        None => headers.contains_key(TRANSFER_ENCODING),
    }
}

/// Whether a `Content-Type` is JSON: `application/json` or
/// `application/<anything>+json`, with any parameters, in any case.
pub fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(v) = content_type.to_str() else {
        return false;
    };
    let essence = v.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    if !kind.eq_ignore_ascii_case("application") {
        return false;
    }
    sub.eq_ignore_ascii_case("json")
        || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// 415 for a request that has a body not declared as JSON; a missing
/// `Content-Type` is refused too (as `curl -d` without `-H` sends a form).
/// A request without a body passes whatever its `Content-Type`.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if !declares_body(headers) {
        return Ok(());
    }
    match headers.get(CONTENT_TYPE) {
        Some(v) if is_json(v) => Ok(()),
        Some(v) => {
            let shown: String = String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(100)
                .collect();
            Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                format!("the body must be JSON (content-type: application/json), not {shown}"),
            ))
        }
        None => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "the body has no content-type; send it with content-type: application/json",
        )),
    }
}

/// Parses JSON: syntax errors are 400 `invalid_json`, shape errors 422
/// `invalid_request` naming the field (`limits[0].algorithm: unknown variant …`).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object. serde would also read a struct from an
    // array of its fields in order (`[]` as "all defaults"), so anything
    // else is refused before it gets the chance.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::invalid(
            "invalid request: the body must be a JSON object",
        ));
    }
    // The common case pays nothing for field paths; only a body that fails
    // is parsed again to name where.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut *de);
    if result.is_ok() {
        // Trailing characters after the value are a syntax error too.
        de.end().map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                format!("malformed JSON: {e}"),
            )
        })?;
    }
    result.map_err(|e| {
        use serde_json::error::Category;
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidJson,
                format!("malformed JSON: {inner}"),
            ),
            Category::Data if path == "." || path.is_empty() => {
                ApiError::invalid(format!("invalid request: {inner}"))
            }
            Category::Data => ApiError::invalid(format!("invalid request: {path}: {inner}")),
        }
    })
}

/// Query parameters whose rejection is a JSON error.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    format!("invalid query: {}", e.body_text()),
                )
            })
    }
}

/// Path parameters whose rejection is a JSON error.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::InvalidRequest,
                    format!("invalid path: {}", e.body_text()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_protocol::admin::RotateRequest;

    #[test]
    fn only_an_object_is_a_body() {
        for body in [&b"[]"[..], b"[5000]", b" null", b"\"x\"", b"7"] {
            let e = parse::<RotateRequest>(body).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
            assert!(e.message.contains("JSON object"), "{}", e.message);
        }
        let e = parse::<RotateRequest>(b"[1,").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(parse::<RotateRequest>(b" {}").is_ok());
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
            "application/problem+JSON ;x=y",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for no in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/+json",
            "json",
            "",
            "text/json",
        ] {
            assert!(!is_json(&HeaderValue::from_static(no)), "{no}");
        }
    }

    #[test]
    fn only_a_declared_body_needs_json() {
        assert!(require_json(&headers(&[])).is_ok());
        assert!(require_json(&headers(&[("content-length", "0")])).is_ok());
        assert!(
            require_json(&headers(&[
                ("content-length", "0"),
                ("content-type", "text/plain")
            ]))
            .is_ok()
        );
        let e = require_json(&headers(&[("content-length", "2")])).expect_err("refused");
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let e = require_json(&headers(&[
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
        ]))
        .expect_err("refused");
        assert_eq!(e.code, ErrorCode::UnsupportedMediaType);
        assert!(
            require_json(&headers(&[
                ("content-length", "2"),
                ("content-type", "application/json")
            ]))
            .is_ok()
        );
    }
}
