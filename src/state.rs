//! `AppState`: cheap-to-clone handles for every request and socket, built once from a
//! [`Config`]. The run mode is chosen here, by configuration only: with `REDIS_URL` the bus,
//! presence and deny-list are Redis-backed; without it they are in-process (deny-list in the
//! database).

use std::{
    net::IpAddr,
    num::NonZeroU32,
    ops::Deref,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use migration::MigratorTrait;
use rand::RngCore;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{
        DenyList, JwtKeys, PasswordHasher,
        denylist::{DbDenyList, RedisDenyList},
    },
    bus::{
        Bus,
        hub::Hub,
        local::LocalBus,
        presence::{LocalPresence, Presence, RedisPresence},
        redis::RedisBus,
    },
    config::Config,
    send::Sender,
    telemetry,
};

pub struct AppInner {
    pub config: Config,
    pub db: DatabaseConnection,
    pub keys: JwtKeys,
    pub hasher: PasswordHasher,
    pub deny: Arc<dyn DenyList>,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub hub: Arc<Hub>,
    pub sender: Sender,
    /// Messages per user (burst and sustained).
    pub msg_limiter: DefaultKeyedRateLimiter<i64>,
    /// Login and register attempts per client address.
    pub auth_limiter: DefaultKeyedRateLimiter<IpAddr>,
    pub shutdown: CancellationToken,
    /// Set on SIGTERM: `/readyz` answers 503.
    pub draining: AtomicBool,
    pub metrics: PrometheusHandle,
    /// This process's id on the bus.
    pub replica_id: u64,
}

#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Connect to the database (and tune SQLite for concurrent readers and one writer).
///
/// # Errors
/// If the database cannot be reached.
pub async fn connect_db(config: &Config) -> anyhow::Result<DatabaseConnection> {
    let url = config.database_url.expose_secret();
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(config.db_max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let db = Database::connect(opts)
        .await
        .context("cannot connect to the database (DATABASE_URL)")?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL;").await?;
    }
    Ok(db)
}

impl AppState {
    /// Build everything the service needs.
    ///
    /// # Errors
    /// Database unreachable, migrations failing, or an invalid Redis URL.
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        config.validate()?;
        let db = connect_db(&config).await?;
        if config.auto_migrate {
            migration::Migrator::up(&db, None)
                .await
                .context("applying migrations")?;
        }
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
        let keys = JwtKeys::new(
            &secret,
            &config.jwt_issuer,
            &config.jwt_audience,
            config.access_token_ttl_secs,
        );
        let replica_id = rand::rng().next_u64() >> 1;
        let hub = Hub::new(
            db.clone(),
            config.ws_queue_capacity,
            Duration::from_millis(config.ws_flush_interval_ms),
        );

        let (bus, presence, deny): (Arc<dyn Bus>, Arc<dyn Presence>, Arc<dyn DenyList>) =
            match &config.redis_url {
                Some(url) => {
                    let url = url.expose_secret();
                    let mut pool_config = deadpool_redis::Config::from_url(url);
                    let mut pc = deadpool_redis::PoolConfig::new(16);
                    pc.timeouts.wait = Some(Duration::from_secs(2));
                    pc.timeouts.create = Some(Duration::from_secs(2));
                    pc.timeouts.recycle = Some(Duration::from_secs(2));
                    pool_config.pool = Some(pc);
                    let pool = pool_config
                        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                        .context("REDIS_URL is not usable")?;
                    let bus = Arc::new(RedisBus::start(
                        url,
                        pool.clone(),
                        hub.clone(),
                        replica_id,
                        shutdown.clone(),
                    )?);
                    let presence =
                        Arc::new(RedisPresence::new(pool.clone(), replica_id.to_string()));
                    (bus, presence, Arc::new(RedisDenyList::new(pool)))
                }
                None => (
                    Arc::new(LocalBus::new(hub.clone())),
                    Arc::new(LocalPresence::default()),
                    DbDenyList::load(db.clone()).await?,
                ),
            };
        let per_sec = NonZeroU32::new(config.message_rate_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.message_rate_burst).unwrap_or(NonZeroU32::MIN);
        let auth_per_min = NonZeroU32::new(config.auth_rate_per_min).unwrap_or(NonZeroU32::MIN);
        let hash_concurrency = config.hash_concurrency.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
        });
        let state = Self(Arc::new(AppInner {
            sender: Sender::new(db.clone(), bus.clone()),
            keys,
            hasher: PasswordHasher::new(hash_concurrency),
            deny,
            bus,
            presence,
            hub,
            msg_limiter: RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst)),
            auth_limiter: RateLimiter::keyed(Quota::per_minute(auth_per_min)),
            shutdown,
            draining: AtomicBool::new(false),
            metrics: telemetry::metrics::install(),
            replica_id,
            db,
            config,
        }));
        state.ensure_admin_from_env().await?;
        state.spawn_housekeeping();
        Ok(state)
    }

    /// The configuration this state was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Rooms this replica's fan-out is subscribed to (tests and diagnostics).
    pub fn subscribed_room_count(&self) -> usize {
        self.hub.room_count()
    }

    /// Create `username` as an admin, or grant `admin` to the existing user of that name
    /// (see [`crate::admin::ensure_admin`]).
    ///
    /// # Errors
    /// As [`crate::admin::ensure_admin`].
    pub async fn ensure_admin(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<i64> {
        crate::admin::ensure_admin(&self.db, &self.hasher, username, email, password).await
    }

    async fn ensure_admin_from_env(&self) -> anyhow::Result<()> {
        let c = &self.config;
        if let (Some(u), Some(e), Some(p)) = (&c.admin_username, &c.admin_email, &c.admin_password)
        {
            crate::admin::ensure_admin(&self.db, &self.hasher, u, e, p.expose_secret()).await?;
        }
        Ok(())
    }

    /// Periodic work: rate-limiter pruning, presence heartbeats and expiry sweeps.
    fn spawn_housekeeping(&self) {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    () = state.shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                n += 1;
                if n.is_multiple_of(12) {
                    state.msg_limiter.retain_recent();
                    state.auth_limiter.retain_recent();
                }
                if n.is_multiple_of(2) {
                    crate::bus::presence::heartbeat(&state).await;
                }
                crate::bus::presence::sweep(&state).await;
            }
        });
    }
}
