//! Refresh-token sessions. A login starts a *family*; every refresh rotates the token (the old
//! row points at its successor through `replaced_by`). Presenting a token that was already
//! rotated means it was copied: the whole family is revoked (theft detection). Tokens are
//! opaque random strings stored only as SHA-256 hashes.

use base64::Engine;
use chrono::{Duration, Utc};
use entity::session;
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, EntityTrait, QueryFilter, QuerySelect, TransactionTrait,
    sea_query::Expr,
};
use sha2::{Digest, Sha256};

use super::StoreError;

pub(crate) fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new refresh token and the family it belongs to.
pub(crate) struct Issued {
    pub token: String,
    pub family: String,
}

/// Start a new family (a login).
pub(crate) async fn start(
    db: &DatabaseConnection,
    user_id: i64,
    ttl_secs: u64,
) -> Result<Issued, StoreError> {
    let family = uuid::Uuid::new_v4().to_string();
    let token = new_token();
    insert(db, user_id, &family, &token, ttl_secs).await?;
    Ok(Issued { token, family })
}

async fn insert(
    db: &impl sea_orm::ConnectionTrait,
    user_id: i64,
    family: &str,
    token: &str,
    ttl_secs: u64,
) -> Result<session::Model, sea_orm::DbErr> {
    let now = Utc::now();
    session::ActiveModel {
        user_id: Set(user_id),
        family: Set(family.to_owned()),
        token_hash: Set(hash_token(token)),
        replaced_by: Set(None),
        created_at: Set(now),
        expires_at: Set(
            now + Duration::seconds(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2_000))
        ),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// The outcome of presenting a refresh token.
pub(crate) enum Rotation {
    Rotated {
        user_id: i64,
        issued: Issued,
    },
    /// Unknown, expired or revoked: 401.
    Invalid,
    /// Already rotated: the family has been revoked; 401. Carries it for the deny-list.
    Reused {
        user_id: i64,
        family: String,
    },
}

/// Rotate `token`: issue its successor in the same family, or detect reuse.
pub(crate) async fn rotate(
    db: &DatabaseConnection,
    token: &str,
    ttl_secs: u64,
) -> Result<Rotation, StoreError> {
    let Some(row) = session::Entity::find()
        .filter(session::Column::TokenHash.eq(hash_token(token)))
        .one(db)
        .await?
    else {
        return Ok(Rotation::Invalid);
    };
    if row.replaced_by.is_some() {
        revoke_family(db, &row.family).await?;
        return Ok(Rotation::Reused {
            user_id: row.user_id,
            family: row.family,
        });
    }
    if row.revoked_at.is_some() || row.expires_at <= Utc::now() {
        return Ok(Rotation::Invalid);
    }
    let next = new_token();
    let txn = db.begin().await?;
    let successor = insert(&txn, row.user_id, &row.family, &next, ttl_secs).await?;
    // Only one of two concurrent rotations of the same token may win.
    let res = session::Entity::update_many()
        .col_expr(session::Column::ReplacedBy, Expr::value(successor.id))
        .filter(session::Column::Id.eq(row.id))
        .filter(session::Column::ReplacedBy.is_null())
        .filter(session::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    if res.rows_affected != 1 {
        txn.rollback().await?;
        revoke_family(db, &row.family).await?;
        return Ok(Rotation::Reused {
            user_id: row.user_id,
            family: row.family,
        });
    }
    txn.commit().await?;
    Ok(Rotation::Rotated {
        user_id: row.user_id,
        issued: Issued {
            token: next,
            family: row.family,
        },
    })
}

/// Revoke every token of `family`.
pub(crate) async fn revoke_family(db: &DatabaseConnection, family: &str) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    lock_live(&txn, session::Column::Family.eq(family)).await?;
    session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(session::Column::Family.eq(family))
        .filter(session::Column::RevokedAt.is_null())
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// PostgreSQL: lock the live rows matching `cond` before revoking them. A rotation of one of
/// them holds its row until it commits its successor; waiting here for that lock means the
/// revoking `UPDATE` (a new statement, so a new snapshot) sees the successor and revokes it
/// too. Without the lock, the `UPDATE`'s snapshot predates the successor, which stayed alive.
/// SQLite has one writer at a time: the same order holds without a lock.
async fn lock_live(
    txn: &DatabaseTransaction,
    cond: impl sea_orm::sea_query::IntoCondition,
) -> Result<(), sea_orm::DbErr> {
    if txn.get_database_backend() == DbBackend::Postgres {
        session::Entity::find()
            .select_only()
            .column(session::Column::Id)
            .filter(cond)
            .filter(session::Column::RevokedAt.is_null())
            .lock_exclusive()
            .into_tuple::<i64>()
            .all(txn)
            .await?;
    }
    Ok(())
}

/// The family of a refresh token, if it belongs to `user_id`.
pub(crate) async fn family_of(
    db: &DatabaseConnection,
    token: &str,
    user_id: i64,
) -> Result<Option<String>, StoreError> {
    Ok(session::Entity::find()
        .filter(session::Column::TokenHash.eq(hash_token(token)))
        .filter(session::Column::UserId.eq(user_id))
        .one(db)
        .await?
        .map(|r| r.family))
}

/// Revoke every live family of `user_id` except `keep`; returns the revoked families.
pub(crate) async fn revoke_all(
    db: &DatabaseConnection,
    user_id: i64,
    keep: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let txn = db.begin().await?;
    lock_live(&txn, session::Column::UserId.eq(user_id)).await?;
    let mut q = session::Entity::find()
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null());
    if let Some(keep) = keep {
        q = q.filter(session::Column::Family.ne(keep));
    }
    let mut families: Vec<String> = q.all(&txn).await?.into_iter().map(|r| r.family).collect();
    families.sort();
    families.dedup();
    let mut upd = session::Entity::update_many()
        .col_expr(session::Column::RevokedAt, Expr::value(Utc::now()))
        .filter(session::Column::UserId.eq(user_id))
        .filter(session::Column::RevokedAt.is_null());
    if let Some(keep) = keep {
        upd = upd.filter(session::Column::Family.ne(keep));
    }
    upd.exec(&txn).await?;
    txn.commit().await?;
    Ok(families)
}
