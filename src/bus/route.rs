//! Who gets what: the routing of every event that fans out, as bus envelopes. The event's
//! wire form comes from [`crate::domain::event`]; the header decides the recipients and
//! whether their sockets close afterwards.

use crate::{
    bus::{Envelope, Kind},
    domain::{
        event::{Event, Frame},
        model::Message,
    },
};

/// A new message: delivered in `seq` order, gaps filled from the database.
pub(crate) fn message(room_id: i64, msg: &Message) -> Envelope {
    let mut env = Envelope::new(room_id, Kind::Message, message_frame(msg));
    env.header.seq = msg.seq;
    env
}

/// The frame of a message, live or replayed.
pub(crate) fn message_frame(msg: &Message) -> Frame {
    Event::Message(msg).frame()
}

/// An event for every socket in the room.
pub(crate) fn to_room(room_id: i64, event: &Event<'_>) -> Envelope {
    Envelope::new(room_id, Kind::Event, event.frame())
}

/// An event for every socket in the room except `user`'s (typing, presence).
pub(crate) fn to_room_but(room_id: i64, event: &Event<'_>, user: i64) -> Envelope {
    let mut env = to_room(room_id, event);
    env.header.user = user;
    env
}

/// The room is gone: its sockets get `room_deleted`, then close.
pub(crate) fn room_deleted(room_id: i64, room: &str) -> Envelope {
    Envelope::new(
        room_id,
        Kind::RoomDeleted,
        Event::RoomDeleted { room }.frame(),
    )
}

/// `user` was removed from the room: their sockets there get `removed`, then close.
pub(crate) fn removed(room_id: i64, room: &str, user: i64) -> Envelope {
    let mut env = Envelope::new(room_id, Kind::Kick, Event::Removed { room }.frame());
    env.header.user = user;
    env
}

/// Close `user`'s sockets of session `sid` (or all of them): their token is revoked.
pub(crate) fn revoke(user: i64, sid: Option<String>, all: bool) -> Envelope {
    let mut env = Envelope::new(0, Kind::Revoke, bytes::Bytes::new());
    env.header.user = user;
    env.header.sid = sid;
    env.header.all = all;
    env
}

/// An event for `user`'s multiplexed sockets on every replica (a mention).
pub(crate) fn to_user(user: i64, event: &Event<'_>) -> Envelope {
    let mut env = Envelope::new(0, Kind::User, event.frame());
    env.header.user = user;
    env
}
