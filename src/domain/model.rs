//! Wire types shared by REST responses and WebSocket frames (docs/protocol.md#objects). Entities never leave
//! `store`; these do. Timestamps are RFC 3339 UTC with milliseconds.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

pub(crate) fn ts<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub(crate) fn ts_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ts(t, s),
        None => s.serialize_none(),
    }
}

/// `{id, username}`: how a user appears inside rooms, messages and presence.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub(crate) struct UserRef {
    pub(crate) id: i64,
    pub(crate) username: String,
}

/// A user as others see them. `email` only for the user themself and admins.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PublicUser {
    pub(crate) id: i64,
    pub(crate) username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<String>,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) roles: Vec<String>,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub(crate) created_at: DateTime<Utc>,
}

/// The full user, for `GET /users/me`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct User {
    pub(crate) id: i64,
    pub(crate) username: String,
    pub(crate) email: String,
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) roles: Vec<String>,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub(crate) created_at: DateTime<Utc>,
    /// Others may open a direct message with this user (`PATCH /users/me`).
    pub(crate) accept_dms: bool,
    /// Others in a room get this user's `receipt` events (`PATCH /users/me`).
    pub(crate) send_receipts: bool,
}

impl User {
    pub(crate) fn public(self, with_email: bool) -> PublicUser {
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

    pub(crate) fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Room {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) topic: Option<String>,
    /// `public` or `private` (a DM is private).
    pub(crate) visibility: String,
    /// `room`, or `dm` for a direct message.
    pub(crate) kind: String,
    /// A DM's people (absent on other rooms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) members: Option<Vec<UserRef>>,
    pub(crate) owner: Option<UserRef>,
    pub(crate) member_count: i64,
    pub(crate) online_count: i64,
    pub(crate) last_seq: i64,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub(crate) created_at: DateTime<Utc>,
    /// The highest `seq` the caller has read (`GET /rooms?joined=true` and `GET /dms` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_read_seq: Option<i64>,
    /// Messages after `last_read_seq`, not written by the caller, not deleted (same lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unread: Option<i64>,
    /// Of the unread messages, the ones that mention the caller (same lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mentions: Option<i64>,
}

impl Room {
    /// Attach the caller's read state.
    pub(crate) fn with_read(mut self, read: ReadState) -> Self {
        self.last_read_seq = Some(read.last_read_seq);
        self.unread = Some(read.unread);
        self.mentions = Some(read.mentions);
        self
    }
}

/// A member's read state in a room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReadState {
    pub(crate) last_read_seq: i64,
    pub(crate) unread: i64,
    pub(crate) mentions: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Message {
    pub(crate) id: i64,
    /// The room's name.
    pub(crate) room: String,
    pub(crate) seq: i64,
    /// `null` once the author deleted their account.
    pub(crate) user: Option<UserRef>,
    pub(crate) content: String,
    pub(crate) client_id: Option<String>,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub(crate) created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(crate) edited_at: Option<DateTime<Utc>>,
    /// The id of the thread's root this message replies to; `null` outside threads.
    pub(crate) reply_to: Option<i64>,
    /// On a thread's root: how many live replies it has (0 elsewhere).
    pub(crate) reply_count: i64,
    /// On a thread's root: when its latest reply was sent (`null` elsewhere).
    #[serde(serialize_with = "ts_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub(crate) last_reply_at: Option<DateTime<Utc>>,
    /// The room's members its `@username`s named when it was committed (or last edited).
    pub(crate) mentions: Vec<UserRef>,
    /// Each emoji used on the message, in the order first used. `me` is relative to the
    /// reader where a frame has one reader (REST, replay); in frames shared by every socket
    /// of the room (`message_edited`, gap fills) it is `false`.
    pub(crate) reactions: Vec<Reaction>,
}

/// One emoji's reactions to a message.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub(crate) struct Reaction {
    /// One emoji grapheme, or a `:short_name:`.
    pub(crate) emoji: String,
    pub(crate) count: i64,
    /// Whether the reader is among them.
    pub(crate) me: bool,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct Member {
    pub(crate) user: UserRef,
    /// `owner` or `member`.
    pub(crate) role: String,
    #[serde(serialize_with = "ts")]
    #[schema(value_type = String, format = DateTime)]
    pub(crate) joined_at: DateTime<Utc>,
    /// Online anywhere in the cluster.
    pub(crate) online: bool,
}

/// One search result: the message (as history shows it) and a snippet of its content as
/// HTML, the text escaped and each match in `<mark>…</mark>`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct SearchHit {
    pub(crate) message: Message,
    pub(crate) highlight: String,
}

/// A page of results with an opaque cursor for the next one.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Page<T> {
    pub(crate) items: Vec<T>,
    pub(crate) next_cursor: Option<String>,
}
