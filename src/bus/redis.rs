//! The Redis bus of cluster mode.
//!
//! * **Subscriptions**: one dedicated pub/sub connection per replica, owned by one task. A room's
//!   channel (`chat:room:{id}`) is SUBSCRIBEd when its first local socket appears and
//!   UNSUBSCRIBEd (batched) when its last one goes; `chat:control` carries revocations; the
//!   replica's own `chat:probe:{origin}` carries its liveness probe. The reader hands each
//!   envelope to the hub's per-room inbox and never waits on a socket or the database.
//! * **Publishes**: through a `deadpool-redis` pool, pipelined per batch. Local sockets are
//!   served directly (the echo from Redis is skipped by origin), so a replica's own sockets
//!   don't depend on Redis. A publish that fails is queued and retried when Redis is back.
//! * **Liveness**: every second the replica publishes a probe through the pool and expects it
//!   back on its subscription. No probe for 5 s: the bus is `down` (`/readyz` 503). No probe
//!   for 10 s: the subscription is torn down and rebuilt, even if its TCP connection looks fine.
//! * **Reconnection**: with capped exponential backoff; afterwards every active room is
//!   resubscribed and every room's gap is read from the database, without waiting for traffic.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Bus, BusState, Envelope, Kind, hub::Hub, now_micros};
use crate::telemetry::metrics;

const CONTROL: &str = "chat:control";
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_STALE_MICROS: i64 = 5_000_000;
const PROBE_DEAD_MICROS: i64 = 10_000_000;
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_LIMIT: usize = 100_000;

fn room_channel(room: i64) -> String {
    format!("chat:room:{room}")
}

enum SubCmd {
    Subscribe(i64, oneshot::Sender<()>),
    Unsubscribe(i64),
}

pub struct RedisBus {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<SubCmd>,
}

struct Shared {
    hub: Arc<Hub>,
    pool: deadpool_redis::Pool,
    origin: u64,
    probe_channel: String,
    /// When our probe last came back (µs since the epoch); 0 = never.
    last_probe: AtomicI64,
    connected: AtomicBool,
    /// Publishes that failed, in order, retried when Redis answers again.
    retry: Mutex<VecDeque<(String, Bytes)>>,
}

impl RedisBus {
    /// Start the subscription task. Returns at once: the bus reports `down` until the first
    /// probe comes back, and keeps reconnecting in the background.
    ///
    /// # Errors
    /// If `url` is not a valid Redis URL.
    pub fn start(
        url: &str,
        pool: deadpool_redis::Pool,
        hub: Arc<Hub>,
        origin: u64,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let shared = Arc::new(Shared {
            hub,
            pool,
            origin,
            probe_channel: format!("chat:probe:{origin}"),
            last_probe: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            retry: Mutex::default(),
        });
        let (cmd, rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber(client, shared.clone(), rx, shutdown.clone()));
        tokio::spawn(prober(shared.clone(), shutdown));
        Ok(Self { shared, cmd })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn channel_of(env: &Envelope) -> String {
        if env.header.kind == Kind::Revoke {
            CONTROL.to_owned()
        } else {
            room_channel(env.header.room)
        }
    }

    async fn publish_raw(&self, items: &[(String, Bytes)]) -> anyhow::Result<()> {
        let mut conn = tokio::time::timeout(OP_TIMEOUT, self.pool.get()).await??;
        let mut pipe = redis::pipe();
        for (channel, payload) in items {
            pipe.publish(channel, payload.as_ref()).ignore();
        }
        tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut *conn)).await??;
        Ok(())
    }

    /// Re-publish what failed earlier, oldest first.
    async fn flush_retries(&self) {
        loop {
            let batch: Vec<(String, Bytes)> = {
                let retry = lock(&self.retry);
                retry.iter().take(256).cloned().collect()
            };
            if batch.is_empty() {
                return;
            }
            if self.publish_raw(&batch).await.is_err() {
                return;
            }
            let mut retry = lock(&self.retry);
            for _ in 0..batch.len() {
                retry.pop_front();
            }
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, env: Envelope) -> anyhow::Result<()> {
        self.publish_batch(vec![env]).await
    }

    async fn publish_batch(&self, envs: Vec<Envelope>) -> anyhow::Result<()> {
        let mut items = Vec::with_capacity(envs.len());
        for mut env in envs {
            env.header.origin = self.shared.origin;
            items.push((Shared::channel_of(&env), env.encode()));
            self.shared.hub.dispatch(env);
        }
        let backlog = !lock(&self.shared.retry).is_empty();
        if !backlog && self.shared.publish_raw(&items).await.is_ok() {
            return Ok(());
        }
        // Keep the order: behind whatever already waits.
        let mut retry = lock(&self.shared.retry);
        for item in items {
            if retry.len() >= RETRY_LIMIT {
                retry.pop_front();
            }
            retry.push_back(item);
        }
        anyhow::bail!("redis publish failed; queued for retry")
    }

    async fn subscribe(&self, room: i64) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(SubCmd::Subscribe(room, tx))
            .map_err(|_| anyhow::anyhow!("bus stopped"))?;
        // Answered once SUBSCRIBE is confirmed, or at once while Redis is down (the room is then
        // subscribed and filled from the database on reconnection).
        rx.await.map_err(|_| anyhow::anyhow!("bus stopped"))
    }

    fn unsubscribe(&self, room: i64) {
        let _ = self.cmd.send(SubCmd::Unsubscribe(room));
    }

    fn state(&self) -> BusState {
        let last = self.shared.last_probe.load(Ordering::Acquire);
        if self.shared.connected.load(Ordering::Acquire)
            && last > 0
            && now_micros() - last < PROBE_STALE_MICROS
        {
            BusState::Live
        } else {
            BusState::Down
        }
    }
}

/// Publishes a probe every second and retries failed publishes.
async fn prober(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = (
            shared.probe_channel.clone(),
            Bytes::from(now_micros().to_string()),
        );
        if shared.publish_raw(&[probe]).await.is_ok() {
            shared.flush_retries().await;
        }
    }
}

/// Owns the pub/sub connection: (re)connects, (un)subscribes, reads.
async fn subscriber(
    client: redis::Client,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let connected = tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            other => {
                let reason = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timeout".into(),
                };
                tracing::warn!(error = %reason, retry_in_ms = backoff.as_millis(), "redis pub/sub connect failed");
                shared.connected.store(false, Ordering::Release);
                // While down, subscriptions are only recorded (answered at once).
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = &mut deadline => break,
                        cmd = cmds.recv() => match cmd {
                            Some(SubCmd::Subscribe(_, ack)) => { let _ = ack.send(()); }
                            Some(SubCmd::Unsubscribe(_)) => {}
                            None => return,
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut rooms: HashSet<i64> = shared.hub.active_rooms().into_iter().collect();
        let mut channels: Vec<String> = vec![CONTROL.to_owned(), shared.probe_channel.clone()];
        channels.extend(rooms.iter().map(|r| room_channel(*r)));
        if let Err(e) = tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&channels))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(Into::into))
        {
            tracing::warn!(error = %e, "redis subscribe failed");
            continue;
        }
        shared.connected.store(true, Ordering::Release);
        backoff = Duration::from_millis(100);
        if first {
            tracing::info!(rooms = rooms.len(), "redis pub/sub connected");
        } else {
            metrics::redis_reconnect();
            tracing::info!(
                rooms = rooms.len(),
                "redis pub/sub reconnected; filling gaps from the database"
            );
            // Anything published while we were away is in the database.
            shared.hub.resync_all();
        }
        first = false;
        let started = now_micros();
        let mut check = tokio::time::interval(PROBE_EVERY);
        let reason: String = loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                msg = stream.next() => {
                    let Some(msg) = msg else { break "connection closed".into() };
                    let channel = msg.get_channel_name();
                    if channel == shared.probe_channel {
                        shared.last_probe.store(now_micros(), Ordering::Release);
                        continue;
                    }
                    match Envelope::decode(Bytes::copy_from_slice(msg.get_payload_bytes())) {
                        Some(env) if env.header.origin == shared.origin => {}
                        Some(env) => shared.hub.dispatch(env),
                        None => tracing::warn!(channel, "undecodable envelope dropped"),
                    }
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    let mut subscribe = Vec::new();
                    let mut acks = Vec::new();
                    let mut unsubscribe = HashSet::new();
                    let mut next = Some(cmd);
                    // Batch whatever else is waiting.
                    while let Some(cmd) = next.take().or_else(|| cmds.try_recv().ok()) {
                        match cmd {
                            SubCmd::Subscribe(room, ack) => {
                                unsubscribe.remove(&room);
                                if rooms.insert(room) {
                                    subscribe.push(room_channel(room));
                                }
                                acks.push(ack);
                            }
                            SubCmd::Unsubscribe(room) => {
                                unsubscribe.insert(room);
                            }
                        }
                    }
                    let active: HashSet<i64> = shared.hub.active_rooms().into_iter().collect();
                    let leaving: Vec<String> = unsubscribe
                        .into_iter()
                        .filter(|r| !active.contains(r) && rooms.remove(r))
                        .map(room_channel)
                        .collect();
                    let mut failed = None;
                    if !subscribe.is_empty()
                        && let Err(e) = tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&subscribe)).await.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into))
                    {
                        failed = Some(e.to_string());
                    }
                    if failed.is_none()
                        && !leaving.is_empty()
                        && let Err(e) = tokio::time::timeout(OP_TIMEOUT, sink.unsubscribe(&leaving)).await.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into))
                    {
                        failed = Some(e.to_string());
                    }
                    for ack in acks {
                        let _ = ack.send(());
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                }
                _ = check.tick() => {
                    let last = shared.last_probe.load(Ordering::Acquire).max(started);
                    if now_micros() - last > PROBE_DEAD_MICROS {
                        break "probes stopped coming back".into();
                    }
                }
            }
        };
        shared.connected.store(false, Ordering::Release);
        tracing::warn!(reason = %reason, "redis pub/sub lost; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}
