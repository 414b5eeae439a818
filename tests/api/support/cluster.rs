//! Several replicas of the app on one Redis and one PostgreSQL database (a shared SQLite file
//! would not show what a cluster does): in this process, or as processes of the built binary
//! ([`super::ServerProc::replica`]).

use super::{Backend, RedisServer, TestApp, fresh_database, spawn_with};

/// The JWT secret every replica shares.
pub const SECRET: &str = "cluster-secret-cluster-secret-0123";

/// A fresh PostgreSQL database for the replicas of one test.
pub async fn cluster_db() -> String {
    fresh_database(Backend::Postgres).await
}

pub async fn replica(db: &str, redis: &RedisServer) -> TestApp {
    replica_with(db, redis, |_| {}).await
}

/// A replica whose configuration `tune` changes.
pub async fn replica_with(
    db: &str,
    redis: &RedisServer,
    tune: impl FnOnce(&mut chat_server::Config),
) -> TestApp {
    let mut config = chat_server::Config::for_tests(db);
    config.redis_url = Some(redis.url().into());
    config.jwt_secret = Some(SECRET.to_owned().into());
    tune(&mut config);
    spawn_with(config).await
}

/// `n` replicas on a fresh database, each ready (its Redis bus live).
pub async fn cluster(n: usize, redis: &RedisServer) -> Vec<TestApp> {
    cluster_with(n, redis, |_| {}).await
}

/// `n` replicas on a fresh database, each configured by `tune` and ready.
pub async fn cluster_with(
    n: usize,
    redis: &RedisServer,
    tune: impl Fn(&mut chat_server::Config),
) -> Vec<TestApp> {
    let db = cluster_db().await;
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(replica_with(&db, redis, &tune).await);
    }
    for app in &apps {
        app.wait_ready().await;
    }
    apps
}
