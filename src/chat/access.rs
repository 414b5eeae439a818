//! Who may see, enter, write to and manage a room: the access rule, written once and called
//! by REST, by both socket endpoints and by the send path. Direct messages (docs/protocol.md#conversations) are
//! private rooms nobody can join, be invited into or manage; opening one with someone who
//! refuses DMs is forbidden.
//!
//! A room the caller may not see (a private room or a DM they are not in) is, on every path,
//! a room that does not exist: the same [`no_such_room`] answer, never a 403 that would tell
//! it apart. A DM's name is derived from its members' public ids, so anything else would let
//! a stranger learn who talks to whom.

use super::Error;
use sea_orm::DatabaseConnection;

use super::auth::CurrentUser;
use crate::domain::room::RoomInfo;
use crate::{
    domain::{
        room::{Role, Visibility},
        validate,
    },
    store,
};

/// The answer for a name that is no room, and so for a room the caller may not see.
pub(crate) fn no_such_room() -> Error {
    Error::NotFound("room")
}

/// How a caller enters a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Already a member.
    Member,
    /// A public room: joining makes them a member.
    Joins,
}

/// Who may read a room (its history, its messages in search results): anyone if it is
/// public, its members, admins. Lists that span rooms apply the same rule in SQL:
/// [`store::search::messages`] takes [`Reader`] and writes this condition.
pub(crate) fn may_read(visibility: Visibility, member: bool, admin: bool) -> bool {
    visibility == Visibility::Public || member || admin
}

/// The reader a cross-room query applies [`may_read`] for.
pub(crate) fn reader(me: &CurrentUser) -> store::search::Reader {
    store::search::Reader {
        user_id: me.id,
        admin: me.is_admin(),
    }
}

/// The owner or an admin may change, delete, invite to and remove from a room. A direct
/// message has no owner and nobody manages it (an admin making it public would open it).
pub(crate) fn may_manage(room: &RoomInfo, me: &CurrentUser) -> bool {
    !room.is_dm() && (me.is_admin() || room.owner_id == Some(me.id))
}

/// May `me` invite someone into `room`?
///
/// # Errors
/// 403: a direct message (nobody can be invited into one), or neither owner nor admin.
pub(crate) fn may_invite(room: &RoomInfo, me: &CurrentUser) -> Result<(), Error> {
    if room.is_dm() {
        return Err(Error::Forbidden(
            "nobody can be invited into a direct message",
        ));
    }
    if !may_manage(room, me) {
        return Err(Error::Forbidden("only the owner or an admin may invite"));
    }
    Ok(())
}

/// May the caller open a DM with these people? `accepting` maps each existing user among
/// them to their `accept_dms` choice.
///
/// # Errors
/// 403 if one of them refuses direct messages.
pub(crate) fn may_open_dm(accepting: &std::collections::HashMap<i64, bool>) -> Result<(), Error> {
    if accepting.values().any(|accepts| !accepts) {
        return Err(Error::Forbidden(
            "one of these users does not accept direct messages",
        ));
    }
    Ok(())
}

/// The access rule over the database: which room a name is, and who may see, write to and
/// enter it.
#[derive(Clone)]
pub(crate) struct Access {
    db: DatabaseConnection,
}

impl Access {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The room if the caller may see it (public, a member, or an admin), with their role.
    ///
    /// # Errors
    /// 404 if it does not exist or is private to others.
    pub(crate) async fn visible_room(
        &self,
        name: &str,
        me: &CurrentUser,
    ) -> Result<(RoomInfo, Option<Role>), Error> {
        let room = self.room_named(name).await?;
        let role = store::rooms::role_of(&self.db, room.id, me.id).await?;
        if !may_read(room.visibility, role.is_some(), me.is_admin()) {
            return Err(no_such_room());
        }
        Ok((room, role))
    }

    /// Whether `user_id` may write to (post, react in) room `room_id`: its members may.
    ///
    /// # Errors
    /// 403 for a non-member; 503 if the database is down.
    pub(crate) async fn ensure_writer(&self, room_id: i64, user_id: i64) -> Result<(), Error> {
        match store::rooms::role_of(&self.db, room_id, user_id).await? {
            Some(_) => Ok(()),
            None => Err(Error::Forbidden("join the room to post in it")),
        }
    }

    /// The room a member may write to.
    ///
    /// # Errors
    /// 404 as [`Access::visible_room`]; 403 for a non-member.
    pub(crate) async fn writable_room(
        &self,
        name: &str,
        me: &CurrentUser,
    ) -> Result<RoomInfo, Error> {
        let (room, role) = self.visible_room(name, me).await?;
        if role.is_none() {
            return Err(Error::Forbidden("join the room to post in it"));
        }
        Ok(room)
    }

    /// Enter `room` to read and write it: a member goes in; anyone joins a public room (and
    /// becomes a member); a private one needs an invitation. `admin`: the caller is an admin
    /// (who sees every room, but enters a private one only when invited).
    ///
    /// # Errors
    /// 404 ([`no_such_room`]) for a room the caller may not see; 403 for an admin outside a
    /// private room or a DM; 503 if the database is down.
    pub(crate) async fn enter_room(
        &self,
        room: RoomInfo,
        user_id: i64,
        admin: bool,
    ) -> Result<RoomInfo, Error> {
        let entry = self.may_enter(&room, user_id, admin).await?;
        self.complete_entry(&room, user_id, entry).await?;
        Ok(room)
    }

    /// The first half of [`Access::enter_room`]: whether `user_id` may enter, changing nothing
    /// (so that a request refused for another reason joins nothing).
    ///
    /// # Errors
    /// As [`Access::enter_room`].
    pub(crate) async fn may_enter(
        &self,
        room: &RoomInfo,
        user_id: i64,
        admin: bool,
    ) -> Result<Entry, Error> {
        if store::rooms::role_of(&self.db, room.id, user_id)
            .await?
            .is_some()
        {
            return Ok(Entry::Member);
        }
        if !may_read(room.visibility, false, admin) {
            return Err(no_such_room());
        }
        if room.is_dm() {
            return Err(Error::Forbidden("nobody can join a direct message"));
        }
        if room.visibility != Visibility::Public {
            return Err(Error::Forbidden("this private room needs an invitation"));
        }
        Ok(Entry::Joins)
    }

    /// The second half of [`Access::enter_room`]: a newcomer to a public room becomes a member.
    ///
    /// # Errors
    /// 503 if the database is down.
    pub(crate) async fn complete_entry(
        &self,
        room: &RoomInfo,
        user_id: i64,
        entry: Entry,
    ) -> Result<(), Error> {
        if entry == Entry::Joins {
            store::rooms::add_member(&self.db, room.id, user_id).await?;
        }
        Ok(())
    }

    /// [`Access::enter_room`] by name.
    ///
    /// # Errors
    /// 404 if there is no such room; as [`Access::enter_room`].
    pub(crate) async fn enter_room_named(
        &self,
        name: &str,
        user_id: i64,
        admin: bool,
    ) -> Result<RoomInfo, Error> {
        let room = self.room_named(name).await?;
        self.enter_room(room, user_id, admin).await
    }

    /// The room called `name`.
    ///
    /// # Errors
    /// 404 if there is none.
    pub(crate) async fn room_named(&self, name: &str) -> Result<RoomInfo, Error> {
        // A name no room can have is not looked up (the database would refuse some, NUL).
        if validate::room_name(name).is_err() {
            return Err(no_such_room());
        }
        store::rooms::find_by_name(&self.db, name)
            .await?
            .ok_or_else(no_such_room)
    }
}
