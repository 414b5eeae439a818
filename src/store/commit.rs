//! The group commit's SQL: one batch of new messages, numbered per room and stored in one
//! transaction (on PostgreSQL one statement), with retries of a stored `client_id` answered by
//! the original. The queue that forms the batches is `chat::send`.
//!
//! The row lock on each room (PostgreSQL) or the single writer (SQLite) makes `seq` gap-free
//! and strictly increasing under any number of senders and replicas; each batch keeps its
//! drafts' order within a room.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use entity::message;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, FromQueryResult,
    TransactionTrait,
};

use super::{
    StoreError,
    messages::{ToResolve, to_message},
};
use crate::domain::model::{Message, UserRef};

/// One draft of a batch.
pub(crate) struct NewMessage<'a> {
    pub(crate) room_id: i64,
    /// The room's name, for the stored message's wire form.
    pub(crate) room: &'a str,
    pub(crate) author: &'a UserRef,
    pub(crate) content: &'a str,
    pub(crate) client_id: Option<&'a str>,
    /// The root of the thread it replies to, checked by the caller (a message of the same
    /// room); the root's `reply_count` and `last_reply_at` move in the same commit.
    pub(crate) reply_to: Option<i64>,
}

/// What committing one draft produced.
#[derive(Debug)]
pub(crate) enum Stored {
    /// Stored, with its `seq`.
    Created(Message),
    /// The same `client_id` was already stored by this author: the original, nothing new.
    Duplicate(Message),
}

impl Stored {
    pub(crate) fn message(&self) -> &Message {
        match self {
            Self::Created(m) | Self::Duplicate(m) => m,
        }
    }
}

/// How one draft of a batch is answered.
enum Plan {
    New,
    Existing(message::Model),
    /// The same key as an earlier draft of this batch.
    SameAs(usize),
}

/// Commit `batch` in one transaction; outcomes in batch order. A room that no longer exists
/// fails its own drafts only, and so does an author who is not a member of the room: the
/// membership is checked again here, where the message is committed, so that no path (and no
/// lost kick event) can leave a removed member writing.
///
/// # Errors
/// The transaction failed as a whole (nothing of the batch is stored).
pub(crate) async fn commit(
    db: &DatabaseConnection,
    batch: &[NewMessage<'_>],
) -> Result<Vec<Result<Stored, StoreError>>, DbErr> {
    let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
    // Idempotency: drafts whose (room, author, client_id) is already stored get the original
    // (on PostgreSQL the commit statement itself looks them up).
    let originals = if postgres {
        HashMap::new()
    } else {
        find_originals(db, batch).await?
    };
    let plan = plan(batch, &originals);
    let new: Vec<&NewMessage<'_>> = batch
        .iter()
        .zip(&plan)
        .filter(|(_, plan)| matches!(plan, Plan::New))
        .map(|(p, _)| p)
        .collect();
    // `existing`: stored originals found by the PostgreSQL statement, by position in `new`.
    let Inserted {
        rows,
        existing,
        mut mentions,
    } = if new.is_empty() {
        Inserted::default()
    } else if postgres {
        insert_postgres(db, &new).await?
    } else {
        insert_sqlite(db, &new).await?
    };
    // The originals of retried drafts carry their stored mentions (a query only when one of
    // them has an `@`).
    let originals: Vec<i64> = plan
        .iter()
        .filter_map(|p| match p {
            Plan::Existing(row) if row.content.contains('@') => Some(row.id),
            _ => None,
        })
        .chain(
            existing
                .values()
                .filter(|r| r.content.contains('@'))
                .map(|r| r.id),
        )
        .collect();
    if !originals.is_empty() {
        mentions.extend(super::messages::mentions_of(db, &originals).await?);
    }
    let mut out = answer(batch, plan, rows, existing, &mut mentions);
    refine_refusals(db, batch, &mut out).await?;
    Ok(out)
}

/// What the insert stored: new rows, originals of retries (PostgreSQL, by position in the
/// drafts inserted) and the mentions of the new rows.
#[derive(Default)]
struct Inserted {
    rows: Vec<message::Model>,
    existing: HashMap<usize, message::Model>,
    mentions: HashMap<i64, Vec<UserRef>>,
}

/// Drafts that got no row were refused: their room is gone, or their author is not a member
/// of it. One query, on the refusal path only, tells which.
async fn refine_refusals(
    db: &DatabaseConnection,
    batch: &[NewMessage<'_>],
    out: &mut [Result<Stored, StoreError>],
) -> Result<(), DbErr> {
    let refused: Vec<i64> = batch
        .iter()
        .zip(out.iter())
        .filter(|(_, o)| matches!(o, Err(StoreError::NotFound(_))))
        .map(|(p, _)| p.room_id)
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let existing = super::rooms::existing_ids(db, &refused).await?;
    for (p, o) in batch.iter().zip(out.iter_mut()) {
        if matches!(o, Err(StoreError::NotFound(_))) && existing.contains(&p.room_id) {
            *o = Err(StoreError::NotMember);
        }
    }
    Ok(())
}

/// Plan each draft of `batch`: new, a stored original, or a repeat within the batch.
fn plan(
    batch: &[NewMessage<'_>],
    originals: &HashMap<(i64, i64, String), message::Model>,
) -> Vec<Plan> {
    let mut first_in_batch: HashMap<(i64, i64, &str), usize> = HashMap::new();
    let mut plan: Vec<Plan> = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        if let Some(client_id) = p.client_id {
            let key = (p.room_id, p.author.id, client_id);
            if let Some(orig) = originals.get(&(key.0, key.1, key.2.to_owned())) {
                plan.push(Plan::Existing(orig.clone()));
                continue;
            }
            if let Some(&j) = first_in_batch.get(&key) {
                plan.push(Plan::SameAs(j));
                continue;
            }
            first_in_batch.insert(key, i);
        }
        plan.push(Plan::New);
    }
    plan
}

/// Each draft's outcome: an author's new rows in a room, in `seq` order, belong to their new
/// drafts for that room in batch order (membership is per room and author, so a refused
/// author has no row there at all); a draft without a row was refused (see
/// [`refine_refusals`]).
fn answer(
    batch: &[NewMessage<'_>],
    plan: Vec<Plan>,
    mut rows: Vec<message::Model>,
    mut existing: HashMap<usize, message::Model>,
    mentions: &mut HashMap<i64, Vec<UserRef>>,
) -> Vec<Result<Stored, StoreError>> {
    let mut by_author: HashMap<(i64, Option<i64>), VecDeque<message::Model>> = HashMap::new();
    rows.sort_unstable_by_key(|r| (r.room_id, r.seq));
    for row in rows {
        by_author
            .entry((row.room_id, row.author_id))
            .or_default()
            .push_back(row);
    }
    let mut out: Vec<Result<Stored, StoreError>> = Vec::with_capacity(batch.len());
    let mut position = 0;
    for (p, mut plan) in batch.iter().zip(plan) {
        if matches!(plan, Plan::New) {
            if let Some(row) = existing.remove(&position) {
                plan = Plan::Existing(row);
            }
            position += 1;
        }
        let author = Some(p.author.clone());
        let result = match plan {
            Plan::New => match by_author
                .get_mut(&(p.room_id, Some(p.author.id)))
                .and_then(VecDeque::pop_front)
            {
                Some(row) => {
                    let mentioned = mentions.remove(&row.id).unwrap_or_default();
                    Ok(Stored::Created(to_message(p.room, row, author, mentioned)))
                }
                None => Err(StoreError::NotFound("room")),
            },
            Plan::Existing(row) => {
                let mentioned = mentions.get(&row.id).cloned().unwrap_or_default();
                Ok(Stored::Duplicate(to_message(
                    p.room, row, author, mentioned,
                )))
            }
            Plan::SameAs(j) => match &out[j] {
                Ok(stored) => Ok(Stored::Duplicate(stored.message().clone())),
                Err(_) => Err(StoreError::NotFound("room")),
            },
        };
        out.push(result);
    }
    out
}

/// SQLite: the stored messages that `batch`'s drafts retry, by (room, author, client_id).
async fn find_originals(
    db: &DatabaseConnection,
    batch: &[NewMessage<'_>],
) -> Result<HashMap<(i64, i64, String), message::Model>, DbErr> {
    let keyed: Vec<(&NewMessage<'_>, &str)> = batch
        .iter()
        .filter_map(|p| p.client_id.map(|c| (p, c)))
        .collect();
    let mut originals = HashMap::new();
    if keyed.is_empty() {
        return Ok(originals);
    }
    // Row-value lookup on the unique index (room, author, client_id): one probe per key.
    let mut sql = String::from("SELECT * FROM messages WHERE (room_id, author_id, client_id) IN (");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(keyed.len() * 3);
    for (i, (p, client_id)) in keyed.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        let n = i * 3;
        sql.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
        values.extend([
            p.room_id.into(),
            p.author.id.into(),
            (*client_id).to_owned().into(),
        ]);
    }
    sql.push(')');
    let stmt = super::raw(db, &sql, values);
    for row in message::Entity::find().from_raw_sql(stmt).all(db).await? {
        if let (Some(a), Some(c)) = (row.author_id, row.client_id.clone()) {
            originals.insert((row.room_id, a, c), row);
        }
    }
    Ok(originals)
}

/// The numbering part of the PostgreSQL commit statement, shared by both of its forms (see
/// [`insert_postgres`]).
macro_rules! commit_numbering {
    () => {
        "WITH input AS ( \
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $6::bigint[], \
                $7::text[]) WITH ORDINALITY AS m(room_id, author_id, content, client_id, reply_to, \
                names, ord) \
        ), existing AS ( \
            SELECT i.ord, e.id FROM input i CROSS JOIN LATERAL ( \
                SELECT id FROM messages WHERE room_id = i.room_id AND author_id = i.author_id \
                    AND client_id = i.client_id LIMIT 1) AS e \
            WHERE i.client_id <> '' \
        ), fresh AS ( \
            SELECT i.*, row_number() OVER (PARTITION BY i.room_id ORDER BY i.ord) AS k \
            FROM input i WHERE NOT EXISTS (SELECT 1 FROM existing x WHERE x.ord = i.ord) \
                AND EXISTS (SELECT 1 FROM room_members rm \
                    WHERE rm.room_id = i.room_id AND rm.user_id = i.author_id) \
        ), counts AS ( \
            SELECT room_id AS id, count(*) AS n FROM fresh GROUP BY room_id \
        ), locked AS ( \
            SELECT id FROM rooms WHERE id = ANY($8::bigint[]) ORDER BY id FOR NO KEY UPDATE \
        ), bumped AS ( \
            UPDATE rooms SET last_seq = rooms.last_seq + c.n, active_at = $5 \
            FROM counts c JOIN locked l ON l.id = c.id \
            WHERE rooms.id = c.id \
            RETURNING rooms.id, rooms.last_seq - c.n AS base \
        ), inserted AS ( \
            INSERT INTO messages (room_id, seq, author_id, content, client_id, created_at, reply_to) \
            SELECT f.room_id, b.base + f.k, f.author_id, f.content, NULLIF(f.client_id, ''), $5, \
                NULLIF(f.reply_to, 0) \
            FROM fresh f JOIN bumped b ON b.id = f.room_id \
            RETURNING * \
        )"
    };
}

/// The originals of retried drafts, after the inserted rows (the last part of both forms).
macro_rules! commit_originals {
    () => {
        " UNION ALL SELECT x.ord, m.*, NULL FROM existing x JOIN messages m ON m.id = x.id"
    };
}

/// PostgreSQL: the whole commit is **one statement** in its own implicit transaction, so the
/// rooms stay locked for its execution only, not for client round trips (two replicas sending
/// into the same rooms take turns on these row locks). It finds the drafts whose
/// (room, author, client_id) is already stored (one index probe each: `LIMIT 1` keeps the
/// lateral probe from being flattened into a join, which a generic plan for unknown arrays
/// would turn into a scan of `messages`), numbers the others per room, locks their rooms in id
/// order (so replicas never deadlock; the update touches only rows already locked; `NO KEY`:
/// the key does not change, so inserts that reference the room, such as a join or the search
/// indexer's progress, do not wait for the lock), advances
/// the counters and inserts the rows from each room's old counter.
///
/// The statement has two forms with the same numbering ([`commit_numbering!`]): the plain one,
/// for batches without replies and without `@` (almost every batch), and the full one, in
/// which replies also advance their roots' `reply_count` and mentions are resolved against the
/// room's members and stored. The plain form leaves those parts out rather than running them
/// empty: fewer plan nodes to set up while the rooms are locked. Arrays as parameters keep each
/// text constant, so each connection prepares each form once. A room that is gone gets no
/// rows.
///
/// Returns the inserted rows and the originals, by position in `new`.
async fn insert_postgres(
    db: &DatabaseConnection,
    new: &[&NewMessage<'_>],
) -> Result<Inserted, DbErr> {
    const PLAIN: &str = concat!(
        commit_numbering!(),
        " SELECT 0::bigint AS existing_ord, inserted.*, NULL::text AS mentioned FROM inserted",
        commit_originals!()
    );
    const FULL: &str = concat!(
        commit_numbering!(),
        ", threads AS ( \
            SELECT f.reply_to AS id, f.room_id, count(*) AS n \
            FROM fresh f JOIN bumped b ON b.id = f.room_id WHERE f.reply_to <> 0 \
            GROUP BY f.reply_to, f.room_id \
        ), roots AS ( \
            UPDATE messages SET reply_count = messages.reply_count + t.n, last_reply_at = $5 \
            FROM threads t WHERE messages.id = t.id AND messages.room_id = t.room_id \
            RETURNING messages.id \
        ), mentioned AS ( \
            INSERT INTO message_mentions (message_id, user_id, room_id, seq) \
            SELECT DISTINCT ins.id, u.id, ins.room_id, ins.seq \
            FROM fresh f JOIN bumped b ON b.id = f.room_id \
            JOIN inserted ins ON ins.room_id = f.room_id AND ins.seq = b.base + f.k \
            CROSS JOIN LATERAL unnest(string_to_array(f.names, ' ')) AS n(name) \
            JOIN users u ON u.username_lower = n.name \
            JOIN room_members rm ON rm.room_id = f.room_id AND rm.user_id = u.id \
            WHERE f.names <> '' \
            RETURNING message_id, user_id \
        ) \
        SELECT 0::bigint AS existing_ord, inserted.*, \
            (SELECT string_agg(u.id::text || ':' || u.username, ' ' ORDER BY u.id) \
             FROM mentioned mm JOIN users u ON u.id = mm.user_id \
             WHERE mm.message_id = inserted.id) AS mentioned \
        FROM inserted",
        commit_originals!()
    );
    // The candidate names of each draft ('' for none: most drafts).
    let names: Vec<String> = new
        .iter()
        .map(|p| crate::domain::mention::names(p.content).join(" "))
        .collect();
    let full = new.iter().any(|p| p.reply_to.is_some()) || names.iter().any(|n| !n.is_empty());
    // The batch's rooms, locked in id order: a plain list rather than the rooms that get rows.
    // When the other replica's batch held a room, PostgreSQL re-checks the row it waited for
    // against this scan, and a scan of a parameter is cheap to re-check. A room whose drafts
    // were all refused is held for the statement, nothing more.
    let mut rooms: Vec<i64> = new.iter().map(|p| p.room_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let values: Vec<sea_orm::Value> = vec![
        new.iter().map(|p| p.room_id).collect::<Vec<i64>>().into(),
        new.iter().map(|p| p.author.id).collect::<Vec<i64>>().into(),
        new.iter()
            .map(|p| p.content.to_owned())
            .collect::<Vec<String>>()
            .into(),
        // A validated client_id is never empty, so '' stands for none (arrays of text cannot
        // carry NULLs through the driver's binding).
        new.iter()
            .map(|p| p.client_id.unwrap_or_default().to_owned())
            .collect::<Vec<String>>()
            .into(),
        super::rooms::now_micros().into(),
        // 0 stands for no reply (ids start at 1), as '' does for no client_id.
        new.iter()
            .map(|p| p.reply_to.unwrap_or(0))
            .collect::<Vec<i64>>()
            .into(),
        // The candidate names of each draft, space-separated.
        names.into(),
        rooms.into(),
    ];
    let mut out = Inserted::default();
    let sql = if full { FULL } else { PLAIN };
    for row in db.query_all_raw(super::raw(db, sql, values)).await? {
        let ord: i64 = row.try_get("", "existing_ord")?;
        let model = message::Model::from_query_result(&row, "")?;
        // ORDINALITY counts from 1; 0 marks an inserted row.
        match usize::try_from(ord) {
            Ok(n) if n > 0 => {
                out.existing.insert(n - 1, model);
            }
            _ => {
                let mentioned: Option<String> = row.try_get("", "mentioned")?;
                if let Some(list) = mentioned {
                    out.mentions.insert(model.id, parse_mentioned(&list));
                }
                out.rows.push(model);
            }
        }
    }
    Ok(out)
}

/// `id:username id:username …` as the PostgreSQL statement aggregates them.
fn parse_mentioned(list: &str) -> Vec<UserRef> {
    list.split(' ')
        .filter_map(|pair| {
            let (id, username) = pair.split_once(':')?;
            Some(UserRef {
                id: id.parse().ok()?,
                username: username.to_owned(),
            })
        })
        .collect()
}

/// SQLite: advance the counters of the rooms in `per_room` (room id → messages) in one
/// statement; room id → the first `seq` to hand out (rooms that are gone are missing).
async fn advance_counters(
    txn: &sea_orm::DatabaseTransaction,
    per_room: &BTreeMap<i64, i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<HashMap<i64, i64>, DbErr> {
    // One statement whatever the number of rooms. The numbers are ours (ids and counts), so
    // they are written into the SQL; nothing from a client is.
    let deltas: Vec<String> = per_room
        .iter()
        .map(|(id, n)| format!("SELECT {id} AS id, {n} AS n"))
        .collect();
    let update = format!(
        "UPDATE rooms SET last_seq = rooms.last_seq + d.n, active_at = $1 FROM ({}) AS d WHERE rooms.id = d.id RETURNING rooms.id, rooms.last_seq",
        deltas.join(" UNION ALL ")
    );
    let mut next_seq: HashMap<i64, i64> = HashMap::new();
    for res in txn
        .query_all_raw(super::raw(txn, &update, vec![now.into()]))
        .await?
    {
        let id: i64 = res.try_get("", "id")?;
        let last: i64 = res.try_get("", "last_seq")?;
        let n = per_room.get(&id).copied().unwrap_or(0);
        next_seq.insert(id, last - n + 1);
    }
    Ok(next_seq)
}

/// SQLite (one writer at a time): in one transaction, keep the drafts whose author is a
/// member of the room, advance the counters, insert the rows.
async fn insert_sqlite(
    db: &DatabaseConnection,
    new: &[&NewMessage<'_>],
) -> Result<Inserted, DbErr> {
    let txn = db.begin().await?;
    let members = members_of(&txn, new).await?;
    let new: Vec<&NewMessage<'_>> = new
        .iter()
        .copied()
        .filter(|p| members.contains(&(p.room_id, p.author.id)))
        .collect();
    let mut per_room: BTreeMap<i64, i64> = BTreeMap::new();
    for p in &new {
        *per_room.entry(p.room_id).or_default() += 1;
    }
    if per_room.is_empty() {
        return Ok(Inserted::default());
    }
    let now = super::rooms::now_micros();
    // room id → next seq to hand out (rooms that are gone are missing).
    let mut next_seq = advance_counters(&txn, &per_room, now).await?;
    let mut models = Vec::with_capacity(new.len());
    // (root, room) → replies stored to it.
    let mut threads: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for p in &new {
        let Some(seq) = next_seq.get_mut(&p.room_id) else {
            continue;
        };
        if let Some(root) = p.reply_to {
            *threads.entry((root, p.room_id)).or_default() += 1;
        }
        models.push(message::ActiveModel {
            room_id: Set(p.room_id),
            seq: Set(*seq),
            author_id: Set(Some(p.author.id)),
            content: Set(p.content.to_owned()),
            client_id: Set(p.client_id.map(str::to_owned)),
            created_at: Set(now),
            edited_at: Set(None),
            deleted_at: Set(None),
            reply_to: Set(p.reply_to),
            reply_count: Set(0),
            last_reply_at: Set(None),
            ..Default::default()
        });
        *seq += 1;
    }
    let rows = if models.is_empty() {
        Vec::new()
    } else {
        message::Entity::insert_many(models)
            .exec_with_returning(&txn)
            .await?
    };
    // Replies only: nothing to do (and no statement) without them.
    for ((root, room_id), n) in threads {
        txn.execute_raw(super::raw(
            &txn,
            "UPDATE messages SET reply_count = reply_count + $1, last_reply_at = $2 \
             WHERE id = $3 AND room_id = $4",
            vec![n.into(), now.into(), root.into(), room_id.into()],
        ))
        .await?;
    }
    // Mentions in the same transaction (no query unless a row has an `@`).
    let items: Vec<ToResolve<'_>> = rows
        .iter()
        .filter(|r| r.content.contains('@'))
        .map(|r| ToResolve {
            id: r.id,
            room_id: r.room_id,
            seq: r.seq,
            content: &r.content,
        })
        .collect();
    let mentions = super::messages::resolve_mentions(&txn, &items).await?;
    txn.commit().await?;
    Ok(Inserted {
        rows,
        existing: HashMap::new(),
        mentions,
    })
}

/// SQLite: which (room, author) pairs of `new` are memberships.
async fn members_of(
    txn: &impl ConnectionTrait,
    new: &[&NewMessage<'_>],
) -> Result<HashSet<(i64, i64)>, DbErr> {
    let mut pairs: Vec<(i64, i64)> = new.iter().map(|p| (p.room_id, p.author.id)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut sql =
        String::from("SELECT room_id, user_id FROM room_members WHERE (room_id, user_id) IN (");
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(pairs.len() * 2);
    for (i, (room, user)) in pairs.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("(${}, ${})", i * 2 + 1, i * 2 + 2));
        values.extend([(*room).into(), (*user).into()]);
    }
    sql.push(')');
    let mut members = HashSet::with_capacity(pairs.len());
    for row in txn.query_all_raw(super::raw(txn, &sql, values)).await? {
        members.insert((row.try_get("", "room_id")?, row.try_get("", "user_id")?));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use crate::domain::room::Visibility;
    use sea_orm::Database;

    use super::*;
    use crate::store::testing::sqlite;

    /// A fresh, migrated database on the server of `TEST_DATABASE_URL`.
    async fn postgres() -> DatabaseConnection {
        let url = super::super::testing::fresh_postgres_url().await;
        migrated(Database::connect(url).await.expect("connect")).await
    }

    async fn migrated(db: DatabaseConnection) -> DatabaseConnection {
        <migration::Migrator as migration::MigratorTrait>::up(&db, None)
            .await
            .expect("migrations");
        db
    }

    #[tokio::test]
    async fn a_non_member_is_refused_at_commit_on_sqlite() {
        refused_alone(sqlite().await).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL suite"
    )]
    async fn a_non_member_is_refused_at_commit_on_postgres() {
        refused_alone(postgres().await).await;
    }

    #[tokio::test]
    async fn replies_move_their_roots_in_the_commit_on_sqlite() {
        replies_in_a_batch(sqlite().await).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL suite"
    )]
    async fn replies_move_their_roots_in_the_commit_on_postgres() {
        replies_in_a_batch(postgres().await).await;
    }

    /// One batch: two replies to one root, one to another, plain messages and a refused
    /// draft between them. Each root counts its replies; the refused draft fails alone.
    async fn replies_in_a_batch(db: DatabaseConnection) {
        let m = super::super::testing::user(&db, "member").await;
        let o = super::super::testing::user(&db, "outsider").await;
        let room = super::super::rooms::create(&db, "t", None, Visibility::Public, m.id)
            .await
            .expect("room");
        let draft = |author, content, reply_to| NewMessage {
            room_id: room.id,
            room: "t",
            author,
            content,
            client_id: None,
            reply_to,
        };
        let out = commit(&db, &[draft(&m, "root a", None), draft(&m, "root b", None)])
            .await
            .expect("commit");
        let (a, b) = (
            out[0].as_ref().unwrap().message().id,
            out[1].as_ref().unwrap().message().id,
        );
        let batch = [
            draft(&m, "to a", Some(a)),
            draft(&o, "intruder", Some(a)),
            draft(&m, "plain", None),
            draft(&m, "to b", Some(b)),
            draft(&m, "to a again", Some(a)),
        ];
        let out = commit(&db, &batch).await.expect("commit");
        let replies: Vec<Option<Option<i64>>> = out
            .iter()
            .map(|o| o.as_ref().ok().map(|s| s.message().reply_to))
            .collect();
        assert_eq!(
            replies,
            [
                Some(Some(a)),
                None,
                Some(None),
                Some(Some(b)),
                Some(Some(a))
            ]
        );
        let seqs: Vec<i64> = out
            .iter()
            .filter_map(|o| o.as_ref().ok().map(|s| s.message().seq))
            .collect();
        assert_eq!(seqs, [3, 4, 5, 6], "gap-free");
        for (root, n) in [(a, 2), (b, 1)] {
            let row = message::Entity::find_by_id(root)
                .one(&db)
                .await
                .expect("read")
                .expect("root");
            assert_eq!(row.reply_count, n, "root {root}");
            assert!(row.last_reply_at.is_some());
        }
    }

    /// A draft whose author is not a member fails alone; the rest of the batch commits
    /// gap-free; a draft for a room that is gone is told so.
    async fn refused_alone(db: DatabaseConnection) {
        let m = super::super::testing::user(&db, "member").await;
        let o = super::super::testing::user(&db, "outsider").await;
        let room = super::super::rooms::create(&db, "r", None, Visibility::Public, m.id)
            .await
            .expect("room");
        let draft = |author, content| NewMessage {
            room_id: room.id,
            room: "r",
            author,
            content,
            client_id: None,
            reply_to: None,
        };
        let batch = [draft(&m, "one"), draft(&o, "intruder"), draft(&m, "two")];
        let out = commit(&db, &batch).await.expect("commit");
        let seqs: Vec<Option<i64>> = out
            .iter()
            .map(|o| o.as_ref().ok().map(|s| s.message().seq))
            .collect();
        assert_eq!(seqs, [Some(1), None, Some(2)], "gap-free for the members");
        assert!(matches!(out[1], Err(StoreError::NotMember)));
        let gone = NewMessage {
            room_id: room.id + 100,
            ..draft(&m, "nowhere")
        };
        let out = commit(&db, &[gone]).await.expect("commit");
        assert!(matches!(out[0], Err(StoreError::NotFound("room"))));
        // A room where every draft is refused (it is locked for the statement all the same)
        // leaves the other rooms of the batch alone, and so does a room that is gone. One
        // draft with an `@` makes the whole batch take the full form: its mention is stored.
        let other = super::super::rooms::create(&db, "o", None, Visibility::Public, o.id)
            .await
            .expect("room");
        let only_intruder = NewMessage {
            room_id: other.id,
            room: "o",
            ..draft(&m, "not a member here")
        };
        let gone = NewMessage {
            room_id: other.id + 100,
            ..draft(&m, "nowhere")
        };
        let batch = [
            only_intruder,
            draft(&m, "three"),
            gone,
            draft(&m, "@member four"),
        ];
        let out = commit(&db, &batch).await.expect("commit");
        assert!(matches!(out[0], Err(StoreError::NotMember)));
        assert!(matches!(out[2], Err(StoreError::NotFound("room"))));
        let seqs: Vec<Option<i64>> = out
            .iter()
            .map(|o| o.as_ref().ok().map(|s| s.message().seq))
            .collect();
        assert_eq!(
            seqs,
            [None, Some(3), None, Some(4)],
            "numbered after the plain batch"
        );
        let mentioned: Vec<i64> = out[3]
            .as_ref()
            .map(|s| s.message().mentions.iter().map(|u| u.id).collect())
            .unwrap_or_default();
        assert_eq!(mentioned, [m.id], "the full form resolved the mention");
        assert!(
            out[1]
                .as_ref()
                .is_ok_and(|s| s.message().mentions.is_empty())
        );
    }
}
