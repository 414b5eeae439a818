//! The error of every use-case, transport-neutral: a stable `code` that clients branch on, a
//! message, and for input errors the fields at fault. `http` maps it to a status and the JSON
//! error body (`http::error`); `ws` to an `error` frame or a close code.
//!
//! Server-side failures (`internal`, `service_unavailable`) carry their cause, which the
//! transport logs once and never shows.

use crate::{
    domain::validate::FieldErrors,
    store::{StoreError, db_unavailable},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// `bad_request`: input that cannot be read at all (unparseable JSON, wrong types, bad
    /// query or path parameters).
    #[error("{message}")]
    BadRequest {
        message: String,
        fields: Option<FieldErrors>,
    },
    /// Not authenticated, with a specific code (`unauthenticated`, `invalid_credentials`,
    /// `invalid_token`, …) and message.
    #[error("{1}")]
    Unauthorized(&'static str, &'static str),
    /// `forbidden`: authenticated, but this caller may not.
    #[error("{0}")]
    Forbidden(&'static str),
    /// `not_found`: no such thing (or one the caller may not see).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// `conflict`, naming the fields that clash.
    #[error("{message}")]
    Conflict {
        message: String,
        fields: FieldErrors,
    },
    /// `payload_too_large`.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// `unsupported_media_type`: a body that is not JSON.
    #[error("expected a JSON body with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// `validation_failed`: readable input that breaks a rule, per field.
    #[error("{message}")]
    Validation {
        message: String,
        fields: FieldErrors,
    },
    /// `rate_limited`: a rate limit; retry in that many seconds.
    #[error("too many requests, retry in {0} s")]
    RateLimited(u64),
    /// `service_unavailable`: this replica is admitting WebSocket upgrades at its rate; retry
    /// in a second (another replica may take it).
    #[error("too many connections at once; retry in a second")]
    Busy,
    /// `rate_limited`: a limit on things held open (sockets) is reached; retry once one
    /// closes.
    #[error("{0}")]
    TooMany(&'static str),
    /// `service_unavailable`: a dependency (database, Redis) is down. The cause is logged,
    /// not shown.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// `internal`: a bug or an unanticipated failure. The cause is logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl Error {
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

    /// `validation_failed` naming every field at fault.
    pub(crate) fn validation(fields: FieldErrors) -> Self {
        Self::Validation {
            message: "validation failed".into(),
            fields,
        }
    }

    /// `validation_failed` for one field.
    pub(crate) fn invalid_field(field: &str, message: &str) -> Self {
        let mut fields = FieldErrors::new();
        fields.insert(field.to_owned(), vec![message.to_owned()]);
        Self::validation(fields)
    }

    /// `Ok` if no field is at fault, else [`Error::validation`].
    ///
    /// # Errors
    /// `validation_failed` with `fields`.
    pub(crate) fn check(fields: FieldErrors) -> Result<(), Self> {
        if fields.is_empty() {
            Ok(())
        } else {
            Err(Self::validation(fields))
        }
    }

    /// The stable, machine-readable code.
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

    /// The fields at fault, if any.
    pub(crate) fn fields(&self) -> Option<&FieldErrors> {
        match self {
            Self::BadRequest { fields, .. } => fields.as_ref(),
            Self::Validation { fields, .. } | Self::Conflict { fields, .. } => Some(fields),
            _ => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::NotMember => Self::Forbidden("join the room to post in it"),
            StoreError::Conflict { message, fields } => Self::Conflict { message, fields },
            StoreError::Unavailable(e) => Self::Unavailable(e.into()),
            StoreError::Db(e) => Self::Internal(e.into()),
        }
    }
}

impl From<sea_orm::DbErr> for Error {
    fn from(e: sea_orm::DbErr) -> Self {
        StoreError::from(e).into()
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        let down = e.chain().any(|cause| {
            cause
                .downcast_ref::<sea_orm::DbErr>()
                .is_some_and(db_unavailable)
                || cause
                    .downcast_ref::<StoreError>()
                    .is_some_and(|s| matches!(s, StoreError::Unavailable(_)))
        });
        if down {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}
