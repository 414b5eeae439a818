//! Rooms and membership: create, list, read, join, leave, change, delete, invite, remove. One
//! use-case per operation; REST and both socket endpoints call these, and each owns its rule
//! (who may manage a room, the reserved `dm-` prefix, the owner who can neither leave nor be
//! removed), its limit and the events it fans out.

use super::Error;
use sea_orm::DatabaseConnection;

use super::{
    access::{Access, may_invite, may_manage, no_such_room},
    auth::CurrentUser,
    dms,
    events::Events,
    limits::Limits,
    presence::Online,
};
use crate::domain::room::RoomInfo;
use crate::domain::validate::FieldErrors;
use crate::{
    bus::route,
    domain::{
        event::Event,
        model::{Member, Page, Room},
        validate::{self, Visibility},
    },
    store,
};

/// Settings of a new room, as given (validated here).
#[derive(Debug, Default)]
pub(crate) struct NewRoom {
    pub(crate) topic: Option<String>,
    pub(crate) visibility: Option<String>,
}

/// Changes to a room, as given (validated here). `topic: Some(None)` clears the topic.
#[derive(Debug, Default)]
pub(crate) struct RoomChanges {
    pub(crate) topic: Option<Option<String>>,
    pub(crate) visibility: Option<String>,
    /// Transfer the room to this member.
    pub(crate) owner_id: Option<i64>,
}

/// Which rooms a listing shows.
#[derive(Debug, Default)]
pub(crate) struct RoomQuery<'a> {
    pub(crate) q: Option<&'a str>,
    /// Only the caller's rooms, each with their read state.
    pub(crate) joined: bool,
    pub(crate) limit: u64,
    pub(crate) cursor: Option<&'a str>,
}

/// Whether a join-or-create made the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Created,
    Joined,
}

/// Generated direct-message names start so; no room may take one first.
const DM_PREFIX: &str = "dm-";

/// The name and settings of a new room, checked: the name (`None`: missing), not taking the
/// reserved `dm-` prefix, the topic and the visibility.
///
/// # Errors
/// `validation_failed` naming every field at fault.
fn check_new_room<'a>(name: Option<&'a str>, settings: &NewRoom) -> Result<&'a str, Error> {
    let mut fields = FieldErrors::new();
    match name.map(validate::room_name) {
        None => {
            fields.insert("name".into(), vec!["is required".into()]);
        }
        Some(Err(m)) => {
            fields.insert("name".into(), vec![m]);
        }
        Some(Ok(())) if name.is_some_and(|n| n.starts_with(DM_PREFIX)) => {
            fields.insert(
                "name".into(),
                vec!["must not start with `dm-` (reserved for direct messages)".into()],
            );
        }
        Some(Ok(())) => {}
    }
    validate::room_settings(
        &mut fields,
        settings.topic.as_deref(),
        settings.visibility.as_deref(),
    );
    match name.filter(|_| fields.is_empty()) {
        Some(name) => Ok(name),
        None => Err(Error::validation(fields)),
    }
}

/// The rooms use-cases.
pub(crate) struct Rooms {
    db: DatabaseConnection,
    access: Access,
    online: Online,
    limits: Limits,
    events: Events,
}

impl Rooms {
    pub(crate) fn new(
        db: DatabaseConnection,
        access: Access,
        online: Online,
        limits: Limits,
        events: Events,
    ) -> Self {
        Self {
            db,
            access,
            online,
            limits,
            events,
        }
    }

    /// Create room `name` (`None`: the name is missing), owned by the caller.
    ///
    /// # Errors
    /// `validation_failed` for a missing or invalid name, topic or visibility, or a name with
    /// the reserved `dm-` prefix; `conflict` if the name is taken; `rate_limited` past the
    /// rooms-per-hour limit.
    pub(crate) async fn create(
        &self,
        me: &CurrentUser,
        name: Option<&str>,
        settings: NewRoom,
    ) -> Result<Room, Error> {
        let row = self.insert_room(me, name, settings).await?;
        self.online.room_wire(row).await
    }

    async fn insert_room(
        &self,
        me: &CurrentUser,
        name: Option<&str>,
        settings: NewRoom,
    ) -> Result<RoomInfo, Error> {
        let name = check_new_room(name, &settings)?;
        self.limits.admit_room_creation(me.id).await?;
        // Validated above: an unknown value was refused.
        let visibility = settings
            .visibility
            .as_deref()
            .map_or(Visibility::Public, Visibility::of);
        Ok(store::rooms::create(&self.db, name, settings.topic, visibility, me.id).await?)
    }

    /// A page of rooms: the public ones and the caller's private ones; with `joined`, only the
    /// caller's, each with their read state.
    ///
    /// # Errors
    /// `service_unavailable` if the database is down.
    pub(crate) async fn list(
        &self,
        me: &CurrentUser,
        query: RoomQuery<'_>,
    ) -> Result<Page<Room>, Error> {
        let (rows, next) = store::rooms::list(
            &self.db,
            me.id,
            query.q,
            query.joined,
            query.limit,
            query.cursor,
        )
        .await?;
        let items = if query.joined {
            // The caller's rooms carry their read state (one grouped query for the page).
            dms::with_read_state(&self.db, &self.online, me, rows).await?
        } else {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let online = self.online.counts(&ids).await;
            store::rooms::to_wire_many(&self.db, rows, &online).await?
        };
        Ok(Page {
            items,
            next_cursor: next,
        })
    }

    /// The room called `name`, if the caller may see it.
    ///
    /// # Errors
    /// `not_found` if there is none, or it is private to others.
    pub(crate) async fn get(&self, me: &CurrentUser, name: &str) -> Result<Room, Error> {
        let (room, _) = self.access.visible_room(name, me).await?;
        self.online.room_wire(room).await
    }

    /// Join room `name`, or create it (the caller its owner) if there is none.
    ///
    /// # Errors
    /// As [`Rooms::create`]; `not_found` for a private room the caller is not in.
    pub(crate) async fn join_or_create(
        &self,
        me: &CurrentUser,
        name: &str,
        settings: NewRoom,
    ) -> Result<(Room, Outcome), Error> {
        if let Some(room) = self.existing_room(name).await? {
            return match self.access.enter_room(room, me.id, me.is_admin()).await {
                Ok(room) => Ok((self.online.room_wire(room).await?, Outcome::Joined)),
                // A room the caller may not see is no room to them: answered as a name that is
                // no room would be, as far as a name that is taken allows (a `dm-` name is
                // refused as reserved either way; a private room's name cannot be created).
                Err(Error::NotFound(_)) => {
                    check_new_room(Some(name), &settings)?;
                    Err(no_such_room())
                }
                Err(e) => Err(e),
            };
        }
        match self.insert_room(me, Some(name), settings).await {
            Ok(row) => Ok((self.online.room_wire(row).await?, Outcome::Created)),
            // Lost a race with a concurrent creator: join theirs.
            Err(Error::Conflict { .. }) => {
                let room = self
                    .access
                    .enter_room_named(name, me.id, me.is_admin())
                    .await?;
                Ok((self.online.room_wire(room).await?, Outcome::Joined))
            }
            Err(e) => Err(e),
        }
    }

    /// The room called `name`, if there is one.
    async fn existing_room(&self, name: &str) -> Result<Option<RoomInfo>, Error> {
        match self.access.room_named(name).await {
            Ok(room) => Ok(Some(room)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Join public room `name` (or stay a member).
    ///
    /// # Errors
    /// `not_found` if there is no such room, and for a private one the caller may not see;
    /// `forbidden` for an admin outside a private room (it needs an invitation).
    pub(crate) async fn join(&self, me: &CurrentUser, name: &str) -> Result<Room, Error> {
        let room = self
            .access
            .enter_room_named(name, me.id, me.is_admin())
            .await?;
        self.online.room_wire(room).await
    }

    /// Leave room `name`: the caller's sockets in it close (removed).
    ///
    /// # Errors
    /// `not_found` if there is no such room or the caller is not a member; `conflict` for its
    /// owner, who must transfer or delete it first.
    pub(crate) async fn leave(&self, me: &CurrentUser, name: &str) -> Result<(), Error> {
        let (room, role) = self.access.visible_room(name, me).await?;
        if role.is_none() {
            return Err(Error::NotFound("membership"));
        }
        if room.owner_id == Some(me.id) {
            return Err(Error::Conflict {
                message: "the owner cannot leave the room: transfer it first (PATCH the room \
                          with `owner_id`) or delete it"
                    .into(),
                fields: FieldErrors::new(),
            });
        }
        store::rooms::remove_member(&self.db, room.id, me.id).await?;
        self.events
            .publish(route::removed(room.id, &room.name, me.id))
            .await;
        Ok(())
    }

    /// Change room `name` (owner or admin): topic, visibility, owner; broadcasts
    /// `room_updated`.
    ///
    /// # Errors
    /// `not_found` as [`Rooms::get`]; `forbidden` for anyone else; `validation_failed` for an
    /// invalid topic or visibility, or a new owner who is not a member.
    pub(crate) async fn update(
        &self,
        me: &CurrentUser,
        name: &str,
        changes: RoomChanges,
    ) -> Result<Room, Error> {
        let (room, _) = self.access.visible_room(name, me).await?;
        if !may_manage(&room, me) {
            return Err(Error::Forbidden(
                "only the owner or an admin may change the room",
            ));
        }
        let mut fields = FieldErrors::new();
        validate::room_settings(
            &mut fields,
            changes.topic.as_ref().and_then(Option::as_deref),
            changes.visibility.as_deref(),
        );
        Error::check(fields)?;
        let changes = store::rooms::RoomChanges {
            topic: changes.topic,
            visibility: changes.visibility.as_deref().map(Visibility::of),
            owner_id: changes.owner_id,
        };
        let row = match store::rooms::update(&self.db, room, changes).await {
            Err(store::StoreError::NotMember) => {
                return Err(Error::invalid_field(
                    "owner_id",
                    "must be a member of the room",
                ));
            }
            other => other?,
        };
        let room = self.online.room_wire(row).await?;
        self.events
            .publish(route::to_room(room.id, &Event::RoomUpdated { room: &room }))
            .await;
        Ok(room)
    }

    /// Delete room `name` (owner or admin): its sockets get `room_deleted`, then close.
    ///
    /// # Errors
    /// `not_found` as [`Rooms::get`]; `forbidden` for anyone else.
    pub(crate) async fn delete(&self, me: &CurrentUser, name: &str) -> Result<(), Error> {
        let (room, _) = self.access.visible_room(name, me).await?;
        if !may_manage(&room, me) {
            return Err(Error::Forbidden(
                "only the owner or an admin may delete the room",
            ));
        }
        store::rooms::delete(&self.db, room.id).await?;
        self.events
            .publish(route::room_deleted(room.id, &room.name))
            .await;
        Ok(())
    }

    /// One page of the members of room `name`, in user-id order after `after`; `online` is
    /// cluster-wide.
    ///
    /// # Errors
    /// `not_found` as [`Rooms::get`].
    pub(crate) async fn members(
        &self,
        me: &CurrentUser,
        name: &str,
        limit: u64,
        after: Option<i64>,
    ) -> Result<(Vec<Member>, Option<i64>), Error> {
        let (room, _) = self.access.visible_room(name, me).await?;
        let (mut items, next) = store::rooms::members(&self.db, room.id, limit, after).await?;
        let online = self.online.ids(room.id).await;
        for m in &mut items {
            m.online = online.contains(&m.user.id);
        }
        Ok((items, next))
    }

    /// Invite `user_id` into room `name` (owner or admin): they become a member.
    ///
    /// # Errors
    /// `not_found` as [`Rooms::get`] or for no such user; `forbidden` for anyone else, and for
    /// a direct message.
    pub(crate) async fn invite(
        &self,
        me: &CurrentUser,
        name: &str,
        user_id: Option<i64>,
    ) -> Result<Member, Error> {
        let (room, _) = self.access.visible_room(name, me).await?;
        may_invite(&room, me)?;
        let Some(user_id) = user_id else {
            return Err(Error::invalid_field("user_id", "is required"));
        };
        let user = store::users::find(&self.db, user_id)
            .await?
            .ok_or(Error::NotFound("user"))?;
        store::rooms::add_member(&self.db, room.id, user_id).await?;
        store::rooms::member(&self.db, room.id, user.id)
            .await?
            .ok_or(Error::NotFound("user"))
    }

    /// Remove `user_id` from room `name` (owner or admin): their sockets in it close.
    ///
    /// # Errors
    /// `not_found` as [`Rooms::get`] or if they are not a member; `forbidden` for anyone
    /// else, and for the owner (who cannot be removed).
    pub(crate) async fn remove_member(
        &self,
        me: &CurrentUser,
        name: &str,
        user_id: i64,
    ) -> Result<(), Error> {
        let (room, _) = self.access.visible_room(name, me).await?;
        if !may_manage(&room, me) {
            return Err(Error::Forbidden(
                "only the owner or an admin may remove members",
            ));
        }
        if room.owner_id == Some(user_id) {
            return Err(Error::Forbidden("the owner cannot be removed"));
        }
        if !store::rooms::remove_member(&self.db, room.id, user_id).await? {
            return Err(Error::NotFound("member"));
        }
        self.events
            .publish(route::removed(room.id, &room.name, user_id))
            .await;
        Ok(())
    }
}
