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
/// A pooled connection unused for this long is checked (`UNWATCH` + `PING`) before it is
/// handed out again; one in use is not.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

/// The pool shared by every store.
pub(crate) type Pool = deadpool::managed::Pool<Manager>;

/// A pooled connection that remembers whether it failed: a multiplexed connection whose
/// socket broke fails every later command, so a failed one leaves the pool at its next
/// checkout instead of being checked there.
pub(crate) struct Conn {
    conn: redis::aio::MultiplexedConnection,
    failed: bool,
}

impl Conn {
    fn note<T>(&mut self, result: redis::RedisResult<T>) -> redis::RedisResult<T> {
        if let Err(e) = &result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.is_unrecoverable_error())
        {
            self.failed = true;
        }
        result
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.note(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.note(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// deadpool-redis's manager, except for the check on checkout: deadpool-redis sends
/// `UNWATCH` + `PING` before handing out any connection, one more round trip before every
/// command (a rate-limit lease, a presence update). Here a connection that failed is dropped,
/// one idle for [`CHECK_IDLE_AFTER`] is checked as deadpool-redis does, and a busy one is
/// handed out as it is.
pub(crate) struct Manager(deadpool_redis::Manager);

impl deadpool::managed::Manager for Manager {
    type Type = Conn;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Conn, redis::RedisError> {
        Ok(Conn {
            conn: self.0.create().await?,
            failed: false,
        })
    }

    async fn recycle(
        &self,
        conn: &mut Conn,
        metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        if conn.failed {
            return Err(deadpool::managed::RecycleError::message(
                "the connection failed",
            ));
        }
        if metrics.last_used() < CHECK_IDLE_AFTER {
            return Ok(());
        }
        self.0.recycle(&mut conn.conn, metrics).await
    }
}

/// The Redis of cluster mode: a client (for the bus's dedicated connections) and one pool of
/// connections shared by every store. Cheap to clone. Nothing connects until first used.
#[derive(Clone)]
pub(crate) struct Redis {
    client: redis::Client,
    pool: Pool,
}

impl Redis {
    /// The client and the pool for `url`.
    ///
    /// # Errors
    /// If `url` is not a usable Redis URL.
    pub(crate) fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
        let manager =
            Manager(deadpool_redis::Manager::new(url).context("REDIS_URL is not usable")?);
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
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
