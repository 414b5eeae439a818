//! Direct messages and read state (docs/protocol.md#conversations), with the throttled
//! `receipt` events. The rules (who may open a DM, who may read) are in [`super::access`];
//! mentions are resolved where messages are committed (`store::commit`) and announced by the
//! send path ([`super::send`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Error;
use sea_orm::DatabaseConnection;

use super::{
    access::{self, Access},
    auth::CurrentUser,
    events::Events,
    limits::Limits,
    presence::Online,
};
use crate::domain::room::RoomInfo;
use crate::domain::validate::FieldErrors;
use crate::{
    bus::Bus,
    bus::route,
    domain::{
        event::Event,
        model::{Page, Room, UserRef},
    },
    store,
};

/// Most other people in one DM.
pub(crate) const MAX_DM_OTHERS: usize = 8;

/// At most one `receipt` per user and room per this period (per replica).
const RECEIPT_PERIOD: Duration = Duration::from_secs(1);

/// Direct messages and read state.
pub(crate) struct Dms {
    db: DatabaseConnection,
    access: Access,
    limits: Limits,
    online: Online,
    receipts: Receipts,
}

impl Dms {
    pub(crate) fn new(
        db: DatabaseConnection,
        access: Access,
        limits: Limits,
        online: Online,
        receipts: Receipts,
    ) -> Self {
        Self {
            db,
            access,
            limits,
            online,
            receipts,
        }
    }

    /// `POST /dms`: the DM of exactly the caller and `others`, created (`true`) or found.
    ///
    /// # Errors
    /// 422 on `user_ids` (none, more than [`MAX_DM_OTHERS`], the caller, unknown users); 403
    /// if one of them refuses DMs; 429 when the caller created too many rooms.
    pub(crate) async fn open(
        &self,
        me: &CurrentUser,
        others: &[i64],
    ) -> Result<(Room, bool), Error> {
        let mut ids = others.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let invalid = |m: &str| Error::Validation {
            message: "validation failed".into(),
            fields: FieldErrors::from([("user_ids".to_owned(), vec![m.to_owned()])]),
        };
        if ids.is_empty() || ids.len() > MAX_DM_OTHERS {
            return Err(invalid("must name 1 to 8 other users"));
        }
        if ids.contains(&me.id) {
            return Err(invalid("must not include the caller"));
        }
        let accepting = store::users::accepting_dms(&self.db, &ids).await?;
        if accepting.len() != ids.len() {
            return Err(invalid("contains an unknown user"));
        }
        access::may_open_dm(&accepting)?;
        let mut people = ids;
        people.push(me.id);
        let key = store::rooms::dm_key(&people);
        // Opening an existing DM creates nothing: only a new one counts as a room created.
        if store::rooms::find_dm(&self.db, &key).await?.is_none() {
            self.limits.admit_room_creation(me.id).await?;
        }
        let (row, created) = store::rooms::create_or_get_dm(&self.db, &people, me.id).await?;
        let room = self.online.room_wire(row).await?;
        Ok((room, created))
    }

    /// `GET /dms`: one page of the caller's DMs, most recent activity first, each with the
    /// caller's read state.
    ///
    /// # Errors
    /// 422 on a `cursor` this server did not issue.
    pub(crate) async fn list(
        &self,
        me: &CurrentUser,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<Page<Room>, Error> {
        let cursor = match cursor {
            None => None,
            Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                Error::invalid_field("cursor", "is not the `next_cursor` of a previous page")
            })?),
        };
        let (rows, next) = store::rooms::list_dms(&self.db, me.id, limit, cursor).await?;
        let items = with_read_state(&self.db, &self.online, me, rows).await?;
        Ok(Page {
            items,
            next_cursor: next,
        })
    }

    /// The reader read up to `seq` in `room` (REST `POST …/read` and the `read` frame): the
    /// member's `last_read_seq` moves forward (never back), clamped to the room's last `seq`;
    /// others in the room get a throttled `receipt` unless the reader opted out.
    ///
    /// # Errors
    /// 404/403 as [`Access::writable_room`] (members only), then 422 on a negative `seq`
    /// ([`Dms::mark_read_in`], the one check for both transports).
    pub(crate) async fn mark_read(
        &self,
        me: &CurrentUser,
        room: &str,
        seq: i64,
    ) -> Result<(), Error> {
        let row = self.access.writable_room(room, me).await?;
        self.mark_read_in(row.id, &row.name, &me.user_ref(), seq)
            .await
    }

    /// [`Dms::mark_read`] for a room the caller is known to be a member of (a socket's).
    ///
    /// # Errors
    /// 422 on a negative `seq`; when the database fails.
    pub(crate) async fn mark_read_in(
        &self,
        room_id: i64,
        room: &str,
        reader: &UserRef,
        seq: i64,
    ) -> Result<(), Error> {
        if seq < 0 {
            return Err(Error::invalid_field(
                "seq",
                "must be a non-negative integer",
            ));
        }
        // The counter may have moved since `row` was read: the clamp reads it again.
        let last = store::rooms::last_seq(&self.db, room_id)
            .await
            .map_err(store::StoreError::from)?;
        let seq = seq.min(last);
        if !store::rooms::mark_read(&self.db, room_id, reader.id, seq).await? {
            return Ok(());
        }
        if store::users::sends_receipts(&self.db, reader.id)
            .await
            .map_err(store::StoreError::from)?
        {
            self.receipts
                .offer(room_id, Arc::from(room), reader.clone(), seq)
                .await;
        }
        Ok(())
    }
}

/// A page of rooms in their wire form with the caller's read state: a fixed number of
/// queries whatever the page's length (the read state is one grouped query).
///
/// # Errors
/// When the database fails.
pub(crate) async fn with_read_state(
    db: &DatabaseConnection,
    online: &Online,
    me: &CurrentUser,
    rows: Vec<RoomInfo>,
) -> Result<Vec<Room>, Error> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let online = online.counts(&ids).await;
    let mut read = store::rooms::read_states(db, me.id, &ids).await?;
    Ok(store::rooms::to_wire_many(db, rows, &online)
        .await?
        .into_iter()
        .map(|room| match read.remove(&room.id) {
            Some(state) => room.with_read(state),
            None => room,
        })
        .collect())
}

/// `<activity in µs>_<room id>`.
fn parse_cursor(c: &str) -> Option<(chrono::DateTime<chrono::Utc>, i64)> {
    let (at, id) = c.split_once('_')?;
    Some((
        chrono::DateTime::from_timestamp_micros(at.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// Per (room, reader): when the last receipt went out, and the latest `seq` waiting for the
/// trailing one.
struct Slot {
    sent: Option<Instant>,
    pending: Option<i64>,
    timer: bool,
}

/// The receipt throttle of this replica: at most one `receipt` per user and room per
/// [`RECEIPT_PERIOD`]; reads in between are coalesced (the latest wins) into one trailing
/// receipt at the end of the period, so the final value always arrives. Receipts go through
/// the bus, so every replica's sockets get them.
pub(crate) struct Receipts {
    bus: Arc<dyn Bus>,
    tasks: tokio_util::task::TaskTracker,
    slots: Arc<Mutex<HashMap<(i64, i64), Slot>>>,
}

impl Receipts {
    pub(crate) fn new(events: Events, tasks: tokio_util::task::TaskTracker) -> Self {
        let bus = events.bus().clone();
        Self {
            bus,
            tasks,
            slots: Arc::default(),
        }
    }

    /// `reader` read up to `seq` in the room.
    pub(crate) async fn offer(&self, room_id: i64, room: Arc<str>, reader: UserRef, seq: i64) {
        let now = Instant::now();
        let send_now = {
            let mut slots = self.slots.lock();
            if slots.len() > 4096 {
                // Forget readers whose period is over and who wait for nothing.
                slots.retain(|_, s| s.timer || s.sent.is_some_and(|t| now - t < RECEIPT_PERIOD));
            }
            let slot = slots.entry((room_id, reader.id)).or_insert(Slot {
                sent: None,
                pending: None,
                timer: false,
            });
            if slot.timer {
                slot.pending = Some(slot.pending.map_or(seq, |p| p.max(seq)));
                false
            } else if slot.sent.is_none_or(|t| now - t >= RECEIPT_PERIOD) {
                slot.sent = Some(now);
                true
            } else {
                slot.pending = Some(seq);
                slot.timer = true;
                let at = slot.sent.unwrap_or(now) + RECEIPT_PERIOD;
                let (slots, bus) = (self.slots.clone(), self.bus.clone());
                let (room, reader) = (room.clone(), reader.clone());
                self.tasks.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let seq = {
                        let mut slots = slots.lock();
                        let Some(slot) = slots.get_mut(&(room_id, reader.id)) else {
                            return;
                        };
                        slot.timer = false;
                        slot.sent = Some(Instant::now());
                        slot.pending.take()
                    };
                    if let Some(seq) = seq {
                        publish_receipt(&*bus, room_id, &room, &reader, seq).await;
                    }
                });
                false
            }
        };
        if send_now {
            publish_receipt(&*self.bus, room_id, &room, &reader, seq).await;
        }
    }
}

async fn publish_receipt(bus: &dyn Bus, room_id: i64, room: &str, reader: &UserRef, seq: i64) {
    let event = Event::Receipt {
        room,
        user: reader,
        seq,
    };
    if let Err(e) = bus
        .publish(route::to_room_but(room_id, &event, reader.id))
        .await
    {
        tracing::debug!(error = %e, "receipt not published");
    }
}
