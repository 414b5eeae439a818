//! The send path, the spine of the service:
//!
//! socket or REST → validate → [`super::Chat::admit`] (rate limit) → **[`Sender::submit`]**: one
//! transaction takes the rooms' next `seq` values and stores the messages
//! ([`store::commit`]) → publish on the bus → every replica's fan-out → each socket's bounded
//! queue, in `seq` order.
//!
//! Group commit: sends wait in one queue per replica; a single drain task takes whatever is
//! waiting (up to [`MAX_BATCH`]) and commits it in **one** transaction. While a batch
//! commits, the next one accumulates, and before taking it the drain lets the tasks that are
//! ready submit first ([`Inner::gather`], turns of the run queue, no clock), so the batches
//! grow with the load. Each sender's messages keep their submission order. A send is
//! answered only after its batch committed, and the batch is published before the answers
//! go out, in `seq` order.

use std::sync::Arc;

use parking_lot::Mutex;
use sea_orm::DatabaseConnection;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Error;
use crate::{
    bus::route,
    bus::{Bus, Envelope},
    domain::{event::Event, model::UserRef},
    store::{
        self, StoreError,
        commit::{NewMessage, Stored},
    },
    telemetry::{self, metrics},
};

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 512;

/// Most turns of the run queue a batch waits for more drafts ([`Inner::gather`]).
const GATHER_TURNS: usize = 4;

/// What a send produced: a new message, or the original of a repeated `client_id`.
pub(crate) type Sent = Stored;

/// A message to store (validated by the caller with [`crate::domain::validate`]).
pub(crate) struct Draft {
    pub(crate) author: UserRef,
    pub(crate) content: String,
    pub(crate) client_id: Option<String>,
    /// The thread's root, from [`super::Chat::thread_root`].
    pub(crate) reply_to: Option<i64>,
}

struct Pending {
    room_id: i64,
    room: Arc<str>,
    draft: Draft,
    reply: oneshot::Sender<Result<Sent, Error>>,
    span: tracing::Span,
}

impl Pending {
    fn as_new(&self) -> NewMessage<'_> {
        NewMessage {
            room_id: self.room_id,
            room: &self.room,
            author: &self.draft.author,
            content: &self.draft.content,
            client_id: self.draft.client_id.as_deref(),
            reply_to: self.draft.reply_to,
        }
    }
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    running: bool,
}

/// The replica's group-commit queue.
#[derive(Clone)]
pub(crate) struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    bus: Arc<dyn Bus>,
    /// The drain runs here, so that shutdown waits for the batch in flight.
    tasks: TaskTracker,
    queue: Mutex<Queue>,
    /// The longest a batch waits to grow while the replica is short of CPU
    /// (`COMMIT_COALESCE_MAX_MS`).
    coalesce_max: std::time::Duration,
}

impl Sender {
    pub(crate) fn new(db: DatabaseConnection, bus: Arc<dyn Bus>, tasks: TaskTracker) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                bus,
                tasks,
                queue: Mutex::default(),
                coalesce_max: std::time::Duration::ZERO,
            }),
        }
    }

    /// Let batches wait up to `max` to grow while the replica is short of CPU
    /// ([`telemetry::load::coalesce_wait`]).
    #[must_use]
    pub(crate) fn coalescing(mut self, max: std::time::Duration) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.coalesce_max = max;
        }
        self
    }

    /// Queue `draft` for `room` now and return the future of its outcome. The caller has
    /// validated the content, checked membership and applied the rate limit. The queue
    /// position is taken by this call, not by the first poll: a socket submits its messages
    /// one after another without waiting for each commit (many in flight), and they still
    /// commit in submission order.
    pub(crate) fn submit(
        &self,
        room_id: i64,
        room: &str,
        draft: Draft,
    ) -> impl Future<Output = Result<Sent, Error>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let span = if telemetry::tracing_enabled() {
            tracing::info_span!("message.commit", room = room, room_id)
        } else {
            tracing::Span::none()
        };
        let start = {
            let mut queue = self.inner.queue.lock();
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
            self.inner.tasks.spawn(async move { inner.drain().await });
        }
        async move {
            rx.await
                .map_err(|_| Error::Internal(anyhow::anyhow!("send task ended without a reply")))?
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
            self.gather().await;
            let batch: Vec<Pending> = {
                let mut queue = self.queue.lock();
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
            publishing = Some(
                self.tasks.spawn(
                    async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                        publish_and_answer(&*bus, batch, outcomes).await;
                    }
                    .instrument(parent),
                ),
            );
        }
    }

    /// Gather by readiness, not by a clock: let the tasks that are ready now, and the sockets
    /// whose frames arrived while the last batch committed, submit first. tokio runs a
    /// yielded task again only after the ready tasks and a poll of the I/O driver, so one
    /// yield is one turn of the run queue: a few microseconds on an idle replica, longer
    /// under load. It yields again while a turn added drafts, up to [`GATHER_TURNS`]: the
    /// batches grow with the load, and the database spends less per message (a commit's cost
    /// is mostly per statement: plan start-up, the commit record, its flush). While the
    /// replica is short of CPU, a batch first waits a little longer (see the body).
    async fn gather(&self) {
        let mut queued = self.queue.lock().pending.len();
        // Short of CPU: the database's cost is mostly per transaction, and every draft already
        // waits longer than this in the run queue; one wait, then the readiness turns.
        if queued > 0
            && queued < MAX_BATCH
            && let Some(wait) = telemetry::load::coalesce_wait(self.coalesce_max)
        {
            tokio::time::sleep(wait).await;
            queued = self.queue.lock().pending.len();
        }
        for _ in 0..GATHER_TURNS {
            tokio::task::yield_now().await;
            let now = self.queue.lock().pending.len();
            if now == queued || now >= MAX_BATCH {
                return;
            }
            queued = now;
        }
    }

    /// The batch's outcomes, in batch order.
    async fn commit_batch(&self, batch: &[Pending]) -> Vec<Result<Sent, Error>> {
        metrics::commit_batch(batch.len());
        let started = std::time::Instant::now();
        let drafts: Vec<NewMessage<'_>> = batch.iter().map(Pending::as_new).collect();
        let committed = store::commit::commit(&self.db, &drafts).await;
        tracing::debug!(
            batch = batch.len(),
            commit_us = started.elapsed().as_micros(),
            "batch committed"
        );
        let outcomes = match committed {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let raced = store::unique_violation(&e).is_some();
                let err = StoreError::from(e);
                if raced || (batch.len() > 1 && !matches!(err, StoreError::Unavailable(_))) {
                    // One draft's data failed the whole statement (a unique key raced by a
                    // retry on another replica, a constraint, a foreign key racing a deleted
                    // author): commit one by one, so that it fails alone and each retry
                    // finds its original.
                    tracing::warn!(error = %err, batch = batch.len(), "batch refused; committing its drafts one by one");
                    let mut out = Vec::with_capacity(batch.len());
                    for draft in &drafts {
                        match store::commit::commit(&self.db, std::slice::from_ref(draft)).await {
                            Ok(mut r) => out.append(&mut r),
                            Err(e) => out.push(Err(StoreError::from(e))),
                        }
                    }
                    out
                } else {
                    if matches!(err, StoreError::Db(_) | StoreError::Unavailable(_)) {
                        tracing::error!(error = ?err, "message commit failed");
                    }
                    batch.iter().map(|_| Err(clone_err(&err))).collect()
                }
            }
        };
        metrics::commit_duration(started.elapsed());
        let created = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(Stored::Created(_))))
            .count();
        metrics::messages_committed(created);
        outcomes
            .into_iter()
            .map(|o| o.map_err(Error::from))
            .collect()
    }
}

/// Publish every new message of a committed batch, in `seq` order per room, then answer its
/// senders.
async fn publish_and_answer(
    bus: &dyn Bus,
    batch: Vec<Pending>,
    mut outcomes: Vec<Result<Sent, Error>>,
) {
    let mut envelopes: Vec<Envelope> = Vec::with_capacity(batch.len());
    for (pending, outcome) in batch.iter().zip(&outcomes) {
        if let Ok(Sent::Created(msg)) = outcome {
            let _enter = pending.span.enter();
            envelopes.push(route::message(pending.room_id, msg));
            // Each mentioned user's multiplexed sockets, subscribed to the room or not (the
            // author's own mention excepted).
            for user in msg
                .mentions
                .iter()
                .filter(|u| u.id != pending.draft.author.id)
            {
                let event = Event::Mention {
                    room: &msg.room,
                    message: msg,
                };
                envelopes.push(route::to_user(user.id, &event));
            }
        }
    }
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
            .unwrap_or_else(|| Err(Error::Internal(anyhow::anyhow!("missing outcome"))));
        let _ = pending.reply.send(outcome);
    }
}

/// Store errors are not `Clone` (they carry causes); every draft of a failed batch gets the
/// same kind of error, the cause is logged once.
fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound(what) => StoreError::NotFound(what),
        StoreError::NotMember => StoreError::NotMember,
        StoreError::Unavailable(_) => {
            StoreError::Unavailable(sea_orm::DbErr::Custom("database unavailable".into()))
        }
        StoreError::Conflict { message, fields } => StoreError::Conflict {
            message: message.clone(),
            fields: fields.clone(),
        },
        StoreError::Db(_) => StoreError::Db(sea_orm::DbErr::Custom("message commit failed".into())),
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::room::Visibility;
    use std::sync::Weak;

    use async_trait::async_trait;

    use super::*;
    use crate::{
        bus::{BusState, Inbound},
        store::testing,
    };

    /// A bus that records how many envelopes each publish carried: one publish per committed
    /// batch, so the batches as the drain formed them.
    #[derive(Default)]
    struct Batches(Mutex<Vec<usize>>);

    #[async_trait]
    impl Bus for Batches {
        async fn publish(&self, _env: Envelope) -> anyhow::Result<()> {
            self.0.lock().push(1);
            Ok(())
        }
        async fn publish_batch(&self, envs: Vec<Envelope>) -> anyhow::Result<()> {
            self.0.lock().push(envs.len());
            Ok(())
        }
        async fn subscribe(&self, _room: i64) -> anyhow::Result<()> {
            Ok(())
        }
        fn unsubscribe(&self, _room: i64) {}
        fn state(&self) -> BusState {
            BusState::Local
        }
        fn attach(&self, _inbound: Weak<dyn Inbound>) {}
    }

    /// One draft submitted now (it starts the drain), then one by each of several tasks that
    /// first yields `turns` times; the batches published. On a single-threaded runtime this
    /// involves no clock: a task spawned now runs before the drain's first yield returns (the
    /// run queue is worked through before yielded tasks are woken), and a task that yields
    /// `n` times submits `n` turns later. (Within a turn, the order of tasks that yielded is
    /// not fixed, so the tests use nothing finer than that.)
    async fn batches_for(turns: &[usize]) -> Vec<usize> {
        let db = testing::sqlite().await;
        let author = testing::user(&db, "author").await;
        let room = store::rooms::create(&db, "r", None, Visibility::Public, author.id)
            .await
            .expect("room");
        let bus = Arc::new(Batches::default());
        let sender = Sender::new(db, bus.clone(), TaskTracker::new());
        let draft = |content: String| Draft {
            author: author.clone(),
            content,
            client_id: None,
            reply_to: None,
        };
        // The first submit starts the drain.
        let first = sender.submit(room.id, "r", draft("first".into()));
        let later: Vec<_> = turns
            .iter()
            .map(|&n| {
                let (sender, draft) = (sender.clone(), draft(format!("after {n} turns")));
                tokio::spawn(async move {
                    for _ in 0..n {
                        tokio::task::yield_now().await;
                    }
                    sender.submit(room.id, "r", draft).await
                })
            })
            .collect();
        first.await.expect("sent");
        for task in later {
            task.await.expect("task").expect("sent");
        }
        bus.0.lock().clone()
    }

    /// The drain gathers what is ready: drafts of tasks runnable when it starts join the first
    /// draft's batch (without the gather they would wait for the next commit: `[1, 3]`).
    #[tokio::test(flavor = "current_thread")]
    async fn drafts_ready_while_the_drain_gathers_join_the_batch() {
        assert_eq!(batches_for(&[0, 0, 0]).await, [4]);
    }

    /// ... and it stops once a turn brings nothing: a draft ten turns away goes in the next
    /// batch rather than holding this one back.
    #[tokio::test(flavor = "current_thread")]
    async fn a_draft_many_turns_away_does_not_hold_the_batch() {
        assert_eq!(batches_for(&[0, 10]).await, [2, 1]);
    }
}
