//! Self-healing of the fast path: the database is the source of truth, and the
//! events the bus carries can be lost (a replica dies with its retry queue, Redis restarts).
//! Each rule here repairs what a lost event would leave wrong:
//!
//! * [`Hub::reconcile`](crate::fanout::hub::Hub::reconcile), every 2 s: rooms behind the
//!   database read their gap (a lost message publish);
//! * [`Upkeep::audit_sockets`], after the bus comes back and every 30 s: a socket whose token was
//!   revoked closes (4001), a socket whose user is no longer a member of a room is removed
//!   from it (4003, or the room dropped on `/ws`) — a lost revocation or kick.

use std::collections::HashSet;

use super::{Upkeep, revoke::DenyKey};
use crate::{bus::Inbound, bus::route, store};

impl Upkeep {
    /// Check every socket of this replica against the deny-list and its memberships, and
    /// apply locally what a lost revocation or kick event would have done.
    ///
    /// # Errors
    /// When the deny-list or the database cannot be read (the next pass tries again).
    pub(crate) async fn audit_sockets(&self) -> anyhow::Result<()> {
        // Revocations: one key per user and per session family.
        let mut sessions: HashSet<(i64, String)> = HashSet::new();
        for ctl in self.hub.sockets() {
            sessions.insert((ctl.user_id, ctl.sid()));
        }
        if !sessions.is_empty() {
            let mut keys: Vec<String> = Vec::with_capacity(sessions.len() * 2);
            for (user, sid) in &sessions {
                keys.push(DenyKey::User(*user).key());
                keys.push(DenyKey::Session(sid).key());
            }
            keys.sort();
            keys.dedup();
            let denied = self.revocation.denied(&keys).await?;
            for (user, sid) in sessions {
                if denied.contains(&DenyKey::User(user).key()) {
                    self.hub.receive(route::revoke(user, None, true));
                } else if denied.contains(&DenyKey::Session(&sid).key()) {
                    self.hub.receive(route::revoke(user, Some(sid), false));
                }
            }
        }
        // Memberships.
        let pairs: Vec<(i64, i64)> = self
            .hub
            .subscriptions()
            .into_iter()
            .flat_map(|(room, users)| users.into_iter().map(move |u| (room, u)))
            .collect();
        if pairs.is_empty() {
            return Ok(());
        }
        let (members, names) = store::rooms::memberships(&self.db, &pairs).await?;
        for (room, user) in pairs {
            if members.contains(&(room, user)) {
                continue;
            }
            // A deleted room is left to the reconciliation of its messages: its name is gone.
            if let Some(name) = names.get(&room) {
                tracing::info!(room, user, "socket of a non-member found; removing it");
                self.hub.receive(route::removed(room, name, user));
            }
        }
        Ok(())
    }
}
