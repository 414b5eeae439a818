//! `/api/v1/auth/*` (docs/protocol.md#authentication): register, login, refresh, logout.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::extract::{ClientAddr, Json, MaybeJson};
use crate::chat::Error;
use crate::{
    chat::{
        Chat,
        accounts::{Credentials, LoggedIn, NewAccount, Session},
        auth::CurrentUser,
    },
    domain::{input, model::User},
};

/// The routes, each declared by its handler's `#[utoipa::path]`.
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
}

// Checked by `input::NewAccount::parse`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct RegisterRequest {
    /// 3–32 of `[A-Za-z0-9_.-]`, unique case-insensitively.
    #[schema(value_type = String, required = true, min_length = 3, max_length = 32, pattern = r"^[A-Za-z0-9_.\-]+$")]
    pub username: Option<String>,
    /// Unique case-insensitively.
    #[schema(value_type = String, required = true, format = Email, max_length = 254)]
    pub email: Option<String>,
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub password: Option<String>,
    /// When given, must equal `password`.
    pub password_confirm: Option<String>,
    #[schema(max_length = 100)]
    pub first_name: Option<String>,
    #[schema(max_length = 100)]
    pub last_name: Option<String>,
}

// Checked by `input::Credentials::parse`.
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

impl From<Session> for Tokens {
    fn from(s: Session) -> Self {
        Self {
            access: s.access,
            refresh: s.refresh,
            token_type: "Bearer",
            expires_in: s.expires_in,
        }
    }
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
    let LoggedIn { user, session } = chat.accounts().register(ip, body.into_account()).await?;
    let tokens = session.into();
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
    let LoggedIn { user, session } = chat.accounts().login(ip, body.into_credentials()).await?;
    let tokens = session.into();
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
    Ok(Json(
        chat.accounts().refresh(ip, body.refresh).await?.into(),
    ))
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
    chat.accounts()
        .logout(&user, body.refresh.as_deref(), body.all)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

impl RegisterRequest {
    /// The account, once every field is valid (every field at fault reported at once).
    fn into_account(self) -> Result<NewAccount, Error> {
        input::NewAccount::parse(
            self.username,
            self.email,
            self.password,
            self.password_confirm,
            self.first_name,
            self.last_name,
        )
        .map_err(Error::validation)
    }
}

impl LoginRequest {
    /// The credentials: `login`, else `username`, else `email`; and `password`.
    fn into_credentials(self) -> Result<Credentials, Error> {
        let login = self.login.or(self.username).or(self.email);
        input::Credentials::parse(login, self.password).map_err(Error::validation)
    }
}
