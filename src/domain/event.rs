//! Events that fan out to sockets, and their wire form, defined once.
//!
//! An event is serialised once, by whoever publishes it, into a [`Frame`]: the exact text
//! every recipient's socket sends, shared (not copied) by all of them. Replayed history uses
//! the same form as live delivery ([`Event::Message`]).

use serde::Serialize;

use super::model::{Message, Room, UserRef};

/// The text of one server frame, shared by every socket that sends it. It is the
/// transport's own text type, so that handing it to a socket costs neither a copy nor a
/// UTF-8 check.
pub(crate) type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;

/// `join` or `leave` in a `presence` event.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PresenceChange {
    Join,
    Leave,
}

/// A room event of docs/protocol.md#websocket, as its clients see it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Event<'a> {
    /// A new message (live, replayed or gap-filled: the same frame).
    Message(&'a Message),
    MessageEdited(&'a Message),
    MessageDeleted {
        room: &'a str,
        id: i64,
        seq: i64,
    },
    /// To everyone in the room but the typist.
    Typing {
        room: &'a str,
        user: &'a UserRef,
    },
    /// To everyone in the room but the user concerned.
    Presence {
        room: &'a str,
        event: PresenceChange,
        user: &'a UserRef,
    },
    /// A user added (`on`) or removed a reaction to message `id`.
    Reaction {
        room: &'a str,
        id: i64,
        seq: i64,
        emoji: &'a str,
        user: &'a UserRef,
        on: bool,
    },
    RoomUpdated {
        room: &'a Room,
    },
    /// The room is gone; its sockets close after this frame.
    RoomDeleted {
        room: &'a str,
    },
    /// The recipient was removed from the room; their sockets there close after this frame.
    Removed {
        room: &'a str,
    },
    /// A member read up to `seq` (to everyone in the room but the reader; throttled).
    Receipt {
        room: &'a str,
        user: &'a UserRef,
        seq: i64,
    },
    /// To the mentioned user's multiplexed sockets, subscribed to the room or not.
    Mention {
        room: &'a str,
        message: &'a Message,
    },
}

impl Event<'_> {
    /// The wire form.
    pub(crate) fn frame(&self) -> Frame {
        // Serialising our own plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_default().into()
    }
}
