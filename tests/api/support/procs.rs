//! Processes some tests need: the built `chat-server`, private `redis-server`s, nginx and a
//! private PostgreSQL, as the guards of `chat-testkit` (each runs in its own temporary
//! directory with an explicit environment, and is stopped when its guard is dropped, also
//! when an assertion fails first). This layer only adds the tests' settings, a [`Client`] per
//! server, and panics instead of errors.

use std::{net::SocketAddr, ops::Deref, process::ExitStatus, time::Duration};

pub use chat_testkit::command;
use chat_testkit::{Replica, ReplicaOptions};
// Part of this module's interface for tests that start processes of their own or need
// PostgreSQL's tools, though no test file uses them at the moment.
#[allow(unused_imports)]
pub use chat_testkit::{ChildGuard, postgres_bin_dir};

use super::{Client, SECRET};

// ---------------------------------------------------------------------------------------------
// redis-server

/// A private `redis-server` on a free port.
pub struct RedisServer {
    inner: chat_testkit::RedisServer,
}

impl RedisServer {
    pub async fn start() -> Self {
        let inner = chat_testkit::RedisServer::start()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self { inner }
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Start again on the same port (the replicas know it).
    pub async fn restart(&mut self) {
        self.inner
            .start_again()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

// ---------------------------------------------------------------------------------------------
// chat-server

/// The built `chat-server` binary as a process (for SIGKILL, SIGTERM, logs, and metrics of one
/// process only). It binds 127.0.0.1:0 and the address is read from its `listening` log line.
pub struct ServerProc {
    pub client: Client,
    proc: Replica,
}

impl Deref for ServerProc {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl ServerProc {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("the server is running")
    }

    /// Start the server on `database_url` with test settings, then `env` (which wins), and wait
    /// until it is ready.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        let defaults = [
            ("DATABASE_URL", database_url),
            ("JWT_SECRET", SECRET),
            ("AUTO_MIGRATE", "true"),
            ("SHUTDOWN_GRACE_SECS", "5"),
            ("MESSAGE_RATE_PER_SEC", "100000"),
            ("MESSAGE_RATE_BURST", "100000"),
            ("READ_RATE_PER_SEC", "100000"),
            ("READ_RATE_BURST", "100000"),
            ("AUTH_RATE_PER_MIN", "100000"),
            ("ROOMS_PER_HOUR", "100000"),
            ("WS_MAX_SOCKETS_PER_USER", "0"),
            ("WS_MAX_SOCKETS_PER_ADDRESS", "0"),
            ("WS_UPGRADES_PER_SEC", "0"),
            ("RUST_LOG", "warn,chat_server=info"),
            ("LOG_FORMAT", "json"),
        ];
        let mut vars: Vec<(String, String)> = Vec::new();
        for (k, v) in defaults.iter().chain(env) {
            vars.retain(|(key, _)| key != k);
            vars.push(((*k).to_owned(), (*v).to_owned()));
        }
        let proc = Replica::spawn(
            env!("CARGO_BIN_EXE_chat-server"),
            vars,
            ReplicaOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        Self {
            client: Client::new(proc.addr()),
            proc,
        }
    }

    /// A replica of a cluster: `database_url` and Redis shared with the others.
    pub async fn replica(database_url: &str, redis: &RedisServer, env: &[(&str, &str)]) -> Self {
        let url = redis.url();
        let mut all = vec![("REDIS_URL", url.as_str())];
        all.extend_from_slice(env);
        Self::start(database_url, &all).await
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn signal(&self, sig: &str) {
        self.proc
            .signal(sig)
            .unwrap_or_else(|e| panic!("kill {sig}: {e:#}"));
    }

    /// Its exit status once it has exited, within `secs` (None: still running).
    pub async fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        self.proc.wait_exit(Duration::from_secs(secs)).await
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// nginx (Debian `nginx-light`) round-robin in front of `upstreams`, WebSockets proxied.
pub struct Nginx {
    pub client: Client,
    _proc: chat_testkit::Nginx,
}

impl Deref for Nginx {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Nginx {
    /// Panics if nginx is not installed; ready once `/readyz` answers 200 through it.
    pub async fn start(upstreams: &[SocketAddr]) -> Self {
        let proc = chat_testkit::Nginx::start(upstreams, &Default::default(), None)
            .await
            .unwrap_or_else(|e| panic!("nginx is required for this test: {e:#}"));
        let client = Client::new(proc.addr());
        client.wait_ready().await;
        Self {
            client,
            _proc: proc,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// A private PostgreSQL cluster (`initdb` into a temporary directory, `pg_ctl` on a free port,
/// database `chat`), which a test may stop and start again; never the shared server on 5432.
/// `build.rs` sets `cfg(private_pg)` only when an `initdb` is installed. Stopped (immediate
/// mode) when dropped.
pub struct PrivatePostgres {
    inner: chat_testkit::PrivatePostgres,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let inner = chat_testkit::PrivatePostgres::start().unwrap_or_else(|e| panic!("{e:#}"));
        Self { inner }
    }

    /// [`Self::start`] with more server `settings` (`name=value`, e.g.
    /// `shared_preload_libraries=pg_stat_statements`).
    pub async fn start_with(settings: &[&str]) -> Self {
        let mut all: Vec<(&str, &str)> = chat_testkit::DEFAULT_SETTINGS.to_vec();
        all.extend(settings.iter().filter_map(|s| s.split_once('=')));
        let inner = chat_testkit::PrivatePostgres::start_with(None, &all)
            .unwrap_or_else(|e| panic!("{e:#}"));
        Self { inner }
    }

    pub fn url(&self, db: &str) -> String {
        self.inner.url(db)
    }

    /// Start it again on the same port (the servers know it).
    pub fn start_again(&mut self) {
        self.inner.start_again().unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `pg_ctl stop` in `mode` (`fast`: disconnect every client, `immediate`: no shutdown
    /// checkpoint), waiting until it has stopped.
    pub fn stop(&mut self, mode: &str) {
        self.inner.stop(mode).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
