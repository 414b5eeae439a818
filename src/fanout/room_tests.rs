//! The ordering rule of one room, without the hub or a bus: a [`RoomChannel`] and its task,
//! items put straight into its inbox, sockets as bare [`SocketCtl`]s whose queues the tests
//! read. On paused time, held still (`store::testing::hold_clock`): the reorder wait passes
//! only when a test advances the clock.

use std::{future::poll_fn, sync::Arc, time::Duration};

use super::*;
use crate::{
    bus::Envelope,
    domain::model::Message,
    store::{
        commit::{self, NewMessage},
        testing,
    },
};

/// A room channel whose task runs, initialised at `last` and held by one reference (as if a
/// socket had joined through the hub).
struct Room {
    channel: Arc<RoomChannel>,
    task: tokio::task::JoinHandle<()>,
}

impl Room {
    fn start(db: DatabaseConnection, id: i64, capacity: usize, last: i64) -> Self {
        let (channel, rx) = RoomChannel::new(id, db, capacity);
        channel.state.lock().last = last;
        channel.init.set(()).expect("a new channel");
        channel.refs.fetch_add(1, Ordering::AcqRel);
        let task = tokio::spawn(run(channel.clone(), rx));
        Self { channel, task }
    }

    fn send(&self, item: Item) {
        let sent = self.channel.inbox.send(RoomInput::Item(item));
        assert!(sent.is_ok(), "the room task is gone");
    }

    /// Subscribe `ctl` and take it live at once (nothing to replay).
    fn live(&self, ctl: &Arc<SocketCtl>) {
        self.channel.add(ctl.clone(), None);
        assert_eq!(self.channel.resume(ctl.id, false), Ok(()));
    }

    /// What `ctl` (a live subscriber) received once the room task applied everything sent so
    /// far: a `barrier` event goes through the inbox behind it, and what `ctl` has received
    /// when the barrier reaches it is returned (the barrier left out, and anything queued
    /// after it kept in: the clock is held, so only a broken room delivers anything then).
    /// No clock: it waits for `ctl`'s queue.
    async fn through(&mut self, ctl: &SocketCtl) -> Vec<String> {
        self.send(event(self.channel.id, "barrier"));
        let mut got = Vec::new();
        loop {
            got.extend(taken(ctl));
            if let Some(at) = got.iter().position(|l| l == "barrier") {
                got.remove(at);
                return got;
            }
            assert!(
                !ctl.is_closing(),
                "the observing socket was closed: {got:?}"
            );
            tokio::select! {
                () = poll_fn(|cx| ctl.outbox.poll_ready(cx)) => {}
                _ = &mut self.task => panic!("the room task ended"),
            }
        }
    }
}

/// A socket (of user `id`) with a queue of `capacity` frames.
fn socket(id: u64, capacity: usize) -> Arc<SocketCtl> {
    let user = i64::try_from(id).expect("a small id");
    Arc::new(SocketCtl::new(id, user, false, capacity, "s".into()))
}

/// A live `message` with this `seq` (a frame of its own making: only `type` and `seq`).
fn message(room: i64, seq: i64) -> Item {
    let frame = format!(r#"{{"type":"message","seq":{seq}}}"#);
    let mut env = Envelope::new(room, Kind::Message, frame);
    env.header.seq = seq;
    Item::from_envelope(env).expect("a text frame")
}

/// A stored message as its replica publishes it.
fn published(room: i64, msg: &Message) -> Item {
    Item::from_envelope(route::message(room, msg)).expect("a text frame")
}

/// A room event other than a message (`{"type": kind}`).
fn event(room: i64, kind: &str) -> Item {
    let frame = format!(r#"{{"type":"{kind}"}}"#);
    Item::from_envelope(Envelope::new(room, Kind::Event, frame)).expect("a text frame")
}

/// Empty `ctl`'s queue: `m<seq>` for each message frame, the `type` of any other.
fn taken(ctl: &SocketCtl) -> Vec<String> {
    ctl.outbox
        .take_all()
        .iter()
        .map(|frame| {
            let v: serde_json::Value = serde_json::from_str(frame).expect("a JSON frame");
            match v["type"].as_str().expect("a typed frame") {
                "message" => format!("m{}", v["seq"]),
                other => other.to_owned(),
            }
        })
        .collect()
}

/// Move the clock and let the room task run what the timer released. (A fill the timer
/// started reads the database; [`Room::through`] waits for it, behind it in the inbox.) The
/// deadlines are those of items already applied: a test lets the room apply them first.
async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A room `r` in a new database, with `n` messages committed (not published anywhere).
async fn room_with_messages(n: usize) -> (DatabaseConnection, i64, Vec<Message>) {
    let db = testing::sqlite().await;
    let author = testing::user(&db, "author").await;
    let room = store::rooms::create(
        &db,
        "r",
        None,
        crate::domain::room::Visibility::Public,
        author.id,
    )
    .await
    .expect("room");
    let texts: Vec<String> = (1..=n).map(|i| format!("text {i}")).collect();
    let batch: Vec<NewMessage<'_>> = texts
        .iter()
        .map(|content| NewMessage {
            room_id: room.id,
            room: "r",
            author: &author,
            content,
            client_id: None,
            reply_to: None,
        })
        .collect();
    let stored = commit::commit(&db, &batch).await.expect("commit");
    let messages = stored
        .into_iter()
        .map(|s| s.expect("stored").message().clone())
        .collect();
    (db, room.id, messages)
}

/// A message ahead of the next `seq` waits (up to the reorder wait) for the ones before it,
/// and they then leave in order.
#[tokio::test(start_paused = true)]
async fn an_early_message_waits_for_the_one_before_it() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 16, 0);
    let ctl = socket(1, 16);
    room.live(&ctl);
    room.send(message(1, 2));
    assert!(room.through(&ctl).await.is_empty(), "2 waits for 1");
    advance(REORDER_WAIT - Duration::from_millis(1)).await;
    assert!(room.through(&ctl).await.is_empty(), "still waiting");
    room.send(message(1, 1));
    assert_eq!(room.through(&ctl).await, ["m1", "m2"]);
}

/// Copies of messages already delivered (a late publish, a replayed echo) are dropped, in
/// the same batch or later.
#[tokio::test(start_paused = true)]
async fn copies_of_delivered_messages_are_dropped() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 16, 0);
    let ctl = socket(1, 16);
    room.live(&ctl);
    for seq in [1, 2, 2, 1] {
        room.send(message(1, seq));
    }
    assert_eq!(room.through(&ctl).await, ["m1", "m2"]);
    room.send(message(1, 1));
    room.send(message(1, 3));
    assert_eq!(room.through(&ctl).await, ["m3"]);
}

/// A gap that the bus does not fill within the reorder wait is read from the database:
/// the missing messages, then the waiting one, each once.
#[tokio::test(start_paused = true)]
async fn a_gap_nobody_fills_is_read_from_the_database() {
    let _clock = testing::hold_clock();
    let (db, id, msgs) = room_with_messages(3).await;
    let mut room = Room::start(db, id, 16, 0);
    let ctl = socket(1, 16);
    room.live(&ctl);
    room.send(published(id, &msgs[2]));
    assert!(room.through(&ctl).await.is_empty(), "3 waits for 1 and 2");
    advance(REORDER_WAIT - Duration::from_millis(1)).await;
    assert!(room.through(&ctl).await.is_empty(), "still waiting");
    advance(Duration::from_millis(1)).await;
    assert_eq!(room.through(&ctl).await, ["m1", "m2", "m3"]);
    // The lost publishes turn up after all.
    room.send(published(id, &msgs[0]));
    room.send(published(id, &msgs[1]));
    assert!(room.through(&ctl).await.is_empty(), "no copies");
}

/// After a bus reconnect, everything after the last delivered `seq` is read from the
/// database, with nothing pending to say so.
#[tokio::test(start_paused = true)]
async fn a_resync_reads_what_the_bus_may_have_lost() {
    let _clock = testing::hold_clock();
    let (db, id, _) = room_with_messages(3).await;
    let mut room = Room::start(db, id, 16, 1);
    let ctl = socket(1, 16);
    room.live(&ctl);
    assert!(room.channel.inbox.send(RoomInput::Resync).is_ok());
    assert_eq!(room.through(&ctl).await, ["m2", "m3"]);
}

/// The database has nothing before the waiting message (its batch rolled back after taking
/// the `seq`): the room skips the hole instead of waiting for ever.
#[tokio::test(start_paused = true)]
async fn a_hole_in_the_database_is_skipped() {
    let _clock = testing::hold_clock();
    let (db, id, _) = room_with_messages(0).await;
    let mut room = Room::start(db, id, 16, 0);
    let ctl = socket(1, 16);
    room.live(&ctl);
    room.send(message(id, 2));
    assert!(room.through(&ctl).await.is_empty(), "2 waits for 1");
    advance(REORDER_WAIT).await;
    assert_eq!(room.through(&ctl).await, ["m2"]);
    room.send(message(id, 3));
    assert_eq!(room.through(&ctl).await, ["m3"]);
}

/// A socket that replays history holds what arrives meanwhile, and gets it, in order, when
/// it goes live.
#[tokio::test(start_paused = true)]
async fn held_frames_follow_the_replay_on_resume() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 16, 2);
    let observer = socket(1, 16);
    room.live(&observer);
    let joining = socket(2, 16);
    assert_eq!(
        room.channel.add(joining.clone(), Some(0)),
        2,
        "replay up to 2"
    );
    room.send(message(1, 3));
    room.send(event(1, "typing"));
    room.send(message(1, 4));
    assert_eq!(room.through(&observer).await, ["m3", "typing", "m4"]);
    assert!(taken(&joining).is_empty(), "held while replaying");
    assert_eq!(room.channel.resume(joining.id, false), Ok(()));
    assert_eq!(taken(&joining), ["m3", "typing", "m4", "barrier"]);
    room.send(message(1, 5));
    assert_eq!(room.through(&observer).await, ["m5"]);
    assert_eq!(taken(&joining), ["m5", "barrier"], "live now");
}

/// A client that already has messages this room has not delivered yet (it came from a
/// replica further ahead) gets none of them again.
#[tokio::test(start_paused = true)]
async fn a_client_ahead_of_the_room_gets_nothing_twice() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 16, 2);
    let observer = socket(1, 16);
    room.live(&observer);
    let joining = socket(2, 16);
    room.channel.add(joining.clone(), Some(4));
    for seq in 3..=5 {
        room.send(message(1, seq));
    }
    assert_eq!(room.through(&observer).await, ["m3", "m4", "m5"]);
    assert_eq!(room.channel.resume(joining.id, false), Ok(()));
    assert_eq!(taken(&joining), ["m5", "barrier"]);
}

/// More arrives during a replay than the held buffer takes: the socket is not closed, and
/// not given a part of it either; it is told to replay up to the room's last `seq` from the
/// database, then holds anew.
#[tokio::test(start_paused = true)]
async fn an_overflowing_held_buffer_sends_the_socket_back_to_the_database() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 2, 0);
    let observer = socket(1, 16);
    room.live(&observer);
    let joining = socket(2, 16);
    room.channel.add(joining.clone(), Some(0));
    for seq in 1..=3 {
        room.send(message(1, seq));
    }
    assert_eq!(room.through(&observer).await, ["m1", "m2", "m3"]);
    assert_eq!(
        room.channel.resume(joining.id, false),
        Err(3),
        "replay to 3"
    );
    assert!(
        taken(&joining).is_empty(),
        "nothing of the overflowed buffer"
    );
    assert!(
        !joining.is_closing(),
        "a replaying socket is no slow consumer"
    );
    room.send(message(1, 4));
    assert_eq!(room.through(&observer).await, ["m4"]);
    assert_eq!(room.channel.resume(joining.id, false), Ok(()));
    assert_eq!(taken(&joining), ["m4", "barrier"]);
}

/// Held frames that do not fit in the socket's queue (still full of the replay) are not
/// forced into it: the socket replays them from the database instead.
#[tokio::test(start_paused = true)]
async fn held_frames_wait_for_room_in_the_queue() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 16, 0);
    let observer = socket(1, 16);
    room.live(&observer);
    let joining = socket(2, 4);
    room.channel.add(joining.clone(), Some(0));
    for replayed in ["a", "b", "c"] {
        assert!(
            joining
                .outbox
                .try_push(Frame::from_static(replayed))
                .is_ok()
        );
    }
    room.send(message(1, 1));
    room.send(message(1, 2));
    assert_eq!(room.through(&observer).await, ["m1", "m2"]);
    assert_eq!(room.channel.resume(joining.id, false), Err(2));
    assert!(!joining.is_closing());
    assert_eq!(joining.outbox.take_all().len(), 3, "the replay only");
    assert_eq!(room.channel.resume(joining.id, false), Ok(()));
    assert!(taken(&joining).is_empty(), "1 and 2 come from the database");
}

/// A live socket whose queue is full is closed as a slow consumer and dropped from the
/// room; the others get everything.
#[tokio::test(start_paused = true)]
async fn a_full_queue_closes_only_its_own_socket() {
    let _clock = testing::hold_clock();
    let mut room = Room::start(testing::sqlite().await, 1, 16, 0);
    let reader = socket(1, 16);
    let slow = socket(2, 2);
    room.live(&reader);
    room.live(&slow);
    for seq in 1..=3 {
        room.send(message(1, seq));
    }
    assert_eq!(room.through(&reader).await, ["m1", "m2", "m3"]);
    assert_eq!(slow.close_reason(), CloseReason::SlowConsumer);
    assert_eq!(room.channel.subscriber_users(), [reader.user_id]);
}
