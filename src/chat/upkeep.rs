//! The background work of a replica, each job on its own: reconciliation of the active rooms
//! with the database and socket audits (see [`super::heal`]), rate-limiter pruning, presence
//! and socket-quota heartbeats, presence expiry sweeps, the deny-list purge, the search
//! indexer.

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use super::{Shared, events::Events, limits::Limits, presence::Online, revoke::Revocation};
use crate::{bus::BusState, fanout::hub::Hub, store};

/// What the background jobs work on.
pub(crate) struct Upkeep {
    pub(super) db: DatabaseConnection,
    pub(super) hub: Arc<Hub>,
    pub(super) events: Events,
    pub(super) online: Online,
    pub(super) limits: Limits,
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
            limits: shared.limits.clone(),
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

    ///     /// Periodic work until shutdown: reconciliation of the active rooms with the database,
    /// rate-limiter pruning, presence and socket-quota heartbeats, presence expiry sweeps.
    pub(crate) async fn housekeeping(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        let mut reconcile = tokio::time::interval(crate::fanout::hub::RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let (mut audit_in, mut audited_at) = (AUDIT_EVERY_TICKS, 0);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = reconcile.tick() => {
                    // The database is the source of truth: rooms behind it catch up.
                    if let Err(e) = self.hub.reconcile().await {
                        tracing::debug!(error = %e, "reconciliation failed");
                    }
                    // Sockets are audited when the bus comes back (events may have been
                    // lost while it was down) and every 30 s.
                    audit_in = audit_in.saturating_sub(1);
                    let reconnects = self.hub.reconnects();
                    if self.events.state() != BusState::Down
                        && (audit_in == 0 || reconnects != audited_at)
                    {
                        audit_in = AUDIT_EVERY_TICKS;
                        match self.audit_sockets().await {
                            Ok(()) => audited_at = reconnects,
                            Err(e) => tracing::debug!(error = %e, "socket audit failed"),
                        }
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            n += 1;
            if n.is_multiple_of(60) {
                // Deny-list entries outlive the tokens they deny by a minute only.
                if let Err(e) = store::revoked::purge_expired(&self.db).await {
                    tracing::debug!(error = %e, "purging expired revocations failed");
                }
            }
            if n.is_multiple_of(2) {
                self.online.heartbeat().await;
                self.limits.housekeeping(n.is_multiple_of(12)).await;
            }
            self.online.sweep().await;
        }
    }

    /// The search indexer (PostgreSQL; SQLite indexes in its triggers): sweeps the rooms in
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

/// Reconciliation ticks between socket audits (2 s each: 30 s).
const AUDIT_EVERY_TICKS: u32 = 15;
