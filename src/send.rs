//! The send path, the spine of the service:
//!
//! socket or REST → validate → rate limit → **[`Sender::send`]**: one transaction takes the
//! rooms' next `seq` values and stores the messages → publish on the bus → every replica's hub
//! → each socket's bounded queue, in `seq` order.
//!
//! Group commit: sends wait in one queue per replica; a single drain task takes whatever is
//! waiting (up to [`MAX_BATCH`]) and commits it in **one** transaction: per room, one
//! `UPDATE rooms SET last_seq = last_seq + n … RETURNING last_seq` (rooms in ascending id, so
//! replicas always lock in the same order and cannot deadlock), then one multi-row `INSERT`.
//! While a batch commits, the next one accumulates, so the commit rate adapts to the load.
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
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, TransactionTrait,
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
    async fn drain(&self) {
        loop {
            let batch: Vec<Pending> = {
                let mut queue = lock(&self.queue);
                if queue.pending.is_empty() {
                    queue.running = false;
                    return;
                }
                let n = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..n).collect()
            };
            let parent = batch[0].span.clone();
            self.commit_and_publish(batch).instrument(parent).await;
        }
    }

    async fn commit_and_publish(&self, batch: Vec<Pending>) {
        metrics::commit_batch(batch.len());
        let started = std::time::Instant::now();
        let committed = self.commit(&batch).await;
        tracing::debug!(
            batch = batch.len(),
            commit_us = started.elapsed().as_micros(),
            "batch committed"
        );
        let mut outcomes = match committed {
            Err(CommitError::Db(e)) if is_unique_violation(&e) => {
                // A retry with the same client_id raced on another replica: go one by one, so
                // each finds its original.
                let mut out = Vec::with_capacity(batch.len());
                for p in &batch {
                    match self.commit(std::slice::from_ref(p)).await {
                        Ok(mut r) => out.append(&mut r),
                        Err(e) => out.push(Err(e.into_api())),
                    }
                }
                out
            }
            Ok(outcomes) => outcomes,
            Err(e) => {
                let err = e.into_api();
                if err.status().is_server_error() {
                    tracing::error!(error = ?err, "message commit failed");
                }
                batch.iter().map(|_| Err(clone_err(&err))).collect()
            }
        };
        // Publish every new message, in `seq` order per room, before anyone is answered.
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
            && let Err(e) = self.bus.publish_batch(envelopes).await
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

    /// One transaction for the whole batch; outcomes in batch order. A room that no longer
    /// exists fails its own sends only.
    async fn commit(&self, batch: &[Pending]) -> Result<Vec<Result<Sent, ApiError>>, CommitError> {
        let db = &self.db;
        // Idempotency: drafts whose (room, author, client_id) is already stored get the original.
        let mut originals: HashMap<(i64, i64, String), message::Model> = HashMap::new();
        let keyed: Vec<String> = batch
            .iter()
            .filter_map(|p| p.draft.client_id.clone())
            .collect();
        if !keyed.is_empty() {
            // Row-value lookup on the unique index (room, author, client_id): one probe per key.
            let mut sql =
                String::from("SELECT * FROM messages WHERE (room_id, author_id, client_id) IN (");
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(keyed.len() * 3);
            for (i, p) in batch
                .iter()
                .filter(|p| p.draft.client_id.is_some())
                .enumerate()
            {
                if i > 0 {
                    sql.push(',');
                }
                let n = i * 3;
                sql.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
                values.extend([
                    p.room_id.into(),
                    p.draft.author.id.into(),
                    p.draft.client_id.clone().into(),
                ]);
            }
            sql.push(')');
            for row in message::Entity::find()
                .from_raw_sql(store::raw(db, &sql, values))
                .all(db)
                .await?
            {
                if let (Some(a), Some(c)) = (row.author_id, row.client_id.clone()) {
                    originals.insert((row.room_id, a, c), row);
                }
            }
        }
        // Plan each draft; count the new ones per room.
        let mut first_in_batch: HashMap<(i64, i64, String), usize> = HashMap::new();
        let mut plan: Vec<Plan> = Vec::with_capacity(batch.len());
        let mut per_room: BTreeMap<i64, i64> = BTreeMap::new();
        for (i, p) in batch.iter().enumerate() {
            let key = p
                .draft
                .client_id
                .clone()
                .map(|c| (p.room_id, p.draft.author.id, c));
            if let Some(key) = &key {
                if let Some(orig) = originals.get(key) {
                    plan.push(Plan::Existing(orig.clone()));
                    continue;
                }
                if let Some(&j) = first_in_batch.get(key) {
                    plan.push(Plan::SameAs(j));
                    continue;
                }
                first_in_batch.insert(key.clone(), i);
            }
            *per_room.entry(p.room_id).or_default() += 1;
            plan.push(Plan::New);
        }

        // room id → next seq to hand out (None: the room is gone).
        let mut next_seq: HashMap<i64, Option<i64>> = HashMap::new();
        let mut rows: Vec<message::Model> = Vec::new();
        if !per_room.is_empty() {
            let txn = db.begin().await?;
            // Two statements whatever the number of rooms: lock the rooms in id order (so that
            // replicas never deadlock), then advance every counter at once. The numbers are ours
            // (ids and counts), so they are written into the SQL; nothing from a client is.
            let ids: Vec<String> = per_room.keys().map(i64::to_string).collect();
            if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
                let lock = format!(
                    "SELECT id FROM rooms WHERE id IN ({}) ORDER BY id FOR UPDATE",
                    ids.join(",")
                );
                txn.execute_unprepared(&lock).await?;
            }
            let deltas: Vec<String> = per_room
                .iter()
                .map(|(id, n)| format!("SELECT {id} AS id, {n} AS n"))
                .collect();
            let update = format!(
                "UPDATE rooms SET last_seq = rooms.last_seq + d.n FROM ({}) AS d WHERE rooms.id = d.id RETURNING rooms.id, rooms.last_seq",
                deltas.join(" UNION ALL ")
            );
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
                next_seq.insert(id, Some(last - n + 1));
            }
            for id in per_room.keys() {
                next_seq.entry(*id).or_insert(None);
            }
            let now = Utc::now();
            let mut models = Vec::with_capacity(batch.len());
            for (p, plan) in batch.iter().zip(&plan) {
                if !matches!(plan, Plan::New) {
                    continue;
                }
                let Some(Some(seq)) = next_seq.get_mut(&p.room_id) else {
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
            if !models.is_empty() {
                rows = message::Entity::insert_many(models)
                    .exec_with_returning(&txn)
                    .await?;
            }
            txn.commit().await?;
            metrics::messages_committed(rows.len());
        }

        // Outcomes in batch order; inserted rows come back keyed by (room, seq).
        let mut by_key: HashMap<(i64, i64), message::Model> =
            rows.into_iter().map(|r| ((r.room_id, r.seq), r)).collect();
        let mut cursor: HashMap<i64, i64> = next_seq
            .iter()
            .filter_map(|(room, first)| {
                first.map(|f| (*room, f - per_room.get(room).copied().unwrap_or(0)))
            })
            .collect();
        let mut out: Vec<Result<Sent, ApiError>> = Vec::with_capacity(batch.len());
        for (p, plan) in batch.iter().zip(plan) {
            let result = match plan {
                Plan::New => match cursor.get_mut(&p.room_id) {
                    Some(seq) => {
                        let row = by_key.remove(&(p.room_id, *seq));
                        *seq += 1;
                        row.map(|row| Sent::Created(wire(&p.room, row, &p.draft.author)))
                            .ok_or_else(|| {
                                ApiError::Internal(anyhow::anyhow!("inserted row missing"))
                            })
                    }
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

#[derive(Debug)]
enum CommitError {
    Db(sea_orm::DbErr),
}

impl CommitError {
    fn into_api(self) -> ApiError {
        match self {
            Self::Db(e) => ApiError::from(e),
        }
    }
}

impl From<sea_orm::DbErr> for CommitError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Db(e)
    }
}

fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
