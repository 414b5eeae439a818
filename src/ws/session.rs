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

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures::{
    SinkExt, StreamExt,
    stream::{FuturesOrdered, SplitSink, SplitStream},
};
use tokio_tungstenite::tungstenite::{
    self, Bytes, Message, Utf8Bytes,
    protocol::{
        CloseFrame,
        frame::{
            Frame,
            coding::{CloseCode, Data, OpCode},
        },
    },
};
use tracing::Instrument;

use super::{
    protocol::{self, ClientFrame},
    upgrade::{self, Socket},
};
use crate::{
    auth::CurrentUser,
    bus::hub::{self, SocketCtl},
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
    /// Rooms joined: one on `/ws/rooms/{name}`, a few on `/ws` (a `Vec`: no hash table for
    /// one entry).
    rooms: Vec<Joined>,
    token_expires: tokio::time::Instant,
    flood: u32,
    /// Submitted messages, oldest first: each resolves to its `ack` (or `error`) frame. The
    /// socket goes on reading while they commit, and the answers go out in submission order.
    /// Created with the first message and dropped when it empties: an idle socket holds none.
    in_flight: Option<FuturesOrdered<Answer>>,
}

/// `Sync` as well: the session is borrowed across awaits.
type Answer = std::pin::Pin<Box<dyn Future<Output = Utf8Bytes> + Send + Sync>>;

type WsSink = SplitSink<Socket, Message>;
type WsStream = SplitStream<Socket>;

enum Event {
    Frame(Option<Result<Message, tungstenite::Error>>),
    Answer(Utf8Bytes),
}

/// The session of one upgraded socket. The set-up that needs no waiting happens here, before
/// the returned future exists, so that the future (the socket's task, alive as long as the
/// socket) holds only what the session keeps.
pub fn run(
    state: AppState,
    socket: Socket,
    user: CurrentUser,
    mode: Mode,
) -> impl Future<Output = ()> + Send {
    let mux = matches!(mode, Mode::Mux);
    let endpoint = if mux { "mux" } else { "room" };
    let span = tracing::info_span!("ws.session", user_id = user.id, endpoint);
    // Only what the session keeps: the token's claims (roles…) are dropped here.
    let CurrentUser {
        id,
        username,
        sid,
        jti,
        expires_at,
        ..
    } = user;
    let (sink, stream) = socket.split();
    let ctl = state.hub.register_socket(id, mux, sid, jti);
    let writer = tokio::spawn(writer(sink, ctl.clone(), state.hub.flush_interval()));
    let mut session = Session {
        token_expires: deadline(expires_at),
        user: UserRef { id, username },
        state,
        ctl,
        mux,
        rooms: Vec::new(),
        flood: 0,
        in_flight: None,
    };
    let mode = Box::new(mode);
    async move {
        metrics::ws_connected(endpoint, 1.0);
        // Set-up and tear-down are boxed: their futures are large and exist only briefly,
        // while the socket may live for days on the read loop alone.
        let started = match upgrade::unbox(mode) {
            Mode::Room { room, since } => Box::pin(session.join(room, since)).await,
            Mode::Mux => session.push(protocol::ready_mux(&session.user)).await,
        };
        if let Err(e) = started {
            tracing::warn!(error = %e, "socket set-up failed");
            session.ctl.close(hub::CLOSE_RESTART);
        } else {
            session.read_loop(stream).await;
        }
        Box::pin(session.leave_all()).await;
        session.state.hub.unregister_socket(&session.ctl);
        session.ctl.close(hub::CLOSE_NORMAL); // no-op if a close code is already set
        drop(session);
        let _ = writer.await;
        metrics::ws_connected(endpoint, -1.0);
    }
    .instrument(span)
}

fn deadline(at: chrono::DateTime<chrono::Utc>) -> tokio::time::Instant {
    let secs = (at - chrono::Utc::now()).num_milliseconds().max(0);
    tokio::time::Instant::now() + Duration::from_millis(secs.unsigned_abs())
}

impl Session {
    /// Queue a frame for the writer, waiting while the queue is full.
    async fn push(&self, frame: Utf8Bytes) -> anyhow::Result<()> {
        self.ctl
            .push(frame)
            .await
            .map_err(|_| anyhow::anyhow!("socket closed"))
    }

    fn has_in_flight(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| !f.is_empty())
    }

    fn in_flight_len(&self) -> usize {
        self.in_flight.as_ref().map_or(0, FuturesOrdered::len)
    }

    fn defer(&mut self, answer: Answer) {
        self.in_flight
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(answer);
    }

    /// The oldest answer in flight, once it is ready; the queue is dropped when it empties.
    async fn next_answer(&mut self) -> Option<Utf8Bytes> {
        let queue = self.in_flight.as_mut()?;
        let answer = queue.next().await;
        if queue.is_empty() {
            self.in_flight = None;
        }
        answer
    }

    /// Answer a frame: after the answers still in flight, so that a client sees its answers in
    /// the order of its frames.
    async fn reply(&mut self, frame: Utf8Bytes) -> anyhow::Result<()> {
        if self.has_in_flight() {
            self.defer(Box::pin(std::future::ready(frame)));
            Ok(())
        } else {
            self.push(frame).await
        }
    }

    /// Wait for every answer in flight and queue it.
    async fn flush_answers(&mut self) -> anyhow::Result<()> {
        while let Some(frame) = self.next_answer().await {
            self.push(frame).await?;
        }
        Ok(())
    }

    async fn read_loop(&mut self, mut stream: WsStream) {
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
            let answers = self.has_in_flight();
            let reading = self.in_flight_len() < MAX_IN_FLIGHT;
            let event = tokio::select! {
                biased;
                () = &mut cancelled => return,
                () = &mut expiry => {
                    self.ctl.close(hub::CLOSE_TOKEN);
                    return;
                }
                Some(frame) = self.next_answer(), if answers => Event::Answer(frame),
                next = stream.next(), if reading => Event::Frame(next),
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
                    if matches!(e, tungstenite::Error::Capacity(_)) {
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
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
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
                if self.rooms.iter().any(|j| j.name == room) {
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
                if let Some(at) = self.rooms.iter().position(|j| j.name == room) {
                    let joined = self.rooms.swap_remove(at);
                    self.leave(&joined).await;
                }
                self.reply(protocol::unsubscribed(&room)).await
            }
        }
    }

    /// The room a frame is for: the socket's room, or on `/ws` the named subscribed room.
    async fn target(&mut self, room: Option<&str>) -> anyhow::Result<Option<(i64, String)>> {
        if !self.mux {
            return Ok(self.rooms.first().map(|j| (j.id, j.name.clone())));
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
        match self.rooms.iter().find(|j| j.name == name) {
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
        self.defer(Box::pin(async move {
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
        self.rooms.push(Joined {
            id: room.id,
            name: room.name.clone(),
        });
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
        let rooms = std::mem::take(&mut self.rooms);
        for joined in &rooms {
            self.leave(joined).await;
        }
    }
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

/// With this many frames queued a write goes out without waiting for the pacer: the pacer
/// only gathers frames, it never limits a socket's throughput.
const COALESCED_ENOUGH: usize = 32;
/// Frames longer than this go out in fragments of this size (RFC 6455 §5.4): the socket's
/// buffers then never grow past a fragment, and an idle socket keeps none.
const FRAGMENT: usize = 512;

/// Write one text frame, fragmented if it is long.
async fn feed_text(sink: &mut WsSink, frame: Utf8Bytes) -> Result<(), tungstenite::Error> {
    if frame.len() <= FRAGMENT {
        sink.feed(Message::Text(frame)).await
    } else {
        // Boxed: rare, and its future would otherwise enlarge every writer task.
        Box::pin(feed_fragments(sink, frame)).await
    }
}

async fn feed_fragments(sink: &mut WsSink, frame: Utf8Bytes) -> Result<(), tungstenite::Error> {
    let bytes = Bytes::from(frame);
    let mut start = 0;
    while start < bytes.len() {
        let end = (start + FRAGMENT).min(bytes.len());
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let fragment = Frame::message(
            bytes.slice(start..end),
            OpCode::Data(opcode),
            end == bytes.len(),
        );
        sink.feed(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

/// Drains the queue into the socket; sends the close frame when the socket is closed.
async fn writer(mut sink: WsSink, ctl: Arc<SocketCtl>, flush_interval: Duration) {
    // One timer for both: the next ping, or the moment the peer will have been silent for
    // `DEAD_AFTER_SECS` (whichever comes first), so a silent peer goes at 60 s, not at the
    // next ping after that.
    let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
    let mut keepalive = Box::pin(tokio::time::sleep_until(next_ping));
    let mut pacer = FlushPacer::new(flush_interval);
    // Frames taken from the queue and not yet written: a close interrupts a write (the peer
    // may not be reading), and what is left here still goes out before the close frame.
    let mut batch = VecDeque::new();
    // Registered once, not on every frame.
    let ctl2 = ctl.clone();
    let cancelled = ctl2.closed(hub::WRITER);
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            () = std::future::poll_fn(|cx| ctl.outbox.poll_ready(cx)) => {
                // A long queue is written at once: waiting would only make it longer.
                if ctl.outbox.len() < COALESCED_ENOUGH && let Some(at) = pacer.take() {
                    // Busy socket: let more frames gather so that one write carries them.
                    tokio::select! {
                        biased;
                        () = &mut cancelled => break,
                        // Boxed: a timer inline would enlarge every writer task.
                        () = Box::pin(tokio::time::sleep_until(at)) => {}
                        // A queue that grows long meanwhile is written at once: the pacer
                        // must never turn a fast reader into a slow consumer (4429).
                        () = std::future::poll_fn(|cx| ctl.outbox.poll_at_least(COALESCED_ENOUGH, cx)) => {}
                    }
                }
                // Everything queued goes out with one flush.
                batch = ctl.outbox.take_all();
                let write = async {
                    while let Some(frame) = batch.pop_front() {
                        feed_text(&mut sink, frame).await?;
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
                // Written: free the batch's allocation too (an idle socket keeps none).
                batch = VecDeque::new();
            }
            () = &mut keepalive => {
                let now = tokio::time::Instant::now();
                let silent = chrono::Utc::now().timestamp() - ctl.last_seen.load(std::sync::atomic::Ordering::Relaxed);
                if silent >= DEAD_AFTER_SECS {
                    ctl.close(hub::CLOSE_GOING_AWAY);
                    return;
                }
                if now >= next_ping {
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        ctl.close(hub::CLOSE_GOING_AWAY);
                        return;
                    }
                    next_ping = now + PING_EVERY;
                }
                // `silent` is in whole seconds: at most one second late.
                let dead_at = now + Duration::from_secs((DEAD_AFTER_SECS - silent).unsigned_abs());
                keepalive.as_mut().reset(next_ping.min(dead_at));
            }
        }
    }
    // Boxed: runs once, at the end.
    Box::pin(close(sink, batch, &ctl)).await;
}

/// Send what is left (unless the peer is the slow consumer) and the close frame.
async fn close(mut sink: WsSink, mut batch: VecDeque<Utf8Bytes>, ctl: &SocketCtl) {
    let code = ctl.close_code();
    let flush = if code == hub::CLOSE_SLOW {
        SLOW_CLOSE_FLUSH
    } else {
        CLOSE_FLUSH
    };
    let _ = tokio::time::timeout(flush, async {
        if code != hub::CLOSE_SLOW {
            // Frames queued before the close (e.g. `room_deleted`) go out first.
            batch.extend(ctl.outbox.take_all());
            for frame in batch {
                feed_text(&mut sink, frame).await?;
            }
        }
        sink.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from_static(close_reason(code)),
        })))
        .await?;
        sink.close().await
    })
    .await;
}
