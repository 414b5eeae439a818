//! The service layer: the rules, each in one place, and one use-case per operation that every
//! transport calls (REST handlers and both socket endpoints). `http` and `ws` reach only this
//! layer and the wire types of `domain`; the database (`store`), the bus and its routing, and
//! Redis (`kv`) are below it, reached from here only.
//!
//! [`Chat`] is a cheap handle on the sub-services, each built from the parts it needs (so a
//! test builds one without the whole graph):
//!
//! * [`Chat::auth`] ([`auth::Auth`]): who the caller is (access token, deny-list, admin role
//!   re-checked).
//! * [`Chat::accounts`] ([`accounts::Accounts`]): register, log in, refresh, log out, the
//!   profile, the password, the directory, admin operations on users.
//! * [`Chat::rooms`] ([`rooms::Rooms`]): rooms and membership.
//! * [`Chat::messages`] ([`messages::Messages`]): history, the send pipeline, edits,
//!   deletions, reactions, threads, typing, search.
//! * [`Chat::dms`] ([`dms::Dms`]): direct messages, read state, throttled receipts.
//! * [`Chat::sockets`] ([`sockets::Sockets`]): socket admission, joining a room (the resume
//!   seam), leaving it.
//! * [`Chat::limits`] ([`limits::Limits`]): every abuse limit.
//! * [`Chat::ops`] ([`ops::Ops`]): readiness, and the gauges a scrape refreshes.
//!
//! The parts they share: [`access::Access`] (the access rule), [`presence::Online`] (who is
//! online), [`revoke::Revocation`], [`events::Events`] (publishing), [`send::Sender`] (the
//! group commit). [`Upkeep`] is the background work: reconciliation, socket audits, presence
//! and limit heartbeats, the search indexer ([`heal`] says what repairs what).

pub(crate) mod access;
pub(crate) mod accounts;
pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod dms;
mod error;
pub(crate) mod events;
pub(crate) mod heal;
pub(crate) mod jwt;
pub(crate) mod limits;
pub(crate) mod messages;
pub(crate) mod ops;
pub(crate) mod password;
pub(crate) mod presence;
pub(crate) mod replay;
pub(crate) mod revoke;
pub(crate) mod rooms;
pub(crate) mod send;
pub(crate) mod sockets;
pub(crate) mod tasks;
#[cfg(test)]
pub(crate) mod testing;
mod upkeep;

use std::sync::Arc;

use rand::RngCore;
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub(crate) use self::error::Error;
pub(crate) use self::upkeep::Upkeep;
use self::{
    access::Access,
    accounts::Accounts,
    auth::Auth,
    dms::{Dms, Receipts},
    events::Events,
    jwt::JwtKeys,
    limits::Limits,
    messages::Messages,
    ops::Ops,
    password::PasswordHasher,
    presence::{LocalPresence, Online, Presence},
    revoke::{DbDenyList, DenyList, RedisDenyList, Revocation},
    rooms::Rooms,
    send::Sender,
    sockets::Sockets,
};
use crate::{
    bus::{Bus, local::LocalBus, redis::RedisBus},
    config::Config,
    fanout::hub::Hub,
    kv::{Redis, limits::LimitStore},
};

/// Cheap-to-clone handle on the service layer; `http` and `ws` handlers take it as their
/// state.
#[derive(Clone)]
pub(crate) struct Chat(Arc<Parts>);

struct Parts {
    config: Config,
    /// Every background task (room tasks, commit drains, sockets, the bus): shutdown waits
    /// for them.
    tasks: TaskTracker,
    /// Cancelled on shutdown: `/readyz` answers 503 from then on.
    stop: CancellationToken,
    auth: Auth,
    accounts: Accounts,
    rooms: Rooms,
    messages: Messages,
    dms: Dms,
    sockets: Sockets,
    limits: Limits,
    ops: Ops,
    upkeep: Upkeep,
}

/// The parts that differ between embedded and cluster mode.
struct ModeParts {
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    deny: Arc<dyn DenyList>,
    /// Redis, for the cluster-wide half of the limits.
    cluster: Option<LimitStore>,
}

/// The parts the sub-services share, built once.
struct Shared {
    db: DatabaseConnection,
    events: Events,
    access: Access,
    online: Online,
    limits: Limits,
    revocation: Revocation,
    hub: Arc<Hub>,
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
        let keys = Arc::new(jwt_keys(&config));
        let mode = mode_parts(&config, &db, &tasks, &stop).await?;
        let events = Events::new(mode.bus.clone());
        let hub = Hub::new(
            db.clone(),
            mode.bus.clone(),
            config.ws_queue_capacity,
            tasks.clone(),
        );
        let limits = Limits::new(&config, mode.cluster, events.clone());
        let revocation = Revocation::new(mode.deny, events.clone(), keys.access_ttl_secs);
        let shared = Shared {
            access: Access::new(db.clone()),
            online: Online::new(hub.clone(), mode.presence, db.clone(), events.clone()),
            db,
            events,
            limits,
            revocation,
            hub,
        };
        let sender = Sender::new(
            commit_db.clone().unwrap_or_else(|| shared.db.clone()),
            mode.bus,
            tasks.clone(),
        )
        .coalescing(std::time::Duration::from_millis(
            config.commit_coalesce_max_ms,
        ));
        let parts = Parts {
            auth: Auth::new(keys.clone(), shared.revocation.clone(), shared.db.clone()),
            accounts: Accounts::new(&shared, keys, hasher(&config), &config),
            rooms: Rooms::new(
                shared.db.clone(),
                shared.access.clone(),
                shared.online.clone(),
                shared.limits.clone(),
                shared.events.clone(),
            ),
            messages: Messages::new(
                shared.db.clone(),
                shared.access.clone(),
                shared.limits.clone(),
                sender,
                shared.events.clone(),
            ),
            dms: Dms::new(
                shared.db.clone(),
                shared.access.clone(),
                shared.limits.clone(),
                shared.online.clone(),
                Receipts::new(shared.events.clone(), tasks.clone()),
            ),
            sockets: Sockets::new(
                shared.db.clone(),
                shared.hub.clone(),
                shared.access.clone(),
                shared.online.clone(),
                shared.limits.clone(),
            ),
            ops: Ops::new(
                shared.db.clone(),
                commit_db,
                shared.events.clone(),
                stop.clone(),
            ),
            upkeep: Upkeep::new(&shared, stop.clone()),
            limits: shared.limits,
            config,
            tasks,
            stop,
        };
        Ok(Self(Arc::new(parts)))
    }

    /// Who the caller is.
    pub(crate) fn auth(&self) -> &Auth {
        &self.0.auth
    }

    /// Accounts, sessions and the user directory.
    pub(crate) fn accounts(&self) -> &Accounts {
        &self.0.accounts
    }

    /// Rooms and membership.
    pub(crate) fn rooms(&self) -> &Rooms {
        &self.0.rooms
    }

    /// Messages: history, sending, edits, deletions, reactions, threads, typing, search.
    pub(crate) fn messages(&self) -> &Messages {
        &self.0.messages
    }

    /// Direct messages and read state.
    pub(crate) fn dms(&self) -> &Dms {
        &self.0.dms
    }

    /// What a WebSocket does: admission, join, leave.
    pub(crate) fn sockets(&self) -> &Sockets {
        &self.0.sockets
    }

    /// The abuse limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Readiness and scrape-time gauges.
    pub(crate) fn ops(&self) -> &Ops {
        &self.0.ops
    }

    /// The background work.
    pub(crate) fn upkeep(&self) -> &Upkeep {
        &self.0.upkeep
    }

    /// The configuration the service was built from.
    pub(crate) fn config(&self) -> &Config {
        &self.0.config
    }

    /// Where background work is spawned, so that shutdown waits for it.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }

    /// Cancelled when the replica shuts down.
    pub(crate) fn stop(&self) -> &CancellationToken {
        &self.0.stop
    }
}

/// The password hasher, with `HASH_CONCURRENCY` hashes at once (default: one per core).
fn hasher(config: &Config) -> PasswordHasher {
    let concurrency = config
        .hash_concurrency
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get));
    PasswordHasher::new(concurrency)
}

/// The bus, presence and deny-list of the configured mode.
async fn mode_parts(
    config: &Config,
    db: &DatabaseConnection,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<ModeParts> {
    let replica_id = rand::rng().next_u64() >> 1;
    Ok(match &config.redis_url {
        Some(url) => cluster_parts(url.expose_secret(), db, replica_id, tasks, stop)?,
        None => ModeParts {
            bus: Arc::new(LocalBus::default()),
            presence: Arc::new(LocalPresence::default()),
            deny: DbDenyList::load(db.clone()).await?,
            cluster: None,
        },
    })
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
