//! The periodic work of a replica: one task per job, each on the service's task tracker,
//! each run by [`every`] with its period named next to it, each stopping with the shutdown
//! token. A slow job (Redis or the database slow to answer) delays only its own next run.

use std::{future::Future, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Chat;
use crate::{bus::BusState, fanout::hub, store};

/// Reconciliation: every active room is compared with the database's counter, and a room
/// behind it reads its gap (a lost message publish). The hub's rule of "behind" counts in
/// these periods.
pub(crate) const RECONCILE_EVERY: Duration = hub::RECONCILE_EVERY;

/// Socket audit, considered this often: it runs when the bus is up and either it reconnected
/// since the last audit (events may have been lost while it was down) or
/// [`SOCKET_AUDIT_EVERY`] has passed.
pub(crate) const SOCKET_AUDIT_CHECK_EVERY: Duration = hub::RECONCILE_EVERY;

/// Socket audit: every socket of this replica is checked against the deny-list and its
/// memberships (a lost revocation or kick), at least this often while the bus is up.
pub(crate) const SOCKET_AUDIT_EVERY: Duration = Duration::from_secs(30);

/// Presence heartbeat: this replica's presence entries are refreshed, well within their TTL
/// (`kv::keys::PRESENCE_ENTRY_TTL`, 30 s).
pub(crate) const PRESENCE_HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// Presence sweep: the expired entries of every replica (crashed ones) are removed and the
/// users they leave offline get one `leave` event.
pub(crate) const PRESENCE_SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Socket-quota heartbeat: this replica's live-socket entries are refreshed, well within
/// their TTL (`kv::keys::SOCKET_ENTRY_TTL`, 30 s), and put back after a Redis restart.
pub(crate) const SOCKET_QUOTA_HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// Rate-limit pruning: keys back to a full bucket and expired leases are forgotten (memory).
pub(crate) const RATE_LIMIT_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Deny-list purge: entries past the tokens they deny (a minute after those expire) are
/// deleted from the database.
pub(crate) const DENY_LIST_PURGE_EVERY: Duration = Duration::from_secs(300);

/// Run `job` at once, then once per `period`, until `stop` is cancelled. A run is never cut
/// short: `stop` is seen between runs. A run longer than the period delays the next one
/// (no burst of runs to catch up).
pub(crate) async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        job().await;
    }
}

/// When the socket audit is due: every [`SOCKET_AUDIT_EVERY`] (counted in checks), and at
/// the first check after the bus reconnected, never while the bus is down.
struct AuditDue {
    /// Checks left until the next audit.
    checks_left: u32,
    /// The hub's reconnect count at the last successful audit.
    audited_at: u64,
}

/// Checks between two audits.
const AUDIT_EVERY_CHECKS: u32 = {
    let n = SOCKET_AUDIT_EVERY.as_millis() / SOCKET_AUDIT_CHECK_EVERY.as_millis();
    assert!(n > 0 && n <= u32::MAX as u128);
    n as u32
};

impl AuditDue {
    fn new() -> Self {
        Self {
            checks_left: AUDIT_EVERY_CHECKS,
            audited_at: 0,
        }
    }

    /// One check: whether to audit now (the count restarts when it says yes).
    fn check(&mut self, bus: BusState, reconnects: u64) -> bool {
        self.checks_left = self.checks_left.saturating_sub(1);
        let due = bus != BusState::Down && (self.checks_left == 0 || reconnects != self.audited_at);
        if due {
            self.checks_left = AUDIT_EVERY_CHECKS;
        }
        due
    }

    /// The audit that [`AuditDue::check`] asked for succeeded, with the hub at `reconnects`.
    fn audited(&mut self, reconnects: u64) {
        self.audited_at = reconnects;
    }
}

impl Chat {
    /// Spawn every periodic job on the tracker; each stops when the service stops.
    pub(crate) fn spawn_periodic_tasks(&self) {
        self.spawn_every(RECONCILE_EVERY, |chat| async move {
            // The database is the source of truth: rooms behind it catch up.
            if let Err(e) = chat.upkeep().hub.reconcile().await {
                tracing::debug!(error = %e, "reconciliation failed");
            }
        });
        let due = Arc::new(Mutex::new(AuditDue::new()));
        self.spawn_every(SOCKET_AUDIT_CHECK_EVERY, move |chat| {
            let due = due.clone();
            async move { chat.audit_sockets_if_due(&due).await }
        });
        self.spawn_every(PRESENCE_HEARTBEAT_EVERY, |chat| async move {
            chat.upkeep().online.heartbeat().await;
        });
        self.spawn_every(PRESENCE_SWEEP_EVERY, |chat| async move {
            chat.upkeep().online.sweep().await;
        });
        self.spawn_every(SOCKET_QUOTA_HEARTBEAT_EVERY, |chat| async move {
            chat.limits().socket_quota_heartbeat().await;
        });
        self.spawn_every(RATE_LIMIT_PRUNE_EVERY, |chat| async move {
            chat.limits().prune_rate_limits();
        });
        self.spawn_every(DENY_LIST_PURGE_EVERY, |chat| async move {
            if let Err(e) = store::revoked::purge_expired(&chat.upkeep().db).await {
                tracing::debug!(error = %e, "purging expired revocations failed");
            }
        });
        // The search indexer paces itself (busy: often; idle: once a second).
        let chat = self.clone();
        self.tasks()
            .spawn(async move { chat.upkeep().search_indexer().await });
    }

    /// Spawn `job` on the tracker, run with a handle on the services every `period`.
    fn spawn_every<F, Fut>(&self, period: Duration, job: F)
    where
        F: Fn(Chat) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let chat = self.clone();
        self.tasks().spawn(every(
            period,
            self.stop().clone(),
            move || job(chat.clone()),
        ));
    }

    /// Audit this replica's sockets if [`AuditDue`] says so.
    async fn audit_sockets_if_due(&self, due: &Mutex<AuditDue>) {
        let upkeep = self.upkeep();
        let reconnects = upkeep.hub.reconnects();
        if !due.lock().check(upkeep.events.state(), reconnects) {
            return;
        }
        match upkeep.audit_sockets().await {
            Ok(()) => due.lock().audited(reconnects),
            Err(e) => tracing::debug!(error = %e, "socket audit failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Runs counted by a job that does nothing else.
    fn counter() -> (Arc<AtomicU32>, impl FnMut() -> std::future::Ready<()>) {
        let runs = Arc::new(AtomicU32::new(0));
        let job = {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                std::future::ready(())
            }
        };
        (runs, job)
    }

    #[tokio::test(start_paused = true)]
    async fn every_runs_the_job_once_per_period_until_cancelled() {
        let period = Duration::from_secs(10);
        let stop = CancellationToken::new();
        let (runs, job) = counter();
        let task = tokio::spawn(every(period, stop.clone(), job));
        // Runs at 0, 10, 20 and 30 s; the clock stops at 35 s.
        tokio::time::sleep(period * 3 + period / 2).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        stop.cancel();
        tokio::time::sleep(period * 5).await;
        assert!(task.is_finished(), "the task ends when cancelled");
        assert_eq!(runs.load(Ordering::SeqCst), 4, "no run after the cancel");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_delays_the_next_without_a_burst() {
        let period = Duration::from_secs(10);
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let job = {
            let runs = runs.clone();
            move || {
                let runs = runs.clone();
                async move {
                    // The first run takes three periods; the others are instant.
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        tokio::time::sleep(period * 3).await;
                    }
                }
            }
        };
        tokio::spawn(every(period, stop.clone(), job));
        // Runs at 0 (until 30 s), 30 and 40 s; a burst would have added two more at 30 s.
        tokio::time::sleep(period * 4 + period / 2).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        stop.cancel();
    }

    #[test]
    fn the_audit_is_due_every_fifteen_checks_and_after_a_reconnect() {
        let mut due = AuditDue::new();
        let checks: Vec<bool> = (0..30).map(|_| due.check(BusState::Live, 0)).collect();
        let at: Vec<usize> = (0..30).filter(|i| checks[*i]).collect();
        assert_eq!(at, vec![14, 29], "every 15 checks (30 s)");
        // The bus came back: the next check audits.
        assert!(due.check(BusState::Live, 1));
        // Failed audits are retried at the next check while the count stays behind.
        assert!(due.check(BusState::Live, 1));
        due.audited(1);
        assert!(!due.check(BusState::Live, 1));
        // Never while the bus is down, even when due.
        let mut due = AuditDue::new();
        assert!((0..40).all(|_| !due.check(BusState::Down, 0)));
        assert!(
            due.check(BusState::Live, 0),
            "overdue: at the first check once up"
        );
    }
}
