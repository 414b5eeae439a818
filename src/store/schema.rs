//! Is the database schema at least as new as this binary? A replica started against a
//! database whose migrations have not all been applied (the migrate Job or hook failed, or has
//! not run yet) must not serve: its queries would hit tables and columns that do not exist.
//!
//! "Behind" means one of the binary's migrations is not recorded in `seaql_migrations`. A
//! database *ahead* of the binary (a newer release migrated it; this replica is the previous
//! release still rolling out, or a rollback) is fine: migrations stay compatible with the
//! previous release.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use migration::MigratorTrait;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};

/// The names of this binary's migrations that the database has not applied, oldest first.
/// A database with no migration table at all lacks every one.
///
/// # Errors
/// If the database cannot be read for another reason than a missing migration table.
pub(crate) async fn pending(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let known: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let backend = db.get_database_backend();
    let exists = match backend {
        sea_orm::DbBackend::Postgres => {
            "SELECT 1 FROM pg_catalog.pg_tables \
             WHERE schemaname = current_schema() AND tablename = 'seaql_migrations'"
        }
        _ => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'",
    };
    if db
        .query_one_raw(Statement::from_string(backend, exists))
        .await?
        .is_none()
    {
        return Ok(known);
    }
    let applied: Vec<String> = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT version FROM seaql_migrations",
        ))
        .await?
        .iter()
        .filter_map(|row| row.try_get::<String>("", "version").ok())
        .collect();
    Ok(known.into_iter().filter(|k| !applied.contains(k)).collect())
}

/// Shared flag: `true` once the schema has every migration of this binary. Set by the
/// watcher in `app`, read by `/readyz` and the gate in front of every route.
#[derive(Debug, Clone, Default)]
pub(crate) struct SchemaGate(Arc<AtomicBool>);

impl SchemaGate {
    pub(crate) fn is_current(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn set_current(&self, current: bool) {
        self.0.store(current, Ordering::Release);
    }
}
