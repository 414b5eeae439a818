//! Conversations, part B (docs/protocol.md#conversations): reactions, replies and threads, full-text search.
//!
//! * `messages.reply_to` (the thread's root, or null), `reply_count` and `last_reply_at` (kept
//!   on a root by the commit that stores its replies). No foreign key: a column added to an
//!   existing SQLite table cannot get one, and the commit checks the root (same room, not
//!   deleted) in its own statement. A partial index serves `?thread=`.
//! * `message_reactions`: one row per (message, emoji, user), removed with its message or its
//!   user.
//! * Search: PostgreSQL indexes `to_tsvector('english', content)` of live messages with GIN
//!   (an expression index: no table rewrite, nothing stored twice); SQLite keeps an external
//!   content FTS5 table (porter stemmer) in sync with triggers, filled here from the existing
//!   messages. Only live messages are indexed: a delete erases the content and sets
//!   `deleted_at`, which leaves the index; an edit replaces the entry.
//!
//! Runs forward on a database holding the v1 schema and its data, on both backends; the v1
//! binary keeps working on the result (its inserts default the new columns, the triggers keep
//! the index).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ReplyTo,
    ReplyCount,
    LastReplyAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum MessageReactions {
    Table,
    MessageId,
    UserId,
    Emoji,
    CreatedAt,
}

/// SQLite: the FTS5 table, its triggers and the backfill.
const SQLITE_FTS: [&str; 5] = [
    "CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.deleted_at IS NULL BEGIN \
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages WHEN old.deleted_at IS NULL BEGIN \
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content); END",
    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF content, deleted_at ON messages BEGIN \
        INSERT INTO messages_fts(messages_fts, rowid, content) \
            SELECT 'delete', old.id, old.content WHERE old.deleted_at IS NULL; \
        INSERT INTO messages_fts(rowid, content) \
            SELECT new.id, new.content WHERE new.deleted_at IS NULL; END",
    "INSERT INTO messages_fts(rowid, content) SELECT id, content FROM messages WHERE deleted_at IS NULL",
];

const SQLITE_FTS_DOWN: [&str; 4] = [
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
];

/// PostgreSQL: the GIN index of live messages (the search query repeats this expression).
const POSTGRES_FTS: &str = "CREATE INDEX ix_messages_search ON messages \
    USING GIN (to_tsvector('english', content)) WHERE deleted_at IS NULL";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column per statement.
        for col in [
            ColumnDef::new(Messages::ReplyTo)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Messages::ReplyCount)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Messages::LastReplyAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        // A thread in `seq` order; only replies are in it.
        db.execute_unprepared(
            "CREATE INDEX ix_messages_reply_to ON messages (reply_to, id) WHERE reply_to IS NOT NULL",
        )
        .await?;
        m.create_table(
            Table::create()
                .table(MessageReactions::Table)
                .col(
                    ColumnDef::new(MessageReactions::MessageId)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(MessageReactions::Emoji)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(MessageReactions::UserId)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(MessageReactions::CreatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(MessageReactions::MessageId)
                        .col(MessageReactions::Emoji)
                        .col(MessageReactions::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_message_reactions_message")
                        .from(MessageReactions::Table, MessageReactions::MessageId)
                        .to(Messages::Table, Messages::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_message_reactions_user")
                        .from(MessageReactions::Table, MessageReactions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // The cascade from a deleted user.
        m.create_index(
            Index::create()
                .name("ix_message_reactions_user")
                .table(MessageReactions::Table)
                .col(MessageReactions::UserId)
                .to_owned(),
        )
        .await?;
        if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            db.execute_unprepared(POSTGRES_FTS).await?;
        } else {
            for sql in SQLITE_FTS {
                db.execute_unprepared(sql).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
            db.execute_unprepared("DROP INDEX IF EXISTS ix_messages_search")
                .await?;
        } else {
            for sql in SQLITE_FTS_DOWN {
                db.execute_unprepared(sql).await?;
            }
        }
        m.drop_table(Table::drop().table(MessageReactions::Table).to_owned())
            .await?;
        db.execute_unprepared("DROP INDEX IF EXISTS ix_messages_reply_to")
            .await?;
        for col in [
            Messages::LastReplyAt,
            Messages::ReplyCount,
            Messages::ReplyTo,
        ] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
