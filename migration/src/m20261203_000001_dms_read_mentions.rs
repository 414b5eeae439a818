//! Conversations, part A (docs/protocol.md#conversations): direct messages, read state and mentions.
//!
//! * `rooms.kind` (`room` or `dm`), `rooms.dm_key` (the sorted member ids of a DM, unique:
//!   the same set of people always finds the same room, even when two of them create it at
//!   once on two replicas) and `rooms.active_at` (time of the last message, for the DM list).
//! * `room_members.last_read_seq`: how far each member has read.
//! * `users.accept_dms`, `users.send_receipts`: the user's choices.
//! * `message_mentions`: which users a message mentions, with the message's room and `seq`
//!   so that a member's unread mentions are counted from this table and the membership alone.
//!
//! Every change adds to today's schema (new nullable or defaulted columns, a new table), so it
//! runs forward on a database holding data. SQLite takes one column per `ALTER TABLE`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Rooms {
    Table,
    Id,
    Kind,
    DmKey,
    ActiveAt,
}

#[derive(DeriveIden)]
enum RoomMembers {
    Table,
    LastReadSeq,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    AcceptDms,
    SendReceipts,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum MessageMentions {
    Table,
    MessageId,
    UserId,
    RoomId,
    Seq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let add =
            |table: DynIden, col: ColumnDef| Table::alter().table(table).add_column(col).to_owned();
        for stmt in [
            add(
                Rooms::Table.into_iden(),
                ColumnDef::new(Rooms::Kind)
                    .string_len(8)
                    .not_null()
                    .default("room")
                    .to_owned(),
            ),
            add(
                Rooms::Table.into_iden(),
                ColumnDef::new(Rooms::DmKey)
                    .string_len(200)
                    .null()
                    .to_owned(),
            ),
            add(
                Rooms::Table.into_iden(),
                ColumnDef::new(Rooms::ActiveAt)
                    .timestamp_with_time_zone()
                    .null()
                    .to_owned(),
            ),
            add(
                RoomMembers::Table.into_iden(),
                ColumnDef::new(RoomMembers::LastReadSeq)
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            ),
            add(
                Users::Table.into_iden(),
                ColumnDef::new(Users::AcceptDms)
                    .boolean()
                    .not_null()
                    .default(true)
                    .to_owned(),
            ),
            add(
                Users::Table.into_iden(),
                ColumnDef::new(Users::SendReceipts)
                    .boolean()
                    .not_null()
                    .default(true)
                    .to_owned(),
            ),
        ] {
            m.alter_table(stmt).await?;
        }
        // NULLs are distinct in a unique index on both backends: only DMs carry a key.
        m.create_index(
            Index::create()
                .name("ux_rooms_dm_key")
                .table(Rooms::Table)
                .col(Rooms::DmKey)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(MessageMentions::Table)
                .col(
                    ColumnDef::new(MessageMentions::MessageId)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(MessageMentions::UserId)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(MessageMentions::RoomId)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(MessageMentions::Seq)
                        .big_integer()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(MessageMentions::MessageId)
                        .col(MessageMentions::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_mentions_message")
                        .from(MessageMentions::Table, MessageMentions::MessageId)
                        .to(Messages::Table, Messages::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_mentions_user")
                        .from(MessageMentions::Table, MessageMentions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // A member's mentions in a room after a seq: the unread-mentions count.
        m.create_index(
            Index::create()
                .name("ix_mentions_user_room_seq")
                .table(MessageMentions::Table)
                .col(MessageMentions::UserId)
                .col(MessageMentions::RoomId)
                .col(MessageMentions::Seq)
                .to_owned(),
        )
        .await?;
        // The DM list: a user's DMs by activity.
        m.create_index(
            Index::create()
                .name("ix_rooms_kind_active")
                .table(Rooms::Table)
                .col(Rooms::Kind)
                .col(Rooms::ActiveAt)
                .col(Rooms::Id)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(MessageMentions::Table).to_owned())
            .await?;
        m.drop_index(
            Index::drop()
                .name("ix_rooms_kind_active")
                .table(Rooms::Table)
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("ux_rooms_dm_key")
                .table(Rooms::Table)
                .to_owned(),
        )
        .await?;
        let drop =
            |table: DynIden, col: DynIden| Table::alter().table(table).drop_column(col).to_owned();
        for stmt in [
            drop(Rooms::Table.into_iden(), Rooms::Kind.into_iden()),
            drop(Rooms::Table.into_iden(), Rooms::DmKey.into_iden()),
            drop(Rooms::Table.into_iden(), Rooms::ActiveAt.into_iden()),
            drop(
                RoomMembers::Table.into_iden(),
                RoomMembers::LastReadSeq.into_iden(),
            ),
            drop(Users::Table.into_iden(), Users::AcceptDms.into_iden()),
            drop(Users::Table.into_iden(), Users::SendReceipts.into_iden()),
        ] {
            m.alter_table(stmt).await?;
        }
        Ok(())
    }
}
