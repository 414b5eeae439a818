//! Schema migrations, applied by `chat-server migrate` (or at start with `AUTO_MIGRATE=true`).
//!
//! Every migration must run unchanged on SQLite and PostgreSQL, so they use SeaQuery's
//! portable builders only. A merged migration is never edited; add a new one.

pub use sea_orm_migration::prelude::*;

mod m20261121_000001_initial;
mod m20261203_000001_dms_read_mentions;
mod m20261203_000002_reactions_threads_search;
mod m20261204_000001_search_off_the_send_path;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_initial::Migration),
            Box::new(m20261203_000001_dms_read_mentions::Migration),
            Box::new(m20261203_000002_reactions_threads_search::Migration),
            Box::new(m20261204_000001_search_off_the_send_path::Migration),
        ]
    }
}
