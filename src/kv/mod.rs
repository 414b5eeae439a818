//! Redis storage of cluster mode, in one place: the connections, every key and channel name,
//! and the stores that read and write them.
//!
//! * [`Redis`]: the client and the shared connection pool, built once from `REDIS_URL`;
//! * [`keys`]: every key and pub/sub channel name, with what it holds, its TTL and its writer;
//! * [`presence`]: per room and user, the replicas holding a socket; per room, who is online;
//! * [`deny`]: the deny-list entries and the marker saying Redis holds all of them;
//! * [`limits`]: the cluster-wide rate buckets (GCRA) and the live-socket sets.
//!
//! This layer stores; it decides nothing. What an entry means (when a user is online, when a
//! token is denied, how a per-replica limit and a cluster-wide one combine, what to do while
//! Redis is down) is `chat`'s: it wraps these stores in its own traits.
//!
//! May import: `domain`, `config`, `error`, `telemetry`.

pub(crate) mod deny;
pub(crate) mod keys;
pub(crate) mod limits;
pub(crate) mod presence;

use std::time::Duration;

use anyhow::Context;

use self::{deny::DenyStore, limits::LimitStore, presence::PresenceStore};

/// Connections per replica in the shared pool.
const POOL_SIZE: usize = 16;
/// How long a pool checkout may wait for a free connection, a new connection may take, and a
/// recycled one may take to answer its check.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis of cluster mode: a client (for the bus's dedicated connections) and one pool of
/// connections shared by every store. Cheap to clone. Nothing connects until first used.
#[derive(Clone)]
pub(crate) struct Redis {
    client: redis::Client,
    pool: deadpool_redis::Pool,
}

impl Redis {
    /// The client and the pool for `url`.
    ///
    /// # Errors
    /// If `url` is not a usable Redis URL.
    pub(crate) fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
        let mut config = deadpool_redis::Config::from_url(url);
        let mut pool = deadpool_redis::PoolConfig::new(POOL_SIZE);
        pool.timeouts.wait = Some(POOL_TIMEOUT);
        pool.timeouts.create = Some(POOL_TIMEOUT);
        pool.timeouts.recycle = Some(POOL_TIMEOUT);
        config.pool = Some(pool);
        let pool = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .context("REDIS_URL is not usable")?;
        Ok(Self { client, pool })
    }

    /// The client, for connections that cannot come from the pool (a pub/sub subscription, a
    /// multiplexed publisher).
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The presence store of replica `replica`.
    pub(crate) fn presence(&self, replica: u64) -> PresenceStore {
        PresenceStore::new(self.pool.clone(), replica)
    }

    /// The deny-list store.
    pub(crate) fn deny_list(&self) -> DenyStore {
        DenyStore::new(self.pool.clone())
    }

    /// The cluster-wide limits of replica `replica`.
    pub(crate) fn limits(&self, replica: u64) -> LimitStore {
        LimitStore::new(self.pool.clone(), replica)
    }
}
