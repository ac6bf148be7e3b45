//! A JSON body extractor whose every rejection is a JSON error naming the
//! problem (axum's own answers in plain text).

use super::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ringlimit_protocol::ErrorCode;
use serde::de::DeserializeOwned;

/// `ApiJson<T>`: the body parsed as JSON into `T`. An empty body reads as `{}`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
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
}
