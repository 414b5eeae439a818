//! The application: builds the services from a [`Config`], assembles the router, and owns the
//! lifecycle (every background task on one tracker, one cancellation token, graceful drain).
//!
//! May import anything below it: `http`, `ws`, `chat`, … .

mod router;

use std::{future::IntoFuture, net::SocketAddr, time::Duration};

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
    fanout::socket::CloseReason,
    telemetry,
};

/// Kernel send buffer per accepted connection. Small and fixed, so that a client that stops
/// reading fills its socket's queue (and is closed as a slow consumer) instead of parking
/// megabytes in the kernel.
const SEND_BUFFER: usize = 64 * 1024;

/// A built service, ready to [`run`].
#[derive(Clone)]
pub struct AppState {
    chat: Chat,
}

impl AppState {
    /// Build everything the service needs: database (migrated when `AUTO_MIGRATE`), the first
    /// admin from `ADMIN_*`, the services of the configured mode, and the housekeeping task.
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
        let chat = Chat::build(config, db, TaskTracker::new(), shutdown).await?;
        let state = Self { chat };
        state.ensure_admin_from_env().await?;
        let chat = state.chat.clone();
        state.chat.tasks.spawn(chat.housekeeping());
        Ok(state)
    }

    /// The configuration this state was built from.
    pub fn config(&self) -> &Config {
        &self.chat.config
    }

    /// Rooms this replica's fan-out is subscribed to (tests and diagnostics).
    pub fn subscribed_room_count(&self) -> usize {
        self.chat.hub.room_count()
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
        admin::ensure_admin(&self.chat.db, &self.chat.hasher, username, email, password).await
    }

    async fn ensure_admin_from_env(&self) -> anyhow::Result<()> {
        let c = &self.chat.config;
        if let (Some(u), Some(e), Some(p)) = (&c.admin_username, &c.admin_email, &c.admin_password)
        {
            self.ensure_admin(u, e, p.expose_secret()).await?;
        }
        Ok(())
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
/// is already 503, the listener stops accepting, every socket is closed with 1012, and
/// in-flight requests, commits and socket flushes get up to `SHUTDOWN_GRACE_SECS` to finish.
///
/// # Errors
/// If the listener fails.
pub async fn run(state: AppState, listener: TcpListener) -> anyhow::Result<()> {
    let chat = state.chat;
    let app = router::router(chat.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER);
    });
    let stop = chat.stop.clone();
    let hub = chat.hub.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.cancelled().await;
        tracing::info!("shutting down: closing sockets with 1012");
        hub.close_all(CloseReason::Restart);
    });
    let grace = Duration::from_secs(chat.config.shutdown_grace_secs);
    let tasks = chat.tasks.clone();
    let stop = chat.stop.clone();
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
    // In-flight HTTP requests (and their commits) finish, then every tracked task: commit
    // drains and their publishes, socket sessions flushing their close frames, room tasks.
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
