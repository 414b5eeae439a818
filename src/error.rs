//! The one error type that reaches HTTP, in the shape of SPEC §3:
//! `{"error": {"code", "message", "fields"?}}`.
//!
//! Clients branch on the stable `code`. Server-side failures are logged once, with their
//! cause, inside the request span; the client only ever sees "internal error".
//!
//! At the bottom of the crate: imports nothing of it; anyone may import it.

use std::collections::BTreeMap;

use axum::{
    extract::rejection::{PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Field name → messages, as in `"fields": {"username": ["is already taken"]}`.
pub(crate) type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: unparseable JSON, wrong types, bad query or path parameters.
    #[error("{message}")]
    BadRequest {
        message: String,
        fields: Option<FieldErrors>,
    },
    /// 401 with a specific code (`unauthenticated`, `invalid_credentials`, `invalid_token`, …).
    #[error("{1}")]
    Unauthorized(&'static str, &'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 409 naming the fields that clash.
    #[error("{message}")]
    Conflict {
        message: String,
        fields: FieldErrors,
    },
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("expected a JSON body with `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("{message}")]
    Validation {
        message: String,
        fields: FieldErrors,
    },
    #[error("too many requests, retry in {0} s")]
    RateLimited(u64),
    /// 503: this replica is admitting WebSocket upgrades at its rate; retry in a second
    /// (another replica may take it).
    #[error("too many connections at once; retry in a second")]
    Busy,
    /// 429: a limit on things held open (sockets) is reached; retry once one closes.
    #[error("{0}")]
    TooMany(&'static str),
    /// 503: a dependency (database, Redis) is down. The cause is logged, not shown.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub(crate) fn unauthenticated() -> Self {
        Self::Unauthorized("unauthenticated", "authentication required")
    }

    pub(crate) fn invalid_token() -> Self {
        Self::Unauthorized("invalid_token", "the token is invalid, expired or revoked")
    }

    pub(crate) fn invalid_credentials() -> Self {
        Self::Unauthorized("invalid_credentials", "wrong login or password")
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            fields: None,
        }
    }

    /// A 422 for one field.
    pub(crate) fn invalid_field(field: &str, message: &str) -> Self {
        let mut fields = FieldErrors::new();
        fields.insert(field.to_owned(), vec![message.to_owned()]);
        Self::Validation {
            message: "validation failed".into(),
            fields,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized(code, _) => code,
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Validation { .. } => "validation_failed",
            Self::RateLimited(_) | Self::TooMany(_) => "rate_limited",
            Self::Unavailable(_) | Self::Busy => "service_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited(_) | Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => {}
        }
        let fields = match &self {
            Self::BadRequest { fields, .. } => fields.clone(),
            Self::Validation { fields, .. } | Self::Conflict { fields, .. } => Some(fields.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                fields,
            },
        };
        let mut res = (status, axum::Json(body)).into_response();
        match self {
            Self::RateLimited(secs) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Self::TooMany(_) => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::Busy => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        res
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        if db_unavailable(&e) {
            Self::Unavailable(e.into())
        } else {
            Self::Internal(e.into())
        }
    }
}

/// Whether a database error means the database is down or restarting (a retryable 503), not a
/// bug: the pool could not hand out a connection, the connection broke (I/O), or the server
/// ended it (SQLSTATE class 57P: `terminating connection due to administrator command` when
/// PostgreSQL shuts down, crash shutdown, `cannot connect now` while it starts; class 08:
/// connection exceptions). The one place this rule lives: the store and the HTTP/WebSocket
/// error mapping both ask it.
pub(crate) fn db_unavailable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            match &**s {
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
                Sqlx::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
                _ => false,
            }
        }
        _ => false,
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let down = e.chain().any(|cause| {
            cause
                .downcast_ref::<sea_orm::DbErr>()
                .is_some_and(db_unavailable)
        });
        if down {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}

impl From<validator::ValidationErrors> for ApiError {
    fn from(errors: validator::ValidationErrors) -> Self {
        let mut fields = FieldErrors::new();
        for (field, errs) in errors.field_errors() {
            let messages = errs
                .iter()
                .map(|e| {
                    e.message
                        .as_ref()
                        .map_or_else(|| e.code.to_string(), ToString::to_string)
                })
                .collect();
            fields.insert(field.to_string(), messages);
        }
        Self::Validation {
            message: "validation failed".into(),
            fields,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request(format!("invalid path parameter: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(format!("invalid query parameter: {}", r.body_text()))
    }
}
