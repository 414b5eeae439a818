//! Every Redis key and pub/sub channel name the service uses, each spelled once here.
//!
//! Each entry says what the key holds, how long it lives and who writes it. For Redis
//! Cluster: each live-socket set carries a `{…}` hash tag and is touched alone by every
//! script; the presence scripts touch several keys of a room at once (and the sweep every
//! room), so they still assume a single node.
//!
//! | Key or channel                | Type        | Lives                                    | Written by       |
//! |-------------------------------|-------------|------------------------------------------|------------------|
//! | `chat:room:{room}`            | channel     | —                                        | the bus          |
//! | `chat:control`                | channel     | —                                        | the bus          |
//! | `chat:probe:{replica}`        | channel     | —                                        | the bus          |
//! | `chat:presence:{room}:{user}` | sorted set  | [`PRESENCE_KEY_TTL`] past its last write | presence         |
//! | `chat:online:{room}`          | sorted set  | until emptied                            | presence         |
//! | `chat:presence:rooms`         | set         | until emptied                            | presence         |
//! | `chat:deny:{entry}`           | string `1`  | until the denied tokens expire           | the deny-list    |
//! | `chat:deny:loaded`            | string `1`  | until Redis loses its data               | the deny-list    |
//! | `chat:rl:{limit}:{key}`       | string (µs) | until the bucket is full again           | the rate limits  |
//! | `chat:sockets:{user:{id}}`    | sorted set  | [`SOCKET_ENTRY_TTL`] past its last write | the socket quota |
//! | `chat:sockets:{addr:{ip}}`    | sorted set  | [`SOCKET_ENTRY_TTL`] past its last write | the socket quota |

use std::{fmt::Display, net::IpAddr, time::Duration};

// ---- Pub/sub channels (the bus) ----

/// Channel of one room's events (messages, edits, reactions, presence, typing, membership):
/// published by the replica that made the change, subscribed by every replica while it has a
/// socket in the room. Channels hold nothing.
pub(crate) fn room_channel(room: i64) -> String {
    format!("chat:room:{room}")
}

/// Channel of the events addressed to users rather than rooms (revocations, per-user
/// notices): published by the replica that made the change, subscribed by every replica.
pub(crate) fn control_channel() -> &'static str {
    "chat:control"
}

/// Channel of one replica's liveness probe: that replica publishes on it every second and
/// expects the probe back on its own subscription; nobody else subscribes.
pub(crate) fn probe_channel(replica: u64) -> String {
    format!("chat:probe:{replica}")
}

// ---- Presence ----

/// How long a replica's presence entry stays valid without a heartbeat (the score of its
/// member is now + this): the users of a crashed replica go offline within about this long.
pub(crate) const PRESENCE_ENTRY_TTL: Duration = Duration::from_secs(30);

/// TTL of a [`presence_user`] key, set again on every write: a key nobody refreshes (every
/// replica holding it gone) disappears even if no sweep ran.
pub(crate) const PRESENCE_KEY_TTL: Duration = Duration::from_secs(120);

/// Prefix of [`presence_user`] (the presence sweep script builds the key from it).
pub(crate) const PRESENCE_USER_PREFIX: &str = "chat:presence:";

/// Prefix of [`online`] (the presence sweep script builds the key from it).
pub(crate) const ONLINE_PREFIX: &str = "chat:online:";

/// Sorted set of the replicas holding a socket of `user` in `room`, each scored by its entry's
/// expiry (ms since the epoch). Written by presence join, leave, heartbeat and sweep; TTL
/// [`PRESENCE_KEY_TTL`], renewed on each join and heartbeat.
pub(crate) fn presence_user(room: i64, user: i64) -> String {
    format!("{PRESENCE_USER_PREFIX}{room}:{user}")
}

/// Sorted set of the users online in `room`, each scored by the latest expiry of their
/// replicas' entries (ms). Written by presence join, heartbeat, leave and sweep; no TTL: the
/// sweep removes expired members, and an empty set is gone.
pub(crate) fn online(room: i64) -> String {
    format!("{ONLINE_PREFIX}{room}")
}

/// Set of the rooms that may have an [`online`] member: what the presence sweep walks.
/// Written by presence join and heartbeat (added) and the sweep (removed once the room's
/// set is empty); no TTL.
pub(crate) fn presence_rooms() -> &'static str {
    "chat:presence:rooms"
}

// ---- Deny-list ----

/// One deny-list entry (`entry` is `jti:<id>`, `sid:<family>` or `user:<id>`, as the rules
/// spell it): value `1` while the tokens it denies could still be valid (`EX`, set by the
/// writer to their expiry). Written by the deny-list on each revocation and when it reloads
/// Redis from the database.
pub(crate) fn deny(entry: &str) -> String {
    format!("chat:deny:{entry}")
}

/// Marker, value `1`, no TTL: present while Redis holds every deny-list entry. Set by the
/// deny-list after it loaded the database's entries; missing after Redis lost its data.
pub(crate) fn deny_loaded() -> &'static str {
    "chat:deny:loaded"
}

// ---- Limits ----

/// One cluster-wide rate bucket (GCRA) of the limit named `limit` (`msg`, `frame`, `auth`,
/// `account`, `rooms`) for `key` (a user id or a client address): its theoretical arrival time
/// in µs of the Redis clock. Written by the rate-limit script only; `PX` set to when the bucket
/// is full again, so an idle key disappears.
pub(crate) fn rate(limit: &str, key: impl Display) -> String {
    format!("chat:rl:{limit}:{key}")
}

/// How long a live socket's entry counts without a heartbeat (its score is now + this, and
/// the set's `PEXPIRE`): the sockets of a crashed replica stop counting within this long.
pub(crate) const SOCKET_ENTRY_TTL: Duration = Duration::from_secs(30);

/// Sorted set of the live sockets of user `id`, members `<replica>:<socket>` scored by
/// expiry (ms of the Redis clock). Written by the socket quota on admission, heartbeat and
/// close; TTL [`SOCKET_ENTRY_TTL`], renewed on each write. One key per hash slot (`{…}` tag).
pub(crate) fn user_sockets(id: i64) -> String {
    format!("chat:sockets:{{user:{id}}}")
}

/// Like [`user_sockets`], for the sockets from one client address (an IPv4 address or an
/// IPv6 /64, as the limits key it).
pub(crate) fn address_sockets(ip: IpAddr) -> String {
    format!("chat:sockets:{{addr:{ip}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spellings other replicas (of this and earlier versions) read and write: a change
    /// here splits a rolling deployment in two.
    #[test]
    fn key_names_are_stable() {
        assert_eq!(room_channel(7), "chat:room:7");
        assert_eq!(control_channel(), "chat:control");
        assert_eq!(probe_channel(42), "chat:probe:42");
        assert_eq!(presence_user(7, 9), "chat:presence:7:9");
        assert_eq!(online(7), "chat:online:7");
        assert_eq!(presence_rooms(), "chat:presence:rooms");
        assert_eq!(deny("jti:abc"), "chat:deny:jti:abc");
        assert_eq!(deny_loaded(), "chat:deny:loaded");
        assert_eq!(rate("msg", 9), "chat:rl:msg:9");
        assert_eq!(user_sockets(9), "chat:sockets:{user:9}");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(address_sockets(ip), "chat:sockets:{addr:192.0.2.1}");
    }
}
