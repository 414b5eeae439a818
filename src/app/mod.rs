//! The application: builds the services from a [`Config`], assembles the router, and owns the
//! lifecycle (every background task on one tracker, one cancellation token, graceful drain).
//!
//! May import anything below it: `http`, `ws`, `chat`, … .

mod router;

use std::{future::IntoFuture, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt;
use migration::MigratorTrait;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    chat::{Chat, admin, password::PasswordHasher},
    config::Config,
    fanout::{hub::Hub, socket::CloseReason},
    store::schema::{self, SchemaGate},
    telemetry,
};

/// Kernel send buffer per accepted connection. Small and fixed, so that a client that stops
/// reading fills its socket's queue (and is closed as a slow consumer) instead of parking
/// megabytes in the kernel.
const SEND_BUFFER: usize = 64 * 1024;

/// How often a replica whose database schema is behind checks again.
const SCHEMA_RECHECK: Duration = Duration::from_secs(2);

/// The drain closes sockets in batches this far apart, over the first half of the grace
/// period (at least one batch).
const CLOSE_BATCH_EVERY: Duration = Duration::from_millis(250);

/// A built service, ready to [`run`].
#[derive(Clone)]
pub struct AppState {
    chat: Chat,
    /// The main database connection (schema checks, the first admin).
    db: DatabaseConnection,
    /// Whether the database has every migration of this binary: until it does, `/readyz`
    /// answers 503 and every other route too.
    schema: SchemaGate,
}

impl AppState {
    /// Build everything the service needs: database (migrated when `AUTO_MIGRATE`), the first
    /// admin from `ADMIN_*`, the services of the configured mode, and the periodic tasks.
    /// Everything stops when `shutdown` is cancelled.
    ///
    /// # Errors
    /// Database unreachable, migrations failing, or an invalid Redis URL.
    pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        config.validate()?;
        telemetry::metrics::install();
        let db = connect_db(&config).await?;
        if config.auto_migrate {
            migrate(&db).await?;
        }
        let schema = SchemaGate::default();
        let current = check_schema(&db, &schema, true).await;
        let commit_db = connect_commit_db(&config, &db).await?;
        telemetry::load::start_probe(shutdown.clone());
        let chat = Chat::build(config, db.clone(), commit_db, TaskTracker::new(), shutdown).await?;
        let state = Self { chat, db, schema };
        if current {
            state.ensure_admin_from_env().await?;
        }
        state.chat.spawn_periodic_tasks();
        if !current {
            state.chat.tasks().spawn(watch_schema(state.clone()));
        }
        Ok(state)
    }

    /// Whether the database schema has every migration of this binary (else this replica
    /// serves nothing but its probes and metrics).
    pub fn schema_current(&self) -> bool {
        self.schema.is_current()
    }

    /// The configuration this state was built from.
    pub fn config(&self) -> &Config {
        self.chat.config()
    }

    /// Rooms this replica's fan-out is subscribed to (tests and diagnostics).
    pub fn subscribed_room_count(&self) -> usize {
        self.chat.upkeep().room_count()
    }

    /// Create `username` as an admin, or grant `admin` to the existing user of that name.
    ///
    /// # Errors
    /// Database errors, or an email already used by another account.
    pub async fn ensure_admin(
        &self,
        username: &str,
        email: &str,
        password: &str,
    ) -> anyhow::Result<i64> {
        self.chat
            .accounts()
            .ensure_admin(username, email, password)
            .await
    }

    async fn ensure_admin_from_env(&self) -> anyhow::Result<()> {
        let c = self.chat.config();
        if let (Some(u), Some(e), Some(p)) = (&c.admin_username, &c.admin_email, &c.admin_password)
        {
            self.ensure_admin(u, e, p.expose_secret()).await?;
        }
        Ok(())
    }
}

/// Compare the database's migrations with this binary's and set `gate`; `true` when current.
async fn check_schema(db: &DatabaseConnection, gate: &SchemaGate, log: bool) -> bool {
    let current = match schema::pending(db).await {
        Ok(pending) if pending.is_empty() => true,
        Ok(pending) => {
            if log {
                tracing::warn!(
                    ?pending,
                    "the database schema is behind this binary: serving nothing until \
                     `chat-server migrate` has applied its migrations"
                );
            }
            false
        }
        Err(e) => {
            if log {
                tracing::warn!(error = %e, "cannot read the applied migrations");
            }
            false
        }
    };
    gate.set_current(current);
    current
}

/// Re-check a schema that was behind until it is current (the migrate Job or hook ran), then
/// create the first admin from `ADMIN_*` if configured.
async fn watch_schema(state: AppState) {
    loop {
        tokio::select! {
            () = state.chat.stop().cancelled() => return,
            () = tokio::time::sleep(SCHEMA_RECHECK) => {}
        }
        if check_schema(&state.db, &state.schema, false).await {
            tracing::info!("database schema is current: serving");
            if let Err(e) = state.ensure_admin_from_env().await {
                tracing::error!(error = %e, "creating the admin from ADMIN_* failed");
            }
            return;
        }
    }
}

/// Connect to the database (and tune SQLite for concurrent readers and one writer).
///
/// # Errors
/// If the database cannot be reached.
pub async fn connect_db(config: &Config) -> anyhow::Result<DatabaseConnection> {
    let mut opts = db_options(config);
    opts.max_connections(config.db_max_connections);
    let db = Database::connect(opts)
        .await
        .context("cannot connect to the database (DATABASE_URL)")?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode=WAL;").await?;
    }
    Ok(db)
}

/// The group commit's own connection, beside the pool, on PostgreSQL (`None` on SQLite: the
/// group commit shares the pool, whose one writer it is). One drain per replica commits batch
/// after batch on it, so a commit never waits for a pool slot behind reads, and the
/// connection plans the commit statement once:
/// `plan_cache_mode = force_generic_plan`. PostgreSQL would otherwise plan it again for every
/// batch, because the generic plan's estimate for arrays of unknown length (10 elements each)
/// always loses to a custom plan's for the batch's few drafts, and planning the statement's
/// CTEs costs more than running them (measured: 0.77 ms of planning against 0.41 ms of
/// execution per batch). The statement is written for a generic plan: index probes per
/// draft, whatever the batch's size (see `store::commit`).
///
/// # Errors
/// If the database cannot be reached.
pub async fn connect_commit_db(
    config: &Config,
    db: &DatabaseConnection,
) -> anyhow::Result<Option<DatabaseConnection>> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(None);
    }
    let mut opts = db_options(config);
    // A `SET` after each (re)connect rather than a startup option, which a connection pooler
    // such as PgBouncer may refuse.
    opts.max_connections(1).map_sqlx_postgres_pool_opts(|pool| {
        pool.after_connect(|conn, _| {
            Box::pin(async move {
                sea_orm::sqlx::Executor::execute(conn, "SET plan_cache_mode = force_generic_plan")
                    .await
                    .map(|_| ())
            })
        })
    });
    let commit_db = Database::connect(opts)
        .await
        .context("cannot connect to the database (DATABASE_URL)")?;
    Ok(Some(commit_db))
}

/// What every connection to the database shares: timeouts and the ping policy.
fn db_options(config: &Config) -> ConnectOptions {
    let mut opts = ConnectOptions::new(config.database_url.expose_secret().to_owned());
    opts.min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a pooled connection on every acquire by default: a round trip (and a
        // wake-up of the server process) before every statement, the group commit's
        // included. Only a connection idle this long is pinged first; a busy connection that
        // died fails its statement, which is then answered with an error and retried by
        // the client, and sqlx's check on release drops the connection.
        .test_before_acquire_if_idle_for(Duration::from_secs(10))
        .sqlx_logging(false);
    opts
}

/// Apply pending migrations.
///
/// # Errors
/// If a migration fails.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    migration::Migrator::up(db, None)
        .await
        .context("applying migrations")
}

/// `chat-server admin create`: the first admin, on a database migrated when `AUTO_MIGRATE`.
///
/// # Errors
/// Database errors, a short password, or an email used by another account.
pub async fn create_admin(
    config: &Config,
    username: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<i64> {
    let db = connect_db(config).await?;
    if config.auto_migrate {
        migrate(&db).await?;
    }
    admin::ensure_admin(&db, &PasswordHasher::new(1), username, email, password).await
}

/// Serve `state` on `listener` until its shutdown token is cancelled, then drain: `/readyz`
/// is already 503, the listener stops accepting, sockets are closed with 1012 in batches
/// spread over the first half of `SHUTDOWN_GRACE_SECS` (so the other replicas absorb the
/// reconnections gradually), and in-flight requests, commits and socket flushes get up to
/// `SHUTDOWN_GRACE_SECS` to finish. Probes and metrics are served on `listener` too.
///
/// # Errors
/// If the listener fails.
pub async fn run(state: AppState, listener: TcpListener) -> anyhow::Result<()> {
    serve(state, listener, None).await
}

/// [`run`], with `/healthz`, `/readyz` and `/metrics` on `internal` only (`INTERNAL_ADDR`):
/// the public listener, the one an Ingress routes to, does not serve them. The internal
/// listener keeps answering during the drain (the kubelet sees `/readyz` 503) and stops when
/// this returns.
///
/// # Errors
/// If a listener fails.
pub async fn run_with_internal(
    state: AppState,
    listener: TcpListener,
    internal: TcpListener,
) -> anyhow::Result<()> {
    serve(state, listener, Some(internal)).await
}

async fn serve(
    state: AppState,
    listener: TcpListener,
    internal: Option<TcpListener>,
) -> anyhow::Result<()> {
    let AppState { chat, schema, .. } = state;
    let split = internal.is_some();
    let app = router::router(chat.clone(), schema.clone(), !split)
        .into_make_service_with_connect_info::<SocketAddr>();
    // Aborted when this function returns (the guard drops).
    let _internal = internal.map(|internal| {
        let app = router::internal_router(chat.clone(), schema.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        AbortOnDrop(tokio::spawn(axum::serve(internal, app).into_future()))
    });
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER);
    });
    let grace = Duration::from_secs(chat.config().shutdown_grace_secs);
    let stop = chat.stop().clone();
    let hub = chat.upkeep().hub();
    let closer = chat.tasks().clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
        tracing::info!("shutting down: closing sockets with 1012, in batches");
        closer.spawn(close_in_batches(hub, grace / 2));
    });
    let tasks = chat.tasks().clone();
    let stop = chat.stop().clone();
    drop(chat);
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        // Biased: once the shutdown has begun the server future completes too (as soon as no
        // HTTP request is in flight), and it must not win the race and skip the drain below.
        biased;
        () = stop.cancelled() => {}
        // The listener failed before any shutdown.
        served = &mut server => return served.map_err(Into::into),
    }
    // In-flight HTTP requests (and their commits) finish, then every tracked task: the batched
    // closes, commit drains and their publishes, socket sessions flushing their close frames,
    // room tasks.
    let drained = tokio::time::timeout(grace, async {
        let served = server.await;
        tasks.close();
        tasks.wait().await;
        served
    })
    .await;
    match drained {
        Ok(served) => served.map_err(Into::into),
        Err(_) => {
            tracing::warn!(
                tasks = tasks.len(),
                "grace period over with work still running"
            );
            Ok(())
        }
    }
}

/// Close every socket with 1012, spread over `window`: one batch every
/// [`CLOSE_BATCH_EVERY`], each the same share of the sockets open when the drain began. A
/// few sockets go at once (one per batch); ten thousand take the whole window, so the
/// reconnections reach the other replicas as a stream rather than a wall. Sockets that
/// appeared meanwhile are closed with the last batch.
async fn close_in_batches(hub: Arc<Hub>, window: Duration) {
    let sockets = hub.sockets();
    let batches = batch_count(window);
    let per_batch = sockets.len().div_ceil(batches).max(1);
    for (i, batch) in sockets.chunks(per_batch).enumerate() {
        if i > 0 {
            tokio::time::sleep(CLOSE_BATCH_EVERY).await;
        }
        for ctl in batch {
            // The socket sends the acks it owes, then closes with 1012.
            ctl.restart();
        }
    }
    hub.close_all(CloseReason::Restart);
}

/// Batches that fit in `window`, one per [`CLOSE_BATCH_EVERY`] (at least one).
fn batch_count(window: Duration) -> usize {
    usize::try_from(window.as_millis() / CLOSE_BATCH_EVERY.as_millis())
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        commit::{NewMessage, commit},
        rooms,
    };

    /// The group commit's connection plans its statement once, whatever the batch sizes:
    /// without `force_generic_plan` PostgreSQL plans the first five executions anyway, and
    /// keeps planning every batch after them.
    #[tokio::test]
    #[cfg_attr(
        not(pg_tests),
        ignore = "set TEST_DATABASE_URL to run the PostgreSQL suite"
    )]
    async fn the_commit_connection_plans_the_commit_statement_once() {
        let config = Config::for_tests(&crate::store::testing::fresh_postgres_url().await);
        let db = connect_db(&config).await.expect("connect");
        migrate(&db).await.expect("migrations");
        let commit_db = connect_commit_db(&config, &db)
            .await
            .expect("connect")
            .expect("a connection of its own on PostgreSQL");

        let author = crate::store::testing::user(&db, "writer").await;
        let room = rooms::create(
            &db,
            "plans",
            None,
            crate::domain::room::Visibility::Public,
            author.id,
        )
        .await
        .expect("room");
        let draft = NewMessage {
            room_id: room.id,
            room: "plans",
            author: &author,
            content: "hello",
            client_id: None,
            reply_to: None,
        };
        for size in [1, 3, 1, 2, 8, 1, 5, 2, 1, 4] {
            let batch: Vec<NewMessage<'_>> = (0..size).map(|_| NewMessage { ..draft }).collect();
            let out = commit(&commit_db, &batch).await.expect("commit");
            assert!(out.iter().all(Result::is_ok));
        }
        // One connection: this reads the session that committed.
        let row = commit_db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT COALESCE(sum(generic_plans), 0)::bigint AS generic, \
                    COALESCE(sum(custom_plans), 0)::bigint AS custom \
                 FROM pg_prepared_statements WHERE statement LIKE 'WITH input AS%'",
            ))
            .await
            .expect("query")
            .expect("a row");
        let generic: i64 = row.try_get("", "generic").expect("generic");
        let custom: i64 = row.try_get("", "custom").expect("custom");
        assert_eq!((generic, custom), (10, 0), "(generic, custom) plans");
    }

    #[test]
    fn closes_are_spread_over_half_the_grace_period() {
        // SHUTDOWN_GRACE_SECS=15: 7.5 s of batches, 250 ms apart.
        assert_eq!(batch_count(Duration::from_secs(15) / 2), 30);
        assert_eq!(batch_count(Duration::ZERO), 1);
        assert_eq!(batch_count(Duration::from_millis(100)), 1);
    }
}
