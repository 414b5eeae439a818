//! Bytes between replicas. An [`Envelope`] is a small routing header (room, kind, `seq`,
//! trace context) and an opaque payload (the frame its recipients send, serialised once by
//! the publisher). The bus moves envelopes to every replica's [`Inbound`] side (the fan-out)
//! and knows nothing of what they mean to sockets.
//!
//! Two implementations sit behind [`Bus`], chosen by configuration (`REDIS_URL`):
//! * [`local::LocalBus`]: hands envelopes straight to this replica's inbound side.
//! * [`redis::RedisBus`]: one Redis pub/sub connection per replica, one channel per room with
//!   local sockets, plus a control channel; publishes go through a pooled connection.
//!
//! Redis pub/sub is at-most-once, so the bus is not the source of truth: every message carries
//! its room `seq`, and the receiving side fills any gap from the database.
//!
//! [`route`] builds the envelope of each kind of event (who gets it, what happens after).
//!
//! May import: `kv` (channel names, the Redis client), `domain`, `config`, `telemetry`.

pub(crate) mod local;
pub(crate) mod redis;
pub(crate) mod route;

use std::sync::{OnceLock, Weak};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// What an envelope asks the receiving replicas to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A new message: delivered in `seq` order, gaps filled from the database.
    Message,
    /// Any other room event (edit, delete, typing, presence, room update): delivered as is.
    Event,
    /// The room is gone: deliver the frame, then close its sockets with 4404.
    RoomDeleted,
    /// `user` was removed from the room: close their sockets in it with 4003.
    Kick,
    /// Control topic: close `user`'s sockets authenticated by `sid`/`jti` (or all) with 4001.
    Revoke,
    /// Control topic: deliver the frame to `user`'s multiplexed sockets, whatever rooms they
    /// are subscribed to (a mention).
    User,
}

/// The routing header of an envelope. Kept small: it crosses Redis for every message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Replica that published it (receivers skip their own echo).
    pub(crate) origin: u64,
    /// Room id; 0 on the control topic.
    pub(crate) room: i64,
    pub(crate) kind: Kind,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) seq: i64,
    /// Kick/Revoke/User: the user concerned. Event: a user whose sockets skip it (typing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) user: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sid: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) all: bool,
    /// W3C `traceparent` of the span that published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tp: Option<String>,
    /// Publish time, microseconds since the epoch (for the fan-out latency histogram).
    #[serde(default)]
    pub(crate) at: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One event on its way to every replica. `payload` is opaque to the bus.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    pub(crate) header: Header,
    pub(crate) payload: Bytes,
}

impl Envelope {
    pub(crate) fn new(room: i64, kind: Kind, payload: impl Into<Bytes>) -> Self {
        Self {
            header: Header {
                origin: 0,
                room,
                kind,
                seq: 0,
                user: 0,
                sid: None,
                all: false,
                tp: crate::telemetry::current_traceparent(),
                at: crate::telemetry::now_micros(),
            },
            payload: payload.into(),
        }
    }

    /// Wire form: the header as one line of JSON, a newline, then the frame verbatim.
    pub(crate) fn encode(&self) -> Bytes {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(header.len() + 1 + self.payload.len());
        buf.put_slice(&header);
        buf.put_u8(b'\n');
        buf.put_slice(&self.payload);
        buf.freeze()
    }

    /// Parse the wire form; `None` for anything malformed (logged by the caller).
    pub(crate) fn decode(bytes: Bytes) -> Option<Self> {
        let nl = bytes.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&bytes[..nl]).ok()?;
        let payload = bytes.slice(nl + 1..);
        Some(Self { header, payload })
    }
}

/// Liveness of the bus, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BusState {
    /// In-process bus: always live.
    Local,
    /// Redis pub/sub: a probe came back recently.
    Live,
    /// Redis pub/sub: connecting, or probes are not coming back.
    Down,
}

/// What receives this replica's envelopes (the fan-out). The bus holds it weakly: the
/// receiver owns the bus, not the other way round.
pub(crate) trait Inbound: Send + Sync {
    /// One envelope for this replica (its own publishes included). Must not wait.
    fn receive(&self, env: Envelope);
    /// Rooms with local subscribers: resubscribed after a reconnection.
    fn active_rooms(&self) -> Vec<i64>;
    /// The bus was down: anything published meanwhile must be read from the database.
    fn reconnected(&self);
}

/// The late-bound inbound side of a bus.
#[derive(Default)]
pub(crate) struct InboundSlot(OnceLock<Weak<dyn Inbound>>);

impl InboundSlot {
    pub(crate) fn set(&self, inbound: Weak<dyn Inbound>) {
        let _ = self.0.set(inbound);
    }

    /// Run `f` on the inbound side, if attached and alive.
    pub(crate) fn with(&self, f: impl FnOnce(&dyn Inbound)) {
        if let Some(inbound) = self.0.get().and_then(Weak::upgrade) {
            f(&*inbound);
        }
    }
}

/// Publish to every replica; subscribe this replica to a room's events.
///
/// Subscriptions are per replica, not per socket: the fan-out asks for a room when its first
/// local socket appears and releases it when the last one goes.
#[async_trait]
pub(crate) trait Bus: Send + Sync {
    /// Deliver `env` to every replica, this one included.
    ///
    /// # Errors
    /// When the envelope could not be handed to the broker. Local delivery has happened anyway,
    /// and remote replicas fill the gap from the database once the bus is back.
    async fn publish(&self, env: Envelope) -> anyhow::Result<()>;

    /// Publish several envelopes in order (one round trip where the broker allows).
    ///
    /// # Errors
    /// As [`Bus::publish`].
    async fn publish_batch(&self, envs: Vec<Envelope>) -> anyhow::Result<()> {
        let mut result = Ok(());
        for env in envs {
            if let Err(e) = self.publish(env).await {
                result = Err(e);
            }
        }
        result
    }

    /// Start receiving `room`'s events; returns once the subscription is confirmed, so that
    /// anything published afterwards is seen.
    ///
    /// # Errors
    /// When the broker cannot be reached.
    async fn subscribe(&self, room: i64) -> anyhow::Result<()>;

    /// Stop receiving `room`'s events (may be batched).
    fn unsubscribe(&self, room: i64);

    fn state(&self) -> BusState;

    /// Where received envelopes go; set once, before the first publish.
    fn attach(&self, inbound: Weak<dyn Inbound>);
}
