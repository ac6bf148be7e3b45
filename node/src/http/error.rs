//! The HTTP error type: `{"error":{"code":"…","message":"…"}}` with a status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ringlimit_actors::service::AdminError;
use ringlimit_protocol::{ErrorBody, ErrorCode};

/// An error answer of either plane.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        let mut res = (self.status, Json(ErrorBody::new(self.code, self.message))).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE
            || self.status == StatusCode::REQUEST_TIMEOUT
        {
            // The rest of the body is not read (too large, or it did not
            // arrive in time), so the connection cannot carry another
            // request: say so, or a client that reuses it has its next
            // request cut off.
            res.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            AdminError::Invalid { field, message } => {
                ApiError::invalid(format!("{field}: {message}"))
            }
            AdminError::Store(s) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                format!("the store is unavailable, try again later ({s})"),
            ),
            AdminError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the key limiter is unavailable",
            ),
        }
    }
}

/// Counted for every request whose handler panicked.
pub const PANICS: &str = "ringlimit_http_panics_total";

/// The answer to a request whose handler panicked: a JSON 500, logged and
/// counted. The connection and the node carry on.
pub fn panicked(detail: &(dyn std::any::Any + Send)) -> Response {
    let what = detail
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| detail.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    metrics::counter!(PANICS).increment(1);
    tracing::error!(panic = %what, "a request handler panicked; answered 500");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(ErrorBody::new(
            ErrorCode::Internal,
            "internal error while handling the request",
        )),
    )
        .into_response()
}

/// 404 for routes that do not exist.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::not_found(format!("no route for {path}"))
}

/// 405 for a known route with another method.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {path}"),
    )
}
