//! Message history, gap fills, edits and deletes. New messages are written by
//! [`super::commit`], which owns the `seq` counter.

use std::collections::HashMap;

use chrono::Utc;
use entity::message;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::StoreError;
use crate::domain::model::{Message, UserRef};

/// Turn rows of one room into wire messages: one query for the authors and one for the
/// reactions of the whole page (`me` relative to `reader`; `None`: a frame shared by every
/// reader).
pub(crate) async fn to_wire(
    db: &impl ConnectionTrait,
    room: &str,
    rows: Vec<message::Model>,
    reader: Option<i64>,
) -> Result<Vec<Message>, sea_orm::DbErr> {
    let rows = rows.into_iter().map(|r| (room, r)).collect();
    to_wire_many(db, rows, reader).await
}

/// [`to_wire`] for rows of any rooms, each with its room's name.
pub(crate) async fn to_wire_many(
    db: &impl ConnectionTrait,
    rows: Vec<(&str, message::Model)>,
    reader: Option<i64>,
) -> Result<Vec<Message>, sea_orm::DbErr> {
    let mut ids: Vec<i64> = rows.iter().filter_map(|(_, r)| r.author_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let authors: HashMap<i64, UserRef> = super::users::refs(db, &ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let message_ids: Vec<i64> = rows.iter().map(|(_, r)| r.id).collect();
    let mut reactions = super::reactions::of_messages(db, &message_ids, reader).await?;
    Ok(rows
        .into_iter()
        .map(|(room, r)| {
            let author = r.author_id.and_then(|a| authors.get(&a).cloned());
            let mine = reactions.remove(&r.id).unwrap_or_default();
            let mut msg = to_message(room, r, author);
            msg.reactions = mine;
            msg
        })
        .collect())
}

/// A stored row as a wire message (the one place that maps them), without reactions (a new
/// message has none; [`to_wire`] adds them).
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
        reply_to: row.reply_to,
        reply_count: row.reply_count,
        last_reply_at: row.last_reply_at,
        reactions: Vec::new(),
    }
}

/// Which messages a history page reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryFilter {
    pub(crate) before_seq: Option<i64>,
    pub(crate) after_seq: Option<i64>,
    /// Only this thread: its root and its replies.
    pub(crate) thread: Option<i64>,
    pub(crate) limit: u64,
}

/// A page of history in ascending `seq`, and whether more exists in the direction read.
/// With `after_seq` the page starts right after it; otherwise it ends right before
/// `before_seq` (or at the newest message).
pub(crate) async fn history(
    db: &DatabaseConnection,
    room_id: i64,
    room: &str,
    filter: HistoryFilter,
    reader: i64,
) -> Result<(Vec<Message>, bool), StoreError> {
    let HistoryFilter {
        before_seq,
        after_seq,
        thread,
        limit,
    } = filter;
    let mut q = message::Entity::find()
        .filter(message::Column::RoomId.eq(room_id))
        .filter(message::Column::DeletedAt.is_null())
        .limit(limit + 1);
    if let Some(root) = thread {
        q = q.filter(
            Condition::any()
                .add(message::Column::Id.eq(root))
                .add(message::Column::ReplyTo.eq(root)),
        );
    }
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
    Ok((to_wire(db, room, rows, Some(reader)).await?, has_more))
}

/// One row of a gap fill: every `seq` is reported, deleted messages without content, so the
/// reader can advance past them.
#[derive(Clone)]
pub(crate) struct FillRow {
    pub(crate) seq: i64,
    pub(crate) message: Option<Message>,
}

/// Up to `limit` messages of `room_id` after `after`, deleted ones included as `None`;
/// reactions' `me` relative to `reader` (a socket's replay) or to nobody (a shared gap fill).
pub(crate) async fn after_seq(
    db: &DatabaseConnection,
    room_id: i64,
    after: i64,
    limit: u64,
    reader: Option<i64>,
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
    let mut wire = to_wire(db, &name, live, reader).await?.into_iter();
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

/// Whether message `id` of `room_id` exists, deleted or not (a thread whose root was deleted
/// still lists its replies).
pub(crate) async fn exists(
    db: &DatabaseConnection,
    room_id: i64,
    id: i64,
) -> Result<bool, StoreError> {
    Ok(message::Entity::find_by_id(id)
        .filter(message::Column::RoomId.eq(room_id))
        .select_only()
        .column(message::Column::Id)
        .into_tuple::<i64>()
        .one(db)
        .await?
        .is_some())
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
/// content is erased and it no longer appears in history or search. Its reactions go; a
/// reply leaves its root's `reply_count` in the same transaction.
pub(crate) async fn delete(db: &DatabaseConnection, row: message::Model) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    let (id, root) = (row.id, row.reply_to);
    let mut am: message::ActiveModel = row.into();
    am.content = Set(String::new());
    am.deleted_at = Set(Some(Utc::now()));
    am.update(&txn).await?;
    if let Some(root) = root {
        txn.execute_raw(super::raw(
            &txn,
            "UPDATE messages SET reply_count = reply_count - 1 WHERE id = $1 AND reply_count > 0",
            vec![root.into()],
        ))
        .await?;
    }
    txn.execute_raw(super::raw(
        &txn,
        "DELETE FROM message_reactions WHERE message_id = $1",
        vec![id.into()],
    ))
    .await?;
    txn.commit().await?;
    Ok(())
}
