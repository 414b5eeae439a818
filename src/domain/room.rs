//! A room as the service knows it: what the store returns and the rules read. The wire form
//! clients see is [`super::model::Room`].

use chrono::{DateTime, Utc};

pub(crate) use super::validate::Visibility;

/// What a room is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomKind {
    /// An ordinary room, with a name chosen by its creator and an owner.
    Room,
    /// A direct message: private, no owner, its people fixed at creation.
    Dm,
}

impl RoomKind {
    /// A stored value; anything unknown is an ordinary room.
    pub(crate) fn of(stored: &str) -> Self {
        if stored == Self::Dm.as_str() {
            Self::Dm
        } else {
            Self::Room
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Dm => "dm",
        }
    }
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Owner,
    Member,
}

impl Role {
    /// A stored value; anything unknown is a plain member.
    pub(crate) fn of(stored: &str) -> Self {
        if stored == Self::Owner.as_str() {
            Self::Owner
        } else {
            Self::Member
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Member => "member",
        }
    }
}

/// A room's record.
#[derive(Debug, Clone)]
pub(crate) struct RoomInfo {
    pub(crate) id: i64,
    /// Unique and immutable.
    pub(crate) name: String,
    pub(crate) topic: Option<String>,
    pub(crate) kind: RoomKind,
    pub(crate) visibility: Visibility,
    /// `None` for a direct message (and a room whose owner deleted their account).
    pub(crate) owner_id: Option<i64>,
    /// The highest `seq` handed out in the room.
    pub(crate) last_seq: i64,
    pub(crate) created_at: DateTime<Utc>,
}

impl RoomInfo {
    pub(crate) fn is_dm(&self) -> bool {
        self.kind == RoomKind::Dm
    }
}
