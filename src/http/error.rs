//! The one mapping of [`chat::Error`] to HTTP: a status, the JSON error body
//! `{"error": {"code", "message", "fields"?}}` and, where it helps, `Retry-After`.
//!
//! Server-side failures are logged once, with their cause, inside the request span; the client
//! only ever sees "internal error" or "service temporarily unavailable".

use axum::{
    extract::rejection::{PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{chat::Error, domain::validate::FieldErrors};

/// The wire shape of an error, also used by the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub(crate) code: String,
    pub(crate) message: String,
    /// The input fields at fault, each with its messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(inline)]
    pub(crate) fields: Option<FieldErrors>,
}

/// The HTTP status of an error.
pub(crate) fn status(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
        Error::Unauthorized(..) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::RateLimited(_) | Error::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable(_) | Error::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// When to retry, for the errors that say.
fn retry_after(e: &Error) -> Option<HeaderValue> {
    match e {
        Error::RateLimited(secs) => Some(HeaderValue::from((*secs).max(1))),
        Error::TooMany(_) => Some(HeaderValue::from_static("5")),
        Error::Busy => Some(HeaderValue::from_static("1")),
        _ => None,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => {}
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                fields: self.fields().cloned(),
            },
        };
        let mut res = (status(&self), axum::Json(body)).into_response();
        if let Some(value) = retry_after(&self) {
            res.headers_mut().insert(header::RETRY_AFTER, value);
        }
        res
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("invalid path parameter: {}", r.body_text()))
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query parameter: {}", r.body_text()))
    }
}
