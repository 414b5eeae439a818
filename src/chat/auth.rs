//! Who the caller is: an access token, verified, checked against the deny-list, and (for
//! admin tokens) against the database. Every transport authenticates through
//! [`Auth::authenticate`]; `http` extracts the token from `Authorization: Bearer`, `ws` from
//! the `token` query parameter or an `auth` frame.

use axum::http::{HeaderMap, header::AUTHORIZATION};
use chrono::{DateTime, Utc};

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use super::Error;
use super::{jwt::JwtKeys, revoke::Revocation};
use crate::store;

/// The caller, proven by a valid, unrevoked access token.
#[derive(Debug, Clone)]
pub(crate) struct CurrentUser {
    pub(crate) id: i64,
    pub(crate) username: String,
    pub(crate) roles: Vec<String>,
    pub(crate) jti: String,
    /// The refresh-token family (login session) the token was issued to.
    pub(crate) sid: String,
    pub(crate) expires_at: DateTime<Utc>,
}

impl CurrentUser {
    pub(crate) fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// `{id, username}`.
    pub(crate) fn user_ref(&self) -> crate::domain::model::UserRef {
        crate::domain::model::UserRef {
            id: self.id,
            username: self.username.clone(),
        }
    }
}

/// Authentication: the token keys, the deny-list, and the database for the admin re-check.
#[derive(Clone)]
pub(crate) struct Auth {
    keys: Arc<JwtKeys>,
    revocation: Revocation,
    db: DatabaseConnection,
}

impl Auth {
    pub(crate) fn new(keys: Arc<JwtKeys>, revocation: Revocation, db: DatabaseConnection) -> Self {
        Self {
            keys,
            revocation,
            db,
        }
    }

    /// Verify an access token and check it against the deny-list.
    ///
    /// # Errors
    /// 401 for an invalid, expired or revoked token; 503 if the deny-list cannot be read.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<CurrentUser, Error> {
        let claims = self
            .keys
            .verify_access(token)
            .ok_or_else(Error::invalid_token)?;
        let id = claims.user_id().ok_or_else(Error::invalid_token)?;
        if self
            .revocation
            .is_revoked(id, &claims.sid, &claims.jti)
            .await?
        {
            return Err(Error::invalid_token());
        }
        let expires_at = claims.expires_at();
        let mut roles = claims.roles;
        // The token's admin claim is checked against the database (admin tokens only; admins
        // are few): a demoted admin loses the rights at once, not when the token expires.
        if roles.iter().any(|r| r == "admin") {
            let still_admin = store::users::find(&self.db, id)
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

/// The token of an `Authorization: Bearer …` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
