//! One WebSocket session: a reader (this task) and a writer task joined by a bounded queue.
//!
//! The reader parses client frames, sends messages through [`crate::send`], and joins rooms in
//! the [`Hub`](crate::bus::hub::Hub). The writer drains the queue into the socket, pings every
//! 30 s, drops a peer silent for 60 s, and sends the close frame chosen by whoever closed the
//! socket (4001 revoked, 4003 removed, 4404 room deleted, 4429 slow consumer, 1012 restart…).
//!
//! Joining a room is the resume protocol of SPEC §8: the hub registers the socket *paused* and
//! returns the last `seq` it has delivered; the session replays history up to that `seq` from
//! the database, then resumes, and the frames that arrived meanwhile follow, so there is no gap
//! and no duplicate at the seam.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{
    SinkExt, StreamExt,
    stream::{FuturesOrdered, SplitSink},
};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::protocol::{self, ClientFrame};
use crate::{
    auth::CurrentUser,
    bus::hub::{self, Outbound, SocketCtl},
    error::ApiError,
    model::UserRef,
    send::{Draft, Sent},
    state::AppState,
    store::{self, rooms::RoomRow},
    telemetry::metrics,
};

const PING_EVERY: Duration = Duration::from_secs(30);
const DEAD_AFTER_SECS: i64 = 60;
/// Rate-limited frames in a row before the socket is closed with 1008.
const FLOOD_LIMIT: u32 = 20;
/// Messages a socket may have submitted and not yet acknowledged; beyond this the socket is
/// not read until an acknowledgement goes out (backpressure on a fast sender).
const MAX_IN_FLIGHT: usize = 32;
/// How long a closing socket may take to flush its last frames and the close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// A slow consumer's close frame waits behind the data already in the kernel buffers, until
/// the client reads again; give it longer so that the client sees 4429, not a reset.
const SLOW_CLOSE_FLUSH: Duration = Duration::from_secs(60);

pub enum Mode {
    Room { room: RoomRow, since: Option<i64> },
    Mux,
}

struct Joined {
    id: i64,
    name: String,
}

struct Session {
    state: AppState,
    ctl: Arc<SocketCtl>,
    user: UserRef,
    mux: bool,
    rooms: HashMap<String, Joined>,
    token_expires: tokio::time::Instant,
    flood: u32,
    /// Submitted messages, oldest first: each resolves to its `ack` (or `error`) frame. The
    /// socket goes on reading while they commit, and the answers go out in submission order.
    in_flight: FuturesOrdered<Answer>,
}

/// `Sync` as well: the session is borrowed across awaits.
type Answer = std::pin::Pin<Box<dyn Future<Output = Utf8Bytes> + Send + Sync>>;

enum Event {
    Frame(Option<Result<Message, axum::Error>>),
    Answer(Utf8Bytes),
}

pub async fn run(state: AppState, socket: WebSocket, user: CurrentUser, mode: Mode) {
    let mux = matches!(mode, Mode::Mux);
    let endpoint = if mux { "mux" } else { "room" };
    let span = tracing::info_span!("ws.session", user_id = user.id, endpoint);
    async move {
        metrics::ws_connected(endpoint, 1.0);
        let (sink, mut stream) = socket.split();
        let (tx, rx) = mpsc::channel(state.hub.queue_capacity());
        let ctl = state
            .hub
            .register_socket(user.id, mux, tx, user.sid.clone(), user.jti.clone());
        let writer = tokio::spawn(writer(sink, rx, ctl.clone(), state.hub.flush_interval()));
        let mut session = Session {
            token_expires: deadline(user.expires_at),
            user: UserRef {
                id: user.id,
                username: user.username.clone(),
            },
            state: state.clone(),
            ctl: ctl.clone(),
            mux,
            rooms: HashMap::new(),
            flood: 0,
            in_flight: FuturesOrdered::new(),
        };
        let started = match mode {
            // Boxed: the set-up future is large, and the socket lives on long after it.
            Mode::Room { room, since } => Box::pin(session.join(room, since)).await,
            Mode::Mux => session.push(protocol::ready_mux(&session.user)).await,
        };
        if let Err(e) = started {
            tracing::warn!(error = %e, "socket set-up failed");
            ctl.close(hub::CLOSE_RESTART);
        } else {
            session.read_loop(&mut stream).await;
        }
        session.leave_all().await;
        state.hub.unregister_socket(&ctl);
        ctl.close(hub::CLOSE_NORMAL); // no-op if a close code is already set
        let _ = writer.await;
        metrics::ws_connected(endpoint, -1.0);
    }
    .instrument(span)
    .await;
}

fn deadline(at: chrono::DateTime<chrono::Utc>) -> tokio::time::Instant {
    let secs = (at - chrono::Utc::now()).num_milliseconds().max(0);
    tokio::time::Instant::now() + Duration::from_millis(secs.unsigned_abs())
}

impl Session {
    async fn push(&self, frame: Utf8Bytes) -> anyhow::Result<()> {
        self.ctl
            .tx
            .send(Outbound::Frame(frame))
            .await
            .map_err(|_| anyhow::anyhow!("socket closed"))
    }

    /// Answer a frame: after the answers still in flight, so that a client sees its answers in
    /// the order of its frames.
    async fn reply(&mut self, frame: Utf8Bytes) -> anyhow::Result<()> {
        if self.in_flight.is_empty() {
            self.push(frame).await
        } else {
            self.in_flight
                .push_back(Box::pin(std::future::ready(frame)));
            Ok(())
        }
    }

    /// Wait for every answer in flight and queue it.
    async fn flush_answers(&mut self) -> anyhow::Result<()> {
        while let Some(frame) = self.in_flight.next().await {
            self.push(frame).await?;
        }
        Ok(())
    }

    async fn read_loop(&mut self, stream: &mut futures::stream::SplitStream<WebSocket>) {
        // Registered once, not on every frame.
        let ctl = self.ctl.clone();
        let cancelled = ctl.closed(hub::READER);
        tokio::pin!(cancelled);
        let expiry = tokio::time::sleep_until(self.token_expires);
        tokio::pin!(expiry);
        loop {
            if expiry.deadline() != self.token_expires {
                // An `auth` frame replaced the token.
                expiry.as_mut().reset(self.token_expires);
            }
            let event = tokio::select! {
                biased;
                () = &mut cancelled => return,
                () = &mut expiry => {
                    self.ctl.close(hub::CLOSE_TOKEN);
                    return;
                }
                Some(frame) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    Event::Answer(frame)
                }
                next = stream.next(), if self.in_flight.len() < MAX_IN_FLIGHT => Event::Frame(next),
            };
            let next = match event {
                Event::Frame(next) => next,
                Event::Answer(frame) => {
                    if self.push(frame).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let msg = match next {
                None => return,
                Some(Err(e)) => {
                    if is_too_big(&e) {
                        self.ctl.close(hub::CLOSE_TOO_BIG);
                    } else {
                        self.ctl.close(hub::CLOSE_GOING_AWAY);
                    }
                    return;
                }
                Some(Ok(msg)) => msg,
            };
            self.ctl.touch();
            match msg {
                Message::Text(text) => {
                    // Boxed so that an idle socket's task stays small: the handling future
                    // (commits, joins, database reads) only exists while a frame is handled.
                    if let Err(e) = Box::pin(self.handle(&text)).await {
                        tracing::debug!(error = %e, "socket closed while replying");
                        return;
                    }
                }
                Message::Binary(_) => {
                    let frame = protocol::error(
                        "unsupported_frame",
                        "binary frames are not supported; send JSON text",
                        None,
                    );
                    if self.reply(frame).await.is_err() {
                        return;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => {
                    self.ctl.close(hub::CLOSE_NORMAL);
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, text: &str) -> anyhow::Result<()> {
        let frame = match protocol::parse(text) {
            Ok(f) => f,
            Err(e) => return self.reply(protocol::error(e.code, &e.message, None)).await,
        };
        match frame {
            ClientFrame::Ping => self.reply(protocol::pong()).await,
            ClientFrame::Message {
                room,
                content,
                client_id,
            } => self.send(room, content, client_id).await,
            ClientFrame::Typing { room } => {
                let Some(joined) = self.target(room.as_deref()).await? else {
                    return Ok(());
                };
                let env = protocol::typing(joined.0, &joined.1, &self.user);
                if let Err(e) = self.state.bus.publish(env).await {
                    tracing::debug!(error = %e, "typing not published");
                }
                Ok(())
            }
            ClientFrame::Auth { token } => match self.state.authenticate(&token).await {
                Ok(user) if user.id == self.user.id => {
                    *self
                        .ctl
                        .auth
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = (user.sid, user.jti);
                    self.token_expires = deadline(user.expires_at);
                    self.reply(Utf8Bytes::from_static(r#"{"type":"auth_ok"}"#))
                        .await
                }
                Ok(_) => {
                    self.reply(protocol::error(
                        "invalid_token",
                        "the token belongs to another user",
                        None,
                    ))
                    .await
                }
                Err(e) => {
                    self.reply(protocol::error(e.code(), &e.to_string(), None))
                        .await
                }
            },
            ClientFrame::Subscribe { room, since_seq } => {
                if !self.mux {
                    return self
                        .push(protocol::error(
                            "invalid_frame",
                            "subscribe is for the multiplexed /ws endpoint",
                            None,
                        ))
                        .await;
                }
                if self.rooms.contains_key(&room) {
                    return self
                        .push(protocol::error(
                            "already_subscribed",
                            "already subscribed",
                            Some(&room),
                        ))
                        .await;
                }
                match self.open_room(&room).await {
                    Ok(row) => {
                        // `subscribed` and the replay go straight into the queue: answers
                        // to earlier frames go first.
                        self.flush_answers().await?;
                        self.join(row, since_seq).await
                    }
                    Err(e) => {
                        self.reply(protocol::error(e.code(), &e.to_string(), Some(&room)))
                            .await
                    }
                }
            }
            ClientFrame::Unsubscribe { room } => {
                if let Some(joined) = self.rooms.remove(&room) {
                    self.leave(&joined).await;
                }
                self.reply(protocol::unsubscribed(&room)).await
            }
        }
    }

    /// The room a frame is for: the socket's room, or on `/ws` the named subscribed room.
    async fn target(&mut self, room: Option<&str>) -> anyhow::Result<Option<(i64, String)>> {
        if !self.mux {
            return Ok(self.rooms.values().next().map(|j| (j.id, j.name.clone())));
        }
        let Some(name) = room else {
            self.reply(protocol::error(
                "invalid_frame",
                "`room` is required on /ws",
                None,
            ))
            .await?;
            return Ok(None);
        };
        match self.rooms.get(name) {
            Some(j) => Ok(Some((j.id, j.name.clone()))),
            None => {
                self.reply(protocol::error(
                    "not_subscribed",
                    "subscribe to the room first",
                    Some(name),
                ))
                .await?;
                Ok(None)
            }
        }
    }

    async fn send(
        &mut self,
        room: Option<String>,
        content: String,
        client_id: Option<String>,
    ) -> anyhow::Result<()> {
        let Some((room_id, room)) = self.target(room.as_deref()).await? else {
            return Ok(());
        };
        if self.state.msg_limiter.check_key(&self.user.id).is_err() {
            self.flood += 1;
            if self.flood >= FLOOD_LIMIT {
                // The answers so far (the rate-limit errors among them) go out before 1008.
                self.flush_answers().await?;
                self.ctl.close(hub::CLOSE_POLICY);
                return Ok(());
            }
            return self
                .reply(protocol::error(
                    "rate_limited",
                    "too many messages; slow down",
                    Some(&room),
                ))
                .await;
        }
        self.flood = 0;
        let draft = Draft {
            author: self.user.clone(),
            content,
            client_id,
        };
        // Queued now (submission order is commit order); answered when it has committed.
        let outcome = self.state.sender.submit(room_id, &room, draft);
        self.in_flight.push_back(Box::pin(async move {
            match outcome.await {
                Ok(sent) => {
                    if matches!(sent, Sent::Created(_)) {
                        metrics::accepted("ws");
                    }
                    protocol::ack(&room, sent.message())
                }
                Err(e) => protocol::error(e.code(), &e.to_string(), Some(&room)),
            }
        }));
        Ok(())
    }

    /// Resolve a room for `subscribe`: visible, and joined if public.
    async fn open_room(&self, name: &str) -> Result<RoomRow, ApiError> {
        let db = &self.state.db;
        let room = store::rooms::find_by_name(db, name)
            .await?
            .ok_or(ApiError::NotFound("room"))?;
        if store::rooms::role_of(db, room.id, self.user.id)
            .await?
            .is_none()
        {
            if room.visibility != "public" {
                return Err(ApiError::NotFound("room"));
            }
            store::rooms::add_member(db, room.id, self.user.id).await?;
        }
        Ok(room)
    }

    /// Join: register paused, announce, replay `(since, last]`, resume.
    async fn join(&mut self, room: RoomRow, since: Option<i64>) -> anyhow::Result<()> {
        let state = self.state.clone();
        let joined = state.hub.join(&state.bus, room.id, &self.ctl).await?;
        self.rooms.insert(
            room.name.clone(),
            Joined {
                id: room.id,
                name: room.name.clone(),
            },
        );
        if state.hub.presence_inc(room.id, self.user.id) {
            match state.presence.join(room.id, self.user.id).await {
                Ok(true) => {
                    let env = protocol::presence(room.id, &room.name, "join", &self.user);
                    if let Err(e) = state.bus.publish(env).await {
                        tracing::debug!(error = %e, "presence join not published");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "presence join failed"),
            }
        }
        let online = crate::http::rooms::online_users(&state, room.id).await;
        let room_name = room.name.clone();
        let room_id = room.id;
        let wire = store::rooms::to_wire(&state.db, room, i64::try_from(online.len()).unwrap_or(0))
            .await?;
        let first = if self.mux {
            protocol::subscribed(&wire, &online, joined.last_seq)
        } else {
            protocol::ready(&wire, &self.user, &online, joined.last_seq)
        };
        self.push(first).await?;
        if let Some(mut after) = since {
            while after < joined.last_seq {
                let rows = store::messages::after_seq(&state.db, room_id, after, 200).await?;
                let Some(last) = rows.last().map(|r| r.seq) else {
                    break;
                };
                for row in rows {
                    if row.seq > joined.last_seq {
                        break;
                    }
                    if let Some(msg) = row.message {
                        self.push(protocol::message_frame(&msg)).await?;
                    }
                }
                after = last;
            }
        }
        state.hub.resume(room_id, &self.ctl);
        tracing::debug!(room = %room_name, last_seq = joined.last_seq, "joined");
        Ok(())
    }

    async fn leave(&self, joined: &Joined) {
        let state = &self.state;
        state.hub.leave(&state.bus, joined.id, &self.ctl);
        if state.hub.presence_dec(joined.id, self.user.id) {
            match state.presence.leave(joined.id, self.user.id).await {
                Ok(true) => {
                    let env = protocol::presence(joined.id, &joined.name, "leave", &self.user);
                    if let Err(e) = state.bus.publish(env).await {
                        tracing::debug!(error = %e, "presence leave not published");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "presence leave failed"),
            }
        }
    }

    async fn leave_all(&mut self) {
        let rooms: Vec<Joined> = self.rooms.drain().map(|(_, j)| j).collect();
        for joined in &rooms {
            self.leave(joined).await;
        }
    }
}

fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string();
    // tungstenite reports oversized frames and messages as capacity errors.
    text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Message too big")
}

fn close_reason(code: u16) -> &'static str {
    match code {
        hub::CLOSE_TOKEN => "token expired or revoked",
        hub::CLOSE_REMOVED => "removed from room",
        hub::CLOSE_ROOM_DELETED => "room deleted",
        hub::CLOSE_SLOW => "slow consumer; resume with since_seq",
        hub::CLOSE_RESTART => "server restarting; reconnect",
        hub::CLOSE_POLICY => "rate limit exceeded",
        hub::CLOSE_TOO_BIG => "frame too large",
        hub::CLOSE_GOING_AWAY => "going away",
        _ => "",
    }
}

/// Spaces a socket's writes under sustained traffic (`WS_FLUSH_INTERVAL_MS`): a token bucket
/// of [`FLUSH_BURST`] writes refilled at one per interval. A quiet socket always has tokens,
/// so its frames go out at once; a busy one writes once per interval, each write carrying
/// every frame queued meanwhile — one syscall for many frames, on the server and in the
/// client.
struct FlushPacer {
    interval: Duration,
    tokens: f64,
    last: tokio::time::Instant,
}

const FLUSH_BURST: f64 = 4.0;

impl FlushPacer {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            tokens: FLUSH_BURST,
            last: tokio::time::Instant::now(),
        }
    }

    /// Take a token for a write now; `Some(t)`: wait until `t` first.
    fn take(&mut self) -> Option<tokio::time::Instant> {
        if self.interval.is_zero() {
            return None;
        }
        let now = tokio::time::Instant::now();
        let refill = (now - self.last).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + refill).min(FLUSH_BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            let wait = self.interval.mul_f64(1.0 - self.tokens);
            // The token that accrues while waiting is spent on this write.
            self.tokens = 0.0;
            self.last = now + wait;
            Some(self.last)
        }
    }
}

/// Most frames written with one flush; the rest follow at once in the next round.
const MAX_FRAMES_PER_FLUSH: usize = 1024;
/// With this many frames queued a write goes out without waiting for the pacer: the pacer
/// only gathers frames, it never limits a socket's throughput.
const COALESCED_ENOUGH: usize = 32;

/// Drains the queue into the socket; sends the close frame when the socket is closed.
async fn writer(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    ctl: Arc<SocketCtl>,
    flush_interval: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    let mut pacer = FlushPacer::new(flush_interval);
    // Registered once, not on every frame.
    let ctl2 = ctl.clone();
    let cancelled = ctl2.closed(hub::WRITER);
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            item = rx.recv() => {
                let Some(Outbound::Frame(frame)) = item else { break };
                // A long queue is written at once: waiting would only make it longer.
                if rx.len() < COALESCED_ENOUGH && let Some(at) = pacer.take() {
                    // Busy socket: let more frames gather so that one write carries them.
                    tokio::select! {
                        biased;
                        () = &mut cancelled => break,
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                let write = async {
                    sink.feed(Message::Text(frame)).await?;
                    // Everything else already queued goes out with the same flush.
                    for _ in 1..MAX_FRAMES_PER_FLUSH {
                        match rx.try_recv() {
                            Ok(Outbound::Frame(f)) => sink.feed(Message::Text(f)).await?,
                            Err(_) => break,
                        }
                    }
                    sink.flush().await
                };
                tokio::select! {
                    biased;
                    () = &mut cancelled => break,
                    res = write => if res.is_err() {
                        ctl.close(hub::CLOSE_GOING_AWAY);
                        return;
                    },
                }
            }
            _ = ping.tick() => {
                let silent = chrono::Utc::now().timestamp() - ctl.last_seen.load(std::sync::atomic::Ordering::Relaxed);
                if silent > DEAD_AFTER_SECS {
                    ctl.close(hub::CLOSE_GOING_AWAY);
                    return;
                }
                if sink.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                    ctl.close(hub::CLOSE_GOING_AWAY);
                    return;
                }
            }
        }
    }
    let code = ctl.close_code();
    let flush = if code == hub::CLOSE_SLOW {
        SLOW_CLOSE_FLUSH
    } else {
        CLOSE_FLUSH
    };
    let _ = tokio::time::timeout(flush, async {
        if code != hub::CLOSE_SLOW {
            // Frames queued before the close (e.g. `room_deleted`) go out first.
            while let Ok(Outbound::Frame(f)) = rx.try_recv() {
                sink.feed(Message::Text(f)).await?;
            }
        }
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(close_reason(code)),
        })))
        .await?;
        sink.close().await
    })
    .await;
}
