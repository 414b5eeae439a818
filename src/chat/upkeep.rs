//! What the background jobs of a replica work on (their schedule is [`super::tasks`]):
//! reconciliation of the active rooms with the database and socket audits (see
//! [`super::heal`]), presence heartbeats and expiry sweeps, the deny-list purge, the search
//! indexer.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use super::{Shared, events::Events, presence::Online, revoke::Revocation};
use crate::{fanout::hub::Hub, store};

/// What the background jobs work on.
pub(crate) struct Upkeep {
    pub(super) db: DatabaseConnection,
    pub(super) hub: Arc<Hub>,
    pub(super) events: Events,
    pub(super) online: Online,
    pub(super) revocation: Revocation,
    pub(super) stop: CancellationToken,
}

impl Upkeep {
    pub(super) fn new(shared: &Shared, stop: CancellationToken) -> Self {
        Self {
            db: shared.db.clone(),
            hub: shared.hub.clone(),
            events: shared.events.clone(),
            online: shared.online.clone(),
            revocation: shared.revocation.clone(),
            stop,
        }
    }

    /// Rooms this replica's fan-out is subscribed to.
    pub(crate) fn room_count(&self) -> usize {
        self.hub.room_count()
    }

    /// The fan-out, for the shutdown drain (closing sockets in batches).
    pub(crate) fn hub(&self) -> Arc<Hub> {
        self.hub.clone()
    }

    ///     /// The search indexer (PostgreSQL; SQLite indexes in its triggers): sweeps the rooms in
    /// id order, a few rooms per short statement, indexing what was committed since the last
    /// sweep, off the send path; a sweep starts every [`store::search::INDEX_EVERY`] while
    /// there is work (at once when a room had more than its share of a statement), every
    /// [`store::search::INDEX_IDLE_EVERY`] while there is none. Runs on
    /// every replica; one statement at a time runs cluster-wide, so any replica left keeps
    /// search current.
    pub(crate) async fn search_indexer(&self) {
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
