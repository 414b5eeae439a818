//! The rules of the service, each in one place, and the services every transport calls:
//!
//! * [`auth`]: who the caller is (access token, deny-list, admin role re-checked).
//! * [`access`]: who may see, enter, write to and manage a room (and open a DM).
//! * [`dms`]: direct messages, read state and throttled receipts (SPEC §11).
//! * [`messages`]: reactions, thread roots, search (SPEC §11).
//! * [`send`]: the send pipeline (rate limit, group commit, publish).
//! * [`heal`]: what repairs a lost bus event (reconciliation, socket audit).
//! * [`limits`]: every abuse limit (rates and open sockets), per replica and cluster-wide.
//! * [`revoke`]: revocation of tokens and sessions, and the sockets they opened.
//! * [`presence`]: who is online where, cluster-wide.
//! * [`replay`]: history replays on join, identical reads coalesced.
//! * [`admin`]: the first admin.
//! * [`tasks`]: the periodic jobs (reconciliation, audits, heartbeats, sweeps, purges).
//!
//! [`Chat`] holds the services; `http` and `ws` handlers take it as their state.
//!
//! May import: `fanout`, `store`, `bus`, `kv`, `domain`, `config`, `error`, `telemetry`.

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod dms;
pub(crate) mod heal;
pub(crate) mod jwt;
pub(crate) mod limits;
pub(crate) mod messages;
pub(crate) mod password;
pub(crate) mod presence;
pub(crate) mod replay;
pub(crate) mod revoke;
pub(crate) mod send;
pub(crate) mod tasks;

use std::{net::IpAddr, ops::Deref, sync::Arc, time::Duration};

use rand::RngCore;
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{
    jwt::JwtKeys,
    limits::{RateLimit, SocketQuota},
    password::PasswordHasher,
    presence::{LocalPresence, Presence},
    revoke::{DbDenyList, DenyList, RedisDenyList},
    send::Sender,
};
use crate::{
    bus::{Bus, Envelope, local::LocalBus, redis::RedisBus},
    config::Config,
    fanout::hub::Hub,
    kv::{Redis, limits::LimitStore},
};

/// The services, shared by every request and socket.
pub(crate) struct Services {
    pub(crate) config: Config,
    pub(crate) db: DatabaseConnection,
    /// The group commit's own connection (PostgreSQL), when it does not share `db`.
    pub(crate) commit_db: Option<DatabaseConnection>,
    pub(crate) keys: JwtKeys,
    pub(crate) hasher: PasswordHasher,
    pub(crate) deny: Arc<dyn DenyList>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) presence: Arc<dyn Presence>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) sender: Sender,
    /// The `receipt` throttle.
    pub(crate) receipts: dms::Receipts,
    /// Replay pages, shared by the sockets that ask for the same one at once.
    pub(crate) replays: replay::ReplayReads,
    /// Messages per user (burst and sustained).
    pub(crate) msg_limiter: RateLimit<i64>,
    /// Other client frames that fan out or cost a query, per user.
    pub(crate) frame_limiter: RateLimit<i64>,
    /// Credential checks per client address (IPv6: per /64).
    pub(crate) auth_limiter: RateLimit<IpAddr>,
    /// Credential checks and account probes per account.
    pub(crate) account_limiter: RateLimit<i64>,
    /// Rooms created per user.
    pub(crate) room_limiter: RateLimit<i64>,
    /// Open sockets per user and per client address.
    pub(crate) sockets: Arc<SocketQuota>,
    /// WebSocket upgrades per second on this replica (`None`: unlimited).
    pub(crate) upgrade_limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Every background task (room tasks, commit drains, sockets, the bus): shutdown waits
    /// for them.
    pub(crate) tasks: TaskTracker,
    /// Cancelled on shutdown: `/readyz` answers 503 from then on.
    pub(crate) stop: CancellationToken,
}

/// Cheap-to-clone handle on the [`Services`].
#[derive(Clone)]
pub(crate) struct Chat(Arc<Services>);

impl Deref for Chat {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

/// The parts that differ between embedded and cluster mode.
struct ModeParts {
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    deny: Arc<dyn DenyList>,
    /// Redis, for the cluster-wide half of the limits.
    cluster: Option<LimitStore>,
}

impl Chat {
    /// Build every service over `db`, the group commit over `commit_db` if given (its own
    /// connection on PostgreSQL), else over `db`. The run mode is chosen here, by
    /// configuration only: with `REDIS_URL` the bus, presence and deny-list are Redis-backed;
    /// without it they are in-process (deny-list in the database).
    ///
    /// # Errors
    /// An unusable Redis URL, or a database that cannot be read.
    pub(crate) async fn build(
        config: Config,
        db: DatabaseConnection,
        commit_db: Option<DatabaseConnection>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let keys = jwt_keys(&config);
        let replica_id = rand::rng().next_u64() >> 1;
        let ModeParts {
            bus,
            presence,
            deny,
            cluster,
        } = match &config.redis_url {
            Some(url) => cluster_parts(url.expose_secret(), &db, replica_id, &tasks, &stop)?,
            None => ModeParts {
                bus: Arc::new(LocalBus::default()),
                presence: Arc::new(LocalPresence::default()),
                deny: DbDenyList::load(db.clone()).await?,
                cluster: None,
            },
        };
        let hub = Hub::new(
            db.clone(),
            bus.clone(),
            config.ws_queue_capacity,
            tasks.clone(),
        );
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let limit = |name, per, period, burst| {
            RateLimit::new(
                name,
                RateLimit::<i64>::quota(per, period, burst),
                cluster.clone(),
            )
        };
        // On the message path: cluster-wide cells are leased, not asked for one by one.
        let msg_limiter = limit(
            "msg",
            config.message_rate_per_sec,
            second,
            config.message_rate_burst,
        )
        .leased();
        let frame_limiter = limit(
            "frame",
            config.frame_rate_per_sec,
            second,
            config.frame_rate_burst,
        )
        .leased();
        let account_limiter = limit(
            "account",
            config.account_rate_per_min,
            minute,
            config.account_rate_per_min,
        );
        let room_limiter = limit(
            "rooms",
            config.rooms_per_hour,
            Duration::from_secs(3600),
            config.rooms_per_hour,
        );
        let auth_limiter = RateLimit::new(
            "auth",
            RateLimit::<IpAddr>::quota(config.auth_rate_per_min, minute, config.auth_rate_per_min),
            cluster.clone(),
        );
        let sockets = Arc::new(SocketQuota::new(
            config.ws_max_sockets_per_user,
            config.ws_max_sockets_per_address,
            cluster,
        ));
        let hash_concurrency = config.hash_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        });
        Ok(Self(Arc::new(Services {
            sender: Sender::new(
                commit_db.clone().unwrap_or_else(|| db.clone()),
                bus.clone(),
                tasks.clone(),
            ),
            commit_db,
            receipts: dms::Receipts::new(bus.clone(), tasks.clone()),
            replays: replay::ReplayReads::default(),
            keys,
            hasher: PasswordHasher::new(hash_concurrency),
            deny,
            bus,
            presence,
            hub,
            msg_limiter,
            frame_limiter,
            auth_limiter,
            account_limiter,
            room_limiter,
            sockets,
            upgrade_limiter: std::num::NonZeroU32::new(config.ws_upgrades_per_sec)
                .map(|n| governor::RateLimiter::direct(governor::Quota::per_second(n))),
            tasks,
            stop,
            db,
            config,
        })))
    }

    /// Publish an event; a failure is logged (the state change is committed either way, and
    /// receivers fill message gaps from the database).
    pub(crate) async fn publish(&self, env: Envelope) {
        if let Err(e) = self.bus.publish(env).await {
            tracing::warn!(error = %e, "event not published");
        }
    }
}

/// The token keys: `JWT_SECRET`, or a random key (embedded mode only).
fn jwt_keys(config: &Config) -> JwtKeys {
    let secret: Vec<u8> = if let Some(s) = &config.jwt_secret {
        s.expose_secret().as_bytes().to_vec()
    } else {
        tracing::warn!(
            "JWT_SECRET is not set: using a random key; tokens will not survive a restart"
        );
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        key
    };
    JwtKeys::new(
        &secret,
        &config.jwt_issuer,
        &config.jwt_audience,
        config.access_token_ttl_secs,
    )
}

/// Cluster mode: the Redis bus, presence, deny-list and cluster-wide limits, over one
/// [`Redis`] (the stores share its pool; the bus opens its own connections from it).
fn cluster_parts(
    url: &str,
    db: &DatabaseConnection,
    replica_id: u64,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<ModeParts> {
    let redis = Redis::connect(url)?;
    Ok(ModeParts {
        bus: Arc::new(RedisBus::start(&redis, replica_id, tasks, stop)?),
        presence: Arc::new(redis.presence(replica_id)),
        deny: Arc::new(RedisDenyList::new(redis.deny_list(), db.clone())),
        cluster: Some(redis.limits(replica_id)),
    })
}
