//! A whole local cluster: a database, Redis (or none: one embedded replica), N `chat-server`
//! replicas sharing them, nginx in front if asked. Dropping it stops everything, load
//! balancer first, database last.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::nginx::{Nginx, NginxOptions};
use crate::postgres::{DEFAULT_SETTINGS, PgDatabase, PrivatePostgres};
use crate::process::{command, random_hex, tail};
use crate::redis::{RedisServer, WorkDir};
use crate::replica::{Replica, ReplicaOptions};

/// Where the replicas keep their data.
#[derive(Debug, Clone)]
pub enum Database {
    /// A SQLite file in the cluster's directory (one replica only).
    Sqlite,
    /// A fresh database `<prefix>_<random>` on the PostgreSQL server of this URL, dropped at
    /// the end.
    Fresh { server_url: String, prefix: String },
    /// A private PostgreSQL server (`initdb`) with these settings, stopped at the end.
    Private { settings: Vec<(String, String)> },
    /// This database as it is: neither created nor dropped.
    Existing(String),
}

impl Database {
    /// A private PostgreSQL with [`DEFAULT_SETTINGS`].
    pub fn private() -> Self {
        Self::Private {
            settings: DEFAULT_SETTINGS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// The database a [`Cluster`] owns.
pub enum ClusterDatabase {
    Sqlite(PathBuf),
    Fresh(PgDatabase),
    Private(PrivatePostgres),
    Existing(String),
}

/// What [`Cluster::builder`] starts.
pub struct ClusterBuilder {
    binary: PathBuf,
    replicas: usize,
    redis: bool,
    database: Database,
    nginx: Option<NginxOptions>,
    env: Vec<(String, String)>,
    first_port: u16,
    dir: Option<PathBuf>,
    ready_timeout: Duration,
}

impl ClusterBuilder {
    /// Replicas (default 2).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// A private redis-server (default), or none: one replica with in-process fan-out.
    pub fn redis(mut self, on: bool) -> Self {
        self.redis = on;
        self
    }

    /// Default: a fresh database on postgres://postgres@127.0.0.1:5432.
    pub fn database(mut self, db: Database) -> Self {
        self.database = db;
        self
    }

    /// nginx in front of the replicas (default: none).
    pub fn nginx(mut self, opts: Option<NginxOptions>) -> Self {
        self.nginx = opts;
        self
    }

    /// A variable of every replica (and of `chat-server migrate`); it wins over the ones the
    /// cluster sets (`DATABASE_URL`, `REDIS_URL`, `JWT_SECRET`, `AUTO_MIGRATE=false`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        set(&mut self.env, key.into(), value.into());
        self
    }

    pub fn envs<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in vars {
            set(&mut self.env, k.into(), v.into());
        }
        self
    }

    /// Replica i listens on `port + i`; 0 (default): free ports.
    pub fn first_port(mut self, port: u16) -> Self {
        self.first_port = port;
        self
    }

    /// Where logs and data go (created, kept); default: a temporary directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How long one replica's start may take (default 60 s).
    pub fn ready_timeout(mut self, limit: Duration) -> Self {
        self.ready_timeout = limit;
        self
    }

    /// Database, Redis, `chat-server migrate` once, the replicas one after the other (each
    /// ready), nginx. Whatever started is stopped again if a later step fails.
    pub async fn start(self) -> Result<Cluster> {
        if self.replicas == 0 {
            bail!("a cluster needs at least one replica");
        }
        if self.replicas > 1 && !self.redis {
            bail!("replicas share their events only through Redis: one replica without it");
        }
        if self.replicas > 1 && matches!(self.database, Database::Sqlite) {
            bail!("replicas cannot share a SQLite file: use PostgreSQL");
        }
        let dir = WorkDir::new(self.dir.as_deref())?;
        let database = self.open_database(&dir)?;
        let mut cluster = Cluster {
            nginx: None,
            replicas: Vec::new(),
            redis: None,
            database_url: database.url(),
            database,
            env: Vec::new(),
            dir,
        };
        if self.redis {
            let redis_dir = cluster.dir.path().join("redis");
            cluster.redis = Some(RedisServer::start_in(Some(&redis_dir)).await?);
        }
        cluster.env = self.replica_env(&cluster)?;
        migrate(&self.binary, &cluster.env, cluster.dir.path())?;
        for i in 0..self.replicas {
            let port = match self.first_port {
                0 => 0,
                p => p
                    .checked_add(u16::try_from(i)?)
                    .context("replica port past 65535")?,
            };
            let opts = ReplicaOptions {
                name: format!("replica{}", i + 1),
                port: Some(port),
                dir: Some(cluster.dir.path().to_owned()),
                ready_timeout: self.ready_timeout,
            };
            let replica = Replica::spawn(&self.binary, cluster.env.clone(), opts).await?;
            cluster.replicas.push(replica);
        }
        if let Some(opts) = &self.nginx {
            let addrs: Vec<_> = cluster.replicas.iter().map(Replica::addr).collect();
            let nginx_dir = cluster.dir.path().join("nginx");
            cluster.nginx = Some(Nginx::start(&addrs, opts, Some(&nginx_dir)).await?);
        }
        Ok(cluster)
    }

    fn open_database(&self, dir: &WorkDir) -> Result<ClusterDatabase> {
        Ok(match &self.database {
            Database::Sqlite => ClusterDatabase::Sqlite(dir.path().join("chat.db")),
            Database::Fresh { server_url, prefix } => {
                ClusterDatabase::Fresh(PgDatabase::create(server_url, prefix)?)
            }
            Database::Private { settings } => {
                let settings: Vec<(&str, &str)> = settings
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                // A temporary directory of this (root) process is closed to the postgres
                // user: the private server then gets a temporary directory of its own.
                let pg_dir = match dir {
                    WorkDir::Given(d) => Some(d.join("pg")),
                    WorkDir::Temp(_) => None,
                };
                ClusterDatabase::Private(PrivatePostgres::start_with(pg_dir.as_deref(), &settings)?)
            }
            Database::Existing(url) => ClusterDatabase::Existing(url.clone()),
        })
    }

    fn replica_env(&self, cluster: &Cluster) -> Result<Vec<(String, String)>> {
        let mut env = Vec::new();
        set(
            &mut env,
            "DATABASE_URL".into(),
            cluster.database_url.clone(),
        );
        if let Some(redis) = &cluster.redis {
            set(&mut env, "REDIS_URL".into(), redis.url());
        }
        set(&mut env, "JWT_SECRET".into(), random_hex(32)?);
        set(&mut env, "AUTO_MIGRATE".into(), "false".into());
        for (k, v) in &self.env {
            set(&mut env, k.clone(), v.clone());
        }
        Ok(env)
    }
}

/// Set `key` in `env`, replacing an earlier value.
fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
}

/// `chat-server migrate` with the replicas' environment, its output in `migrate.log`.
fn migrate(binary: &Path, env: &[(String, String)], dir: &Path) -> Result<()> {
    let log_path = dir.join("migrate.log");
    let log = crate::process::log_file(&log_path)?;
    let status = command(binary, dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("migrate")
        .stdout(log.try_clone()?)
        .stderr(Stdio::from(log))
        .status()
        .with_context(|| format!("start {} migrate", binary.display()))?;
    if !status.success() {
        bail!(
            "{} migrate failed ({status}):\n{}",
            binary.display(),
            tail(&log_path, 40)
        );
    }
    Ok(())
}

impl ClusterDatabase {
    fn url(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite://{}?mode=rwc", path.display()),
            Self::Fresh(db) => db.url().to_owned(),
            Self::Private(pg) => pg.url("chat"),
            Self::Existing(url) => url.clone(),
        }
    }
}

/// A running cluster; see [`Cluster::builder`]. Fields drop in order: load balancer,
/// replicas, Redis, database, directory.
pub struct Cluster {
    pub nginx: Option<Nginx>,
    pub replicas: Vec<Replica>,
    pub redis: Option<RedisServer>,
    pub database: ClusterDatabase,
    database_url: String,
    env: Vec<(String, String)>,
    dir: WorkDir,
}

impl Cluster {
    /// A cluster of the `chat-server` binary at `binary`.
    pub fn builder(binary: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder {
            binary: binary.into(),
            replicas: 2,
            redis: true,
            database: Database::Fresh {
                server_url: "postgres://postgres@127.0.0.1:5432".into(),
                prefix: "chat_cluster".into(),
            },
            nginx: None,
            env: Vec::new(),
            first_port: 0,
            dir: None,
            ready_timeout: Duration::from_secs(60),
        }
    }

    /// Where clients go: nginx if there is one, else the first replica.
    pub fn base_url(&self) -> String {
        match &self.nginx {
            Some(nginx) => nginx.base_url(),
            None => self.replicas[0].base_url(),
        }
    }

    pub fn replica_urls(&self) -> Vec<String> {
        self.replicas.iter().map(Replica::base_url).collect()
    }

    pub fn redis_url(&self) -> Option<String> {
        self.redis.as_ref().map(RedisServer::url)
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// The private PostgreSQL server, if the cluster runs one.
    pub fn private_postgres(&self) -> Option<&PrivatePostgres> {
        match &self.database {
            ClusterDatabase::Private(pg) => Some(pg),
            _ => None,
        }
    }

    pub fn private_postgres_mut(&mut self) -> Option<&mut PrivatePostgres> {
        match &mut self.database {
            ClusterDatabase::Private(pg) => Some(pg),
            _ => None,
        }
    }

    /// The replicas' environment (besides `PATH` and `BIND_ADDR`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Logs and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The endpoints as variables: `BASE_URL`, `REPLICA_URLS` and `REPLICA_PIDS`
    /// (comma-separated), `REDIS_URL` (empty without Redis), `DATABASE_URL`, `NGINX_URL`
    /// (empty without nginx), `CLUSTER_DIR`.
    pub fn endpoints(&self) -> Vec<(&'static str, String)> {
        let pids: Vec<String> = self
            .replicas
            .iter()
            .map(|r| r.pid().map_or_else(String::new, |p| p.to_string()))
            .collect();
        vec![
            ("BASE_URL", self.base_url()),
            ("REPLICA_URLS", self.replica_urls().join(",")),
            ("REPLICA_PIDS", pids.join(",")),
            ("REDIS_URL", self.redis_url().unwrap_or_default()),
            ("DATABASE_URL", self.database_url.clone()),
            (
                "NGINX_URL",
                self.nginx.as_ref().map(Nginx::base_url).unwrap_or_default(),
            ),
            ("CLUSTER_DIR", self.dir().display().to_string()),
        ]
    }

    /// [`Cluster::endpoints`] as `KEY='value'` lines a shell can source.
    pub fn env_file(&self) -> String {
        self.endpoints()
            .iter()
            .map(|(k, v)| format!("{k}='{}'\n", v.replace('\'', r"'\''")))
            .collect()
    }

    /// SIGTERM every replica (and stop nginx first, so that no new client arrives), wait up
    /// to `grace` for each to exit, SIGKILL one that did not (an error then).
    pub async fn stop_replicas(&mut self, grace: Duration) -> Result<()> {
        drop(self.nginx.take());
        for r in &mut self.replicas {
            if r.is_running() {
                r.signal("-TERM")?;
            }
        }
        let mut result = Ok(());
        for r in &mut self.replicas {
            if r.pid().is_some() && r.wait_exit(grace).await.is_none() {
                r.kill();
                result = Err(anyhow::anyhow!(
                    "{} did not exit within {grace:?} of SIGTERM",
                    r.name()
                ));
            }
        }
        result
    }

    /// [`Cluster::stop_replicas`], then the rest. Dropping the cluster instead SIGKILLs the
    /// replicas.
    pub async fn shutdown(mut self, grace: Duration) -> Result<()> {
        self.stop_replicas(grace).await
    }
}
