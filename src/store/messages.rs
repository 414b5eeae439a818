//! Message history, gap fills, edits and deletes. New messages are written by
//! [`super::commit`], which owns the `seq` counter.

use std::collections::HashMap;

use chrono::Utc;
use entity::message;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::StoreError;
use crate::domain::model::{Message, UserRef};

/// Turn rows into wire messages (one query for the authors).
pub(crate) async fn to_wire(
    db: &impl ConnectionTrait,
    room: &str,
    rows: Vec<message::Model>,
) -> Result<Vec<Message>, sea_orm::DbErr> {
    let mut ids: Vec<i64> = rows.iter().filter_map(|r| r.author_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let authors: HashMap<i64, UserRef> = super::users::refs(db, &ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| {
            let author = r.author_id.and_then(|a| authors.get(&a).cloned());
            to_message(room, r, author)
        })
        .collect())
}

/// A stored row as a wire message (the one place that maps them).
pub(crate) fn to_message(room: &str, row: message::Model, author: Option<UserRef>) -> Message {
    Message {
        id: row.id,
        room: room.to_owned(),
        seq: row.seq,
        user: author,
        content: row.content,
        client_id: row.client_id,
        created_at: row.created_at,
        edited_at: row.edited_at,
    }
}

/// A page of history in ascending `seq`, and whether more exists in the direction read.
/// With `after_seq` the page starts right after it; otherwise it ends right before
/// `before_seq` (or at the newest message).
pub(crate) async fn history(
    db: &DatabaseConnection,
    room_id: i64,
    room: &str,
    before_seq: Option<i64>,
    after_seq: Option<i64>,
    limit: u64,
) -> Result<(Vec<Message>, bool), StoreError> {
    let mut q = message::Entity::find()
        .filter(message::Column::RoomId.eq(room_id))
        .filter(message::Column::DeletedAt.is_null())
        .limit(limit + 1);
    if let Some(b) = before_seq {
        q = q.filter(message::Column::Seq.lt(b));
    }
    let mut rows = if let Some(a) = after_seq {
        q.filter(message::Column::Seq.gt(a))
            .order_by_asc(message::Column::Seq)
            .all(db)
            .await?
    } else {
        let mut rows = q.order_by_desc(message::Column::Seq).all(db).await?;
        rows.reverse();
        rows
    };
    let has_more = rows.len() as u64 > limit;
    if has_more {
        if after_seq.is_some() {
            rows.pop();
        } else {
            rows.remove(0);
        }
    }
    Ok((to_wire(db, room, rows).await?, has_more))
}

/// One row of a gap fill: every `seq` is reported, deleted messages without content, so the
/// reader can advance past them.
pub(crate) struct FillRow {
    pub(crate) seq: i64,
    pub(crate) message: Option<Message>,
}

/// Up to `limit` messages of `room_id` after `after`, deleted ones included as `None`.
pub(crate) async fn after_seq(
    db: &DatabaseConnection,
    room_id: i64,
    after: i64,
    limit: u64,
) -> Result<Vec<FillRow>, sea_orm::DbErr> {
    let rows = message::Entity::find()
        .filter(message::Column::RoomId.eq(room_id))
        .filter(message::Column::Seq.gt(after))
        .order_by_asc(message::Column::Seq)
        .limit(limit)
        .all(db)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let name = super::rooms::name_of(db, room_id)
        .await?
        .unwrap_or_default();
    let seqs: Vec<(i64, bool)> = rows
        .iter()
        .map(|r| (r.seq, r.deleted_at.is_some()))
        .collect();
    let live: Vec<message::Model> = rows
        .into_iter()
        .filter(|r| r.deleted_at.is_none())
        .collect();
    let mut wire = to_wire(db, &name, live).await?.into_iter();
    Ok(seqs
        .into_iter()
        .map(|(seq, deleted)| FillRow {
            seq,
            message: if deleted { None } else { wire.next() },
        })
        .collect())
}

pub(crate) async fn find(
    db: &DatabaseConnection,
    room_id: i64,
    id: i64,
) -> Result<Option<message::Model>, StoreError> {
    Ok(message::Entity::find_by_id(id)
        .filter(message::Column::RoomId.eq(room_id))
        .filter(message::Column::DeletedAt.is_null())
        .one(db)
        .await?)
}

pub(crate) async fn edit(
    db: &DatabaseConnection,
    row: message::Model,
    content: String,
) -> Result<message::Model, StoreError> {
    let mut am: message::ActiveModel = row.into();
    am.content = Set(content);
    am.edited_at = Set(Some(Utc::now()));
    Ok(am.update(db).await?)
}

/// Soft delete: the row keeps its `seq` (so the sequence stays gap-free for readers) but its
/// content is erased and it no longer appears in history.
pub(crate) async fn delete(db: &DatabaseConnection, row: message::Model) -> Result<(), StoreError> {
    let mut am: message::ActiveModel = row.into();
    am.content = Set(String::new());
    am.deleted_at = Set(Some(Utc::now()));
    am.update(db).await?;
    Ok(())
}
