//! A fresh database per test: a temporary SQLite file, or a PostgreSQL database copied from a
//! template migrated once per test process.

use sea_orm::{ConnectionTrait, Database};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// `postgres://user@host:port` of `TEST_DATABASE_URL`, without the database name.
fn pg_server() -> String {
    let url = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("TEST_DATABASE_URL must be set for a PostgreSQL test");
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url,
    }
}

/// The migrated template of this test process. Its name is unique to the process, so two runs
/// at once (two worktrees, CI and a developer) never drop each other's template; `.ci/run`
/// drops leftover `chat_test_%` databases, templates included.
async fn pg_template(server: &str) -> &'static str {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("chat_test_template_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(format!("{server}/postgres"))
                .await
                .expect("postgres is up");
            admin
                .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
                .await
                .expect("create template");
            admin.close().await.ok();
            let t = Database::connect(format!("{server}/{name}"))
                .await
                .expect("connect template");
            <migration::Migrator as migration::MigratorTrait>::up(&t, None)
                .await
                .expect("migrate template");
            t.close().await.expect("close template");
            name
        })
        .await
}

/// A fresh PostgreSQL database (created from the migrated template) or SQLite file.
pub async fn fresh_database(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("chat-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(format!("{}.db", uuid::Uuid::new_v4().simple()));
            format!("sqlite://{}?mode=rwc", path.display())
        }
        Backend::Postgres => {
            // PostgreSQL refuses to copy a template that another session is copying.
            static CREATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
            let server = pg_server();
            let template = pg_template(&server).await;
            let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
            let _one_at_a_time = CREATE.lock().await;
            let admin = Database::connect(format!("{server}/postgres"))
                .await
                .expect("postgres is up");
            admin
                .execute_unprepared(&format!(
                    r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#
                ))
                .await
                .expect("create test db");
            admin.close().await.ok();
            format!("{server}/{name}")
        }
    }
}

/// A row lock on a room, taken by the test's own PostgreSQL connection (`SELECT … FOR UPDATE`
/// in an open transaction). The group commit locks the rows of its batch's rooms (`FOR NO
/// KEY UPDATE`), so while the hold lasts no message of the room commits: the batch that
/// tries waits for it, and the sends behind that batch queue. [`RoomHold::release`] ends it
/// (so does dropping it: the transaction rolls back).
pub struct RoomHold {
    txn: sea_orm::DatabaseTransaction,
    /// The backend that holds the lock.
    pid: i32,
    db: sea_orm::DatabaseConnection,
}

impl RoomHold {
    pub async fn take(db_url: &str, room: &str) -> Self {
        use sea_orm::{DbBackend, Statement, TransactionTrait};
        let db = Database::connect(db_url).await.expect("connect");
        let txn = db.begin().await.expect("begin");
        let pid: i32 = txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_backend_pid() AS pid",
            ))
            .await
            .expect("pg_backend_pid")
            .expect("a row")
            .try_get("", "pid")
            .expect("pid");
        let locked = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id FROM rooms WHERE name = $1 FOR UPDATE",
                [room.into()],
            ))
            .await
            .expect("lock the room");
        assert!(locked.is_some(), "room {room} exists");
        Self { txn, pid, db }
    }

    /// A connection of the test's own (not the one holding the lock), for reads.
    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        &self.db
    }

    /// How many sessions wait for this hold.
    pub async fn waiting(&self) -> i64 {
        use sea_orm::{DbBackend, Statement};
        self.db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                [self.pid.into()],
            ))
            .await
            .expect("pg_stat_activity")
            .expect("a row")
            .try_get("", "n")
            .expect("count")
    }

    /// Wait until a commit waits for the hold: its batch is in flight.
    pub async fn wait_for_a_commit(&self) {
        super::wait_until("a commit to wait for the room's lock", async || {
            self.waiting().await > 0
        })
        .await;
    }

    pub async fn release(self) {
        self.txn.rollback().await.expect("release the room");
    }
}
