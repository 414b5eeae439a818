//! The send path, the spine of the service:
//!
//! socket or REST → validate → rate limit → **[`Sender::send`]**: one transaction takes the
//! rooms' next `seq` values and stores the messages → publish on the bus → every replica's hub
//! → each socket's bounded queue, in `seq` order.
//!
//! Group commit: sends wait in one queue per replica; a single drain task takes whatever is
//! waiting (up to [`MAX_BATCH`]) and commits it in **one** transaction that advances each
//! room's counter by its number of new messages (`UPDATE rooms SET last_seq = last_seq + n …
//! RETURNING`) and inserts them numbered from the old value. On PostgreSQL this is a single
//! statement (rooms locked in ascending id, so replicas always lock in the same order and
//! cannot deadlock, and held only while the statement runs); on SQLite, one transaction of
//! two statements. While a batch commits, the next one accumulates, so the commit rate adapts
//! to the load.
//! The row lock on each room (PostgreSQL) or the single writer (SQLite) makes `seq` gap-free
//! and strictly increasing under any number of senders and replicas; each sender's messages
//! keep their submission order. A send is answered only after its batch committed, and the
//! batch is published before the answers go out, in `seq` order.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use chrono::Utc;
use entity::message;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult,
    TransactionTrait,
};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    bus::{Bus, Envelope},
    error::ApiError,
    model::{Message, UserRef},
    store,
    telemetry::metrics,
};

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 512;

/// A message to store.
pub struct Draft {
    pub author: UserRef,
    pub content: String,
    pub client_id: Option<String>,
}

/// What a send produced.
pub enum Sent {
    /// Stored, published, with its `seq`.
    Created(Message),
    /// The same `client_id` was already stored by this author: the original, nothing new.
    Duplicate(Message),
}

impl Sent {
    pub fn message(&self) -> &Message {
        match self {
            Self::Created(m) | Self::Duplicate(m) => m,
        }
    }
}

struct Pending {
    room_id: i64,
    room: Arc<str>,
    draft: Draft,
    reply: oneshot::Sender<Result<Sent, ApiError>>,
    span: tracing::Span,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    running: bool,
}

#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    bus: Arc<dyn Bus>,
    queue: Mutex<Queue>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sender {
    pub fn new(db: DatabaseConnection, bus: Arc<dyn Bus>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                bus,
                queue: Mutex::default(),
            }),
        }
    }

    /// Store `draft` in `room` and publish it. The caller has validated the content, checked
    /// membership and applied the rate limit.
    ///
    /// # Errors
    /// 404 if the room vanished; 503 if the database is unreachable.
    pub async fn send(&self, room_id: i64, room: &str, draft: Draft) -> Result<Sent, ApiError> {
        self.submit(room_id, room, draft).await
    }

    /// Queue `draft` now and return the future of its outcome. The queue position is taken
    /// by this call, not by the first poll: a socket submits its messages one after another
    /// without waiting for each commit (many in flight), and they still commit in
    /// submission order.
    pub fn submit(
        &self,
        room_id: i64,
        room: &str,
        draft: Draft,
    ) -> impl Future<Output = Result<Sent, ApiError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let span = if crate::telemetry::tracing_enabled() {
            tracing::info_span!("message.commit", room = room, room_id)
        } else {
            tracing::Span::none()
        };
        let start = {
            let mut queue = lock(&self.inner.queue);
            queue.pending.push(Pending {
                room_id,
                room: room.into(),
                draft,
                reply,
                span,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // The drain runs in its own task so that a caller going away (a dropped HTTP
            // request) never abandons a batch half way.
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.drain().await });
        }
        async move {
            rx.await.map_err(|_| {
                ApiError::Internal(anyhow::anyhow!("send task ended without a reply"))
            })?
        }
    }

    /// Wait until no batch is being committed (shutdown), at most `grace`.
    pub async fn drained(&self, grace: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while lock(&self.inner.queue).running && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Inner {
    /// Commit batch after batch. A batch's publish and answers run in their own task while the
    /// next batch commits; each waits for the previous one, so messages still reach the bus in
    /// commit order and every sender is answered after its message was published.
    async fn drain(&self) {
        let mut publishing: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let batch: Vec<Pending> = {
                let mut queue = lock(&self.queue);
                if queue.pending.is_empty() && publishing.is_none() {
                    queue.running = false;
                    return;
                }
                let n = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..n).collect()
            };
            if batch.is_empty() {
                // Nothing new: let the last publish finish (`running` covers it), then look again.
                if let Some(previous) = publishing.take() {
                    let _ = previous.await;
                }
                continue;
            }
            let parent = batch[0].span.clone();
            let outcomes = self.commit_batch(&batch).instrument(parent.clone()).await;
            let bus = self.bus.clone();
            let previous = publishing.take();
            publishing = Some(tokio::spawn(
                async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    publish_and_answer(&*bus, batch, outcomes).await;
                }
                .instrument(parent),
            ));
        }
    }

    /// The batch's outcomes, in batch order.
    async fn commit_batch(&self, batch: &[Pending]) -> Vec<Result<Sent, ApiError>> {
        metrics::commit_batch(batch.len());
        let started = std::time::Instant::now();
        let committed = self.commit(batch).await;
        tracing::debug!(
            batch = batch.len(),
            commit_us = started.elapsed().as_micros(),
            "batch committed"
        );
        match committed {
            Err(e) if is_unique_violation(&e) => {
                // A retry with the same client_id raced on another replica: go one by one, so
                // each finds its original.
                let mut out = Vec::with_capacity(batch.len());
                for p in batch {
                    match self.commit(std::slice::from_ref(p)).await {
                        Ok(mut r) => out.append(&mut r),
                        Err(e) => out.push(Err(ApiError::from(e))),
                    }
                }
                out
            }
            Ok(outcomes) => outcomes,
            Err(e) => {
                let err = ApiError::from(e);
                if err.status().is_server_error() {
                    tracing::error!(error = ?err, "message commit failed");
                }
                batch.iter().map(|_| Err(clone_err(&err))).collect()
            }
        }
    }

    /// One transaction for the whole batch; outcomes in batch order. A room that no longer
    /// exists fails its own sends only.
    async fn commit(
        &self,
        batch: &[Pending],
    ) -> Result<Vec<Result<Sent, ApiError>>, sea_orm::DbErr> {
        let db = &self.db;
        let postgres = db.get_database_backend() == sea_orm::DbBackend::Postgres;
        // Idempotency: drafts whose (room, author, client_id) is already stored get the original
        // (on PostgreSQL the commit statement itself looks them up).
        let originals = if postgres {
            HashMap::new()
        } else {
            find_originals(db, batch).await?
        };
        // Plan each draft; count the new ones per room.
        let mut first_in_batch: HashMap<(i64, i64, &str), usize> = HashMap::new();
        let mut plan: Vec<Plan> = Vec::with_capacity(batch.len());
        let mut per_room: BTreeMap<i64, i64> = BTreeMap::new();
        for (i, p) in batch.iter().enumerate() {
            if let Some(client_id) = p.draft.client_id.as_deref() {
                let key = (p.room_id, p.draft.author.id, client_id);
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
            *per_room.entry(p.room_id).or_default() += 1;
            plan.push(Plan::New);
        }
        let new: Vec<&Pending> = batch
            .iter()
            .zip(&plan)
            .filter(|(_, plan)| matches!(plan, Plan::New))
            .map(|(p, _)| p)
            .collect();
        // `existing`: stored originals found by the PostgreSQL statement, by position in `new`.
        let (rows, mut existing) = if new.is_empty() {
            (Vec::new(), HashMap::new())
        } else if postgres {
            store_postgres(db, &new).await?
        } else {
            (
                store_in_transaction(db, &per_room, &new).await?,
                HashMap::new(),
            )
        };
        metrics::messages_committed(rows.len());

        // Each room's new rows, in `seq` order, belong to its new drafts in batch order; a room
        // without rows no longer exists.
        let mut by_room: HashMap<i64, std::collections::VecDeque<message::Model>> = HashMap::new();
        let mut rows = rows;
        rows.sort_unstable_by_key(|r| (r.room_id, r.seq));
        for row in rows {
            by_room.entry(row.room_id).or_default().push_back(row);
        }
        let mut out: Vec<Result<Sent, ApiError>> = Vec::with_capacity(batch.len());
        let mut position = 0;
        for (p, mut plan) in batch.iter().zip(plan) {
            if matches!(plan, Plan::New) {
                if let Some(row) = existing.remove(&position) {
                    plan = Plan::Existing(row);
                }
                position += 1;
            }
            let result = match plan {
                Plan::New => match by_room
                    .get_mut(&p.room_id)
                    .and_then(|rows| rows.pop_front())
                {
                    Some(row) => Ok(Sent::Created(wire(&p.room, row, &p.draft.author))),
                    None => Err(ApiError::NotFound("room")),
                },
                Plan::Existing(row) => Ok(Sent::Duplicate(wire(&p.room, row, &p.draft.author))),
                Plan::SameAs(j) => match &out[j] {
                    Ok(sent) => Ok(Sent::Duplicate(sent.message().clone())),
                    Err(e) => Err(clone_err(e)),
                },
            };
            out.push(result);
        }
        Ok(out)
    }
}

/// Publish every new message of a committed batch, in `seq` order per room, then answer its
/// senders.
async fn publish_and_answer(
    bus: &dyn Bus,
    batch: Vec<Pending>,
    mut outcomes: Vec<Result<Sent, ApiError>>,
) {
    let envelopes: Vec<Envelope> = batch
        .iter()
        .zip(&outcomes)
        .filter_map(|(pending, outcome)| match outcome {
            Ok(Sent::Created(msg)) => {
                let _enter = pending.span.enter();
                Some(crate::ws::protocol::message_envelope(pending.room_id, msg))
            }
            _ => None,
        })
        .collect();
    // A failed publish is not the sender's problem: the message is committed, and every
    // replica fills the gap from the database once the bus is back (the Redis bus also
    // retries the publish).
    if !envelopes.is_empty()
        && let Err(e) = bus.publish_batch(envelopes).await
    {
        tracing::warn!(error = %e, "publish failed; receivers will fill from the database");
    }
    for pending in batch.into_iter().rev() {
        let outcome = outcomes
            .pop()
            .unwrap_or_else(|| Err(ApiError::Internal(anyhow::anyhow!("missing outcome"))));
        let _ = pending.reply.send(outcome);
    }
}

/// SQLite: the stored messages that `batch`'s drafts retry, by (room, author, client_id).
async fn find_originals(
    db: &DatabaseConnection,
    batch: &[Pending],
) -> Result<HashMap<(i64, i64, String), message::Model>, sea_orm::DbErr> {
    let keyed: Vec<(&Pending, &str)> = batch
        .iter()
        .filter_map(|p| p.draft.client_id.as_deref().map(|c| (p, c)))
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
            p.draft.author.id.into(),
            (*client_id).to_owned().into(),
        ]);
    }
    sql.push(')');
    let stmt = store::raw(db, &sql, values);
    for row in message::Entity::find().from_raw_sql(stmt).all(db).await? {
        if let (Some(a), Some(c)) = (row.author_id, row.client_id.clone()) {
            originals.insert((row.room_id, a, c), row);
        }
    }
    Ok(originals)
}

/// PostgreSQL: the whole commit is **one statement** in its own implicit transaction, so the
/// rooms stay locked for its execution only, not for client round trips (two replicas sending
/// into the same rooms take turns on these row locks). It finds the drafts whose
/// (room, author, client_id) is already stored (one index probe each: `LIMIT 1` keeps the
/// lateral probe from being flattened into a join, which a generic plan for unknown arrays
/// would turn into a scan of `messages`), numbers the others per room, locks their rooms in id
/// order (so replicas never deadlock; the update touches only rows already locked), advances
/// the counters and inserts the rows from each room's old counter. Arrays as parameters keep
/// the statement text constant, so each connection prepares it once. A room that is gone gets
/// no rows.
///
/// Returns the inserted rows and the originals, by position in `new`.
async fn store_postgres(
    db: &DatabaseConnection,
    new: &[&Pending],
) -> Result<(Vec<message::Model>, HashMap<usize, message::Model>), sea_orm::DbErr> {
    const SQL: &str = "WITH input AS ( \
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) \
                WITH ORDINALITY AS m(room_id, author_id, content, client_id, ord) \
        ), existing AS ( \
            SELECT i.ord, e.id FROM input i CROSS JOIN LATERAL ( \
                SELECT id FROM messages WHERE room_id = i.room_id AND author_id = i.author_id \
                    AND client_id = i.client_id LIMIT 1) AS e \
            WHERE i.client_id <> '' \
        ), fresh AS ( \
            SELECT i.*, row_number() OVER (PARTITION BY i.room_id ORDER BY i.ord) AS k \
            FROM input i WHERE NOT EXISTS (SELECT 1 FROM existing x WHERE x.ord = i.ord) \
        ), counts AS ( \
            SELECT room_id AS id, count(*) AS n FROM fresh GROUP BY room_id \
        ), locked AS ( \
            SELECT id FROM rooms WHERE id IN (SELECT id FROM counts) ORDER BY id FOR UPDATE \
        ), bumped AS ( \
            UPDATE rooms SET last_seq = rooms.last_seq + c.n \
            FROM counts c JOIN locked l ON l.id = c.id \
            WHERE rooms.id = c.id \
            RETURNING rooms.id, rooms.last_seq - c.n AS base \
        ), inserted AS ( \
            INSERT INTO messages (room_id, seq, author_id, content, client_id, created_at) \
            SELECT f.room_id, b.base + f.k, f.author_id, f.content, NULLIF(f.client_id, ''), $5 \
            FROM fresh f JOIN bumped b ON b.id = f.room_id \
            RETURNING * \
        ) \
        SELECT 0::bigint AS existing_ord, inserted.* FROM inserted \
        UNION ALL \
        SELECT x.ord, m.* FROM existing x JOIN messages m ON m.id = x.id";
    let values: Vec<sea_orm::Value> = vec![
        new.iter().map(|p| p.room_id).collect::<Vec<i64>>().into(),
        new.iter()
            .map(|p| p.draft.author.id)
            .collect::<Vec<i64>>()
            .into(),
        new.iter()
            .map(|p| p.draft.content.clone())
            .collect::<Vec<String>>()
            .into(),
        // A validated client_id is never empty, so '' stands for none (arrays of text cannot
        // carry NULLs through the driver's binding).
        new.iter()
            .map(|p| p.draft.client_id.clone().unwrap_or_default())
            .collect::<Vec<String>>()
            .into(),
        Utc::now().into(),
    ];
    let mut inserted = Vec::new();
    let mut existing = HashMap::new();
    for row in db.query_all_raw(store::raw(db, SQL, values)).await? {
        let ord: i64 = row.try_get("", "existing_ord")?;
        let model = message::Model::from_query_result(&row, "")?;
        // ORDINALITY counts from 1; 0 marks an inserted row.
        match usize::try_from(ord) {
            Ok(n) if n > 0 => {
                existing.insert(n - 1, model);
            }
            _ => inserted.push(model),
        }
    }
    Ok((inserted, existing))
}

/// SQLite (one writer at a time): advance the counters, insert the rows, in one transaction.
async fn store_in_transaction(
    db: &DatabaseConnection,
    per_room: &BTreeMap<i64, i64>,
    new: &[&Pending],
) -> Result<Vec<message::Model>, sea_orm::DbErr> {
    let txn = db.begin().await?;
    // One statement whatever the number of rooms. The numbers are ours (ids and counts), so
    // they are written into the SQL; nothing from a client is.
    let deltas: Vec<String> = per_room
        .iter()
        .map(|(id, n)| format!("SELECT {id} AS id, {n} AS n"))
        .collect();
    let update = format!(
        "UPDATE rooms SET last_seq = rooms.last_seq + d.n FROM ({}) AS d WHERE rooms.id = d.id RETURNING rooms.id, rooms.last_seq",
        deltas.join(" UNION ALL ")
    );
    // room id → next seq to hand out (rooms that are gone are missing).
    let mut next_seq: HashMap<i64, i64> = HashMap::new();
    for res in txn
        .query_all_raw(sea_orm::Statement::from_string(
            txn.get_database_backend(),
            update,
        ))
        .await?
    {
        let id: i64 = res.try_get("", "id")?;
        let last: i64 = res.try_get("", "last_seq")?;
        let n = per_room.get(&id).copied().unwrap_or(0);
        next_seq.insert(id, last - n + 1);
    }
    let now = Utc::now();
    let mut models = Vec::with_capacity(new.len());
    for p in new {
        let Some(seq) = next_seq.get_mut(&p.room_id) else {
            continue;
        };
        models.push(message::ActiveModel {
            room_id: Set(p.room_id),
            seq: Set(*seq),
            author_id: Set(Some(p.draft.author.id)),
            content: Set(p.draft.content.clone()),
            client_id: Set(p.draft.client_id.clone()),
            created_at: Set(now),
            edited_at: Set(None),
            deleted_at: Set(None),
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
    txn.commit().await?;
    Ok(rows)
}

enum Plan {
    New,
    Existing(message::Model),
    SameAs(usize),
}

fn wire(room: &str, row: message::Model, author: &UserRef) -> Message {
    Message {
        id: row.id,
        room: room.to_owned(),
        seq: row.seq,
        user: Some(author.clone()),
        content: row.content,
        client_id: row.client_id,
        created_at: row.created_at,
        edited_at: row.edited_at,
    }
}

/// Errors are not `Clone` (they carry causes); every waiter of a failed batch gets the same
/// kind of error, the cause is logged once.
fn clone_err(e: &ApiError) -> ApiError {
    match e.status().as_u16() {
        404 => ApiError::NotFound("room"),
        503 => ApiError::Unavailable(anyhow::anyhow!("database unavailable")),
        _ => ApiError::Internal(anyhow::anyhow!("message commit failed")),
    }
}

fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
