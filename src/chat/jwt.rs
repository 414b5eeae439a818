//! HS256 access tokens. Every claim that matters is validated on the way in: algorithm (only
//! HS256: `alg: none` and algorithm swaps are rejected), signature, `exp`, `iss`, `aud` and
//! `typ == "access"` (so a refresh token or any other JWT signed with the key is refused).

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The claims of an access token (docs/protocol.md#authentication), plus `sid`, the refresh-token family it belongs to,
/// so that logging out a session can revoke every access token issued to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    pub(crate) name: String,
    pub(crate) roles: Vec<String>,
    pub(crate) iat: i64,
    pub(crate) exp: i64,
    pub(crate) iss: String,
    pub(crate) aud: String,
    pub(crate) jti: String,
    pub(crate) typ: String,
    pub(crate) sid: String,
}

impl Claims {
    /// The user id in `sub`.
    pub(crate) fn user_id(&self) -> Option<i64> {
        self.sub.parse().ok()
    }

    pub(crate) fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_else(Utc::now)
    }
}

/// Keys and validation rules, built once at start.
pub(crate) struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub(crate) access_ttl_secs: i64,
}

/// What a freshly issued access token is, for the response body.
pub(crate) struct IssuedAccess {
    pub(crate) token: String,
    pub(crate) expires_in: i64,
}

impl JwtKeys {
    pub(crate) fn new(secret: &[u8], issuer: &str, audience: &str, access_ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // `exp` means what it says: no grace period (docs/protocol.md#authentication).
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            access_ttl_secs: i64::try_from(access_ttl_secs).unwrap_or(900),
        }
    }

    /// Issue an access token for `user` in session family `sid`.
    ///
    /// # Errors
    /// Only if the claims cannot be encoded, which does not happen with HS256.
    pub(crate) fn issue_access(
        &self,
        user_id: i64,
        username: &str,
        roles: Vec<String>,
        sid: &str,
    ) -> anyhow::Result<IssuedAccess> {
        let now = Utc::now().timestamp();
        let jti = Uuid::new_v4().to_string();
        let claims = Claims {
            sub: user_id.to_string(),
            name: username.to_owned(),
            roles,
            iat: now,
            exp: now + self.access_ttl_secs,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti,
            typ: "access".into(),
            sid: sid.to_owned(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedAccess {
            token,
            expires_in: self.access_ttl_secs,
        })
    }

    /// Verify signature, algorithm, `exp`, `iss`, `aud` and `typ`. Revocation is checked by the
    /// caller against the deny-list.
    pub(crate) fn verify_access(&self, token: &str) -> Option<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let claims = data.claims;
        (claims.typ == "access" && claims.user_id().is_some()).then_some(claims)
    }
}
