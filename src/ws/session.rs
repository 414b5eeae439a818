//! One WebSocket session: a reader (this task) and a writer task ([`super::writer`]) joined by
//! the socket's bounded outbox.
//!
//! The reader parses client frames and answers each with one `chat` use-case (send, react,
//! read, typing, join, leave). Whoever closes the socket records why ([`CloseReason`]); the
//! writer sends the close frame. Generic over the socket's halves, so it runs without a
//! network in tests.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt, stream::FuturesOrdered};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::Instrument;

use super::{
    protocol::{self, ClientFrame},
    upgrade,
    writer::{self, WsSink},
};
use crate::chat::Error;
use crate::{
    chat::{
        Chat,
        auth::CurrentUser,
        messages::Post,
        send::Sent,
        sockets::{Entered, Joined},
    },
    domain::model::UserRef,
    fanout::socket::{CloseReason, Side, SocketCtl},
    telemetry::metrics,
};

/// Rate-limited frames in a row before the socket is closed with 1008.
const FLOOD_LIMIT: u32 = 20;
/// Messages a socket may have submitted and not yet acknowledged; beyond this the socket is
/// not read until an acknowledgement goes out (backpressure on a fast sender).
const MAX_IN_FLIGHT: usize = 32;

/// What the reader reads from: the socket's receiving half (or a channel in tests).
pub(crate) trait WsStream:
    Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send
{
}
impl<T: Stream<Item = Result<Message, tungstenite::Error>> + Unpin + Send> WsStream for T {}

pub(crate) enum Mode {
    Room {
        room: Box<Entered>,
        since: Option<i64>,
    },
    Mux,
}

struct Session {
    chat: Chat,
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

/// How long a closing socket waits for the peer's close frame.
const LINGER: Duration = Duration::from_secs(2);

/// Read and discard until the peer's close frame, the end of the stream or [`LINGER`].
async fn linger<R: WsStream>(stream: &mut R) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// `Sync` as well: the session is borrowed across awaits.
type Answer = std::pin::Pin<Box<dyn Future<Output = Utf8Bytes> + Send + Sync>>;

enum Input {
    Frame(Option<Result<Message, tungstenite::Error>>),
    Answer(Utf8Bytes),
}

/// The session of one upgraded socket. The set-up that needs no waiting happens here, before
/// the returned future exists, so that the future (the socket's task, alive as long as the
/// socket) holds only what the session keeps.
pub(crate) fn run<W: WsSink + 'static, R: WsStream>(
    chat: Chat,
    (sink, stream): (W, R),
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
        expires_at,
        ..
    } = user;
    let ctl = chat.sockets().open(id, mux, sid);
    let policy = writer::WritePolicy::new(
        Duration::from_millis(chat.config().ws_flush_interval_ms),
        Duration::from_millis(chat.config().ws_coalesce_max_ms),
    );
    let writer = chat.tasks().spawn(writer::run(sink, ctl.clone(), policy));
    let mut session = Session {
        token_expires: deadline(expires_at),
        user: UserRef { id, username },
        chat,
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
            Mode::Room { room, since } => Box::pin(session.join(*room, since)).await,
            Mode::Mux => session.push(protocol::ready_mux(&session.user)).await,
        };
        if let Err(e) = started {
            tracing::warn!(error = %e, "socket set-up failed");
            session.ctl.close(CloseReason::Restart);
        } else {
            let mut stream = stream;
            session.read_loop(&mut stream).await;
            // The close frame (and the answers before it) must reach the peer: dropping a
            // connection with unread input makes the kernel reset it, and a reset can discard
            // what was sent. So read on, discarding, until the peer's close (or a deadline).
            linger(&mut stream).await;
        }
        Box::pin(session.leave_all()).await;
        session.chat.sockets().close(&session.ctl);
        session.ctl.close(CloseReason::Normal); // no-op if a reason is already set
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

    async fn read_loop<R: WsStream>(&mut self, stream: &mut R) {
        // Registered once, not on every frame.
        let ctl = self.ctl.clone();
        let cancelled = ctl.closed(Side::Reader);
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
                () = &mut cancelled => {
                    if !self.ctl.is_closing() {
                        // Shutdown: what was read is answered before the 1012 close.
                        let _ = self.flush_answers().await;
                        self.ctl.close(CloseReason::Restart);
                    }
                    return;
                }
                () = &mut expiry => {
                    self.ctl.close(CloseReason::TokenRevoked);
                    return;
                }
                Some(frame) = self.next_answer(), if answers => Input::Answer(frame),
                next = stream.next(), if reading => Input::Frame(next),
            };
            let next = match event {
                Input::Frame(next) => next,
                Input::Answer(frame) => {
                    if self.push(frame).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let msg = match next {
                None => return,
                Some(Err(e)) => {
                    self.ctl.close(match e {
                        tungstenite::Error::Capacity(_) => CloseReason::TooBig,
                        tungstenite::Error::Utf8(_) => CloseReason::InvalidData,
                        _ => CloseReason::GoingAway,
                    });
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
                    self.ctl.close(CloseReason::Normal);
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, text: &str) -> anyhow::Result<()> {
        self.forget_dropped().await;
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
                reply_to,
            } => {
                let post = Post {
                    content: Some(content),
                    client_id,
                    reply_to,
                };
                self.send(room, post).await
            }
            // The other frames that fan out or cost a query have their own limit.
            ClientFrame::Typing { room } if !self.frame_admitted(room.as_deref()).await? => Ok(()),
            ClientFrame::Subscribe { room, .. } | ClientFrame::Unsubscribe { room }
                if !self.frame_admitted(Some(&room)).await? =>
            {
                Ok(())
            }
            ClientFrame::Auth { .. } if !self.frame_admitted(None).await? => Ok(()),
            ClientFrame::React { room, .. } if !self.frame_admitted(room.as_deref()).await? => {
                Ok(())
            }
            ClientFrame::React {
                room,
                id,
                emoji,
                on,
            } => self.react(room.as_deref(), id, &emoji, on).await,
            ClientFrame::Read { room, .. } if !self.frame_admitted(room.as_deref()).await? => {
                Ok(())
            }
            ClientFrame::Read { room, seq } => self.read(room.as_deref(), seq).await,
            ClientFrame::Typing { room } => self.typing(room.as_deref()).await,
            ClientFrame::Auth { token } => self.auth(&token).await,
            ClientFrame::Subscribe { room, since_seq } => self.subscribe(room, since_seq).await,
            ClientFrame::Unsubscribe { room } => {
                if let Some(at) = self.rooms.iter().position(|j| j.name == room) {
                    let joined = self.rooms.swap_remove(at);
                    self.leave(&joined).await;
                }
                self.reply(protocol::unsubscribed(&room)).await
            }
        }
    }

    /// Apply a rate limit's verdict: `true` when the frame may go on. A refusal is answered
    /// with `rate_limited`; [`FLOOD_LIMIT`] refusals in a row close the socket with 1008 (the
    /// answers so far, the refusals among them, go out first).
    async fn admitted(
        &mut self,
        verdict: Result<(), Error>,
        message: &str,
        room: Option<&str>,
    ) -> anyhow::Result<bool> {
        if verdict.is_ok() {
            self.flood = 0;
            return Ok(true);
        }
        self.flood += 1;
        if self.flood >= FLOOD_LIMIT {
            self.flush_answers().await?;
            self.ctl.close(CloseReason::Flood);
            return Ok(false);
        }
        self.reply(protocol::error("rate_limited", message, room))
            .await?;
        Ok(false)
    }

    /// [`Self::admitted`] for a frame under the per-user frame limit.
    async fn frame_admitted(&mut self, room: Option<&str>) -> anyhow::Result<bool> {
        let verdict = self.chat.limits().admit_frame(self.user.id).await;
        self.admitted(verdict, "too many frames; slow down", room)
            .await
    }

    /// `typing`: to everyone in the room but the typist (not answered).
    async fn typing(&mut self, room: Option<&str>) -> anyhow::Result<()> {
        if let Some((room_id, room)) = self.target(room).await? {
            self.chat
                .messages()
                .typing(room_id, &room, &self.user)
                .await;
        }
        Ok(())
    }

    /// `react`: add or remove a reaction; the `reaction` event that follows a change is the
    /// answer (a refusal gets an `error` frame).
    async fn react(
        &mut self,
        room: Option<&str>,
        id: i64,
        emoji: &str,
        on: bool,
    ) -> anyhow::Result<()> {
        let Some((room_id, room)) = self.target(room).await? else {
            return Ok(());
        };
        if let Err(e) = self
            .chat
            .messages()
            .react(room_id, &room, &self.user, id, emoji, on)
            .await
        {
            self.reply(protocol::error(e.code(), &e.to_string(), Some(&room)))
                .await?;
        }
        Ok(())
    }

    /// `read`: the user read up to `seq` in the room (not answered unless it fails).
    async fn read(&mut self, room: Option<&str>, seq: i64) -> anyhow::Result<()> {
        let Some((room_id, room)) = self.target(room).await? else {
            return Ok(());
        };
        match self
            .chat
            .dms()
            .mark_read_in(room_id, &room, &self.user, seq)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.reply(protocol::error(e.code(), &e.to_string(), Some(&room)))
                    .await
            }
        }
    }

    /// `auth`: a fresh token of the same user replaces the socket's (and its expiry).
    async fn auth(&mut self, token: &str) -> anyhow::Result<()> {
        let frame = match self.chat.auth().authenticate(token).await {
            Ok(user) if user.id == self.user.id => {
                self.ctl.set_sid(user.sid);
                self.token_expires = deadline(user.expires_at);
                protocol::auth_ok()
            }
            Ok(_) => protocol::error("invalid_token", "the token belongs to another user", None),
            Err(e) => protocol::error(e.code(), &e.to_string(), None),
        };
        self.reply(frame).await
    }

    /// `subscribe` (on `/ws` only): enter the room, then join it like `/ws/rooms/{name}`.
    async fn subscribe(&mut self, room: String, since_seq: Option<i64>) -> anyhow::Result<()> {
        if !self.mux {
            let frame = protocol::error(
                "invalid_frame",
                "subscribe is for the multiplexed /ws endpoint",
                None,
            );
            return self.push(frame).await;
        }
        if self.rooms.iter().any(|j| j.name == room) {
            let frame = protocol::error("already_subscribed", "already subscribed", Some(&room));
            return self.push(frame).await;
        }
        let max = self.chat.config().ws_max_rooms_per_socket;
        if self.rooms.len() >= max {
            let message = format!("at most {max} rooms per socket; unsubscribe from one first");
            let frame = protocol::error("limit_reached", &message, Some(&room));
            return self.reply(frame).await;
        }
        match self.chat.sockets().subscribe(self.user.id, &room).await {
            Ok(entered) => {
                // `subscribed` and the replay go straight into the queue: answers to earlier
                // frames go first.
                self.flush_answers().await?;
                self.join(entered, since_seq).await
            }
            Err(e) => {
                self.reply(protocol::error(e.code(), &e.to_string(), Some(&room)))
                    .await
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

    /// `message`: the send pipeline (thread, rate limit, group commit), answered with `ack`
    /// once committed, after the answers before it.
    async fn send(&mut self, room: Option<String>, post: Post) -> anyhow::Result<()> {
        let Some((room_id, room)) = self.target(room.as_deref()).await? else {
            return Ok(());
        };
        // Queued now (submission order is commit order); answered when it has committed.
        let outcome = match self
            .chat
            .messages()
            .post(&self.user, room_id, &room, post)
            .await
        {
            Ok(outcome) => outcome,
            Err(e @ Error::RateLimited(_)) => {
                self.admitted(Err(e), "too many messages; slow down", Some(&room))
                    .await?;
                return Ok(());
            }
            Err(e) => {
                let message = e.to_string();
                return self
                    .reply(protocol::error(e.code(), &message, Some(&room)))
                    .await;
            }
        };
        self.flood = 0;
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

    /// Join a room (see `chat::sockets`): `ready` (`/ws/rooms/{name}`) or `subscribed`
    /// (`/ws`) first, then the replay, then live events.
    async fn join(&mut self, entered: Entered, since: Option<i64>) -> anyhow::Result<()> {
        let (mux, user) = (self.mux, &self.user);
        let joined = self
            .chat
            .sockets()
            .join(&self.ctl, user, entered, since, |w| {
                if mux {
                    protocol::subscribed(w.room, w.online, w.last_seq, w.last_read)
                } else {
                    protocol::ready(w.room, user, w.online, w.last_seq, w.last_read)
                }
            })
            .await?;
        self.rooms.push(joined);
        Ok(())
    }

    async fn leave(&self, joined: &Joined) {
        self.chat
            .sockets()
            .leave(&self.ctl, joined, &self.user)
            .await;
    }

    /// Forget the rooms the fan-out dropped this socket from (removed, or the room deleted):
    /// nothing more is read or written there.
    async fn forget_dropped(&mut self) {
        if !self.mux {
            return;
        }
        for room in self.ctl.take_dropped() {
            if let Some(at) = self.rooms.iter().position(|j| j.id == room) {
                let joined = self.rooms.swap_remove(at);
                self.leave(&joined).await;
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

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
