//! Reactions (docs/protocol.md#conversations): one row per (message, emoji, user). A page of messages gets its
//! reactions in one grouped query; adding one is checked against the per-message limit of
//! distinct emoji under a lock on the message, so racing adds cannot exceed it.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};

use super::{MAX_IDS_PER_QUERY, StoreError};
use crate::domain::{model::Reaction, validate::MAX_REACTIONS_PER_MESSAGE};

/// The reactions of `ids`, by message, each message's emoji in the order first used; `me`
/// relative to `reader`. One query per [`MAX_IDS_PER_QUERY`] messages.
pub(crate) async fn of_messages(
    db: &impl ConnectionTrait,
    ids: &[i64],
    reader: Option<i64>,
) -> Result<HashMap<i64, Vec<Reaction>>, DbErr> {
    let mut out: HashMap<i64, Vec<Reaction>> = HashMap::new();
    for chunk in ids.chunks(MAX_IDS_PER_QUERY) {
        // A user id is never 0: no reader, no `me`.
        let mut values: Vec<sea_orm::Value> = vec![reader.unwrap_or(0).into()];
        let list: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                values.push((*id).into());
                format!("${}", i + 2)
            })
            .collect();
        let sql = format!(
            "SELECT message_id, emoji, COUNT(*) AS n, \
                CAST(MAX(CASE WHEN user_id = $1 THEN 1 ELSE 0 END) AS BIGINT) AS me \
             FROM message_reactions WHERE message_id IN ({}) \
             GROUP BY message_id, emoji ORDER BY message_id, MIN(created_at), emoji",
            list.join(",")
        );
        for row in db.query_all_raw(super::raw(db, &sql, values)).await? {
            let id: i64 = row.try_get("", "message_id")?;
            out.entry(id).or_default().push(Reaction {
                emoji: row.try_get("", "emoji")?,
                count: row.try_get("", "n")?,
                me: row.try_get::<i64>("", "me")? != 0,
            });
        }
    }
    Ok(out)
}

/// Which of `ids`' reactions are `reader`'s own: (message id, emoji). One query per
/// [`MAX_IDS_PER_QUERY`] messages.
pub(crate) async fn mine(
    db: &impl ConnectionTrait,
    ids: &[i64],
    reader: i64,
) -> Result<HashSet<(i64, String)>, DbErr> {
    let mut out = HashSet::new();
    for chunk in ids.chunks(MAX_IDS_PER_QUERY) {
        let mut values: Vec<sea_orm::Value> = vec![reader.into()];
        let list: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| {
                values.push((*id).into());
                format!("${}", i + 2)
            })
            .collect();
        let sql = format!(
            "SELECT message_id, emoji FROM message_reactions \
             WHERE user_id = $1 AND message_id IN ({})",
            list.join(",")
        );
        for row in db.query_all_raw(super::raw(db, &sql, values)).await? {
            out.insert((row.try_get("", "message_id")?, row.try_get("", "emoji")?));
        }
    }
    Ok(out)
}

/// What setting a reaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reacted {
    /// The message's `seq`.
    pub(crate) seq: i64,
    /// Whether anything changed (a repeated add or remove changes nothing).
    pub(crate) changed: bool,
}

/// Add (`on`) or remove `user_id`'s `emoji` on live message `id` of `room_id`. `None` if there
/// is no such message.
///
/// # Errors
/// A conflict on `emoji` when it would be the message's 21st distinct emoji.
pub(crate) async fn set(
    db: &DatabaseConnection,
    room_id: i64,
    id: i64,
    user_id: i64,
    emoji: &str,
    on: bool,
) -> Result<Option<Reacted>, StoreError> {
    let txn = db.begin().await?;
    // Lock the message first: racing adds on it take turns, so each one counts the distinct
    // emoji the previous one committed (PostgreSQL: a row lock; SQLite: a write as the first
    // statement takes the database's write lock for the whole transaction).
    let lock = if txn.get_database_backend() == DbBackend::Postgres {
        "SELECT seq FROM messages WHERE id = $1 AND room_id = $2 AND deleted_at IS NULL FOR UPDATE"
    } else {
        "UPDATE messages SET reply_count = reply_count \
         WHERE id = $1 AND room_id = $2 AND deleted_at IS NULL RETURNING seq"
    };
    let Some(row) = txn
        .query_one_raw(super::raw(&txn, lock, vec![id.into(), room_id.into()]))
        .await?
    else {
        return Ok(None);
    };
    let seq: i64 = row.try_get("", "seq")?;
    let changed = if on {
        let row = txn
            .query_one_raw(super::raw(
                &txn,
                "SELECT COUNT(DISTINCT emoji) AS n, \
                    CAST(MAX(CASE WHEN emoji = $1 THEN 1 ELSE 0 END) AS BIGINT) AS used, \
                    CAST(MAX(CASE WHEN emoji = $2 AND user_id = $3 THEN 1 ELSE 0 END) AS BIGINT) AS mine \
                 FROM message_reactions WHERE message_id = $4",
                vec![emoji.into(), emoji.into(), user_id.into(), id.into()],
            ))
            .await?;
        let (distinct, used, mine) = match row {
            Some(r) => (
                r.try_get::<i64>("", "n")?,
                r.try_get::<Option<i64>>("", "used")?.unwrap_or(0) != 0,
                r.try_get::<Option<i64>>("", "mine")?.unwrap_or(0) != 0,
            ),
            None => (0, false, false),
        };
        if mine {
            false
        } else if !used && distinct >= MAX_REACTIONS_PER_MESSAGE {
            return Err(StoreError::conflict(
                "emoji",
                "is one too many: a message has at most 20 distinct reactions",
            ));
        } else {
            txn.execute_raw(super::raw(
                &txn,
                "INSERT INTO message_reactions (message_id, emoji, user_id, created_at) \
                 VALUES ($1, $2, $3, $4)",
                vec![id.into(), emoji.into(), user_id.into(), Utc::now().into()],
            ))
            .await?;
            true
        }
    } else {
        txn.execute_raw(super::raw(
            &txn,
            "DELETE FROM message_reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3",
            vec![id.into(), emoji.into(), user_id.into()],
        ))
        .await?
        .rows_affected()
            > 0
    };
    txn.commit().await?;
    Ok(Some(Reacted { seq, changed }))
}
