//! All SQL of the service. Functions take and return domain types from
//! [`crate::domain::model`] (entities stay in here) and fail with [`StoreError`], never with
//! an HTTP error. SQL that must be identical on SQLite and PostgreSQL goes through SeaQuery
//! builders; raw statements (the group commit, the idempotency lookup) pick their placeholder
//! style from the connection's backend through [`raw`].
//!
//! May import: `domain`, `config`, `telemetry`.

pub(crate) mod commit;
pub(crate) mod messages;
pub(crate) mod reactions;
pub(crate) mod revoked;
pub(crate) mod rooms;
pub(crate) mod schema;
pub(crate) mod search;
pub(crate) mod sessions;
pub(crate) mod users;

/// What unit tests of the crate share.
#[cfg(test)]
pub(crate) mod testing {
    use sea_orm::{ConnectionTrait, Database};

    use crate::domain::model::UserRef;

    /// A new account named `name` (e-mail `name@example.com`, role `user`), as its author
    /// reference.
    pub(crate) async fn user(db: &sea_orm::DatabaseConnection, name: &str) -> UserRef {
        let user = super::users::create(
            db,
            super::users::NewUser {
                username: name.into(),
                email: format!("{name}@example.com"),
                password_hash: "x".into(),
                first_name: None,
                last_name: None,
                roles: vec!["user".into()],
            },
        )
        .await
        .expect("user");
        UserRef {
            id: user.id,
            username: user.username,
        }
    }

    /// A migrated in-memory SQLite database (one connection: each would be its own database).
    pub(crate) async fn sqlite() -> sea_orm::DatabaseConnection {
        let mut opts = sea_orm::ConnectOptions::new("sqlite::memory:");
        opts.max_connections(1).sqlx_logging(false);
        let db = Database::connect(opts).await.expect("sqlite");
        <migration::Migrator as migration::MigratorTrait>::up(&db, None)
            .await
            .expect("migrations");
        db
    }

    /// Keeps a paused clock from jumping while the runtime waits for something outside it
    /// (SQLite's worker thread): as long as this lives, time moves only when the test calls
    /// `tokio::time::advance`. Without it, a paused runtime that waits for a query skips
    /// straight to its next timer, the pool's acquire timeout among them.
    pub(crate) struct ClockHold {
        _release: std::sync::mpsc::Sender<()>,
    }

    /// Hold the clock (see [`ClockHold`]); taken before the database is opened.
    pub(crate) fn hold_clock() -> ClockHold {
        let (release, held) = std::sync::mpsc::channel::<()>();
        // Tokio does not auto-advance a paused clock while a blocking task runs.
        tokio::task::spawn_blocking(move || {
            let _ = held.recv();
        });
        ClockHold { _release: release }
    }

    /// The URL of a fresh, empty database on the server of `TEST_DATABASE_URL`.
    pub(crate) async fn fresh_postgres_url() -> String {
        let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
        let server = &url[..url.rfind('/').expect("a database in the URL")];
        let admin = Database::connect(format!("{server}/postgres"))
            .await
            .expect("postgres");
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
            .await
            .expect("create database");
        format!("{server}/{name}")
    }
}

use sea_orm::{ConnectionTrait, DbBackend, DbErr, SqlErr, Statement, Value};

use crate::domain::validate::FieldErrors;

/// Most ids bound as parameters in one `IN (…)` list: longer lists go in several queries
/// (PostgreSQL takes at most 65 535 parameters in a statement, older SQLite 999).
pub(crate) const MAX_IDS_PER_QUERY: usize = 900;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The author of a message is not a member of its room (any more).
    #[error("not a member of this room")]
    NotMember,
    /// A unique key clashed: the fields concerned.
    #[error("{message}")]
    Conflict {
        message: String,
        fields: FieldErrors,
    },
    /// The database cannot be reached (no connection from the pool, or the server went away).
    #[error("database unavailable")]
    Unavailable(#[source] DbErr),
    #[error("database error")]
    Db(#[source] DbErr),
}

impl StoreError {
    /// A clash on one field, as in `name is already taken`.
    pub(crate) fn conflict(field: &str, message: &str) -> Self {
        Self::Conflict {
            message: format!("{field} {message}"),
            fields: FieldErrors::from([(field.to_owned(), vec![message.to_owned()])]),
        }
    }
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        // The database is down or restarting: a dependency, not a bug (a retryable 503).
        if db_unavailable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Db(e)
        }
    }
}

/// Whether a database error means the database is down or restarting (a retryable 503), not a
/// bug: the pool could not hand out a connection, the connection broke (I/O), or the server
/// ended it (SQLSTATE class 57P: `terminating connection due to administrator command` when
/// PostgreSQL shuts down, crash shutdown, `cannot connect now` while it starts; class 08:
/// connection exceptions). The one place this rule lives: the store and the
/// use-cases' error mapping both ask it.
pub(crate) fn db_unavailable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(s)) | DbErr::Query(RuntimeErr::SqlxError(s)) => {
            match &**s {
                Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed => true,
                Sqlx::Database(d) => d
                    .code()
                    .is_some_and(|c| c.starts_with("57P") || c.starts_with("08")),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The database's message if `e` is a unique-key clash (the one place that asks).
pub(crate) fn unique_violation(e: &DbErr) -> Option<String> {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(msg)) => Some(msg),
        _ => None,
    }
}

/// `on_unique("name", "is already taken")`: a unique-key clash becomes a conflict on that
/// field; anything else stays a database error.
pub(crate) fn on_unique(
    field: &'static str,
    message: &'static str,
) -> impl Fn(DbErr) -> StoreError {
    move |e| {
        if unique_violation(&e).is_some() {
            StoreError::conflict(field, message)
        } else {
            StoreError::from(e)
        }
    }
}

/// A raw statement with `$1`-style placeholders, rewritten to `?` for SQLite.
pub(crate) fn raw(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => sql.to_owned(),
        _ => {
            let mut out = String::with_capacity(sql.len());
            let mut chars = sql.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                    out.push('?');
                } else {
                    out.push(c);
                }
            }
            out
        }
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Escape `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(crate) fn like_pattern(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 2);
    out.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}
