//! The session as its client sees it: frames in, frames out, through [`run`] on two channels
//! that stand in for the socket, over an in-memory database and the local bus. The clock is
//! paused and held still (`store::testing::hold_clock`): no ping, expiry or linger deadline
//! ever fires; every wait is for a frame.

use chrono::Utc;
use futures::{SinkExt, StreamExt, channel::mpsc};
use sea_orm::{DatabaseConnection, TransactionTrait};
use serde_json::{Value, json};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::*;
use crate::{
    config::Config,
    domain::model::{Message as Stored, UserRef},
    store::{
        commit::{self, NewMessage},
        testing,
    },
};

/// A chat with one public room `r`, its owner and a member.
struct Fixture {
    _clock: testing::ClockHold,
    db: DatabaseConnection,
    chat: Chat,
    room: RoomRow,
    owner: UserRef,
    member: UserRef,
}

impl Fixture {
    async fn new() -> Self {
        let clock = testing::hold_clock();
        let db = testing::sqlite().await;
        let config = Config::for_tests("sqlite::memory:");
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let chat = Chat::build(config, db.clone(), None, tasks, stop)
            .await
            .expect("chat");
        let owner = testing::user(&db, "owner").await;
        let member = testing::user(&db, "member").await;
        let room = store::rooms::create(&db, "r", None, "public", owner.id)
            .await
            .expect("room");
        store::rooms::add_member(&db, room.id, member.id)
            .await
            .expect("member");
        Self {
            _clock: clock,
            db,
            chat,
            room,
            owner,
            member,
        }
    }

    /// Commit `n` messages of the owner's, published nowhere.
    async fn commit_quietly(&self, n: usize) -> Vec<Stored> {
        let batch: Vec<NewMessage<'_>> = (0..n)
            .map(|_| NewMessage {
                room_id: self.room.id,
                room: "r",
                author: &self.owner,
                content: "quiet",
                client_id: None,
                reply_to: None,
            })
            .collect();
        let stored = commit::commit(&self.db, &batch).await.expect("commit");
        stored
            .into_iter()
            .map(|s| s.expect("stored").message().clone())
            .collect()
    }
}

/// The client's end of one socket.
struct Peer {
    to_server: mpsc::UnboundedSender<Result<Message, tungstenite::Error>>,
    from_server: mpsc::UnboundedReceiver<Message>,
}

/// The one place that starts a session: `user` on `room`'s socket, resuming after `since`.
fn open(chat: &Chat, user: &UserRef, room: RoomRow, since: Option<i64>) -> Peer {
    let (to_server, stream) = mpsc::unbounded();
    let (sink, from_server) = mpsc::unbounded();
    let sink = sink.sink_map_err(|_| tungstenite::Error::ConnectionClosed);
    let current = CurrentUser {
        id: user.id,
        username: user.username.clone(),
        roles: vec!["user".into()],
        jti: "jti".into(),
        sid: "sid".into(),
        expires_at: Utc::now() + chrono::Duration::days(1),
    };
    let mode = Mode::Room {
        room: Box::new(room),
        since,
    };
    tokio::spawn(run(chat.clone(), (sink, stream), current, mode));
    Peer {
        to_server,
        from_server,
    }
}

impl Peer {
    fn send(&self, frame: &Value) {
        let sent = self
            .to_server
            .unbounded_send(Ok(Message::text(frame.to_string())));
        assert!(sent.is_ok(), "the session stopped reading");
    }

    /// The next text frame (pings skipped).
    async fn next(&mut self) -> Value {
        loop {
            match self.from_server.next().await {
                Some(Message::Text(text)) => return serde_json::from_str(&text).expect("JSON"),
                Some(Message::Close(close)) => panic!("closed: {close:?}"),
                Some(_) => {}
                None => panic!("the session ended"),
            }
        }
    }

    /// Frames up to and including the first one of type `kind`.
    async fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let frame = self.next().await;
            let last = frame["type"] == kind;
            got.push(frame);
            if last {
                return got;
            }
        }
    }
}

/// `m<seq>` for a message frame, `ack <client_id> <seq>`, `error <code>`, else the type.
fn label(frame: &Value) -> String {
    match frame["type"].as_str().expect("typed") {
        "message" => format!("m{}", frame["seq"]),
        "ack" => format!(
            "ack {} {}",
            frame["client_id"].as_str().unwrap_or("-"),
            frame["seq"]
        ),
        "error" => format!("error {}", frame["code"].as_str().unwrap_or("-")),
        other => other.to_owned(),
    }
}

fn labels(frames: &[Value]) -> Vec<String> {
    frames.iter().map(label).collect()
}

/// Turns of the scheduler (no clock) until `user` has a socket in `room`'s channel.
async fn joined(chat: &Chat, room: i64, user: i64) {
    for _ in 0..1000 {
        let subs = chat.hub.subscriptions();
        if subs
            .iter()
            .any(|(r, users)| *r == room && users.contains(&user))
        {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the socket never joined the room");
}

/// Wait for `ctl` (a bare socket of the hub) to be sent the message `seq`.
async fn delivered(ctl: &SocketCtl, seq: i64) {
    loop {
        std::future::poll_fn(|cx| ctl.outbox.poll_ready(cx)).await;
        for frame in ctl.outbox.take_all() {
            let v: Value = serde_json::from_str(&frame).expect("JSON");
            if v["type"] == "message" && v["seq"] == seq {
                return;
            }
        }
    }
}

impl Peer {
    /// Labels of the frames up to the point where every one of `wanted` has been seen.
    async fn until_seen(&mut self, wanted: &[&str]) -> Vec<String> {
        let mut got = Vec::new();
        while !wanted.iter().all(|w| got.iter().any(|g| g == w)) {
            got.push(label(&self.next().await));
        }
        got
    }

    /// A `ping` answered: the labels of whatever came before its `pong`.
    async fn before_pong(&mut self) -> Vec<String> {
        self.send(&json!({"type": "ping"}));
        let mut got = labels(&self.until("pong").await);
        got.pop();
        got
    }
}

fn messages(labels: &[String]) -> Vec<&str> {
    labels
        .iter()
        .filter(|l| l.starts_with('m'))
        .map(String::as_str)
        .collect()
}

/// A socket that resumes with `since_seq` while messages are on their way gets `ready`, the
/// history after `since_seq` up to the `seq` the room had delivered when it joined, what
/// arrived during its replay, then live messages: no gap, no copy. The room is behind the
/// database here (three publishes still on their way when the socket joins): the replay
/// stops at the room's `seq`, and the three arrive during it.
#[tokio::test(start_paused = true)]
async fn a_resuming_socket_gets_history_then_live_with_no_gap_and_no_copy() {
    let fx = Fixture::new().await;
    let room = fx.room.id;
    fx.commit_quietly(10).await;
    // Another socket of this replica holds the room's channel, at `seq` 10.
    let observer = fx.chat.hub.register_socket(fx.owner.id, false, "o".into());
    assert_eq!(fx.chat.hub.join(room, &observer, None).await.ok(), Some(10));
    assert_eq!(fx.chat.hub.resume(room, &observer, false), Ok(()));
    let late = fx.commit_quietly(3).await;
    // Holding the one connection stops the session at its first query after joining: the
    // socket is joined, paused, until the transaction ends.
    let txn = fx.db.begin().await.expect("begin");
    let mut peer = open(&fx.chat, &fx.member, fx.room.clone(), Some(2));
    joined(&fx.chat, room, fx.member.id).await;
    for msg in &late {
        let published = fx.chat.bus.publish(route::message(room, msg)).await;
        assert!(published.is_ok());
    }
    delivered(&observer, 13).await;
    drop(txn);

    let ready = peer.next().await;
    assert_eq!(
        (label(&ready), ready["last_seq"].as_i64()),
        ("ready".into(), Some(10))
    );
    peer.send(&json!({"type": "message", "content": "live", "client_id": "c14"}));
    let mut got = peer.until_seen(&["m14", "ack c14 14"]).await;
    got.extend(peer.before_pong().await);
    let expected: Vec<String> = (3..=14).map(|seq| format!("m{seq}")).collect();
    assert_eq!(messages(&got), expected, "{got:?}");
}

/// Without `since_seq` a socket gets no history: `ready` (with the room's `seq`), then only
/// what is new.
#[tokio::test(start_paused = true)]
async fn a_socket_without_since_seq_gets_no_history() {
    let fx = Fixture::new().await;
    fx.commit_quietly(3).await;
    let mut peer = open(&fx.chat, &fx.member, fx.room.clone(), None);
    let ready = peer.next().await;
    assert_eq!(
        (label(&ready), ready["last_seq"].as_i64()),
        ("ready".into(), Some(3))
    );
    assert!(messages(&peer.before_pong().await).is_empty());
}

/// A client's answers come in the order of its frames, whether they wait for a commit
/// (`ack`) or not (`error`, `pong`); each message's echo comes once, in `seq` order.
#[tokio::test(start_paused = true)]
async fn answers_keep_the_order_of_their_frames() {
    let fx = Fixture::new().await;
    let mut peer = open(&fx.chat, &fx.member, fx.room.clone(), None);
    assert_eq!(label(&peer.next().await), "ready");
    let message = |id: &str| json!({"type": "message", "content": "hi", "client_id": id});
    for frame in [
        message("c1"),
        message("c2"),
        json!({"type": "nonsense"}),
        json!({"type": "ping"}),
        json!({"type": "message", "content": ""}),
        message("c3"),
    ] {
        peer.send(&frame);
    }
    let mut got = peer.until_seen(&["ack c3 3", "m3"]).await;
    got.extend(peer.before_pong().await);
    let answers: Vec<&str> = got
        .iter()
        .filter(|l| !l.starts_with('m'))
        .map(String::as_str)
        .collect();
    assert_eq!(
        answers,
        [
            "ack c1 1",
            "ack c2 2",
            "error unknown_type",
            "pong",
            "error validation_failed",
            "ack c3 3"
        ],
        "{got:?}"
    );
    assert_eq!(messages(&got), ["m1", "m2", "m3"], "{got:?}");
}
