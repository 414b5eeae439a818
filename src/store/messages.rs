//! Message history, gap fills, edits and deletes. New messages are written by
//! [`super::commit`], which owns the `seq` counter.

use std::collections::HashMap;

use chrono::Utc;
use entity::{message, message_mention, room_member, user};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait,
    DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::StoreError;
use crate::domain::{
    mention,
    model::{Message, UserRef},
};

/// Turn rows of one room into wire messages: one query for the authors, one for the
/// reactions of the whole page (`me` relative to `reader`; `None`: a frame shared by every
/// reader), and one for the mentions of the rows whose content has an `@`, if any.
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
    let with_at: Vec<i64> = rows
        .iter()
        .filter(|(_, r)| r.content.contains('@'))
        .map(|(_, r)| r.id)
        .collect();
    let mut mentions = mentions_of(db, &with_at).await?;
    Ok(rows
        .into_iter()
        .map(|(room, r)| {
            let author = r.author_id.and_then(|a| authors.get(&a).cloned());
            let mentioned = mentions.remove(&r.id).unwrap_or_default();
            let mine = reactions.remove(&r.id).unwrap_or_default();
            let mut msg = to_message(room, r, author, mentioned);
            msg.reactions = mine;
            msg
        })
        .collect())
}

/// A stored row as a wire message (the one place that maps them), without reactions (a new
/// message has none; [`to_wire`] adds them).
pub(crate) fn to_message(
    room: &str,
    row: message::Model,
    author: Option<UserRef>,
    mentions: Vec<UserRef>,
) -> Message {
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
        mentions,
    }
}

/// The stored mentions of each of the messages `ids`, in user-id order.
pub(crate) async fn mentions_of(
    db: &impl ConnectionTrait,
    ids: &[i64],
) -> Result<HashMap<i64, Vec<UserRef>>, sea_orm::DbErr> {
    let mut out: HashMap<i64, Vec<UserRef>> = HashMap::new();
    for chunk in ids.chunks(super::MAX_IDS_PER_QUERY) {
        let rows = message_mention::Entity::find()
            .select_only()
            .column(message_mention::Column::MessageId)
            .column(user::Column::Id)
            .column(user::Column::Username)
            .join_rev(
                sea_orm::JoinType::InnerJoin,
                user::Entity::belongs_to(message_mention::Entity)
                    .from(user::Column::Id)
                    .to(message_mention::Column::UserId)
                    .into(),
            )
            .filter(message_mention::Column::MessageId.is_in(chunk.iter().copied()))
            .order_by_asc(user::Column::Id)
            .into_tuple::<(i64, i64, String)>()
            .all(db)
            .await?;
        for (message, id, username) in rows {
            out.entry(message)
                .or_default()
                .push(UserRef { id, username });
        }
    }
    Ok(out)
}

/// A message to resolve mentions for: its id, room, `seq` and content.
pub(crate) struct ToResolve<'a> {
    pub(crate) id: i64,
    pub(crate) room_id: i64,
    pub(crate) seq: i64,
    pub(crate) content: &'a str,
}

/// Resolve and store the `@username`s of `items` against their rooms' members, inside the
/// caller's transaction: one query for the candidates, one insert. Items without an `@` cost
/// nothing; with none, no query runs.
pub(crate) async fn resolve_mentions(
    txn: &impl ConnectionTrait,
    items: &[ToResolve<'_>],
) -> Result<HashMap<i64, Vec<UserRef>>, sea_orm::DbErr> {
    let wanted: Vec<(&ToResolve<'_>, Vec<String>)> = items
        .iter()
        .map(|i| (i, mention::names(i.content)))
        .filter(|(_, names)| !names.is_empty())
        .collect();
    let mut out: HashMap<i64, Vec<UserRef>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(out);
    }
    let mut names: Vec<&str> = wanted
        .iter()
        .flat_map(|(_, n)| n.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut rooms: Vec<i64> = wanted.iter().map(|(i, _)| i.room_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    // (room, lower-cased name) → the member.
    let mut members: HashMap<(i64, String), UserRef> = HashMap::new();
    for names in names.chunks(super::MAX_IDS_PER_QUERY / 2) {
        for rooms in rooms.chunks(super::MAX_IDS_PER_QUERY / 2) {
            let rows = room_member::Entity::find()
                .select_only()
                .column(room_member::Column::RoomId)
                .column(user::Column::Id)
                .column(user::Column::Username)
                .join_rev(
                    sea_orm::JoinType::InnerJoin,
                    user::Entity::belongs_to(room_member::Entity)
                        .from(user::Column::Id)
                        .to(room_member::Column::UserId)
                        .into(),
                )
                .filter(room_member::Column::RoomId.is_in(rooms.iter().copied()))
                .filter(user::Column::UsernameLower.is_in(names.iter().map(|n| (*n).to_owned())))
                .into_tuple::<(i64, i64, String)>()
                .all(txn)
                .await?;
            for (room, id, username) in rows {
                members.insert((room, username.to_lowercase()), UserRef { id, username });
            }
        }
    }
    let mut models = Vec::new();
    for (item, names) in &wanted {
        let mut found: Vec<UserRef> = names
            .iter()
            .filter_map(|n| members.get(&(item.room_id, n.clone())).cloned())
            .collect();
        found.sort_unstable_by_key(|u| u.id);
        found.dedup_by_key(|u| u.id);
        for u in &found {
            models.push(message_mention::ActiveModel {
                message_id: Set(item.id),
                user_id: Set(u.id),
                room_id: Set(item.room_id),
                seq: Set(item.seq),
            });
        }
        if !found.is_empty() {
            out.insert(item.id, found);
        }
    }
    if !models.is_empty() {
        message_mention::Entity::insert_many(models)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(out)
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

/// Replace the content; the mentions are resolved again in the same transaction.
pub(crate) async fn edit(
    db: &DatabaseConnection,
    row: message::Model,
    content: String,
) -> Result<message::Model, StoreError> {
    let txn = db.begin().await?;
    let had_at = row.content.contains('@');
    let mut am: message::ActiveModel = row.into();
    am.content = Set(content);
    am.edited_at = Set(Some(Utc::now()));
    let row = am.update(&txn).await?;
    if had_at {
        message_mention::Entity::delete_many()
            .filter(message_mention::Column::MessageId.eq(row.id))
            .exec(&txn)
            .await?;
    }
    let item = ToResolve {
        id: row.id,
        room_id: row.room_id,
        seq: row.seq,
        content: &row.content,
    };
    resolve_mentions(&txn, std::slice::from_ref(&item)).await?;
    super::search::reindex(&txn, &row).await?;
    txn.commit().await?;
    Ok(row)
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
    super::search::unindex(&txn, id).await?;
    txn.commit().await?;
    Ok(())
}
