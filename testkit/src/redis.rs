//! A private `redis-server` on a free port, for tests that stop Redis under traffic and for
//! local clusters; never the shared one on 6379.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::process::{ChildGuard, command, free_port, log_file};

/// A private `redis-server` (no persistence, `redis.log` in its directory). It cannot report
/// a port it chose, so a free port is picked and another one tried if that port was taken
/// meanwhile. SIGKILLed when dropped.
pub struct RedisServer {
    port: u16,
    dir: WorkDir,
    child: Option<ChildGuard>,
}

/// A directory the guard owns (removed on drop) or one the caller gave (kept).
pub(crate) enum WorkDir {
    Temp(TempDir),
    Given(PathBuf),
}

impl WorkDir {
    /// `dir` (created), or a new temporary directory when `None`.
    pub(crate) fn new(dir: Option<&Path>) -> Result<Self> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
                Ok(Self::Given(d.to_owned()))
            }
            None => Ok(Self::Temp(tempfile::tempdir().context("temp dir")?)),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(t) => t.path(),
            Self::Given(p) => p,
        }
    }
}

impl RedisServer {
    /// Start in a temporary directory.
    pub async fn start() -> Result<Self> {
        Self::start_in(None).await
    }

    /// Start with `dir` (created if missing, kept) as its directory, or a temporary one.
    pub async fn start_in(dir: Option<&Path>) -> Result<Self> {
        let mut redis = Self {
            port: 0,
            dir: WorkDir::new(dir)?,
            child: None,
        };
        // a log of an earlier run in the same directory: this one starts empty
        let _ = std::fs::remove_file(redis.log_path());
        for _ in 0..10 {
            redis.port = free_port()?;
            if redis.launch().await? {
                return Ok(redis);
            }
        }
        bail!("redis-server did not start on any of 10 ports")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// SIGKILL (nothing if it is not running).
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// SIGTERM and wait up to `limit` for the exit (then SIGKILL).
    pub async fn stop(&mut self, limit: Duration) -> Result<()> {
        match self.child.take() {
            Some(mut child) => child.stop("-TERM", limit).await.map(drop),
            None => Ok(()),
        }
    }

    /// Start again on the same port (the replicas know it), retrying while the port is not
    /// free yet. Errors if it is running.
    pub async fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("redis-server on port {} is still running", self.port);
        }
        for _ in 0..40 {
            if self.launch().await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("redis-server did not start again on port {}", self.port)
    }

    /// SIGTERM, wait for the exit, stay down for `down`, start again on the same port.
    pub async fn restart(&mut self, down: Duration) -> Result<()> {
        self.stop(Duration::from_secs(10)).await?;
        tokio::time::sleep(down).await;
        self.start_again().await
    }

    /// Start on `self.port`; `Ok(false)` if it exits (the port is taken). Ready means it
    /// answers `PING` and its `INFO` names its own process: another server on that port
    /// doesn't count.
    async fn launch(&mut self) -> Result<bool> {
        let log = log_file(&self.log_path())?;
        let mut child = ChildGuard::spawn(
            command("redis-server", self.dir.path())
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
                .stdout(log.try_clone()?)
                .stderr(Stdio::from(log)),
            "redis-server (is it on PATH?)",
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.exited().is_some() {
                return Ok(false);
            }
            if let Some(pid) = answering_pid(self.port).await {
                if pid != child.id() {
                    return Ok(false); // someone else's server took the port
                }
                self.child = Some(child);
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("redis-server on port {} never answered PING", self.port)
    }
}

/// The `process_id` of the Redis server answering `PING` on `port`, if one does.
async fn answering_pid(port: u16) -> Option<u32> {
    let limit = Duration::from_millis(500);
    let stream = timeout(limit, TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()?;
    let mut con = BufReader::new(stream);
    if timeout(limit, query(&mut con, "PING")).await.ok()?? != "PONG" {
        return None;
    }
    let info = timeout(limit, query(&mut con, "INFO server"))
        .await
        .ok()??;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:")?.parse().ok())
}

/// One inline command; the reply if it is a simple or bulk string.
async fn query(con: &mut BufReader<TcpStream>, cmd: &str) -> Option<String> {
    con.get_mut()
        .write_all(format!("{cmd}\r\n").as_bytes())
        .await
        .ok()?;
    let mut line = String::new();
    con.read_line(&mut line).await.ok()?;
    let line = line.trim_end();
    if let Some(simple) = line.strip_prefix('+') {
        return Some(simple.to_owned());
    }
    let len: usize = line.strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0u8; len + 2];
    con.read_exact(&mut body).await.ok()?;
    body.truncate(len);
    String::from_utf8(body).ok()
}
