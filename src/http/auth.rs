//! `/api/v1/auth/*` (SPEC §4): register, login, refresh, logout.

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::Validate;

use super::error::ErrorBody;
use super::extract::{ClientAddr, Json, MaybeJson};
use crate::chat::Error;
use crate::domain::validate::FieldErrors;
use crate::{
    chat::{Chat, auth::CurrentUser},
    domain::{
        model::User,
        validate::{self, USERNAME_RE},
    },
    store::{self, sessions::Rotation},
};

pub(crate) fn routes() -> Router<Chat> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
pub(crate) struct RegisterRequest {
    /// 3–32 of `[A-Za-z0-9_.-]`, unique case-insensitively.
    #[schema(value_type = String, required = true, min_length = 3, max_length = 32, pattern = r"^[A-Za-z0-9_.\-]+$")]
    #[validate(
        required(message = "is required"),
        length(min = 3, max = 32, message = "must be 3 to 32 characters"),
        regex(path = *USERNAME_RE, message = "may contain only letters, digits, `_`, `.` and `-`")
    )]
    pub username: Option<String>,
    /// Unique case-insensitively.
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    #[validate(
        required(message = "is required"),
        email(message = "is not a valid email address"),
        length(max = 254, message = "is too long"),
        custom(function = "plain_text")
    )]
    pub email: Option<String>,
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    #[validate(
        required(message = "is required"),
        length(min = 8, max = 128, message = "must be 8 to 128 characters")
    )]
    pub password: Option<String>,
    /// When given, must equal `password`.
    pub password_confirm: Option<String>,
    #[schema(max_length = 100)]
    #[validate(
        length(max = 100, message = "must be at most 100 characters"),
        custom(function = "plain_text")
    )]
    pub first_name: Option<String>,
    #[schema(max_length = 100)]
    #[validate(
        length(max = 100, message = "must be at most 100 characters"),
        custom(function = "plain_text")
    )]
    pub last_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct LoginRequest {
    /// Username or email (one of `login`, `username`, `email` is required).
    pub login: Option<String>,
    /// Accepted in place of `login`.
    pub username: Option<String>,
    /// Accepted in place of `login`.
    pub email: Option<String>,
    #[schema(value_type = String, required = true)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct RefreshRequest {
    /// The refresh token; it is spent (rotated) by this call.
    #[schema(value_type = String, required = true)]
    pub refresh: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct LogoutRequest {
    /// The refresh token of the session to end (defaults to the access token's session).
    pub refresh: Option<String>,
    /// End every session of the user.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Tokens {
    pub access: String,
    pub refresh: String,
    pub token_type: &'static str,
    /// Seconds until `access` expires.
    pub expires_in: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RegisterResponse {
    pub user: User,
    pub tokens: Tokens,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LoginResponse {
    #[serde(flatten)]
    pub tokens: Tokens,
    pub user: User,
}

/// The `validator` hook for [`validate::plain_text`].
pub(crate) fn plain_text(value: &str) -> Result<(), validator::ValidationError> {
    validate::plain_text(value).map_err(|m| {
        validator::ValidationError::new("plain_text").with_message(std::borrow::Cow::Owned(m))
    })
}

/// Run the derive validation and extra checks, reporting every offending field at once.
pub(crate) fn validate_all(v: &impl Validate, mut extra: FieldErrors) -> Result<(), Error> {
    if let Err(errors) = v.validate()
        && let Error::Validation { fields, .. } = Error::from(errors)
    {
        for (k, mut msgs) in fields {
            extra.entry(k).or_default().append(&mut msgs);
        }
    }
    if extra.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation {
            message: "validation failed".into(),
            fields: extra,
        })
    }
}

/// Issue an access token and start (or continue) a refresh family.
async fn issue(
    chat: &Chat,
    user: &User,
    family: Option<(String, String)>,
) -> Result<Tokens, Error> {
    let (refresh, family) = match family {
        Some(pair) => pair,
        None => {
            let issued =
                store::sessions::start(&chat.db, user.id, chat.config.refresh_token_ttl_secs)
                    .await?;
            (issued.token, issued.family)
        }
    };
    let access = chat
        .keys
        .issue_access(user.id, &user.username, user.roles.clone(), &family)?;
    Ok(Tokens {
        access: access.token,
        refresh,
        token_type: "Bearer",
        expires_in: access.expires_in,
    })
}

/// `POST /api/v1/auth/register`: create an account and log it in.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered and logged in", body = RegisterResponse),
        (status = 409, description = "Username or email already taken (`conflict`, with `fields`)", body = ErrorBody),
        (status = 422, description = "Invalid field values (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn register(
    State(chat): State<Chat>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<RegisterRequest>,
) -> Result<impl IntoResponse, Error> {
    chat.admit_credentials(ip, None).await?;
    let mut extra = FieldErrors::new();
    if let (Some(p), Some(c)) = (&body.password, &body.password_confirm)
        && p != c
    {
        extra.insert(
            "password_confirm".into(),
            vec!["does not match password".into()],
        );
    }
    validate_all(&body, extra)?;
    let (Some(username), Some(email), Some(password)) = (body.username, body.email, body.password)
    else {
        return Err(Error::bad_request("missing fields")); // unreachable: `required` above
    };
    let hash = chat.hasher.hash(password).await?;
    let user = store::users::create(
        &chat.db,
        store::users::NewUser {
            username,
            email,
            password_hash: hash,
            first_name: body.first_name,
            last_name: body.last_name,
            roles: vec!["user".into()],
        },
    )
    .await?;
    let tokens = issue(&chat, &user, None).await?;
    tracing::info!(user_id = user.id, "registered");
    Ok((StatusCode::CREATED, Json(RegisterResponse { user, tokens })))
}

/// `POST /api/v1/auth/login`: `login` (or `username`/`email`) and `password`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 401, description = "Wrong login or password (`invalid_credentials`)", body = ErrorBody),
        (status = 422, description = "`login` or `password` missing or invalid (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this account (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn login(
    State(chat): State<Chat>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, Error> {
    chat.admit_credentials(ip, None).await?;
    let login = body
        .login
        .or(body.username)
        .or(body.email)
        .filter(|l| !l.is_empty());
    let mut fields = FieldErrors::new();
    match login.as_deref().map(validate::plain_text) {
        None => {
            fields.insert("login".into(), vec!["is required".into()]);
        }
        // The database would refuse NUL; control characters name nobody anyway.
        Some(Err(m)) => {
            fields.insert("login".into(), vec![m]);
        }
        Some(Ok(())) => {}
    }
    if body.password.as_deref().is_none_or(str::is_empty) {
        fields.insert("password".into(), vec!["is required".into()]);
    }
    let (Some(login), Some(password)) = (login, body.password) else {
        return Err(Error::Validation {
            message: "validation failed".into(),
            fields,
        });
    };
    if !fields.is_empty() {
        return Err(Error::Validation {
            message: "validation failed".into(),
            fields,
        });
    }
    let found = store::users::find_for_login(&chat.db, &login).await?;
    if let Some((user, _)) = &found {
        chat.admit_credentials(ip, Some(user.id)).await?;
    }
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), Some(h)),
        None => (None, None),
    };
    // Unknown users are verified against a dummy hash: same code, about the same time.
    let ok = chat.hasher.verify(password, hash).await?;
    let Some(user) = user.filter(|_| ok) else {
        return Err(Error::invalid_credentials());
    };
    let tokens = issue(&chat, &user, None).await?;
    Ok(Json(LoginResponse { tokens, user }))
}

/// `POST /api/v1/auth/refresh`: rotate a refresh token.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair; the presented refresh token is spent", body = Tokens),
        (status = 401, description = "Unknown, expired or revoked refresh token; a reused one revokes its family (`invalid_token`)", body = ErrorBody),
        (status = 422, description = "`refresh` missing (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn refresh(
    State(chat): State<Chat>,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<Tokens>, Error> {
    chat.admit_credentials(ip, None).await?;
    let Some(token) = body.refresh.filter(|t| !t.is_empty()) else {
        return Err(Error::invalid_field("refresh", "is required"));
    };
    match store::sessions::rotate(&chat.db, &token, chat.config.refresh_token_ttl_secs).await? {
        Rotation::Rotated { user_id, issued } => {
            let user = store::users::find(&chat.db, user_id)
                .await?
                .ok_or_else(Error::invalid_token)?;
            Ok(Json(
                issue(&chat, &user, Some((issued.token, issued.family))).await?,
            ))
        }
        Rotation::Reused { user_id, family } => {
            tracing::warn!(
                user_id,
                "refresh token reuse detected; session family revoked"
            );
            chat.revoke_sessions(user_id, &[family], false).await?;
            Err(Error::invalid_token())
        }
        Rotation::Invalid => Err(Error::invalid_token()),
    }
}

/// `POST /api/v1/auth/logout`: end this session (or, with `all`, every session).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body(content = Option<LogoutRequest>),
    security(("bearer" = [])), responses((status = 204, description = "Logged out: the access token and the session are revoked")))]
pub(crate) async fn logout(
    State(chat): State<Chat>,
    user: CurrentUser,
    MaybeJson(body): MaybeJson<LogoutRequest>,
) -> Result<StatusCode, Error> {
    let body = body.unwrap_or_default();
    chat.revoke_token(&user.jti).await?;
    if body.all {
        let mut families = store::sessions::revoke_all(&chat.db, user.id, None).await?;
        families.push(user.sid.clone());
        chat.revoke_sessions(user.id, &families, true).await?;
    } else {
        let mut families = vec![user.sid.clone()];
        if let Some(refresh) = body.refresh.as_deref()
            && let Some(f) = store::sessions::family_of(&chat.db, refresh, user.id).await?
            && f != user.sid
        {
            families.push(f);
        }
        for f in &families {
            store::sessions::revoke_family(&chat.db, f).await?;
        }
        chat.revoke_sessions(user.id, &families, false).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
