//! Every abuse limit of docs/protocol.md#limits, each written once and called by every path it covers:
//!
//! * rates ([`RateLimit`]): messages per user (edits and deletions count as messages), other
//!   frames per user (reactions among them), reads that cost a query per page per user,
//!   credential checks per client address and per account, rooms created per user per hour;
//! * concurrency ([`SocketQuota`]): open sockets per user and per client address; rooms per
//!   multiplexed socket is a plain count in the socket's session.
//!
//! Each limit holds per replica (governor's keyed GCRA, in memory) and, in cluster mode, across
//! the cluster through Redis ([`crate::kv::limits`]): a GCRA bucket per rate, a sorted set of
//! live sockets per concurrency key. The per-replica check comes first: it is free, and a replica alone can
//! never let more through than the whole cluster may. When Redis is down (or slow) the
//! per-replica limits still hold, and the cluster-wide part is skipped rather than refusing
//! everyone: a limit is not worth an outage.
//!
//! The per-message and per-frame rates are on the hot path, so a replica does not ask Redis
//! for every cell: it takes a *lease* of up to a quarter of the burst at once (one script call
//! takes as many cells as the bucket holds, up to that many) and spends it locally for up to
//! a second. Redis never grants more than the cluster-wide rate; a lease spent later than it
//! was taken lets a user exceed the burst by at most one lease per replica, and a lease left
//! unspent makes the limit stricter, never looser. Credential checks and room creation, which
//! are rare and where precision matters, take one cell per call.
//!
//! Client addresses are keyed by IPv4 address, or by IPv6 /64 (one host usually holds a whole
//! /64, so a per-address key would cost an attacker nothing).
//!
//! The caller turns a refusal into a 429 or an error frame.

use std::{
    collections::HashMap,
    fmt::Display,
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use parking_lot::Mutex;

use super::{Error, events::Events};
use crate::{
    bus::BusState,
    config::Config,
    kv::{keys, limits::LimitStore},
};

/// How long a cluster-wide check may take before it is skipped (Redis slow or down).
const REDIS_BUDGET: Duration = Duration::from_millis(250);

/// The client's address: the peer, or, behind a trusted proxy (`TRUST_PROXY_HEADERS`), the
/// **last** `X-Forwarded-For` entry — the address the proxy itself appended (nginx's
/// `$proxy_add_x_forwarded_for`). Entries before it come from the client and could be anything.
pub(crate) fn client_ip(
    config: &Config,
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> IpAddr {
    if config.trust_proxy_headers
        && let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return ip;
    }
    peer.map_or(IpAddr::from([127, 0, 0, 1]), |p| p.ip())
}

/// The key of a client address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How long a replica may spend cells it leased from the cluster-wide bucket.
const LEASE_TTL: Duration = Duration::from_secs(1);
/// The largest lease (cells per script call).
const MAX_LEASE: u64 = 64;

/// A keyed rate (GCRA): `burst` at once, then one per `interval`.
pub(crate) struct RateLimit<K: Hash + Eq + Clone> {
    /// Names the limit (and its cluster-wide buckets, see [`keys::rate`]).
    name: &'static str,
    local: DefaultKeyedRateLimiter<K>,
    interval_us: u64,
    burst: u64,
    cluster: Option<LimitStore>,
    /// Cells taken from Redis per call (1: every check asks Redis).
    lease: u64,
    /// Cells leased from Redis and not spent yet, per key (only when `lease` > 1).
    leases: Mutex<HashMap<K, Lease>>,
}

/// Cells this replica took from the cluster-wide bucket and may spend until `until`; or,
/// after Redis refused, when the bucket has a cell again (`refused_until`): a client that
/// keeps sending over its limit costs no Redis call until then.
struct Lease {
    cells: u64,
    until: tokio::time::Instant,
    refused_until: Option<tokio::time::Instant>,
}

impl<K: Hash + Eq + Clone + Display> RateLimit<K> {
    pub(crate) fn new(name: &'static str, quota: Quota, cluster: Option<LimitStore>) -> Self {
        let interval_us = u64::try_from(quota.replenish_interval().as_micros()).unwrap_or(u64::MAX);
        Self {
            name,
            local: RateLimiter::keyed(quota),
            interval_us: interval_us.max(1),
            burst: u64::from(quota.burst_size().get()),
            cluster,
            lease: 1,
            leases: Mutex::default(),
        }
    }

    /// Take cells from the cluster-wide bucket a quarter of the burst at a time (see the
    /// module doc): for the limits on the message path.
    pub(crate) fn leased(mut self) -> Self {
        self.lease = (self.burst / 4).clamp(1, MAX_LEASE);
        self
    }

    /// `per` per `period` with a burst of `burst`.
    pub(crate) fn quota(per: u32, period: Duration, burst: u32) -> Quota {
        let per = NonZeroU32::new(per).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period / per.get())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst)
    }

    /// Take one cell for `key`.
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) async fn check(&self, key: &K, bus: BusState) -> Result<(), Error> {
        self.local.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            Error::RateLimited(wait.as_secs().max(1))
        })?;
        let Some(cluster) = self.cluster.as_ref().filter(|_| bus == BusState::Live) else {
            return Ok(());
        };
        if self.lease > 1 && self.spend_leased(key)? {
            return Ok(());
        }
        let call = cluster.take(self.name, key, self.interval_us, self.burst, self.lease);
        match tokio::time::timeout(REDIS_BUDGET, call).await {
            Ok(Ok((0, wait_us))) => {
                if self.lease > 1 {
                    self.refused_for(key, Duration::from_micros(wait_us));
                }
                Err(Error::RateLimited(wait_us.div_ceil(1_000_000).max(1)))
            }
            Ok(Ok((cells, _))) => {
                if cells > 1 {
                    self.keep_leased(key, cells - 1);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                metrics::counter!("chat_rate_limit_redis_errors_total").increment(1);
                tracing::debug!(error = %e, limit = self.name, "cluster-wide rate limit skipped");
                Ok(())
            }
            Err(_) => {
                metrics::counter!("chat_rate_limit_redis_errors_total").increment(1);
                Ok(())
            }
        }
    }

    /// Spend one cell of `key`'s lease: `Ok(true)` if it held one that has not expired,
    /// `Ok(false)` if Redis must be asked.
    ///
    /// # Errors
    /// 429 while Redis's last answer for `key` (a refusal) holds.
    fn spend_leased(&self, key: &K) -> Result<bool, Error> {
        let now = tokio::time::Instant::now();
        let mut leases = self.leases.lock();
        let Some(lease) = leases.get_mut(key) else {
            return Ok(false);
        };
        if let Some(until) = lease.refused_until.filter(|until| *until > now) {
            return Err(Error::RateLimited((until - now).as_secs().max(1)));
        }
        if lease.cells > 0 && lease.until > now {
            lease.cells -= 1;
            return Ok(true);
        }
        Ok(false)
    }

    fn lease_of<'a>(leases: &'a mut HashMap<K, Lease>, key: &K) -> &'a mut Lease {
        leases.entry(key.clone()).or_insert(Lease {
            cells: 0,
            until: tokio::time::Instant::now(),
            refused_until: None,
        })
    }

    /// Keep `cells` more cells leased for `key` (several checks may have asked Redis at once).
    fn keep_leased(&self, key: &K, cells: u64) {
        let now = tokio::time::Instant::now();
        let mut leases = self.leases.lock();
        let lease = Self::lease_of(&mut leases, key);
        if lease.until <= now {
            lease.cells = 0;
        }
        lease.cells = (lease.cells + cells).min(self.lease);
        lease.until = now + LEASE_TTL;
        lease.refused_until = None;
    }

    /// Redis refused `key` a cell for `wait`: refuse locally until then.
    fn refused_for(&self, key: &K, wait: Duration) {
        let mut leases = self.leases.lock();
        let lease = Self::lease_of(&mut leases, key);
        lease.cells = 0;
        lease.refused_until = Some(tokio::time::Instant::now() + wait);
    }

    /// Forget keys that are back to a full bucket, and expired leases (memory).
    pub(crate) fn retain_recent(&self) {
        self.local.retain_recent();
        let now = tokio::time::Instant::now();
        self.leases
            .lock()
            .retain(|_, lease| lease.until > now || lease.refused_until.is_some_and(|u| u > now));
    }
}

/// Whose sockets a [`SocketQuota`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SocketKey {
    User(i64),
    Address(IpAddr),
}

impl SocketKey {
    fn redis_key(self) -> String {
        match self {
            Self::User(id) => keys::user_sockets(id),
            Self::Address(ip) => keys::address_sockets(ip),
        }
    }
}

/// Open sockets per user and per client address: counted on this replica, and in cluster
/// mode in Redis, where each socket is an entry that its replica refreshes (so a crashed
/// replica's sockets stop counting within [`keys::SOCKET_ENTRY_TTL`], and a restarted Redis is
/// refilled by the next heartbeat).
pub(crate) struct SocketQuota {
    per_user: u32,
    per_address: u32,
    local: Mutex<HashMap<SocketKey, u32>>,
    /// This replica's live sockets: id → its keys (for the heartbeat).
    live: Mutex<HashMap<u64, [SocketKey; 2]>>,
    next_id: std::sync::atomic::AtomicU64,
    cluster: Option<LimitStore>,
}

/// An admitted socket; dropping it releases the socket's place.
pub(crate) struct SocketPermit {
    quota: Arc<SocketQuota>,
    id: u64,
    keys: [SocketKey; 2],
}

impl SocketQuota {
    /// `0` means unlimited.
    pub(crate) fn new(per_user: u32, per_address: u32, cluster: Option<LimitStore>) -> Self {
        Self {
            per_user,
            per_address,
            local: Mutex::default(),
            live: Mutex::default(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            cluster,
        }
    }

    fn limit(&self, key: SocketKey) -> u32 {
        match key {
            SocketKey::User(_) => self.per_user,
            SocketKey::Address(_) => self.per_address,
        }
    }

    /// Admit a socket of `user` from `ip`.
    ///
    /// # Errors
    /// 429 when the user or the address already has as many sockets as allowed.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        user: i64,
        ip: IpAddr,
        bus: BusState,
    ) -> Result<SocketPermit, Error> {
        let keys = [SocketKey::User(user), SocketKey::Address(address_key(ip))];
        {
            let mut local = self.local.lock();
            for key in keys {
                let limit = self.limit(key);
                if limit != 0 && local.get(&key).copied().unwrap_or(0) >= limit {
                    return Err(refused(key));
                }
            }
            for key in keys {
                *local.entry(key).or_default() += 1;
            }
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // From here on, dropping the permit undoes everything.
        let permit = SocketPermit {
            quota: self.clone(),
            id,
            keys,
        };
        self.live.lock().insert(id, keys);
        if let Some(cluster) = self.cluster.as_ref().filter(|_| bus == BusState::Live) {
            for key in keys {
                let limit = self.limit(key);
                if limit == 0 {
                    continue;
                }
                let set = key.redis_key();
                let call = cluster.acquire_socket(&set, id, limit);
                match tokio::time::timeout(REDIS_BUDGET, call).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => return Err(refused(key)),
                    Ok(Err(_)) | Err(_) => {
                        metrics::counter!("chat_rate_limit_redis_errors_total").increment(1);
                    }
                }
            }
        }
        Ok(permit)
    }

    /// Refresh this replica's entries in Redis (every few seconds): keeps them alive and
    /// puts them back after a Redis restart.
    pub(crate) async fn heartbeat(&self) -> anyhow::Result<()> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let entries: Vec<(String, u64)> = self
            .live
            .lock()
            .iter()
            .flat_map(|(id, keys)| {
                keys.iter()
                    .filter(|k| self.limit(**k) != 0)
                    .map(move |k| (k.redis_key(), *id))
            })
            .collect();
        cluster.refresh_sockets(&entries).await
    }

    fn release(&self, id: u64, keys: [SocketKey; 2]) {
        {
            let mut local = self.local.lock();
            for key in keys {
                if let Some(n) = local.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        local.remove(&key);
                    }
                }
            }
        }
        self.live.lock().remove(&id);
        if let Some(cluster) = self.cluster.clone() {
            let sets: Vec<String> = keys
                .iter()
                .filter(|k| self.limit(**k) != 0)
                .map(|k| k.redis_key())
                .collect();
            if sets.is_empty() {
                return;
            }
            // Best effort: an entry left behind expires with its TTL.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = cluster.release_socket(&sets, id).await;
                });
            }
        }
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.quota.release(self.id, self.keys);
    }
}

fn refused(key: SocketKey) -> Error {
    Error::TooMany(match key {
        SocketKey::User(_) => "too many open sockets for this user",
        SocketKey::Address(_) => "too many open sockets from this address",
    })
}

/// Every abuse limit, per replica and cluster-wide: what each operation is counted against.
#[derive(Clone)]
pub(crate) struct Limits(Arc<LimitSet>);

struct LimitSet {
    /// Messages per user (burst and sustained).
    msg: RateLimit<i64>,
    /// Other client frames that fan out or cost a query, per user.
    frame: RateLimit<i64>,
    /// Reads that cost a query per page (history, search), per user.
    read: RateLimit<i64>,
    /// Credential checks per client address (IPv6: per /64).
    auth: RateLimit<IpAddr>,
    /// Credential checks and account probes per account.
    account: RateLimit<i64>,
    /// Rooms created per user.
    rooms: RateLimit<i64>,
    /// Open sockets per user and per client address.
    sockets: Arc<SocketQuota>,
    /// WebSocket upgrades per second on this replica (`None`: unlimited).
    upgrades: Option<governor::DefaultDirectRateLimiter>,
    /// Whether the bus is up: cluster-wide counting needs Redis.
    events: Events,
}

impl Limits {
    /// The limits of `config`, cluster-wide over `cluster` (Redis) when given.
    pub(crate) fn new(config: &Config, cluster: Option<LimitStore>, events: Events) -> Self {
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let limit = |name, per, period, burst| {
            RateLimit::new(
                name,
                RateLimit::<i64>::quota(per, period, burst),
                cluster.clone(),
            )
        };
        let (msg_rate, msg_burst) = (config.message_rate_per_sec, config.message_rate_burst);
        let (frame_rate, frame_burst) = (config.frame_rate_per_sec, config.frame_rate_burst);
        let (read_rate, read_burst) = (config.read_rate_per_sec, config.read_rate_burst);
        let per_min = config.account_rate_per_min;
        let auth_quota =
            RateLimit::<IpAddr>::quota(config.auth_rate_per_min, minute, config.auth_rate_per_min);
        Self(Arc::new(LimitSet {
            // On the message path: cluster-wide cells are leased, not asked for one by one.
            msg: limit("msg", msg_rate, second, msg_burst).leased(),
            frame: limit("frame", frame_rate, second, frame_burst).leased(),
            read: limit("read", read_rate, second, read_burst).leased(),
            account: limit("account", per_min, minute, per_min),
            rooms: limit(
                "rooms",
                config.rooms_per_hour,
                Duration::from_secs(3600),
                config.rooms_per_hour,
            ),
            auth: RateLimit::new("auth", auth_quota, cluster.clone()),
            sockets: Arc::new(SocketQuota::new(
                config.ws_max_sockets_per_user,
                config.ws_max_sockets_per_address,
                cluster,
            )),
            upgrades: std::num::NonZeroU32::new(config.ws_upgrades_per_sec)
                .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n))),
            events,
        }))
    }

    /// The per-user message rate limit, for every path that sends, edits or deletes a message
    /// (each is a write to the room's log that goes to every socket in the room).
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) async fn admit(&self, user_id: i64) -> Result<(), Error> {
        self.0.msg.check(&user_id, self.0.events.state()).await
    }

    /// The per-user limit on the other client frames that fan out or cost a query (typing,
    /// subscribe, unsubscribe, auth, read; reactions on either transport).
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) async fn admit_frame(&self, user_id: i64) -> Result<(), Error> {
        self.0.frame.check(&user_id, self.0.events.state()).await
    }

    /// The per-user limit on reads that cost a query per page: history (and thread) pages,
    /// search.
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) async fn admit_read(&self, user_id: i64) -> Result<(), Error> {
        self.0.read.check(&user_id, self.0.events.state()).await
    }

    /// The limits on credential checks and account probes (register, login, refresh,
    /// password change, account deletion, email change): per client address, and per
    /// account when it is known.
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) async fn admit_credentials(
        &self,
        ip: IpAddr,
        account: Option<i64>,
    ) -> Result<(), Error> {
        let bus = self.0.events.state();
        self.0.auth.check(&address_key(ip), bus).await?;
        match account {
            Some(id) => self.0.account.check(&id, bus).await,
            None => Ok(()),
        }
    }

    /// Rooms created per user per hour (`POST /rooms`, and `PUT /rooms/{name}` when it
    /// creates).
    ///
    /// # Errors
    /// 429 with the seconds to wait.
    pub(crate) async fn admit_room_creation(&self, user_id: i64) -> Result<(), Error> {
        self.0.rooms.check(&user_id, self.0.events.state()).await
    }

    /// Admit a WebSocket upgrade of `user` from `ip`: first a place among the user's and the
    /// address's open sockets, then a cell of the replica's upgrade rate. Only an upgrade that
    /// every other check has let through takes from the shared rate, so the refused upgrades of
    /// one user (past their socket limit) cannot use it up for everyone else; a permit taken
    /// for an upgrade the rate then defers is given back.
    ///
    /// # Errors
    /// 429 when the user or the address has too many open sockets; 503 with `Retry-After: 1`
    /// above the replica's upgrade rate.
    pub(crate) async fn admit_upgrade(&self, user: i64, ip: IpAddr) -> Result<SocketPermit, Error> {
        let permit = self.admit_socket(user, ip).await?;
        self.take_upgrade_cell()?;
        Ok(permit)
    }

    /// The per-replica rate of WebSocket upgrades (reconnect storms).
    ///
    /// # Errors
    /// 503 with `Retry-After: 1` above the rate.
    fn take_upgrade_cell(&self) -> Result<(), Error> {
        match &self.0.upgrades {
            Some(limiter) if limiter.check().is_err() => {
                metrics::counter!("chat_ws_upgrades_deferred_total").increment(1);
                Err(Error::Busy)
            }
            _ => Ok(()),
        }
    }

    /// A place for one more socket of `user` from `ip`; held until the permit is dropped.
    ///
    /// # Errors
    /// 429 when the user or the address has too many open sockets.
    async fn admit_socket(&self, user: i64, ip: IpAddr) -> Result<SocketPermit, Error> {
        self.0
            .sockets
            .acquire(user, ip, self.0.events.state())
            .await
    }

    /// Forget the rate-limit keys that are back to a full bucket, and expired leases
    /// (memory).
    pub(crate) fn prune_rate_limits(&self) {
        let set = &self.0;
        set.msg.retain_recent();
        set.frame.retain_recent();
        set.read.retain_recent();
        set.auth.retain_recent();
        set.account.retain_recent();
        set.rooms.retain_recent();
    }

    /// Refresh this replica's live-socket entries in Redis (cluster mode).
    pub(crate) async fn socket_quota_heartbeat(&self) {
        if let Err(e) = self.0.sockets.heartbeat().await {
            tracing::debug!(error = %e, "socket quota heartbeat failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_key(v4), v4);
    }

    #[tokio::test]
    async fn sockets_are_counted_per_user_and_per_address_and_released_on_drop() {
        let quota = Arc::new(SocketQuota::new(2, 3, None));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a1 = quota.acquire(1, ip, BusState::Local).await.unwrap();
        let _a2 = quota.acquire(1, ip, BusState::Local).await.unwrap();
        assert!(
            quota.acquire(1, ip, BusState::Local).await.is_err(),
            "user limit"
        );
        let _b1 = quota.acquire(2, ip, BusState::Local).await.unwrap();
        assert!(
            quota.acquire(3, ip, BusState::Local).await.is_err(),
            "address limit"
        );
        drop(a1);
        let _a3 = quota.acquire(1, ip, BusState::Local).await.unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            quota.acquire(1, other, BusState::Local).await.is_err(),
            "still 2 for user 1"
        );
        let _c = quota.acquire(3, other, BusState::Local).await.unwrap();
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let quota = Arc::new(SocketQuota::new(0, 0, None));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(quota.acquire(1, ip, BusState::Local).await.unwrap());
        }
    }
}
