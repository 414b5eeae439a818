//! The whole v1 schema: users, refresh-token sessions, revoked access tokens, rooms,
//! room members and messages.
//!
//! Case-insensitive uniqueness of usernames and emails is enforced through lower-cased
//! shadow columns with plain unique indexes, which behave the same on both backends.
//! `rooms.last_seq` is the per-room sequence counter: the send path increments it in the
//! same transaction that inserts the messages, so `seq` is gap-free per room.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    UsernameLower,
    Email,
    EmailLower,
    PasswordHash,
    FirstName,
    LastName,
    Roles,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    Family,
    TokenHash,
    ReplacedBy,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum RevokedTokens {
    Table,
    Key,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Rooms {
    Table,
    Id,
    Name,
    Topic,
    Visibility,
    OwnerId,
    LastSeq,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RoomMembers {
    Table,
    RoomId,
    UserId,
    Role,
    JoinedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    RoomId,
    Seq,
    AuthorId,
    Content,
    ClientId,
    CreatedAt,
    EditedAt,
    DeletedAt,
}

fn pk(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(pk(Users::Id))
                .col(ColumnDef::new(Users::Username).string_len(32).not_null())
                .col(
                    ColumnDef::new(Users::UsernameLower)
                        .string_len(32)
                        .not_null(),
                )
                .col(ColumnDef::new(Users::Email).string_len(254).not_null())
                .col(ColumnDef::new(Users::EmailLower).string_len(254).not_null())
                .col(ColumnDef::new(Users::PasswordHash).text().not_null())
                .col(ColumnDef::new(Users::FirstName).string_len(100).null())
                .col(ColumnDef::new(Users::LastName).string_len(100).null())
                .col(
                    ColumnDef::new(Users::Roles)
                        .string_len(64)
                        .not_null()
                        .default("user"),
                )
                .col(ts(Users::CreatedAt))
                .col(ts(Users::UpdatedAt))
                .to_owned(),
        )
        .await?;
        for (name, col) in [
            ("ux_users_username_lower", Users::UsernameLower),
            ("ux_users_email_lower", Users::EmailLower),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(Users::Table)
                    .col(col)
                    .unique()
                    .to_owned(),
            )
            .await?;
        }

        m.create_table(
            Table::create()
                .table(Sessions::Table)
                .col(pk(Sessions::Id))
                .col(ColumnDef::new(Sessions::UserId).big_integer().not_null())
                .col(ColumnDef::new(Sessions::Family).string_len(36).not_null())
                .col(
                    ColumnDef::new(Sessions::TokenHash)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(Sessions::ReplacedBy).big_integer().null())
                .col(ts(Sessions::CreatedAt))
                .col(ts(Sessions::ExpiresAt))
                .col(ts_null(Sessions::RevokedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_sessions_user")
                        .from(Sessions::Table, Sessions::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_sessions_token_hash")
                .table(Sessions::Table)
                .col(Sessions::TokenHash)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_sessions_family")
                .table(Sessions::Table)
                .col(Sessions::Family)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_sessions_user")
                .table(Sessions::Table)
                .col(Sessions::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RevokedTokens::Table)
                .col(
                    ColumnDef::new(RevokedTokens::Key)
                        .string_len(80)
                        .not_null()
                        .primary_key(),
                )
                .col(ts(RevokedTokens::ExpiresAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Rooms::Table)
                .col(pk(Rooms::Id))
                .col(ColumnDef::new(Rooms::Name).string_len(64).not_null())
                .col(ColumnDef::new(Rooms::Topic).string_len(512).null())
                .col(ColumnDef::new(Rooms::Visibility).string_len(16).not_null())
                .col(ColumnDef::new(Rooms::OwnerId).big_integer().null())
                .col(
                    ColumnDef::new(Rooms::LastSeq)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(ts(Rooms::CreatedAt))
                .col(ts(Rooms::UpdatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_rooms_owner")
                        .from(Rooms::Table, Rooms::OwnerId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_rooms_name")
                .table(Rooms::Table)
                .col(Rooms::Name)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RoomMembers::Table)
                .col(ColumnDef::new(RoomMembers::RoomId).big_integer().not_null())
                .col(ColumnDef::new(RoomMembers::UserId).big_integer().not_null())
                .col(ColumnDef::new(RoomMembers::Role).string_len(16).not_null())
                .col(ts(RoomMembers::JoinedAt))
                .primary_key(
                    Index::create()
                        .col(RoomMembers::RoomId)
                        .col(RoomMembers::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_members_room")
                        .from(RoomMembers::Table, RoomMembers::RoomId)
                        .to(Rooms::Table, Rooms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_members_user")
                        .from(RoomMembers::Table, RoomMembers::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_members_user")
                .table(RoomMembers::Table)
                .col(RoomMembers::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .col(pk(Messages::Id))
                .col(ColumnDef::new(Messages::RoomId).big_integer().not_null())
                .col(ColumnDef::new(Messages::Seq).big_integer().not_null())
                .col(ColumnDef::new(Messages::AuthorId).big_integer().null())
                .col(ColumnDef::new(Messages::Content).text().not_null())
                .col(ColumnDef::new(Messages::ClientId).string_len(64).null())
                .col(ts(Messages::CreatedAt))
                .col(ts_null(Messages::EditedAt))
                .col(ts_null(Messages::DeletedAt))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_messages_room")
                        .from(Messages::Table, Messages::RoomId)
                        .to(Rooms::Table, Rooms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_messages_author")
                        .from(Messages::Table, Messages::AuthorId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::SetNull),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_messages_room_seq")
                .table(Messages::Table)
                .col(Messages::RoomId)
                .col(Messages::Seq)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_messages_room_author_client")
                .table(Messages::Table)
                .col(Messages::RoomId)
                .col(Messages::AuthorId)
                .col(Messages::ClientId)
                .unique()
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            Messages::Table.into_iden(),
            RoomMembers::Table.into_iden(),
            Rooms::Table.into_iden(),
            RevokedTokens::Table.into_iden(),
            Sessions::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
