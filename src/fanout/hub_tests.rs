//! Joins and leaves: a room has a channel (and a task, and a bus subscription) while at
//! least one socket of this replica is joined, whatever order the sockets leave in and
//! whoever dropped them; presence counts per room and user. Over a bus that delivers
//! locally and records what the hub asked of it, and an in-memory database.

use std::{
    future::poll_fn,
    sync::{Weak, atomic::AtomicBool},
};

use async_trait::async_trait;

use super::*;
use crate::{
    bus::route,
    bus::{BusState, InboundSlot},
    domain::event::Event,
    store::{
        commit::{self, NewMessage},
        testing,
    },
};

/// A local bus that also records the subscriptions asked for (`+room`, `-room`) and can be
/// made to refuse them.
#[derive(Default)]
struct Recording {
    inbound: InboundSlot,
    log: Mutex<Vec<String>>,
    refuse: AtomicBool,
}

#[async_trait]
impl Bus for Recording {
    async fn publish(&self, env: Envelope) -> anyhow::Result<()> {
        self.inbound.with(|inbound| inbound.receive(env));
        Ok(())
    }
    async fn subscribe(&self, room: i64) -> anyhow::Result<()> {
        if self.refuse.load(Ordering::Acquire) {
            anyhow::bail!("broker unreachable");
        }
        self.log.lock().push(format!("+{room}"));
        Ok(())
    }
    fn unsubscribe(&self, room: i64) {
        self.log.lock().push(format!("-{room}"));
    }
    fn state(&self) -> BusState {
        BusState::Local
    }
    fn attach(&self, inbound: Weak<dyn Inbound>) {
        self.inbound.set(inbound);
    }
}

struct Fixture {
    _clock: testing::ClockHold,
    db: DatabaseConnection,
    bus: Arc<Recording>,
    hub: Arc<Hub>,
    tasks: TaskTracker,
    room: i64,
}

impl Fixture {
    /// A hub over a new database with one room (no messages yet), the paused clock held
    /// still (see `store::testing::hold_clock`).
    async fn new() -> Self {
        let clock = testing::hold_clock();
        let db = testing::sqlite().await;
        let owner = testing::user(&db, "owner").await;
        let room = store::rooms::create(
            &db,
            "r",
            None,
            crate::domain::room::Visibility::Public,
            owner.id,
        )
        .await
        .expect("room")
        .id;
        let bus = Arc::new(Recording::default());
        let tasks = TaskTracker::new();
        let hub = Hub::new(db.clone(), bus.clone(), 16, tasks.clone());
        Self {
            _clock: clock,
            db,
            bus,
            hub,
            tasks,
            room,
        }
    }

    /// A socket joined to the room and live; the `seq` it was told to replay up to.
    async fn joined(&self, user: i64) -> (Arc<SocketCtl>, i64) {
        let ctl = self.hub.register_socket(user, false, "s".into());
        let last = self.hub.join(self.room, &ctl, None).await.expect("join");
        assert_eq!(self.hub.resume(self.room, &ctl, false), Ok(()));
        (ctl, last)
    }

    fn log(&self) -> Vec<String> {
        self.bus.log.lock().clone()
    }

    /// Let the room task run what it was sent (no database work on these paths).
    async fn settle(&self) {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Commit `n` messages to the room without publishing them.
    async fn commit_quietly(&self, n: usize) {
        let author = testing::user(&self.db, &format!("quiet{n}")).await;
        store::rooms::add_member(&self.db, self.room, author.id)
            .await
            .expect("member");
        let batch: Vec<NewMessage<'_>> = (0..n)
            .map(|_| NewMessage {
                room_id: self.room,
                room: "r",
                author: &author,
                content: "quiet",
                client_id: None,
                reply_to: None,
            })
            .collect();
        let stored = commit::commit(&self.db, &batch).await.expect("commit");
        assert!(stored.iter().all(Result::is_ok));
    }
}

/// The next frame in `ctl`'s queue, waited for without a clock; its `type`.
async fn next_type(ctl: &SocketCtl) -> String {
    poll_fn(|cx| ctl.outbox.poll_ready(cx)).await;
    let frames = ctl.outbox.take_all();
    assert_eq!(frames.len(), 1, "one frame at a time here");
    let v: serde_json::Value = serde_json::from_str(&frames[0]).expect("JSON");
    v["type"].as_str().expect("typed").to_owned()
}

/// One channel, one task and one bus subscription per room on this replica, however many
/// sockets joined; they stay until the last socket leaves, whichever it is.
#[tokio::test(start_paused = true)]
async fn a_room_lives_while_any_socket_is_joined() {
    let fx = Fixture::new().await;
    let r = fx.room;
    let (a, _) = fx.joined(1).await;
    let (b, _) = fx.joined(2).await;
    let (c, _) = fx.joined(2).await;
    assert_eq!((fx.hub.room_count(), fx.tasks.len()), (1, 1));
    assert_eq!(
        fx.log(),
        [format!("+{r}")],
        "one subscription for three sockets"
    );

    fx.hub.leave(r, &b);
    fx.hub.leave(r, &a);
    fx.settle().await;
    assert_eq!(
        (fx.hub.room_count(), fx.tasks.len()),
        (1, 1),
        "c is still in"
    );
    assert_eq!(fx.log(), [format!("+{r}")]);
    assert_eq!(fx.hub.subscriptions(), [(r, vec![2])]);
    let deleted = Event::MessageDeleted {
        room: "r",
        id: 1,
        seq: 1,
    };
    let _ = fx.bus.publish(route::to_room(r, &deleted)).await;
    assert_eq!(next_type(&c).await, "message_deleted", "delivered to c");

    fx.hub.leave(r, &c);
    fx.settle().await;
    assert_eq!((fx.hub.room_count(), fx.tasks.len()), (0, 0), "gone");
    assert_eq!(fx.log(), [format!("+{r}"), format!("-{r}")]);
}

/// A socket the hub dropped itself (here: its user was removed from the room) still owes
/// its leave, and that leave releases the room.
#[tokio::test(start_paused = true)]
async fn the_leave_of_a_socket_the_hub_dropped_still_counts() {
    let fx = Fixture::new().await;
    let r = fx.room;
    let (a, _) = fx.joined(1).await;
    let _ = fx.bus.publish(route::removed(r, "r", 1)).await;
    assert_eq!(next_type(&a).await, "removed");
    assert_eq!(a.close_reason(), CloseReason::Removed);
    assert_eq!(fx.hub.subscriptions(), [(r, vec![])], "dropped by the hub");
    assert_eq!(fx.hub.room_count(), 1, "its leave is still to come");

    fx.hub.leave(r, &a);
    fx.settle().await;
    assert_eq!((fx.hub.room_count(), fx.tasks.len()), (0, 0));
    assert_eq!(fx.log(), [format!("+{r}"), format!("-{r}")]);
}

/// A join that cannot subscribe holds nothing: no room is left behind, and the next join
/// subscribes afresh.
#[tokio::test(start_paused = true)]
async fn a_failed_join_leaves_no_room_behind() {
    let fx = Fixture::new().await;
    let r = fx.room;
    fx.bus.refuse.store(true, Ordering::Release);
    let ctl = fx.hub.register_socket(1, false, "s".into());
    assert!(fx.hub.join(r, &ctl, None).await.is_err());
    fx.settle().await;
    assert_eq!((fx.hub.room_count(), fx.tasks.len()), (0, 0));
    fx.bus.log.lock().clear();

    fx.bus.refuse.store(false, Ordering::Release);
    let (b, _) = fx.joined(2).await;
    assert_eq!(fx.hub.room_count(), 1);
    fx.hub.leave(r, &b);
    assert_eq!(fx.hub.room_count(), 0);
    assert_eq!(fx.log(), [format!("+{r}"), format!("-{r}")]);
}

/// A room joined again after its last socket left starts from the database's counter, not
/// from what its previous channel had delivered.
#[tokio::test(start_paused = true)]
async fn a_room_rejoined_after_its_last_leave_starts_from_the_database() {
    let fx = Fixture::new().await;
    let (a, last) = fx.joined(1).await;
    assert_eq!(last, 0);
    fx.hub.leave(fx.room, &a);
    fx.commit_quietly(2).await;
    let (_b, last) = fx.joined(2).await;
    assert_eq!(last, 2, "replay up to the committed counter");
}

/// Presence transitions on this replica happen at a user's first socket in a room and at
/// their last, counted per room and user.
#[tokio::test(start_paused = true)]
async fn presence_counts_sockets_per_room_and_user() {
    let fx = Fixture::new().await;
    let hub = &fx.hub;
    assert!(hub.presence_inc(1, 10), "first socket of 10 in 1");
    assert!(!hub.presence_inc(1, 10), "second socket of 10 in 1");
    assert!(hub.presence_inc(1, 11), "another user");
    assert!(hub.presence_inc(2, 10), "another room");
    assert!(!hub.presence_dec(1, 10), "one socket of 10 still in 1");
    assert!(hub.presence_dec(1, 10), "the last one");
    assert!(
        !hub.presence_dec(1, 10),
        "a leave too many is no transition"
    );
    assert!(hub.presence_inc(1, 10), "first again");
    assert!(hub.presence_dec(2, 10) && hub.presence_dec(1, 11));
}
