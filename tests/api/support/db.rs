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
