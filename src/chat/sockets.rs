//! What a WebSocket does, as use-cases both socket endpoints call: admission before the
//! upgrade, opening and closing the socket in the fan-out, joining a room (the resume seam:
//! register paused, announce, replay from the database, go live) and leaving it.
//!
//! Joining is the resume protocol: the hub registers the socket *paused* and returns the last
//! `seq` it has delivered; the history up to that `seq` is replayed from the database, then the
//! socket resumes, and the frames that arrived meanwhile follow, so there is no gap and no
//! duplicate at the seam.

use std::{net::IpAddr, sync::Arc};

use super::Error;
use sea_orm::DatabaseConnection;

use super::{
    access::{Access, Entry},
    auth::CurrentUser,
    limits::{Limits, SocketPermit},
    presence::Online,
    replay::ReplayReads,
};
use crate::domain::room::RoomInfo;
use crate::{
    bus::route,
    domain::{
        event::Frame,
        model::{Room, UserRef},
    },
    fanout::{hub::Hub, socket::SocketCtl},
    store,
};

/// Messages per history page when replaying.
const REPLAY_PAGE: u64 = 200;
/// Replay rounds a joining socket may take to catch up with a busy room before it goes live
/// anyway (and, if it still cannot keep up, is closed as a slow consumer).
const CATCH_UP_ROUNDS: u32 = 16;

/// A room the caller may enter, checked before the upgrade; nothing changed yet.
pub(crate) struct RoomPass {
    room: RoomInfo,
    entry: Entry,
}

/// A room the caller is a member of, ready to join.
pub(crate) struct Entered {
    room: RoomInfo,
}

/// A room a socket has joined.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) id: i64,
    pub(crate) name: String,
}

/// What a joining socket is told first (`ready` or `subscribed`).
pub(crate) struct Welcome<'a> {
    pub(crate) room: &'a Room,
    pub(crate) online: &'a [UserRef],
    /// The last `seq` delivered live; the replay stops there.
    pub(crate) last_seq: i64,
    pub(crate) last_read: i64,
}

/// The sockets use-cases.
pub(crate) struct Sockets {
    db: DatabaseConnection,
    hub: Arc<Hub>,
    access: Access,
    online: Online,
    limits: Limits,
    /// Replay pages, shared by the sockets that ask for the same one at once.
    replays: ReplayReads,
}

impl Sockets {
    pub(crate) fn new(
        db: DatabaseConnection,
        hub: Arc<Hub>,
        access: Access,
        online: Online,
        limits: Limits,
    ) -> Self {
        Self {
            db,
            hub,
            access,
            online,
            limits,
            replays: ReplayReads::default(),
        }
    }

    /// May `user` open a socket on room `name`? Changes nothing.
    ///
    /// # Errors
    /// `not_found` for no such room, and for a private room (or a DM) the user may not see;
    /// `forbidden` for an admin outside a private room (it needs an invitation).
    pub(crate) async fn check_room_socket(
        &self,
        user: &CurrentUser,
        name: &str,
    ) -> Result<RoomPass, Error> {
        let room = self.access.room_named(name).await?;
        let entry = self
            .access
            .may_enter(&room, user.id, user.is_admin())
            .await?;
        Ok(RoomPass { room, entry })
    }

    /// Admit a socket on the room of `pass`: the user's and the address's socket limits, then
    /// the replica's upgrade rate ([`Limits::admit_upgrade`]: a refused upgrade spends none of
    /// it); a newcomer to a public room joins it only then, once nothing else can refuse the
    /// request.
    ///
    /// # Errors
    /// `rate_limited` past a socket limit; `service_unavailable` past the upgrade rate.
    pub(crate) async fn admit_room_socket(
        &self,
        user: &CurrentUser,
        ip: IpAddr,
        pass: RoomPass,
    ) -> Result<(SocketPermit, Entered), Error> {
        let permit = self.admit_mux_socket(user, ip).await?;
        self.access
            .complete_entry(&pass.room, user.id, pass.entry)
            .await?;
        Ok((permit, Entered { room: pass.room }))
    }

    /// Admit a multiplexed socket.
    ///
    /// # Errors
    /// As [`Sockets::admit_room_socket`].
    pub(crate) async fn admit_mux_socket(
        &self,
        user: &CurrentUser,
        ip: IpAddr,
    ) -> Result<SocketPermit, Error> {
        self.limits.admit_upgrade(user.id, ip).await
    }

    /// A `subscribe` on the multiplexed socket: enter room `name` (a public room makes the
    /// user a member). The socket keeps no roles: an admin is told what anyone is.
    ///
    /// # Errors
    /// `not_found` for no such room, and for a private room the user is not in.
    pub(crate) async fn subscribe(&self, user_id: i64, name: &str) -> Result<Entered, Error> {
        let room = self.access.enter_room_named(name, user_id, false).await?;
        Ok(Entered { room })
    }

    /// A new socket of `user_id` in the fan-out.
    pub(crate) fn open(&self, user_id: i64, mux: bool, sid: String) -> Arc<SocketCtl> {
        self.hub.register_socket(user_id, mux, sid)
    }

    /// The socket is gone from the fan-out.
    pub(crate) fn close(&self, ctl: &SocketCtl) {
        self.hub.unregister_socket(ctl);
    }

    /// Join a room: register the socket paused, announce it (presence), queue `welcome`'s
    /// frame, replay `(since, last]`, resume (catching up while the room outran the replay).
    ///
    /// # Errors
    /// The socket closed, or the database failed.
    pub(crate) async fn join(
        &self,
        ctl: &Arc<SocketCtl>,
        user: &UserRef,
        entered: Entered,
        since: Option<i64>,
        welcome: impl FnOnce(Welcome<'_>) -> Frame,
    ) -> anyhow::Result<Joined> {
        let room = entered.room;
        let last_seq = self.hub.join(room.id, ctl, since).await?;
        let joined = Joined {
            id: room.id,
            name: room.name.clone(),
        };
        // Every successful hub join is matched by exactly one leave: here if the rest fails.
        match self
            .announce_and_replay(ctl, user, room, since, last_seq, welcome)
            .await
        {
            Ok(()) => {
                tracing::debug!(room = %joined.name, last_seq, "joined");
                Ok(joined)
            }
            Err(e) => {
                self.leave(ctl, &joined, user).await;
                Err(e)
            }
        }
    }

    /// The rest of [`Sockets::join`], once the socket is registered (paused) in the room.
    async fn announce_and_replay(
        &self,
        ctl: &Arc<SocketCtl>,
        user: &UserRef,
        room: RoomInfo,
        since: Option<i64>,
        last_seq: i64,
        welcome: impl FnOnce(Welcome<'_>) -> Frame,
    ) -> anyhow::Result<()> {
        // Registered (paused) from here on: replay reads started later may be shared.
        let joined_at = tokio::time::Instant::now();
        let room_id = room.id;
        self.online.entered(room_id, &room.name, user).await;
        let online = self.online.users(room_id).await;
        let count = i64::try_from(online.len()).unwrap_or(0);
        let last_read = store::rooms::last_read_seq(&self.db, room_id, user.id)
            .await?
            .unwrap_or(0);
        let wire = store::rooms::to_wire(&self.db, room, count).await?;
        let first = welcome(Welcome {
            room: &wire,
            online: &online,
            last_seq,
            last_read,
        });
        push(ctl, first).await?;
        let replay = Replay {
            ctl,
            room_id,
            joined_at,
            reader: user.id,
        };
        if let Some(since) = since {
            self.replay(&replay, since, last_seq).await?;
        }
        // A long replay in a busy room: what arrived meanwhile overflowed the paused buffer
        // (or does not fit in the queue the replay filled), so read on from the database until
        // the replay has caught up with the room. A client that reads slower than the room
        // writes never catches up: after `CATCH_UP_ROUNDS` it goes live, as a slow consumer.
        let (mut replayed, mut round) = (last_seq, 0);
        while let Err(upto) = self.hub.resume(room_id, ctl, round >= CATCH_UP_ROUNDS) {
            self.replay(&replay, replayed, upto).await?;
            replayed = upto;
            round += 1;
        }
        Ok(())
    }

    /// Queue the room's messages in `(after, last]` from the database (pages shared with the
    /// other sockets replaying the same ones at once, see `chat::replay`).
    async fn replay(&self, to: &Replay<'_>, mut after: i64, last: i64) -> anyhow::Result<()> {
        while after < last {
            let rows = self
                .replays
                .page(
                    &self.db,
                    (to.room_id, after, REPLAY_PAGE),
                    to.joined_at,
                    to.reader,
                )
                .await?;
            let Some(end) = rows.last().map(|r| r.seq) else {
                break;
            };
            for row in rows.iter() {
                if row.seq > last {
                    break;
                }
                if let Some(msg) = &row.message {
                    push(to.ctl, route::message_frame(msg)).await?;
                }
            }
            after = end;
        }
        Ok(())
    }

    /// The socket leaves a room it joined (also when the fan-out already dropped it).
    pub(crate) async fn leave(&self, ctl: &SocketCtl, joined: &Joined, user: &UserRef) {
        self.hub.leave(joined.id, ctl);
        self.online.left(joined.id, &joined.name, user).await;
    }
}

/// Where a replay goes.
struct Replay<'a> {
    ctl: &'a Arc<SocketCtl>,
    room_id: i64,
    joined_at: tokio::time::Instant,
    reader: i64,
}

/// Queue a frame, waiting while the socket's queue is full.
async fn push(ctl: &SocketCtl, frame: Frame) -> anyhow::Result<()> {
    ctl.push(frame)
        .await
        .map_err(|_| anyhow::anyhow!("socket closed"))
}
