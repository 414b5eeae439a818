//! Wire types shared by REST responses and WebSocket frames (SPEC §4–8). Entities never leave
//! `store`; these do. Timestamps are RFC 3339 UTC with milliseconds.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

pub fn ts<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub fn ts_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ts(t, s),
        None => s.serialize_none(),
    }
}

/// `{id, username}`: how a user appears inside rooms, messages and presence.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct UserRef {
    pub id: i64,
    pub username: String,
}

/// A user as others see them. `email` only for the user themself and admins.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublicUser {
    pub id: i64,
    pub username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub roles: Vec<String>,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

/// The full user, for `GET /users/me`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub roles: Vec<String>,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

impl User {
    pub fn public(self, with_email: bool) -> PublicUser {
        PublicUser {
            id: self.id,
            username: self.username,
            email: with_email.then_some(self.email),
            first_name: self.first_name,
            last_name: self.last_name,
            roles: self.roles,
            created_at: self.created_at,
        }
    }

    pub fn as_ref(&self) -> UserRef {
        UserRef {
            id: self.id,
            username: self.username.clone(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Room {
    pub id: i64,
    pub name: String,
    pub topic: Option<String>,
    /// `public` or `private`.
    pub visibility: String,
    pub owner: Option<UserRef>,
    pub member_count: i64,
    pub online_count: i64,
    pub last_seq: i64,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Message {
    pub id: i64,
    /// The room's name.
    pub room: String,
    pub seq: i64,
    /// `null` once the author deleted their account.
    pub user: Option<UserRef>,
    pub content: String,
    pub client_id: Option<String>,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub edited_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Member {
    pub user: UserRef,
    /// `owner` or `member`.
    pub role: String,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: DateTime<Utc>,
    /// Online anywhere in the cluster.
    pub online: bool,
}

/// A page of results with an opaque cursor for the next one.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}
