//! The Redis bus of cluster mode.
//!
//! * **Subscriptions**: one dedicated pub/sub connection per replica, owned by one task. A
//!   room's channel (`chat:room:{id}`) is SUBSCRIBEd when its first local socket appears and
//!   UNSUBSCRIBEd (batched) when its last one goes; `chat:control` carries revocations; the
//!   replica's own `chat:probe:{origin}` carries its liveness probe (names spelled in
//!   [`crate::kv::keys`]). The reader hands each
//!   envelope to the fan-out's per-room inbox and never waits on a socket or the database.
//! * **Publishes**: on one multiplexed connection that reconnects by itself
//!   (`redis::aio::ConnectionManager`), pipelined per batch; the pool's checkout would cost a
//!   `PING` round trip before each. Local sockets are served directly (the echo from Redis is
//!   skipped by origin), so a replica's own sockets don't depend on Redis. A publish that
//!   fails is queued and retried when Redis is back.
//! * **Liveness**: every second the replica publishes a probe on that connection and expects it
//!   back on its subscription. No probe for 5 s: the bus is `down` (`/readyz` 503). No probe
//!   for 10 s: the subscription is torn down and rebuilt, even if its TCP connection looks fine.
//! * **Reconnection**: with capped exponential backoff; afterwards every active room is
//!   resubscribed and every room's gap is read from the database, without waiting for traffic.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Bus, BusState, Envelope, Inbound, InboundSlot, Kind};
use crate::{
    kv::{
        Redis,
        keys::{control_channel, probe_channel, room_channel},
    },
    telemetry::{metrics, now_micros},
};

const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_STALE_MICROS: i64 = 5_000_000;
const PROBE_DEAD_MICROS: i64 = 10_000_000;
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of publishes waiting for Redis (payloads): 64 MiB.
const RETRY_BYTES: usize = 64 * 1024 * 1024;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Publishes waiting for Redis to answer again, in order, bounded by [`RETRY_BYTES`]. Past
/// the bound the oldest message or room event is dropped (counted in
/// `chat_bus_retry_dropped_total`): receivers fill message gaps from the database, and the
/// reconciliation of active rooms finds the rest. Control events (revocation, kick, room
/// deletion) are never dropped: a socket that should close must close.
#[derive(Default)]
struct RetryQueue {
    /// (id, channel, payload, control), oldest first; ids increase.
    items: VecDeque<(u64, String, Bytes, bool)>,
    bytes: usize,
    next_id: u64,
}

impl RetryQueue {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, channel: String, payload: Bytes, control: bool) {
        self.bytes += payload.len();
        self.items
            .push_back((self.next_id, channel, payload, control));
        self.next_id += 1;
        while self.bytes > RETRY_BYTES {
            let Some(at) = self.items.iter().position(|item| !item.3) else {
                break; // only control events left: they stay
            };
            if let Some((_, _, dropped, _)) = self.items.remove(at) {
                self.bytes -= dropped.len();
                metrics::bus_retry_dropped();
            }
        }
        metrics::bus_retry_bytes(self.bytes);
    }

    /// Up to `n` of the oldest entries, and the id of the last one.
    fn front(&self, n: usize) -> (Vec<(String, Bytes)>, u64) {
        let batch: Vec<_> = self.items.iter().take(n).collect();
        let upto = batch.last().map_or(0, |item| item.0);
        (
            batch
                .into_iter()
                .map(|(_, channel, payload, _)| (channel.clone(), payload.clone()))
                .collect(),
            upto,
        )
    }

    /// Everything up to id `upto` was published (entries dropped meanwhile are gone already).
    fn published(&mut self, upto: u64) {
        while self.items.front().is_some_and(|item| item.0 <= upto) {
            if let Some((_, _, payload, _)) = self.items.pop_front() {
                self.bytes -= payload.len();
            }
        }
        metrics::bus_retry_bytes(self.bytes);
    }
}

enum SubCmd {
    Subscribe(i64, oneshot::Sender<()>),
    Unsubscribe(i64),
}

pub(crate) struct RedisBus {
    shared: Arc<Shared>,
    cmd: mpsc::UnboundedSender<SubCmd>,
}

struct Shared {
    inbound: InboundSlot,
    /// The publishes' connection: one multiplexed connection that reconnects by itself. The
    /// pool's checkout sends a `PING` first (a round trip before every publish, in every
    /// sender's ack and every remote delivery); the publishes of a replica go out one batch
    /// after another, and one connection pipelines them. Replaced when the subscription is
    /// rebuilt ([`Shared::renew_publisher`]).
    publisher: Mutex<redis::aio::ConnectionManager>,
    origin: u64,
    probe_channel: String,
    /// When our probe last came back (µs since the epoch); 0 = never.
    last_probe: AtomicI64,
    connected: AtomicBool,
    /// Publishes that failed, in order, retried when Redis answers again.
    retry: Mutex<RetryQueue>,
}

impl RedisBus {
    /// Start the subscription and probe tasks on `tasks`; both stop with `stop`. Returns at
    /// once: the bus reports `down` until the first probe comes back, and keeps reconnecting
    /// in the background.
    ///
    /// Its connections are its own (a subscription cannot share the pool, and publishes
    /// pipeline on one multiplexed connection), opened from `redis`'s client.
    ///
    /// # Errors
    /// If the publish connection cannot be set up.
    pub(crate) fn start(
        redis: &Redis,
        origin: u64,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis.client().clone();
        let shared = Arc::new(Shared {
            inbound: InboundSlot::default(),
            publisher: Mutex::new(publisher(&client)?),
            origin,
            probe_channel: probe_channel(origin),
            last_probe: AtomicI64::new(0),
            connected: AtomicBool::new(false),
            retry: Mutex::default(),
        });
        let (cmd, rx) = mpsc::unbounded_channel();
        tasks.spawn(subscriber(client, shared.clone(), rx, stop.clone()));
        tasks.spawn(prober(shared.clone(), stop.clone()));
        Ok(Self { shared, cmd })
    }
}

impl Shared {
    fn channel_of(env: &Envelope) -> String {
        if matches!(env.header.kind, Kind::Revoke | Kind::User) {
            control_channel().to_owned()
        } else {
            room_channel(env.header.room)
        }
    }

    /// A new publish connection after the subscription was rebuilt: the old one may sit on a
    /// TCP connection that looks fine but no longer answers, which it would not notice.
    fn renew_publisher(&self, client: &redis::Client) {
        if let Ok(fresh) = publisher(client) {
            *self.publisher.lock() = fresh;
        }
    }

    async fn publish_raw(&self, items: &[(String, Bytes)]) -> anyhow::Result<()> {
        let mut conn = self.publisher.lock().clone();
        let mut pipe = redis::pipe();
        for (channel, payload) in items {
            pipe.publish(channel, payload.as_ref()).ignore();
        }
        tokio::time::timeout(OP_TIMEOUT, pipe.query_async::<()>(&mut conn)).await??;
        Ok(())
    }

    /// Re-publish what failed earlier, oldest first.
    async fn flush_retries(&self) {
        loop {
            let (batch, upto) = self.retry.lock().front(256);
            if batch.is_empty() {
                return;
            }
            if self.publish_raw(&batch).await.is_err() {
                return;
            }
            self.retry.lock().published(upto);
        }
    }

    fn active_rooms(&self) -> HashSet<i64> {
        let mut rooms = HashSet::new();
        self.inbound
            .with(|inbound| rooms.extend(inbound.active_rooms()));
        rooms
    }

    /// One message from the subscription: our probe, or an envelope for the fan-out.
    fn on_message(&self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        if channel == self.probe_channel {
            self.last_probe.store(now_micros(), Ordering::Release);
            return;
        }
        match Envelope::decode(Bytes::copy_from_slice(msg.get_payload_bytes())) {
            // Our own publish: already delivered locally.
            Some(env) if env.header.origin == self.origin => {}
            Some(env) => self.inbound.with(|inbound| inbound.receive(env)),
            None => tracing::warn!(channel, "undecodable envelope dropped"),
        }
    }

    fn on_connected(&self, first: bool, rooms: usize) {
        self.connected.store(true, Ordering::Release);
        if first {
            tracing::info!(rooms, "redis pub/sub connected");
        } else {
            metrics::redis_reconnect();
            tracing::info!(
                rooms,
                "redis pub/sub reconnected; filling gaps from the database"
            );
            // Anything published while we were away is in the database.
            self.inbound.with(|inbound| inbound.reconnected());
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
        let mut controls = Vec::with_capacity(envs.len());
        for mut env in envs {
            env.header.origin = self.shared.origin;
            controls.push(matches!(
                env.header.kind,
                Kind::Revoke | Kind::Kick | Kind::RoomDeleted
            ));
            items.push((Shared::channel_of(&env), env.encode()));
            // Local sockets are served directly, whatever Redis does.
            self.shared.inbound.with(|inbound| inbound.receive(env));
        }
        let backlog = !self.shared.retry.lock().is_empty();
        if !backlog && self.shared.publish_raw(&items).await.is_ok() {
            return Ok(());
        }
        // Keep the order: behind whatever already waits.
        let mut retry = self.shared.retry.lock();
        for ((channel, payload), control) in items.into_iter().zip(controls) {
            retry.push(channel, payload, control);
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

    fn attach(&self, inbound: Weak<dyn Inbound>) {
        self.shared.inbound.set(inbound);
    }
}

/// Publishes a probe every second and retries failed publishes.
async fn prober(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
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

/// Why a served connection ended.
enum Ended {
    /// Shutdown, or the bus was dropped.
    Stopped,
    /// The connection failed: reconnect.
    Lost(String),
}

/// One live pub/sub connection and the rooms subscribed on it.
struct Connection {
    sink: PubSubSink,
    stream: PubSubStream,
    rooms: HashSet<i64>,
}

/// Owns the pub/sub connection: (re)connects with capped exponential backoff, subscribes
/// every active room, then serves the connection until it fails.
async fn subscriber(
    client: redis::Client,
    shared: Arc<Shared>,
    mut cmds: mpsc::UnboundedReceiver<SubCmd>,
    stop: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    let mut first = true;
    loop {
        let reason = match connect(&client, &shared).await {
            Ok(mut conn) => {
                backoff = MIN_BACKOFF;
                shared.on_connected(first, conn.rooms.len());
                first = false;
                match serve(&shared, &mut conn, &mut cmds, &stop).await {
                    Ended::Stopped => return,
                    Ended::Lost(reason) => reason,
                }
            }
            Err(e) => e.to_string(),
        };
        shared.connected.store(false, Ordering::Release);
        shared.renew_publisher(&client);
        tracing::warn!(error = %reason, retry_in_ms = backoff.as_millis(), "redis pub/sub down; reconnecting");
        if !wait_while_down(&mut cmds, &stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The publishes' connection. It connects on the first publish; after a failure it
/// reconnects in the background while the failed publishes wait in the retry queue.
fn publisher(client: &redis::Client) -> redis::RedisResult<redis::aio::ConnectionManager> {
    redis::aio::ConnectionManager::new_lazy_with_config(
        client.clone(),
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(MAX_BACKOFF),
    )
}

/// A new pub/sub connection subscribed to the control, probe and every active room channel.
async fn connect(client: &redis::Client, shared: &Shared) -> anyhow::Result<Connection> {
    let pubsub = tokio::time::timeout(OP_TIMEOUT, client.get_async_pubsub()).await??;
    let (mut sink, stream) = pubsub.split();
    let rooms = shared.active_rooms();
    let mut channels: Vec<String> =
        vec![control_channel().to_owned(), shared.probe_channel.clone()];
    channels.extend(rooms.iter().map(|r| room_channel(*r)));
    tokio::time::timeout(OP_TIMEOUT, sink.subscribe(&channels)).await??;
    Ok(Connection {
        sink,
        stream,
        rooms,
    })
}

/// While Redis is down, subscriptions are only recorded (answered at once); the rooms are
/// subscribed, and their gaps filled from the database, on reconnection. `false` on shutdown.
async fn wait_while_down(
    cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
    stop: &CancellationToken,
    backoff: Duration,
) -> bool {
    let deadline = tokio::time::sleep(backoff);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = &mut deadline => return true,
            cmd = cmds.recv() => match cmd {
                Some(SubCmd::Subscribe(_, ack)) => { let _ = ack.send(()); }
                Some(SubCmd::Unsubscribe(_)) => {}
                None => return false,
            }
        }
    }
}

/// Read the subscription, apply (un)subscribe commands and watch the probes.
async fn serve(
    shared: &Shared,
    conn: &mut Connection,
    cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
    stop: &CancellationToken,
) -> Ended {
    let started = now_micros();
    let mut check = tokio::time::interval(PROBE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            msg = conn.stream.next() => match msg {
                Some(msg) => shared.on_message(&msg),
                None => return Ended::Lost("connection closed".into()),
            },
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return Ended::Stopped };
                if let Err(e) = apply_commands(shared, conn, cmd, cmds).await {
                    return Ended::Lost(e.to_string());
                }
            }
            _ = check.tick() => {
                let last = shared.last_probe.load(Ordering::Acquire).max(started);
                if now_micros() - last > PROBE_DEAD_MICROS {
                    return Ended::Lost("probes stopped coming back".into());
                }
            }
        }
    }
}

/// Apply `first` and every command already waiting, as one SUBSCRIBE and one UNSUBSCRIBE.
/// Subscribers are answered once their SUBSCRIBE is confirmed (or failed).
async fn apply_commands(
    shared: &Shared,
    conn: &mut Connection,
    first: SubCmd,
    cmds: &mut mpsc::UnboundedReceiver<SubCmd>,
) -> anyhow::Result<()> {
    let mut subscribe = Vec::new();
    let mut acks = Vec::new();
    let mut unsubscribe = HashSet::new();
    let mut next = Some(first);
    while let Some(cmd) = next.take().or_else(|| cmds.try_recv().ok()) {
        match cmd {
            SubCmd::Subscribe(room, ack) => {
                unsubscribe.remove(&room);
                if conn.rooms.insert(room) {
                    subscribe.push(room_channel(room));
                }
                acks.push(ack);
            }
            SubCmd::Unsubscribe(room) => {
                unsubscribe.insert(room);
            }
        }
    }
    // A room released and joined again meanwhile stays subscribed.
    let active = shared.active_rooms();
    let leaving: Vec<String> = unsubscribe
        .into_iter()
        .filter(|r| !active.contains(r) && conn.rooms.remove(r))
        .map(room_channel)
        .collect();
    let mut result = Ok(());
    if !subscribe.is_empty() {
        result = tokio::time::timeout(OP_TIMEOUT, conn.sink.subscribe(&subscribe))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(Into::into));
    }
    if result.is_ok() && !leaving.is_empty() {
        result = tokio::time::timeout(OP_TIMEOUT, conn.sink.unsubscribe(&leaving))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(Into::into));
    }
    for ack in acks {
        let _ = ack.send(());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `name` (no labels) in the Prometheus text of this process.
    fn metric(name: &str) -> f64 {
        crate::telemetry::metrics::render()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn the_retry_queue_is_bounded_by_bytes_and_keeps_control_events() {
        crate::telemetry::metrics::install();
        let dropped_before = metric("chat_bus_retry_dropped_total");
        let mut q = RetryQueue::default();
        let big = Bytes::from(vec![b'x'; RETRY_BYTES / 4]);
        q.push(
            control_channel().into(),
            Bytes::from_static(b"revoke"),
            true,
        );
        for _ in 0..6 {
            q.push(room_channel(1), big.clone(), false);
        }
        assert!(q.bytes <= RETRY_BYTES, "bounded by bytes: {}", q.bytes);
        // Every drop is counted, and the gauge shows the bytes held (no other test of this
        // binary touches either).
        assert_eq!(
            metric("chat_bus_retry_dropped_total") - dropped_before,
            3.0,
            "three room events dropped"
        );
        #[allow(clippy::cast_precision_loss)] // well below 2^52
        let held = q.bytes as f64;
        assert_eq!(metric("chat_bus_retry_bytes"), held);
        assert_eq!(
            q.items.front().map(|i| i.3),
            Some(true),
            "the control event stays, first"
        );
        assert_eq!(q.items.len(), 1 + 3, "the oldest room events were dropped");
        // Publishing a prefix removes exactly that prefix, even after drops.
        let (batch, upto) = q.front(2);
        assert_eq!(batch.len(), 2);
        q.published(upto);
        assert_eq!(q.items.len(), 2);
        let (_, upto) = q.front(10);
        q.published(upto);
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
    }
}
