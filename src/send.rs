//! The send path, the spine of the service:
//!
//! socket or REST → validate → rate limit → **[`Sender::send`]**: one transaction takes the
//! room's next `seq` values and stores the messages → publish on the bus → every replica's hub
//! → each socket's bounded queue, in `seq` order.
//!
//! Concurrent sends into one room share a transaction (group commit): the first send of an idle
//! room starts a drain task; sends arriving while a batch commits wait in the room's queue and
//! go together in the next batch, with one `UPDATE rooms SET last_seq = last_seq + n` and one
//! multi-row `INSERT`. The row lock on the room (PostgreSQL) or the single writer (SQLite)
//! makes `seq` gap-free and strictly increasing under any number of senders and replicas.
//! Each sender's messages keep their submission order. A send is acknowledged only after its
//! batch committed; it is published after that, in `seq` order.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex},
};

use chrono::Utc;
use entity::message;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
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
const MAX_BATCH: usize = 256;

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
    draft: Draft,
    reply: oneshot::Sender<Result<Sent, ApiError>>,
    span: tracing::Span,
}

#[derive(Default)]
struct RoomQueue {
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
    rooms: Mutex<HashMap<i64, RoomQueue>>,
}

impl Sender {
    pub fn new(db: DatabaseConnection, bus: Arc<dyn Bus>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                bus,
                rooms: Mutex::default(),
            }),
        }
    }

    /// Store `draft` in `room` and publish it. The caller has validated the content, checked
    /// membership and applied the rate limit.
    ///
    /// # Errors
    /// 404 if the room vanished; 503 if the database is unreachable.
    pub async fn send(&self, room_id: i64, room: &str, draft: Draft) -> Result<Sent, ApiError> {
        let (reply, rx) = oneshot::channel();
        let span = if crate::telemetry::tracing_enabled() {
            tracing::info_span!("message.commit", room = room, room_id)
        } else {
            tracing::Span::none()
        };
        let start = {
            let mut rooms = lock(&self.inner.rooms);
            let queue = rooms.entry(room_id).or_default();
            queue.pending.push(Pending { draft, reply, span });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // The drain runs in its own task so that a caller going away (a dropped HTTP
            // request) never abandons a batch half way.
            let inner = self.inner.clone();
            let room = room.to_owned();
            tokio::spawn(async move { inner.drain(room_id, room).await });
        }
        rx.await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("send task ended without a reply")))?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    async fn drain(&self, room_id: i64, room: String) {
        loop {
            let batch: Vec<Pending> = {
                let mut rooms = lock(&self.rooms);
                let Entry::Occupied(mut entry) = rooms.entry(room_id) else {
                    return;
                };
                let queue = entry.get_mut();
                if queue.pending.is_empty() {
                    entry.remove();
                    return;
                }
                let n = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..n).collect()
            };
            let parent = batch[0].span.clone();
            self.commit_and_publish(room_id, &room, batch)
                .instrument(parent)
                .await;
        }
    }

    async fn commit_and_publish(&self, room_id: i64, room: &str, batch: Vec<Pending>) {
        metrics::commit_batch(batch.len());
        let drafts: Vec<&Draft> = batch.iter().map(|p| &p.draft).collect();
        let result = match self.commit(room_id, room, &drafts).await {
            Err(e) if is_unique_violation(&e) => {
                // A concurrent retry with the same client_id won the race on another replica:
                // go one by one so each finds its original.
                let mut out = Vec::with_capacity(drafts.len());
                let mut failed = None;
                for d in &drafts {
                    match self.commit(room_id, room, &[d]).await {
                        Ok(mut r) => out.append(&mut r),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                failed.map_or(Ok(out), Err)
            }
            other => other,
        };
        match result {
            Ok(outcomes) => {
                let envelopes: Vec<Envelope> = batch
                    .iter()
                    .zip(&outcomes)
                    .filter_map(|(pending, outcome)| match outcome {
                        Sent::Created(msg) => {
                            let _enter = pending.span.enter();
                            Some(crate::ws::protocol::message_envelope(room_id, msg))
                        }
                        Sent::Duplicate(_) => None,
                    })
                    .collect();
                // Publish before acknowledging, in `seq` order. A failure is not the sender's
                // problem: the message is committed, and every replica fills the gap from the
                // database once the bus is back (the Redis bus also retries the publish).
                if !envelopes.is_empty()
                    && let Err(e) = self.bus.publish_batch(envelopes).await
                {
                    tracing::warn!(error = %e, "publish failed; receivers will fill from the database");
                }
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let api: ApiError = match e {
                    CommitError::RoomGone => ApiError::NotFound("room"),
                    CommitError::Db(e) => ApiError::from(e),
                };
                let status = api.status();
                for pending in batch {
                    let err = if status == axum::http::StatusCode::NOT_FOUND {
                        ApiError::NotFound("room")
                    } else if status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                        ApiError::Unavailable(anyhow::anyhow!("database unavailable"))
                    } else {
                        ApiError::Internal(anyhow::anyhow!("message commit failed"))
                    };
                    let _ = pending.reply.send(Err(err));
                }
                if status.is_server_error() {
                    tracing::error!(error = ?api, "message commit failed");
                }
            }
        }
    }

    /// One transaction for the whole batch; outcomes in batch order.
    async fn commit(
        &self,
        room_id: i64,
        room: &str,
        drafts: &[&Draft],
    ) -> Result<Vec<Sent>, CommitError> {
        let db = &self.db;
        // Idempotency: drafts whose (author, client_id) is already stored get the original.
        let mut originals: HashMap<(i64, String), message::Model> = HashMap::new();
        let keyed: Vec<String> = drafts.iter().filter_map(|d| d.client_id.clone()).collect();
        if !keyed.is_empty() {
            for row in message::Entity::find()
                .filter(message::Column::RoomId.eq(room_id))
                .filter(message::Column::ClientId.is_in(keyed))
                .all(db)
                .await?
            {
                if let (Some(a), Some(c)) = (row.author_id, row.client_id.clone()) {
                    originals.insert((a, c), row);
                }
            }
        }
        // Which drafts are new (a repeat inside the batch maps to its first occurrence).
        let mut first_in_batch: HashMap<(i64, String), usize> = HashMap::new();
        let mut plan: Vec<Plan> = Vec::with_capacity(drafts.len());
        let mut new_count = 0i64;
        for (i, d) in drafts.iter().enumerate() {
            let key = d.client_id.clone().map(|c| (d.author.id, c));
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
            new_count += 1;
            plan.push(Plan::New);
        }

        let mut rows: Vec<message::Model> = Vec::new();
        if new_count > 0 {
            let txn = db.begin().await?;
            let stmt = store::raw(
                &txn,
                "UPDATE rooms SET last_seq = last_seq + $1 WHERE id = $2 RETURNING last_seq",
                vec![new_count.into(), room_id.into()],
            );
            let Some(res) = txn.query_one_raw(stmt).await? else {
                txn.rollback().await?;
                return Err(CommitError::RoomGone);
            };
            let last: i64 = res.try_get("", "last_seq")?;
            let mut seq = last - new_count;
            let now = Utc::now();
            let models: Vec<message::ActiveModel> = drafts
                .iter()
                .zip(&plan)
                .filter(|(_, p)| matches!(p, Plan::New))
                .map(|(d, _)| {
                    seq += 1;
                    message::ActiveModel {
                        room_id: Set(room_id),
                        seq: Set(seq),
                        author_id: Set(Some(d.author.id)),
                        content: Set(d.content.clone()),
                        client_id: Set(d.client_id.clone()),
                        created_at: Set(now),
                        edited_at: Set(None),
                        deleted_at: Set(None),
                        ..Default::default()
                    }
                })
                .collect();
            rows = message::Entity::insert_many(models)
                .exec_with_returning(&txn)
                .await?;
            txn.commit().await?;
            rows.sort_by_key(|r| r.seq);
            metrics::messages_committed(rows.len());
        }

        // Build outcomes in batch order.
        let mut new_rows = rows.into_iter();
        let mut out: Vec<Sent> = Vec::with_capacity(drafts.len());
        for (d, p) in drafts.iter().zip(plan) {
            let sent = match p {
                Plan::New => {
                    let row = new_rows.next().ok_or_else(|| {
                        sea_orm::DbErr::Custom("insert returned too few rows".into())
                    })?;
                    Sent::Created(wire(room, row, &d.author))
                }
                Plan::Existing(row) => Sent::Duplicate(wire(room, row, &d.author)),
                Plan::SameAs(j) => Sent::Duplicate(out[j].message().clone()),
            };
            out.push(sent);
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

#[derive(Debug)]
enum CommitError {
    RoomGone,
    Db(sea_orm::DbErr),
}

impl From<sea_orm::DbErr> for CommitError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Db(e)
    }
}

fn is_unique_violation(e: &CommitError) -> bool {
    matches!(e, CommitError::Db(db) if matches!(db.sql_err(), Some(sea_orm::SqlErr::UniqueConstraintViolation(_))))
}

impl Sender {
    /// Wait until no batch is being committed (shutdown), at most `grace`.
    pub async fn drained(&self, grace: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !lock(&self.inner.rooms).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
