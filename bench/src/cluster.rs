//! `chat-bench cluster`: a local cluster from `chat-testkit` (database, Redis, N replicas of
//! the built `chat-server`, nginx if asked) that runs until SIGTERM, SIGINT or the end of its
//! standard input, then stops everything it started. The test scripts and
//! `bench/scenarios.sh` use it instead of starting servers themselves; its endpoints go to
//! stdout and, with `--env-out`, to a file a shell can source.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chat_testkit::{Cluster, Database, NginxOptions, Replica};
use clap::{Args, ValueEnum};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use crate::stats::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bus {
    /// A private redis-server on a free port.
    Redis,
    /// No Redis: in-process fan-out (one replica).
    Embedded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Db {
    /// A fresh database on the server of --database-url, dropped at the end.
    Postgres,
    /// A private PostgreSQL (initdb) on a free port, stopped at the end.
    Private,
    /// A SQLite file in the cluster's directory (one replica).
    Sqlite,
}

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// chat-server replicas.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// How the replicas share events.
    #[arg(long, value_enum, default_value_t = Bus::Redis)]
    pub bus: Bus,
    /// Where the data goes.
    #[arg(long, value_enum, default_value_t = Db::Postgres)]
    pub db: Db,
    /// The PostgreSQL server of `--db postgres` (a database name in it is ignored).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub database_url: String,
    /// Name prefix of the fresh database ([a-z0-9_]).
    #[arg(long, default_value = "chat_cluster")]
    pub db_prefix: String,
    /// nginx (round robin, WebSockets proxied) in front of the replicas: BASE_URL is nginx.
    #[arg(long)]
    pub nginx: bool,
    /// nginx worker processes.
    #[arg(long, default_value_t = 1)]
    pub nginx_workers: usize,
    /// nginx `worker_connections` (each client socket costs two).
    #[arg(long, default_value_t = 4096)]
    pub nginx_connections: usize,
    /// nginx's port; 0: a free one.
    #[arg(long, default_value_t = 0)]
    pub nginx_port: u16,
    /// The first replica's port, the next ones on the following ports; 0: free ports.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The server binary (default: chat-server next to this chat-bench).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// A variable of every replica (repeatable). It wins over the cluster's own:
    /// DATABASE_URL, REDIS_URL, a random JWT_SECRET, AUTO_MIGRATE=false (the cluster runs
    /// `chat-server migrate` once first). Nothing else of this process's environment but PATH
    /// reaches the replicas.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_var)]
    pub env: Vec<(String, String)>,
    /// A variable of every replica copied from this process's environment if set there
    /// (repeatable; for secrets, which would show in a command line).
    #[arg(long, value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// The replicas get this process's whole environment (as a server started from the same
    /// shell would), except the variables the cluster decides: DATABASE_URL, REDIS_URL,
    /// REDIS_CLUSTER_URLS, BIND_ADDR, INTERNAL_ADDR. --pass-env and --env come on top.
    #[arg(long)]
    pub inherit_env: bool,
    /// Once everything is ready, write the endpoints there (KEY='value' lines: BASE_URL,
    /// REPLICA_URLS, REPLICA_PIDS, REDIS_URL, DATABASE_URL, NGINX_URL, CLUSTER_DIR), whole
    /// at once; removed again at the end.
    #[arg(long)]
    pub env_out: Option<PathBuf>,
    /// Logs (replica1.log, ..., migrate.log, redis/, nginx/) and data there, kept; default: a
    /// temporary directory, removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long each replica may take until /readyz answers 200.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// At the end, how long the replicas get after SIGTERM before SIGKILL.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub grace: Duration,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(format!("`{s}`: expected KEY=VALUE")),
    }
}

/// What `--inherit-env` leaves out: the cluster sets these per replica or not at all.
const CLUSTER_OWNED: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_CLUSTER_URLS",
    "BIND_ADDR",
    "INTERNAL_ADDR",
];

/// The server binary: `given` (made absolute: the replicas run in directories of their own),
/// or `chat-server` next to this executable.
pub fn server_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return std::fs::canonicalize(p).with_context(|| format!("--server-bin {}", p.display()));
    }
    let p = std::env::current_exe()?.with_file_name("chat-server");
    if !p.exists() {
        bail!(
            "{} not found: build it (cargo build --bin chat-server) or pass --server-bin",
            p.display()
        );
    }
    Ok(p)
}

pub async fn run(args: ClusterArgs) -> Result<()> {
    // the replicas, Redis and nginx inherit it
    crate::sys::raise_nofile_limit();
    let mut stop = Stop::new()?;
    let mut cluster = tokio::select! {
        c = builder(&args)?.start() => c?,
        why = stop.wait() => bail!("{why} while starting"),
    };
    let vars = cluster.env_file();
    print!("{vars}");
    std::io::stdout().flush()?;
    if let Some(path) = &args.env_out {
        write_whole(path, &vars)?;
    }
    eprintln!("{}", summary(&cluster));
    let why = watch(&mut cluster, &mut stop).await;
    eprintln!("cluster: {why}: stopping");
    if let Some(path) = &args.env_out {
        let _ = std::fs::remove_file(path);
    }
    let stopped = cluster.stop_replicas(args.grace).await;
    eprintln!(
        "cluster: replicas stopped; stopping the rest{}",
        match &cluster.database {
            chat_testkit::ClusterDatabase::Fresh(db) => format!(
                " and dropping database {} (waits for a checkpoint)",
                db.name()
            ),
            _ => String::new(),
        }
    );
    drop(cluster);
    eprintln!("cluster: stopped");
    stopped
}

/// Wait for the end, meanwhile reaping replicas that exit (a test may stop one itself): a
/// reaped process no longer answers `kill -0`, which is how a script sees it is gone.
async fn watch(cluster: &mut Cluster, stop: &mut Stop) -> &'static str {
    let mut reported = vec![false; cluster.replicas.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            why = stop.wait() => return why,
            _ = tick.tick() => {}
        }
        for (r, seen) in cluster.replicas.iter_mut().zip(&mut reported) {
            if let (Some(status), false) = (r.exited(), *seen) {
                *seen = true;
                let pid = r.pid().map_or_else(String::new, |p| format!(" (pid {p})"));
                eprintln!("cluster: {}{pid} exited: {status}", r.name());
            }
        }
    }
}

fn builder(args: &ClusterArgs) -> Result<chat_testkit::ClusterBuilder> {
    let server = server_binary(args.server_bin.as_deref())?;
    let database = match args.db {
        Db::Postgres => Database::Fresh {
            server_url: args.database_url.clone(),
            prefix: args.db_prefix.clone(),
        },
        Db::Private => Database::private(),
        Db::Sqlite => Database::Sqlite,
    };
    let mut b = Cluster::builder(server)
        .replicas(args.replicas)
        .redis(args.bus == Bus::Redis)
        .database(database)
        .first_port(args.port)
        .ready_timeout(args.ready_timeout);
    if args.inherit_env {
        b = b.envs(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            (!CLUSTER_OWNED.contains(&k.as_str())).then_some((k, v.into_string().ok()?))
        }));
    }
    b = b
        .envs(
            args.pass_env
                .iter()
                .filter_map(|k| Some((k.clone(), std::env::var(k).ok()?))),
        )
        .envs(args.env.clone());
    if args.nginx {
        b = b.nginx(Some(NginxOptions {
            workers: args.nginx_workers.max(1),
            connections: args.nginx_connections,
            port: args.nginx_port,
        }));
    }
    if let Some(dir) = &args.dir {
        b = b.dir(dir);
    }
    Ok(b)
}

fn summary(c: &Cluster) -> String {
    let pids: Vec<String> = c
        .replicas
        .iter()
        .map(|r| r.pid().map_or_else(|| "-".into(), |p| p.to_string()))
        .collect();
    format!(
        "cluster: ready: {} replicas {} (pids {}), {}, database {}{}; logs in {}; \
         stop with SIGTERM, Ctrl-C or by closing stdin",
        c.replicas.len(),
        c.replicas
            .iter()
            .map(Replica::base_url)
            .collect::<Vec<_>>()
            .join(" "),
        pids.join(" "),
        c.redis_url()
            .map_or_else(|| "no Redis".into(), |u| format!("Redis {u}")),
        c.database_url(),
        c.nginx
            .as_ref()
            .map_or_else(String::new, |n| format!(", nginx {}", n.base_url())),
        c.dir().display(),
    )
}

/// `path` written through a temporary file and a rename: a reader never sees half of it.
fn write_whole(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// What ends the cluster: SIGTERM, SIGINT, or the end of stdin (unless stdin is /dev/null,
/// as for a background job of a script: that would end it at once).
struct Stop {
    term: Signal,
    int: Signal,
    eof: Option<oneshot::Receiver<()>>,
}

impl Stop {
    fn new() -> Result<Self> {
        let eof = (!stdin_is_dev_null()).then(|| {
            let (tx, rx) = oneshot::channel();
            // a plain thread: a blocking read cannot be cancelled, and the process may end
            // while it still waits
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tx.send(());
            });
            rx
        });
        Ok(Self {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            eof,
        })
    }

    async fn wait(&mut self) -> &'static str {
        let eof = async {
            match self.eof.as_mut() {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = eof => "stdin closed",
        }
    }
}

fn stdin_is_dev_null() -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (
        std::fs::metadata("/proc/self/fd/0"),
        std::fs::metadata("/dev/null"),
    ) {
        (Ok(stdin), Ok(null)) => stdin.file_type().is_char_device() && stdin.rdev() == null.rdev(),
        // no stdin at all: nothing to watch
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_var;

    #[test]
    fn env_vars_parse() {
        assert_eq!(
            parse_var("RUST_LOG=warn,chat=debug"),
            Ok(("RUST_LOG".into(), "warn,chat=debug".into()))
        );
        assert_eq!(parse_var("EMPTY="), Ok(("EMPTY".into(), String::new())));
        assert!(parse_var("=x").is_err());
        assert!(parse_var("NOVALUE").is_err());
    }
}
