//! What operators ask a replica: is it ready for traffic (and why not), and the gauges
//! `/metrics` refreshes when scraped.

use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::events::Events;
pub(crate) use crate::store::schema::SchemaGate;
use crate::{bus::BusState, telemetry::metrics};

/// How long the readiness probe waits for the database.
const DB_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether this replica should get traffic, and the state of each part.
#[derive(Debug, Serialize)]
pub(crate) struct Readiness {
    /// `ready` or `unavailable`.
    pub(crate) status: &'static str,
    /// `up` or `down`.
    pub(crate) db: &'static str,
    /// `current` or `behind` (this binary has migrations the database lacks).
    pub(crate) schema: &'static str,
    pub(crate) bus: BusState,
    pub(crate) draining: bool,
    #[serde(skip)]
    pub(crate) ready: bool,
}

/// What operators ask a replica.
pub(crate) struct Ops {
    db: DatabaseConnection,
    /// The group commit's own connection (PostgreSQL), when it does not share `db`.
    commit_db: Option<DatabaseConnection>,
    events: Events,
    /// Cancelled on shutdown: not ready from then on.
    stop: CancellationToken,
}

impl Ops {
    pub(crate) fn new(
        db: DatabaseConnection,
        commit_db: Option<DatabaseConnection>,
        events: Events,
        stop: CancellationToken,
    ) -> Self {
        Self {
            db,
            commit_db,
            events,
            stop,
        }
    }

    /// Check the database (with a short timeout), the schema (when a `gate` watches it), the
    /// bus and shutdown. Also exported as the `chat_ready`, `chat_bus_live` and
    /// `chat_schema_current` gauges.
    pub(crate) async fn readiness(&self, gate: Option<&SchemaGate>) -> Readiness {
        let db_ok = tokio::time::timeout(DB_PROBE_TIMEOUT, self.db.execute_unprepared("SELECT 1"))
            .await
            .is_ok_and(|r| r.is_ok());
        let bus = self.events.state();
        let draining = self.stop.is_cancelled();
        // Without a gate (a router built without one) the schema is not checked.
        let schema_ok = gate.is_none_or(SchemaGate::is_current);
        let ready = db_ok && schema_ok && bus != BusState::Down && !draining;
        metrics::health(ready, bus != BusState::Down, schema_ok);
        Readiness {
            status: if ready { "ready" } else { "unavailable" },
            db: if db_ok { "up" } else { "down" },
            schema: if schema_ok { "current" } else { "behind" },
            bus,
            draining,
            ready,
        }
    }

    /// Refresh the gauges a scrape reads: database pools, the process, readiness.
    pub(crate) async fn refresh_gauges(&self, gate: Option<&SchemaGate>) {
        metrics::record_db_pool(&self.db, "main");
        if let Some(commit_db) = &self.commit_db {
            metrics::record_db_pool(commit_db, "commit");
        }
        metrics::record_process();
        let _ = self.readiness(gate).await;
    }
}
