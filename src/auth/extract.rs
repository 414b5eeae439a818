//! Request → caller. REST routes take [`CurrentUser`] (from `Authorization: Bearer`); socket
//! routes call [`AppState::authenticate`] with the `token` query parameter before upgrading.

use axum::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    http::{HeaderMap, header::AUTHORIZATION, request::Parts},
};
use chrono::{DateTime, Utc};

use crate::{error::ApiError, state::AppState};

/// The caller, proven by a valid, unrevoked access token.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: i64,
    pub username: String,
    pub roles: Vec<String>,
    pub jti: String,
    /// The refresh-token family (login session) the token was issued to.
    pub sid: String,
    pub expires_at: DateTime<Utc>,
}

impl CurrentUser {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

impl AppState {
    /// Verify an access token and check it against the deny-list.
    ///
    /// # Errors
    /// 401 for an invalid, expired or revoked token; 503 if the deny-list cannot be read.
    pub async fn authenticate(&self, token: &str) -> Result<CurrentUser, ApiError> {
        let claims = self
            .keys
            .verify_access(token)
            .ok_or_else(ApiError::invalid_token)?;
        let id = claims.user_id().ok_or_else(ApiError::invalid_token)?;
        let keys = [
            format!("jti:{}", claims.jti),
            format!("sid:{}", claims.sid),
            format!("user:{id}"),
        ];
        let denied = self
            .deny
            .any_denied(&keys)
            .await
            .map_err(ApiError::Unavailable)?;
        if denied {
            return Err(ApiError::invalid_token());
        }
        let expires_at = claims.expires_at();
        let mut roles = claims.roles;
        // The token's admin claim is checked against the database (admin tokens only; admins
        // are few): a demoted admin loses the rights at once, not when the token expires.
        if roles.iter().any(|r| r == "admin") {
            let still_admin = crate::store::users::find(&self.db, id)
                .await?
                .is_some_and(|u| u.is_admin());
            if !still_admin {
                roles.retain(|r| r != "admin");
            }
        }
        Ok(CurrentUser {
            id,
            expires_at,
            username: claims.name,
            roles,
            jti: claims.jti,
            sid: claims.sid,
        })
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Err(ApiError::unauthenticated());
        }
        let token = bearer(&parts.headers).ok_or_else(ApiError::invalid_token)?;
        state.authenticate(token).await
    }
}

/// `Option<CurrentUser>`: `None` only when there is no `Authorization` header; a bad token is
/// still a 401, never "anonymous".
impl OptionalFromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Ok(None);
        }
        <Self as FromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}
