//! The soak's private cluster, from `chat-testkit`: PostgreSQL (initdb + pg_ctl in the soak's
//! directory, on a free port), redis-server, N `chat-server` replicas and nginx, each stopped
//! by its own PID (or `pg_ctl stop`) when dropped, so an error or Ctrl-C leaves nothing
//! behind. Never the shared PostgreSQL on 5432 or Redis on 6379.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chat_testkit::{Cluster, Database, NginxOptions, PrivatePostgres, RedisServer, Replica};

use super::SoakArgs;

/// Start the soak's cluster in `dir` (logs of every process there) and print what runs where.
pub async fn start(args: &SoakArgs, server: &Path, dir: &Path) -> Result<Cluster> {
    eprintln!(
        "soak: starting PostgreSQL, Redis, {} replicas, nginx",
        args.replicas
    );
    let mut env: Vec<(&str, String)> = vec![
        ("JWT_SECRET", "soak-secret-soak-secret-soak-secret".into()),
        ("SHUTDOWN_GRACE_SECS", args.grace_secs.to_string()),
        ("ACCESS_TOKEN_TTL_SECS", "86400".into()),
        ("MESSAGE_RATE_PER_SEC", "1000000".into()),
        ("MESSAGE_RATE_BURST", "1000000".into()),
        ("READ_RATE_PER_SEC", "1000000".into()),
        ("READ_RATE_BURST", "1000000".into()),
        ("AUTH_RATE_PER_MIN", "1000000".into()),
        ("ACCOUNT_RATE_PER_MIN", "1000000".into()),
        ("ROOMS_PER_HOUR", "1000000".into()),
        ("WS_MAX_SOCKETS_PER_USER", "0".into()),
        ("WS_MAX_SOCKETS_PER_ADDRESS", "0".into()),
        ("DB_MAX_CONNECTIONS", "20".into()),
        ("LOG_FORMAT", "json".into()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    if let Some(u) = args.upgrades_per_sec {
        env.push(("WS_UPGRADES_PER_SEC", u.to_string()));
    }
    // each client socket costs nginx two connections; 4 processes keep each under the limit
    let workers = if args.sockets > 4000 { 4 } else { 2 };
    let nginx = NginxOptions {
        workers,
        connections: (args.sockets * 2 / workers + 2000).min(18_000),
        port: 0,
    };
    let settings = [
        ("max_connections", "200"),
        ("fsync", "off"),
        ("synchronous_commit", "off"),
    ];
    let cluster = Cluster::builder(server)
        .replicas(args.replicas.max(1))
        .database(Database::Private {
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .envs(env)
        .nginx(Some(nginx))
        .dir(dir)
        .ready_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let pg = postgres(&cluster)?;
    let redis = redis(&cluster)?;
    eprintln!(
        "soak: PostgreSQL :{} (pid {:?}), Redis :{} (pid {:?}), replicas {:?} (pids {:?}), nginx {} (pid {:?})",
        pg.port(),
        pg.pid(),
        redis.port(),
        redis.pid(),
        cluster
            .replicas
            .iter()
            .map(Replica::port)
            .collect::<Vec<_>>(),
        cluster
            .replicas
            .iter()
            .map(Replica::pid)
            .collect::<Vec<_>>(),
        cluster.base_url(),
        cluster.nginx.as_ref().map(chat_testkit::Nginx::pid),
    );
    Ok(cluster)
}

/// The soak's private PostgreSQL.
pub fn postgres(cluster: &Cluster) -> Result<&PrivatePostgres> {
    cluster
        .private_postgres()
        .context("the soak's cluster has no private PostgreSQL")
}

pub fn redis(cluster: &Cluster) -> Result<&RedisServer> {
    cluster
        .redis
        .as_ref()
        .context("the soak's cluster has no Redis")
}
