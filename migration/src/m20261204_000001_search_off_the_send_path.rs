//! The send path's cost: two indexes that every group commit updated come off it.
//!
//! * `ix_rooms_kind_active` goes. The commit advances `rooms.active_at` with `last_seq`; while
//!   an index covered `active_at`, PostgreSQL could not update the room's row in place (a HOT
//!   update), so every batch wrote a new entry into each of the room's indexes and the hot
//!   rows' indexes bloated. The DM list reads a user's DMs through their memberships, which
//!   never needed it.
//! * PostgreSQL search moves from a GIN expression index on `messages` (a tsvector computed
//!   and indexed inside every commit statement, while it held the rooms' row locks) to its
//!   own table, `message_search` (`tsv` with a GIN index), which a background indexer fills
//!   in short statements (`store::search::index_step`). `search_progress` keeps, per room, the
//!   `seq` up to which it is indexed: a room's messages commit in `seq` order (the room's row
//!   lock), so everything at or below it is in. Edits and deletions update the table in their
//!   own transaction. Existing messages are indexed here.
//! * SQLite keeps its FTS5 table and triggers (one writer: nothing to contend with).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Rooms {
    Table,
    Kind,
    ActiveAt,
    Id,
}

/// No foreign keys: a key check would lock each indexed message's row (and each room's, which
/// every commit locks) in the indexer's transaction. A room's deletion removes its entries
/// (`store::search::forget_room`); search joins live messages, so nothing stale is ever shown.
const POSTGRES_UP: [&str; 6] = [
    "CREATE TABLE message_search (message_id BIGINT PRIMARY KEY, tsv TSVECTOR NOT NULL)",
    "CREATE INDEX ix_message_search_tsv ON message_search USING GIN (tsv)",
    "CREATE TABLE search_progress (room_id BIGINT PRIMARY KEY, seq BIGINT NOT NULL)",
    // Everything stored so far, and each room's progress to match.
    "INSERT INTO message_search (message_id, tsv) \
        SELECT id, to_tsvector('english', content) FROM messages WHERE deleted_at IS NULL",
    "INSERT INTO search_progress (room_id, seq) SELECT id, last_seq FROM rooms",
    "DROP INDEX IF EXISTS ix_messages_search",
];

const POSTGRES_DOWN: [&str; 3] = [
    "CREATE INDEX IF NOT EXISTS ix_messages_search ON messages \
        USING GIN (to_tsvector('english', content)) WHERE deleted_at IS NULL",
    "DROP TABLE IF EXISTS search_progress",
    "DROP TABLE IF EXISTS message_search",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_rooms_kind_active")
                .table(Rooms::Table)
                .to_owned(),
        )
        .await?;
        if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            let db = m.get_connection();
            for sql in POSTGRES_UP {
                db.execute_unprepared(sql).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            let db = m.get_connection();
            for sql in POSTGRES_DOWN {
                db.execute_unprepared(sql).await?;
            }
        }
        m.create_index(
            Index::create()
                .name("ix_rooms_kind_active")
                .table(Rooms::Table)
                .col(Rooms::Kind)
                .col(Rooms::ActiveAt)
                .col(Rooms::Id)
                .to_owned(),
        )
        .await
    }
}
