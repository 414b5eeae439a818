//! Replay reads, coalesced: when a replica dies, its sockets reconnect to the survivors at once
//! with the same `since_seq`, and each would read the same pages of the same room. Identical
//! reads share one database query instead (one read per room and page per burst).
//!
//! A socket may share a read only if that read started after the socket was registered in the
//! room (paused): then anything committed after the read's snapshot — a new message, an edit,
//! a deletion — reaches the socket as a live event it buffers, so a shared page is never
//! staler than the socket's own read would have been.
//!
//! A shared page is read for no one in particular; a reaction's `me` is then set for the
//! reader with one more query, only for a page that has reactions at all.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use parking_lot::Mutex;
use sea_orm::DatabaseConnection;
use tokio::time::Instant;

use crate::store::{self, messages::FillRow};

/// A page of a replay, shared by every socket that waits for it.
pub(crate) type Page = Arc<Vec<FillRow>>;

type Read = Shared<BoxFuture<'static, Result<Page, Arc<sea_orm::DbErr>>>>;

struct Flight {
    started: Instant,
    read: Read,
}

/// Key: room, `after`, page size.
type Key = (i64, i64, u64);

/// Flights kept at most (older ones are dropped first; a dropped flight only costs a read).
const MAX_FLIGHTS: usize = 4096;
/// A finished flight no waiter removed (every waiter went away) is forgotten after this.
const FLIGHT_TTL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct ReplayReads {
    flights: Mutex<HashMap<Key, Flight>>,
}

impl ReplayReads {
    /// Up to `limit` messages of `room_id` after `after` (deleted ones as `None`) for
    /// `reader`, whose socket was registered in the room at `joined`: one query shared by
    /// every socket asking for the same page meanwhile.
    ///
    /// # Errors
    /// The database's.
    pub(crate) async fn page(
        &self,
        db: &DatabaseConnection,
        (room_id, after, limit): (i64, i64, u64),
        joined: Instant,
        reader: i64,
    ) -> anyhow::Result<Page> {
        let page = self.shared(db, room_id, after, limit, joined).await?;
        Ok(mark_mine(db, page, reader).await?)
    }

    async fn shared(
        &self,
        db: &DatabaseConnection,
        room_id: i64,
        after: i64,
        limit: u64,
        joined: Instant,
    ) -> anyhow::Result<Page> {
        let key = (room_id, after, limit);
        let read = {
            let mut flights = self.flights.lock();
            match flights.get(&key) {
                Some(flight) if flight.started >= joined => {
                    metrics::counter!("chat_replay_reads_total", "shared" => "true").increment(1);
                    flight.read.clone()
                }
                _ => {
                    metrics::counter!("chat_replay_reads_total", "shared" => "false").increment(1);
                    if flights.len() >= MAX_FLIGHTS {
                        let now = Instant::now();
                        flights.retain(|_, f| now.duration_since(f.started) < FLIGHT_TTL);
                    }
                    let db = db.clone();
                    let read = async move {
                        store::messages::after_seq(&db, room_id, after, limit, None)
                            .await
                            .map(Arc::new)
                            .map_err(Arc::new)
                    }
                    .boxed()
                    .shared();
                    flights.insert(
                        key,
                        Flight {
                            started: Instant::now(),
                            read: read.clone(),
                        },
                    );
                    read
                }
            }
        };
        let page = read.clone().await;
        // The first waiter back forgets the flight (later sockets read anew).
        let mut flights = self.flights.lock();
        if flights.get(&key).is_some_and(|f| f.read.ptr_eq(&read)) {
            flights.remove(&key);
        }
        drop(flights);
        page.map_err(|e| anyhow::anyhow!("replay read: {e}"))
    }
}

/// `page` with each reaction's `me` set for `reader` (the page itself when it has none).
async fn mark_mine(
    db: &DatabaseConnection,
    page: Page,
    reader: i64,
) -> Result<Page, sea_orm::DbErr> {
    let reacted: Vec<i64> = page
        .iter()
        .filter_map(|row| row.message.as_ref())
        .filter(|msg| !msg.reactions.is_empty())
        .map(|msg| msg.id)
        .collect();
    if reacted.is_empty() {
        return Ok(page);
    }
    let mine = store::reactions::mine(db, &reacted, reader).await?;
    let mut rows = Vec::clone(&page);
    for msg in rows.iter_mut().filter_map(|row| row.message.as_mut()) {
        for reaction in &mut msg.reactions {
            reaction.me = mine.contains(&(msg.id, reaction.emoji.clone()));
        }
    }
    Ok(Arc::new(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::sqlite;

    fn page(result: &anyhow::Result<Page>) -> &Page {
        result.as_ref().expect("read")
    }

    #[tokio::test]
    async fn identical_reads_at_once_share_one_query() {
        let db = sqlite().await;
        let reads = ReplayReads::default();
        let joined = Instant::now();
        let pages =
            futures::future::join_all((0..8).map(|_| reads.shared(&db, 1, 0, 200, joined))).await;
        let first = page(&pages[0]);
        assert!(pages.iter().all(|p| Arc::ptr_eq(page(p), first)));
        // Another page, or another room, is another read.
        let (a, b) = tokio::join!(
            reads.shared(&db, 1, 0, 200, joined),
            reads.shared(&db, 1, 5, 200, joined)
        );
        assert!(!Arc::ptr_eq(page(&a), page(&b)));
        assert!(
            reads.flights.lock().is_empty(),
            "finished flights are forgotten"
        );
    }

    #[tokio::test]
    async fn a_socket_registered_after_a_read_started_reads_anew() {
        let db = sqlite().await;
        let reads = ReplayReads::default();
        let early = Instant::now();
        let (a, b) = tokio::join!(reads.shared(&db, 1, 0, 200, early), async {
            // The first read has started (polled once): this socket joined the room later,
            // so what that read saw may predate events this socket never buffered.
            tokio::task::yield_now().await;
            let later = Instant::now() + Duration::from_millis(1);
            reads.shared(&db, 1, 0, 200, later).await
        });
        assert!(!Arc::ptr_eq(page(&a), page(&b)));
    }
}
