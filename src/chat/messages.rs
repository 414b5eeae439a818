//! Messages beyond sending (SPEC §11): reactions, replies and threads, search. Every transport
//! calls these: REST handlers and both socket endpoints.

use super::{Chat, access, auth::CurrentUser};
use crate::{
    domain::{
        event::Event,
        model::{SearchHit, UserRef},
        validate,
    },
    error::ApiError,
    fanout::route,
    store,
};

/// Most search results per page, and the default.
pub(crate) const MAX_SEARCH_LIMIT: u64 = 100;
pub(crate) const DEFAULT_SEARCH_LIMIT: u64 = 20;

impl Chat {
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
    ) -> Result<(), ApiError> {
        validate::reaction(emoji).map_err(|m| ApiError::invalid_field("emoji", &m))?;
        self.ensure_writer(room_id, user.id).await?;
        let reacted = store::reactions::set(&self.db, room_id, id, user.id, emoji, on)
            .await?
            .ok_or(ApiError::NotFound("message"))?;
        if reacted.changed {
            let event = Event::Reaction {
                room,
                id,
                seq: reacted.seq,
                emoji,
                user,
                on,
            };
            self.publish(route::to_room(room_id, &event)).await;
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
    ) -> Result<Option<i64>, ApiError> {
        let Some(id) = reply_to else {
            return Ok(None);
        };
        let target = store::messages::find(&self.db, room_id, id)
            .await?
            .ok_or_else(|| ApiError::invalid_field("reply_to", "is not a message of this room"))?;
        Ok(Some(target.reply_to.unwrap_or(target.id)))
    }

    /// Full-text search in the rooms the caller may read now (all of them, or the one named),
    /// newest first.
    ///
    /// # Errors
    /// 404 for a `room` the caller may not see; 503 if the database is down.
    pub(crate) async fn search(
        &self,
        me: &CurrentUser,
        q: &str,
        room: Option<&str>,
        before: Option<i64>,
        limit: u64,
    ) -> Result<(Vec<SearchHit>, Option<i64>), ApiError> {
        let room_id = match room {
            Some(name) => Some(self.visible_room(name, me).await?.0.id),
            None => None,
        };
        Ok(
            store::search::messages(&self.db, access::reader(me), q, room_id, before, limit)
                .await?,
        )
    }
}

impl Chat {
    /// The search indexer (PostgreSQL; SQLite indexes in its triggers): sweeps the rooms in
    /// id order, a few rooms per short statement, indexing what was committed since the last
    /// sweep, off the send path; a sweep starts every [`store::search::INDEX_EVERY`] while
    /// there is work (at once when a room had more than its share of a statement), every
    /// [`store::search::INDEX_IDLE_EVERY`] while there is none. Runs on
    /// every replica; one statement at a time runs cluster-wide, so any replica left keeps
    /// search current.
    pub(crate) async fn search_indexer(self) {
        use store::search::{INDEX_EVERY, INDEX_IDLE_EVERY, index_step};
        if !store::search::indexed_in_background(&self.db) {
            return;
        }
        let mut wait = INDEX_IDLE_EVERY;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            let (mut after, mut swept, mut more) = (0, 0, false);
            wait = loop {
                match index_step(&self.db, after).await {
                    Ok(step) => {
                        swept += step.indexed;
                        more |= step.more;
                        match step.last_room {
                            Some(room) if !self.stop.is_cancelled() => after = room,
                            // A room had more than its share: the next sweep at once.
                            _ if more => break std::time::Duration::ZERO,
                            _ if swept > 0 => break INDEX_EVERY,
                            _ => break INDEX_IDLE_EVERY,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "search indexing failed");
                        break INDEX_IDLE_EVERY;
                    }
                }
            };
            metrics::counter!("chat_search_indexed_total").increment(swept);
        }
    }
}
