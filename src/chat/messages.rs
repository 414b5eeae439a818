//! Messages: history, the send pipeline's front (access, thread, rate limit, then the group
//! commit of [`super::send`]), edits, deletions, reactions, replies and threads, typing,
//! search. Every transport calls these: REST handlers and both socket endpoints.

use super::Error;
use sea_orm::DatabaseConnection;

use super::{
    access::{self, Access},
    auth::CurrentUser,
    events::Events,
    limits::Limits,
    send::{Draft, Sender, Sent},
};
use crate::{
    bus::route,
    domain::{
        event::Event,
        model::{Message, SearchHit, UserRef},
        validate,
    },
    store,
};

/// A message as a client posts it.
#[derive(Debug)]
pub(crate) struct Post {
    /// `None`: missing (refused by [`Messages::send`]; the socket's parser refuses it first).
    pub(crate) content: Option<String>,
    /// Idempotency key, unique per room and author.
    pub(crate) client_id: Option<String>,
    /// The message it replies to (its thread's root is looked up).
    pub(crate) reply_to: Option<i64>,
}

/// Which page of a room's history.
#[derive(Debug, Default)]
pub(crate) struct HistoryPage {
    pub(crate) before_seq: Option<i64>,
    pub(crate) after_seq: Option<i64>,
    /// Only this thread: its root and its replies.
    pub(crate) thread: Option<i64>,
    pub(crate) limit: u64,
}

/// A page of history in ascending `seq`, and whether more exists in the direction read.
pub(crate) type History = (Vec<Message>, bool);

/// Most search results per page, and the default.
pub(crate) const MAX_SEARCH_LIMIT: u64 = 100;
pub(crate) const DEFAULT_SEARCH_LIMIT: u64 = 20;

/// The messages use-cases.
pub(crate) struct Messages {
    db: DatabaseConnection,
    access: Access,
    limits: Limits,
    sender: Sender,
    events: Events,
}

impl Messages {
    pub(crate) fn new(
        db: DatabaseConnection,
        access: Access,
        limits: Limits,
        sender: Sender,
        events: Events,
    ) -> Self {
        Self {
            db,
            access,
            limits,
            sender,
            events,
        }
    }

    /// A page of room `name`'s history (or of one of its threads), under the read limit.
    ///
    /// # Errors
    /// `rate_limited`; `not_found` for a room the caller may not see, or no such `thread`
    /// root in it.
    pub(crate) async fn history(
        &self,
        me: &CurrentUser,
        name: &str,
        page: HistoryPage,
    ) -> Result<History, Error> {
        self.limits.admit_read(me.id).await?;
        let (room, _) = self.access.visible_room(name, me).await?;
        if let Some(root) = page.thread
            && !store::messages::exists(&self.db, room.id, root).await?
        {
            return Err(Error::NotFound("message"));
        }
        let filter = store::messages::HistoryFilter {
            before_seq: page.before_seq,
            after_seq: page.after_seq,
            thread: page.thread,
            limit: page.limit,
        };
        Ok(store::messages::history(&self.db, room.id, &room.name, filter, me.id).await?)
    }

    /// Send `post` to room `name` by name (REST): the access rule, the content rules, then
    /// [`Messages::post`], waiting for the commit. A repeated `client_id` gives the original,
    /// with its reactions as they are now.
    ///
    /// # Errors
    /// `not_found` / `forbidden` by the access rule; `validation_failed` for the content, the
    /// `client_id` or `reply_to`; `rate_limited`; `service_unavailable`.
    pub(crate) async fn send(
        &self,
        me: &CurrentUser,
        name: &str,
        post: Post,
    ) -> Result<Sent, Error> {
        let room = self.access.writable_room(name, me).await?;
        Error::check(validate::draft(
            post.content.as_deref(),
            post.client_id.as_deref(),
        ))?;
        match self
            .post(&me.user_ref(), room.id, &room.name, post)
            .await?
            .await?
        {
            Sent::Duplicate(mut msg) => {
                // The original may have gathered reactions since (a retry is rare: one query).
                msg.reactions = store::reactions::of_messages(&self.db, &[msg.id], Some(me.id))
                    .await
                    .map_err(store::StoreError::from)?
                    .remove(&msg.id)
                    .unwrap_or_default();
                Ok(Sent::Duplicate(msg))
            }
            created => Ok(created),
        }
    }

    /// The send pipeline every transport shares, for a room the author may write to and a
    /// validated content: the thread root of `reply_to`, the message rate limit, then the
    /// message is queued for the group commit. The queue position is taken before this
    /// returns; the returned future is the commit's outcome (a socket answers it later, in
    /// submission order).
    ///
    /// # Errors
    /// `validation_failed` on `reply_to`; `rate_limited`.
    pub(crate) async fn post(
        &self,
        author: &UserRef,
        room_id: i64,
        room: &str,
        post: Post,
    ) -> Result<impl Future<Output = Result<Sent, Error>> + Send + 'static, Error> {
        let reply_to = self.thread_root(room_id, post.reply_to).await?;
        self.limits.admit(author.id).await?;
        let draft = Draft {
            author: author.clone(),
            content: post.content.unwrap_or_default(),
            client_id: post.client_id,
            reply_to,
        };
        Ok(self.sender.submit(room_id, room, draft))
    }

    /// Edit message `id` of room `name`: the author only; broadcasts `message_edited`. An
    /// edit counts as a message (the message rate limit): it goes to every socket in the room.
    ///
    /// # Errors
    /// `rate_limited`; `not_found` for the room or the message; `forbidden` for anyone but
    /// the author; `validation_failed` for the content.
    pub(crate) async fn edit_message(
        &self,
        me: &CurrentUser,
        name: &str,
        id: i64,
        content: Option<String>,
    ) -> Result<Message, Error> {
        self.limits.admit(me.id).await?;
        let (room, _) = self.access.visible_room(name, me).await?;
        let row = store::messages::find(&self.db, room.id, id)
            .await?
            .ok_or(Error::NotFound("message"))?;
        if row.author_id != Some(me.id) {
            return Err(Error::Forbidden("only the author may edit a message"));
        }
        Error::check(validate::draft(content.as_deref(), None))?;
        let row = store::messages::edit(&self.db, row, content.unwrap_or_default()).await?;
        let msg = store::messages::to_wire(&self.db, &room.name, vec![row], Some(me.id))
            .await?
            .pop()
            .ok_or(Error::NotFound("message"))?;
        // One frame for every socket of the room: reactions without a reader's `me`.
        let mut shared = msg.clone();
        for r in &mut shared.reactions {
            r.me = false;
        }
        self.events
            .publish(route::to_room(room.id, &Event::MessageEdited(&shared)))
            .await;
        Ok(msg)
    }

    /// Delete message `id` of room `name`: its author, the room's owner or an admin;
    /// broadcasts `message_deleted`. A deletion counts as a message (the message rate limit).
    ///
    /// # Errors
    /// `rate_limited`; `not_found` for the room or the message; `forbidden` for anyone else.
    pub(crate) async fn delete_message(
        &self,
        me: &CurrentUser,
        name: &str,
        id: i64,
    ) -> Result<(), Error> {
        self.limits.admit(me.id).await?;
        let (room, _) = self.access.visible_room(name, me).await?;
        let row = store::messages::find(&self.db, room.id, id)
            .await?
            .ok_or(Error::NotFound("message"))?;
        if row.author_id != Some(me.id) && room.owner_id != Some(me.id) && !me.is_admin() {
            return Err(Error::Forbidden(
                "only the author, the room owner or an admin may delete a message",
            ));
        }
        let seq = row.seq;
        store::messages::delete(&self.db, row).await?;
        let deleted = Event::MessageDeleted {
            room: &room.name,
            id,
            seq,
        };
        self.events.publish(route::to_room(room.id, &deleted)).await;
        Ok(())
    }

    /// [`Messages::react`] in room `name` by name (REST): the access rule and the frame limit
    /// first.
    ///
    /// # Errors
    /// As [`Messages::react`]; `not_found` / `forbidden` by the access rule; `rate_limited`.
    pub(crate) async fn react_in(
        &self,
        me: &CurrentUser,
        name: &str,
        id: i64,
        emoji: &str,
        on: bool,
    ) -> Result<(), Error> {
        let room = self.access.writable_room(name, me).await?;
        self.limits.admit_frame(me.id).await?;
        self.react(room.id, &room.name, &me.user_ref(), id, emoji, on)
            .await
    }

    /// `user` is typing in the room: everyone else there is told (best effort, not stored).
    pub(crate) async fn typing(&self, room_id: i64, room: &str, user: &UserRef) {
        let event = Event::Typing { room, user };
        let env = route::to_room_but(room_id, &event, user.id);
        self.events.offer(env).await;
    }
    /// Add (`on`) or remove `user`'s reaction `emoji` to message `id` of a room they may
    /// write to; a change is committed, then broadcast to the room as a `reaction` event
    /// (to every socket, the reactor's included, so their other devices follow). Repeating it
    /// changes nothing and broadcasts nothing.
    ///
    /// # Errors
    /// 422 on `emoji`; 403 for a non-member; 404 for no such (live) message; 409 for a 21st
    /// distinct emoji on the message.
    pub(crate) async fn react(
        &self,
        room_id: i64,
        room: &str,
        user: &UserRef,
        id: i64,
        emoji: &str,
        on: bool,
    ) -> Result<(), Error> {
        validate::reaction(emoji).map_err(|m| Error::invalid_field("emoji", &m))?;
        self.access.ensure_writer(room_id, user.id).await?;
        let reacted = store::reactions::set(&self.db, room_id, id, user.id, emoji, on)
            .await?
            .ok_or(Error::NotFound("message"))?;
        if reacted.changed {
            let event = Event::Reaction {
                room,
                id,
                seq: reacted.seq,
                emoji,
                user,
                on,
            };
            self.events.publish(route::to_room(room_id, &event)).await;
        }
        Ok(())
    }

    /// The thread a new message replying to `reply_to` joins: its root. A reply to a reply
    /// joins the same thread (threads are one level deep).
    ///
    /// # Errors
    /// 422 on `reply_to` unless it is a live (not deleted) message of room `room_id`.
    pub(crate) async fn thread_root(
        &self,
        room_id: i64,
        reply_to: Option<i64>,
    ) -> Result<Option<i64>, Error> {
        let Some(id) = reply_to else {
            return Ok(None);
        };
        let target = store::messages::find(&self.db, room_id, id)
            .await?
            .ok_or_else(|| Error::invalid_field("reply_to", "is not a message of this room"))?;
        Ok(Some(target.reply_to.unwrap_or(target.id)))
    }

    /// Full-text search in the rooms the caller may read now (all of them, or the one named),
    /// newest first, under the read limit.
    ///
    /// # Errors
    /// 429 past the read limit; 404 for a `room` the caller may not see; 503 if the database
    /// is down.
    pub(crate) async fn search(
        &self,
        me: &CurrentUser,
        q: &str,
        room: Option<&str>,
        before: Option<i64>,
        limit: u64,
    ) -> Result<(Vec<SearchHit>, Option<i64>), Error> {
        self.limits.admit_read(me.id).await?;
        let room_id = match room {
            Some(name) => Some(self.access.visible_room(name, me).await?.0.id),
            None => None,
        };
        Ok(
            store::search::messages(&self.db, access::reader(me), q, room_id, before, limit)
                .await?,
        )
    }
}
