//! A service over an in-memory database and the local bus, for the unit tests of the layers
//! above (`ws` cannot reach the store or the bus itself): one public room `r`, its owner and a
//! member, on a paused clock held still (see `store::testing::hold_clock`).

use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Chat, sockets::Entered};
use crate::{
    bus::route,
    config::Config,
    domain::{
        model::{Message, UserRef},
        room::Visibility,
    },
    fanout::hub::Hub,
    store::{
        self,
        commit::{self, NewMessage},
        testing,
    },
};

/// The service, its database, and the room `r` with its owner and a member.
pub(crate) struct TestChat {
    _clock: testing::ClockHold,
    db: DatabaseConnection,
    pub(crate) chat: Chat,
    pub(crate) room: i64,
    pub(crate) owner: UserRef,
    pub(crate) member: UserRef,
}

impl TestChat {
    pub(crate) async fn new() -> Self {
        let clock = testing::hold_clock();
        let db = testing::sqlite().await;
        let config = Config::for_tests("sqlite::memory:");
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let chat = Chat::build(config, db.clone(), None, tasks, stop)
            .await
            .expect("chat");
        let owner = testing::user(&db, "owner").await;
        let member = testing::user(&db, "member").await;
        let room = store::rooms::create(&db, "r", None, Visibility::Public, owner.id)
            .await
            .expect("room");
        store::rooms::add_member(&db, room.id, member.id)
            .await
            .expect("member");
        Self {
            _clock: clock,
            db,
            chat,
            room: room.id,
            owner,
            member,
        }
    }

    /// Room `r`, entered by `user` (a member), ready to join on a socket.
    pub(crate) async fn entered(&self, user: &UserRef) -> Entered {
        self.chat
            .sockets()
            .subscribe(user.id, "r")
            .await
            .expect("a member enters")
    }

    /// Commit `n` messages of the owner's, published nowhere.
    pub(crate) async fn commit_quietly(&self, n: usize) -> Vec<Message> {
        let batch: Vec<NewMessage<'_>> = (0..n)
            .map(|_| NewMessage {
                room_id: self.room,
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

    /// Publish a committed message on the bus, as the group commit would have.
    pub(crate) async fn publish(&self, msg: &Message) {
        let published = self
            .chat
            .upkeep()
            .events
            .bus()
            .publish(route::message(self.room, msg))
            .await;
        assert!(published.is_ok(), "published");
    }

    /// The replica's fan-out.
    pub(crate) fn hub(&self) -> Arc<Hub> {
        self.chat.upkeep().hub()
    }

    /// An open transaction on the one connection: every query waits until it is dropped.
    pub(crate) async fn hold_database(&self) -> DatabaseTransaction {
        self.db.begin().await.expect("begin")
    }
}
