//! Configuration from the environment (docs/configuration.md). Names and defaults are fixed by the spec;
//! every variable is listed in docs/configuration.md. Secrets are `SecretString`s so they never reach
//! `Debug` output, logs or traces.
//!
//! At the bottom of the crate: imports nothing of it; anyone may import it.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

/// The `chat-server` command line. Every option can also come from its environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "Horizontally scalable real-time chat rooms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP and WebSockets (the default).
    Serve,
    /// Apply pending migrations and exit (for a Kubernetes Job or init container).
    Migrate,
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user with the `admin` role (or grant it to an existing user of that name).
    Create {
        #[arg(long)]
        username: String,
        #[arg(long)]
        email: String,
        #[arg(long, env = "ADMIN_CREATE_PASSWORD", hide_env_values = true)]
        password: SecretString,
    },
}

/// Everything the server reads from its environment.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Listen address; `127.0.0.1:0` picks a free port and logs it.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0:8080")]
    pub bind_addr: SocketAddr,
    /// Listen address of the internal port (`/healthz`, `/readyz`, `/metrics`), for the
    /// kubelet and Prometheus only. Set: those paths leave `BIND_ADDR`, so an Ingress or
    /// HTTPRoute in front of `BIND_ADDR` cannot expose them. Unset: they are served on
    /// `BIND_ADDR`.
    #[arg(long, env = "INTERNAL_ADDR")]
    pub internal_addr: Option<SocketAddr>,
    /// SQLite or PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://chat.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// Set: cluster fan-out through Redis pub/sub. Unset: in-process.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<SecretString>,
    /// HS256 key shared by replicas. Random per process in embedded mode when unset.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// `iss` claim issued and required.
    #[arg(long, env = "JWT_ISSUER", default_value = "chat-server")]
    pub jwt_issuer: String,
    /// `aud` claim issued and required.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "chat-clients")]
    pub jwt_audience: String,
    /// Apply pending migrations at start.
    #[arg(long, env = "AUTO_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_migrate: bool,
    /// How long a stopping replica drains, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 2_592_000)]
    pub refresh_token_ttl_secs: u64,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: String,
    /// Comma-separated list of allowed WebSocket/CORS origins (spaces around entries are
    /// ignored); unset or `*` allows any.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',', value_parser = trimmed)]
    pub allowed_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    #[arg(long, env = "TRUST_PROXY_HEADERS", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_proxy_headers: bool,
    /// Sustained messages per second per user (per replica).
    #[arg(long, env = "MESSAGE_RATE_PER_SEC", default_value_t = 20)]
    pub message_rate_per_sec: u32,
    /// Message burst per user.
    #[arg(long, env = "MESSAGE_RATE_BURST", default_value_t = 40)]
    pub message_rate_burst: u32,
    /// Other client frames that fan out or cost a query (typing, subscribe, unsubscribe,
    /// auth) per second per user (per replica).
    #[arg(long, env = "FRAME_RATE_PER_SEC", default_value_t = 10)]
    pub frame_rate_per_sec: u32,
    /// Burst of such frames per user.
    #[arg(long, env = "FRAME_RATE_BURST", default_value_t = 20)]
    pub frame_rate_burst: u32,
    /// Reads that cost a query per page (history and thread pages, search) per second per
    /// user.
    #[arg(long, env = "READ_RATE_PER_SEC", default_value_t = 50)]
    pub read_rate_per_sec: u32,
    /// Burst of such reads per user.
    #[arg(long, env = "READ_RATE_BURST", default_value_t = 200)]
    pub read_rate_burst: u32,
    /// Credential checks (register, login, refresh, password change, account deletion, email
    /// change) per minute per client address.
    #[arg(long, env = "AUTH_RATE_PER_MIN", default_value_t = 30)]
    pub auth_rate_per_min: u32,
    /// Credential checks and account probes (login, password change, account deletion, email
    /// change) per minute per account.
    #[arg(long, env = "ACCOUNT_RATE_PER_MIN", default_value_t = 10)]
    pub account_rate_per_min: u32,
    /// Rooms a user may create per hour (a burst of as many, then one every `60/N` minutes).
    #[arg(long, env = "ROOMS_PER_HOUR", default_value_t = 20)]
    pub rooms_per_hour: u32,
    /// Open WebSockets per user, across the cluster (0 = unlimited).
    #[arg(long, env = "WS_MAX_SOCKETS_PER_USER", default_value_t = 32)]
    pub ws_max_sockets_per_user: u32,
    /// Open WebSockets per client address (IPv6: per /64), across the cluster (0 = unlimited).
    /// Behind a proxy, set `TRUST_PROXY_HEADERS` or every client shares the proxy's address.
    #[arg(long, env = "WS_MAX_SOCKETS_PER_ADDRESS", default_value_t = 1000)]
    pub ws_max_sockets_per_address: u32,
    /// WebSocket upgrades this replica accepts per second (a burst of as many); beyond it, 503
    /// with `Retry-After` before the upgrade, so that a reconnect storm (a replica died, its
    /// sockets all come back at once) is spread out rather than served all at once (0 =
    /// unlimited).
    #[arg(long, env = "WS_UPGRADES_PER_SEC", default_value_t = 500)]
    pub ws_upgrades_per_sec: u32,
    /// Rooms one multiplexed socket may be subscribed to at once.
    #[arg(long, env = "WS_MAX_ROOMS_PER_SOCKET", default_value_t = 500)]
    pub ws_max_rooms_per_socket: usize,
    /// Maximum database pool size.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,
    /// Frames a socket may have queued before it is closed as a slow consumer (4429).
    #[arg(long, env = "WS_QUEUE_CAPACITY", default_value_t = 1024)]
    pub ws_queue_capacity: usize,
    /// 0 (the default): a socket writes by readiness — everything queued, as soon as its
    /// writer runs, one write per wake-up; the fan-out queues a whole bus batch before waking
    /// it. Above 0 (opt-in, for machines where a system call is very expensive): under
    /// sustained traffic a socket writes at most once per this many milliseconds, which adds
    /// up to that much latency to every message of a busy room.
    #[arg(long, env = "WS_FLUSH_INTERVAL_MS", default_value_t = 0)]
    pub ws_flush_interval_ms: u64,
    /// Longest a busy socket's writer may wait to gather frames into one write while the
    /// replica is short of CPU (its runtime's queueing delay is above 0.5 ms; the wait is 4×
    /// that delay, up to this). Never at low load. 0 (the default): never wait.
    #[arg(long, env = "WS_COALESCE_MAX_MS", default_value_t = 0)]
    pub ws_coalesce_max_ms: u64,
    /// Longest the group commit may wait to gather more messages into one transaction while
    /// the replica is short of CPU (as `WS_COALESCE_MAX_MS`). 0 (the default): never wait.
    #[arg(long, env = "COMMIT_COALESCE_MAX_MS", default_value_t = 0)]
    pub commit_coalesce_max_ms: u64,
    /// Concurrent argon2 hashes (each uses ~19 MiB); default: number of CPUs.
    #[arg(long, env = "HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,
    /// First admin, created at start when all three are set.
    #[arg(long, env = "ADMIN_USERNAME")]
    pub admin_username: Option<String>,
    #[arg(long, env = "ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<SecretString>,
    /// Request timeout for REST calls, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
}

impl Config {
    /// Cluster mode is chosen by configuration alone: a Redis URL means Redis fan-out.
    pub fn is_cluster(&self) -> bool {
        self.redis_url.is_some()
    }

    /// Start-up checks that turn a misconfiguration into one readable line.
    ///
    /// # Errors
    /// Missing `JWT_SECRET` in cluster mode, an unsupported database URL or a short secret.
    pub fn validate(&self) -> anyhow::Result<()> {
        let url = self.database_url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            bail!("DATABASE_URL must start with sqlite:, postgres:// or postgresql://");
        }
        if self.is_cluster() && self.jwt_secret.is_none() {
            bail!(
                "JWT_SECRET is required when REDIS_URL is set: replicas must share the token key"
            );
        }
        if let Some(secret) = &self.jwt_secret
            && secret.expose_secret().len() < 16
        {
            bail!("JWT_SECRET must be at least 16 bytes");
        }
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.expose_secret())
                .context("REDIS_URL is not a valid Redis URL")?;
        }
        for origin in &self.allowed_origins {
            if origin != "*"
                && (origin.is_empty()
                    || origin.ends_with('/')
                    || axum::http::HeaderValue::from_str(origin).is_err())
            {
                bail!(
                    "ALLOWED_ORIGINS: {origin:?} is not an origin (scheme://host[:port], no path, or *)"
                );
            }
        }
        if !matches!(self.log_format.as_str(), "pretty" | "json") {
            bail!("LOG_FORMAT must be `pretty` or `json`");
        }
        if self.message_rate_per_sec == 0
            || self.message_rate_burst == 0
            || self.frame_rate_per_sec == 0
            || self.frame_rate_burst == 0
            || self.read_rate_per_sec == 0
            || self.read_rate_burst == 0
            || self.auth_rate_per_min == 0
            || self.account_rate_per_min == 0
            || self.rooms_per_hour == 0
            || self.ws_max_rooms_per_socket == 0
        {
            bail!("rate limits must be positive");
        }
        Ok(())
    }

    /// A configuration for tests: an explicit database URL, short-lived everything, generous
    /// rate limits, no Redis.
    pub fn for_tests(database_url: &str) -> Self {
        let mut config = Cli::parse_from(["chat-server"]).config;
        config.bind_addr = "127.0.0.1:0".parse().expect("literal address");
        config.database_url = database_url.to_owned().into();
        config.redis_url = None;
        config.internal_addr = None;
        config.jwt_secret = Some("test-secret-test-secret-test-secret".to_owned().into());
        config.auth_rate_per_min = 100_000;
        config.account_rate_per_min = 100_000;
        config.message_rate_per_sec = 100_000;
        config.message_rate_burst = 100_000;
        config.frame_rate_per_sec = 100_000;
        config.frame_rate_burst = 100_000;
        config.read_rate_per_sec = 100_000;
        config.read_rate_burst = 100_000;
        config.rooms_per_hour = 100_000;
        config.ws_max_sockets_per_user = 0;
        config.ws_max_sockets_per_address = 0;
        config.ws_upgrades_per_sec = 0;
        config.shutdown_grace_secs = 5;
        config.db_max_connections = 5;
        config
    }
}

/// A list entry without the spaces around it (`"https://a, https://b"`).
fn trimmed(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_owned())
}
