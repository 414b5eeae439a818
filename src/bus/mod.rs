//! Fan-out of chat events to WebSocket sessions, across every replica.
//!
//! Everything a socket receives besides its own replies (`ready`, `ack`, `pong`, `error`) is an
//! [`Envelope`] published on the [`Bus`]: a small header (room, kind, `seq`, trace context) and
//! the client frame, serialised once by the publisher and shared by every recipient.
//!
//! Two implementations sit behind [`Bus`], chosen by configuration (`REDIS_URL`):
//! * [`local::LocalBus`]: hands envelopes straight to this replica's [`hub::Hub`].
//! * [`redis::RedisBus`]: one Redis pub/sub connection per replica, one channel per room with
//!   local sockets, plus a control channel; publishes go through a pooled connection.
//!
//! Redis pub/sub is at-most-once, so the bus is not the source of truth: every message carries
//! its room `seq`, and the hub fills any gap from the database before delivering further.

pub mod hub;
pub mod local;
pub mod outbox;
pub mod presence;
pub mod redis;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What an envelope asks the receiving replicas to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
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
    /// Control topic: a replica's pub/sub liveness probe.
    Probe,
}

/// The routing header of an envelope. Kept small: it crosses Redis for every message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Replica that published it (receivers skip their own echo).
    pub origin: u64,
    /// Room id; 0 on the control topic.
    pub room: i64,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: i64,
    /// Kick/Revoke: the user concerned. Event: a user whose sockets skip it (typing).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub user: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// W3C `traceparent` of the span that published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<String>,
    /// Publish time, microseconds since the epoch (for the fan-out latency histogram).
    #[serde(default)]
    pub at: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One event on its way to sockets. `frame` is the exact text each socket receives.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub header: Header,
    pub frame: Utf8Bytes,
}

impl Envelope {
    pub fn new(room: i64, kind: Kind, frame: impl Into<Utf8Bytes>) -> Self {
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
                at: now_micros(),
            },
            frame: frame.into(),
        }
    }

    /// Wire form: the header as one line of JSON, a newline, then the frame verbatim.
    pub fn encode(&self) -> Bytes {
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(header.len() + 1 + self.frame.len());
        buf.put_slice(&header);
        buf.put_u8(b'\n');
        buf.put_slice(self.frame.as_bytes());
        buf.freeze()
    }

    /// Parse the wire form; `None` for anything malformed (logged by the caller).
    pub fn decode(bytes: Bytes) -> Option<Self> {
        let nl = bytes.iter().position(|b| *b == b'\n')?;
        let header: Header = serde_json::from_slice(&bytes[..nl]).ok()?;
        let frame = Utf8Bytes::try_from(bytes.slice(nl + 1..)).ok()?;
        Some(Self { header, frame })
    }
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Liveness of the bus, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BusState {
    /// In-process bus: always live.
    Local,
    /// Redis pub/sub: a probe came back recently.
    Live,
    /// Redis pub/sub: connecting, or probes are not coming back.
    Down,
}

/// Publish to every replica; subscribe this replica to a room's events.
///
/// Subscriptions are per replica, not per socket: the [`hub::Hub`] asks for a room when its
/// first local socket appears and releases it when the last one goes.
#[async_trait]
pub trait Bus: Send + Sync {
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
}
