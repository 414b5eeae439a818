//! One `chat-server` process: the built binary with an explicit environment, in a directory of
//! its own, its output in a log file, ready once `/readyz` answers 200.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use crate::process::{ChildGuard, command, free_port, log_file, tail};
use crate::redis::WorkDir;

/// How a [`Replica`] is run.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Its name in errors (and `<name>.log` when `dir` is given).
    pub name: String,
    /// `None`: it binds 127.0.0.1:0 and the address is read from its `listening` log line
    /// (no race for the port; RUST_LOG must let `chat_server`'s info through). `Some(0)`: a
    /// free port is picked, and another one if the server could not listen on it.
    /// `Some(p)`: port p. A restart always reuses the port of the first start.
    pub port: Option<u16>,
    /// Working directory (created if missing, kept) and where the log goes; default: a
    /// temporary directory, removed on drop.
    pub dir: Option<PathBuf>,
    /// How long a start may take until `/readyz` answers 200.
    pub ready_timeout: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        Self {
            name: "chat-server".into(),
            port: None,
            dir: None,
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// The `chat-server` binary as a process, SIGKILLed when dropped. Its environment is exactly
/// `PATH`, the given variables and `BIND_ADDR`; it runs in its own directory (no `.env` of a
/// checkout is read), stdout and stderr appended to its log.
pub struct Replica {
    binary: PathBuf,
    env: Vec<(String, String)>,
    opts: ReplicaOptions,
    /// The port once known (after the first start, or given).
    port: Option<u16>,
    dir: WorkDir,
    log: PathBuf,
    child: Option<ChildGuard>,
    starts: u32,
}

/// How one attempt to start ended.
enum Attempt {
    Ready,
    /// It exited saying it could not listen: the port is taken.
    PortTaken,
}

impl Replica {
    /// A replica that is not started yet.
    pub fn new(
        binary: impl Into<PathBuf>,
        env: Vec<(String, String)>,
        opts: ReplicaOptions,
    ) -> Result<Self> {
        let dir = WorkDir::new(opts.dir.as_deref())?;
        let log = match &opts.dir {
            Some(_) => dir.path().join(format!("{}.log", opts.name)),
            None => dir.path().join("server.log"),
        };
        // a log of an earlier run in the same directory: this one starts empty (restarts append)
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        Ok(Self {
            binary: binary.into(),
            env,
            port: opts.port.filter(|&p| p != 0),
            opts,
            dir,
            log,
            child: None,
            starts: 0,
        })
    }

    /// [`Replica::new`] and [`Replica::start`].
    pub async fn spawn(
        binary: impl Into<PathBuf>,
        env: Vec<(String, String)>,
        opts: ReplicaOptions,
    ) -> Result<Self> {
        let mut replica = Self::new(binary, env, opts)?;
        replica.start().await?;
        Ok(replica)
    }

    /// Start it (again) and wait until `/readyz` answers 200. Errors if it is running.
    pub async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is running", self.opts.name);
        }
        let deadline = Instant::now() + self.opts.ready_timeout;
        if let Some(port) = self.port {
            return match self.attempt(port, deadline).await? {
                Attempt::Ready => Ok(()),
                Attempt::PortTaken => bail!(
                    "{} could not listen on port {port} (log: {})",
                    self.opts.name,
                    self.log.display()
                ),
            };
        }
        if self.opts.port.is_none() {
            return self.start_on_port_zero(deadline).await;
        }
        for _ in 0..10 {
            let port = free_port()?;
            if let Attempt::Ready = self.attempt(port, deadline).await? {
                self.port = Some(port);
                return Ok(());
            }
        }
        bail!("{} did not start on any of 10 free ports", self.opts.name)
    }

    fn launch(&mut self, port: u16) -> Result<u64> {
        let log = log_file(&self.log)?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = ChildGuard::spawn(
            command(&self.binary, self.dir.path())
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env("BIND_ADDR", format!("127.0.0.1:{port}"))
                .stdout(log.try_clone()?)
                .stderr(Stdio::from(log)),
            &format!("{} ({})", self.opts.name, self.binary.display()),
        )?;
        self.child = Some(child);
        self.starts += 1;
        Ok(offset)
    }

    /// Start on `port` and wait for `/readyz`.
    async fn attempt(&mut self, port: u16, deadline: Instant) -> Result<Attempt> {
        let offset = self.launch(port)?;
        self.wait_ready(port, offset, deadline).await
    }

    /// Start on 127.0.0.1:0, read the address from the log, wait for `/readyz`.
    async fn start_on_port_zero(&mut self, deadline: Instant) -> Result<()> {
        let offset = self.launch(0)?;
        let addr = loop {
            if let Some(addr) = listening_addr(&self.log_since(offset)) {
                break addr;
            }
            if self.exited().is_some() {
                self.child = None;
                return Err(self.failure("exited before listening"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure("never logged `listening`"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.port = Some(addr.port());
        match self.wait_ready(addr.port(), offset, deadline).await? {
            Attempt::Ready => Ok(()),
            Attempt::PortTaken => Err(self.failure("could not listen")),
        }
    }

    /// Wait until the child started at log `offset` answers `/readyz` on `port`.
    async fn wait_ready(&mut self, port: u16, offset: u64, deadline: Instant) -> Result<Attempt> {
        let base = format!("http://127.0.0.1:{port}");
        let http = readyz_client()?;
        loop {
            if self.exited().is_some() {
                self.child = None;
                if self.log_since(offset).contains("cannot listen on") {
                    return Ok(Attempt::PortTaken);
                }
                return Err(self.failure("exited while starting"));
            }
            if ready(&http, &base).await {
                return Ok(Attempt::Ready);
            }
            if Instant::now() >= deadline {
                return Err(self.failure("was not ready in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{} {what} (log {}):\n{}",
            self.opts.name,
            self.log.display(),
            tail(&self.log, 40)
        )
    }

    fn log_since(&self, offset: u64) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let from = usize::try_from(offset).unwrap_or(0).min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Its port (0 before the first start on a port it chose).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(0)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Its PID while it has a process (also one that has exited but was not stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::id)
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The variables it runs with (besides `PATH` and `BIND_ADDR`).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has a process that has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// The exit status of its process, if that has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(ChildGuard::exited)
    }

    /// Send `sig` (`-TERM`, `-KILL`, ...) to its process.
    pub fn signal(&self, sig: &str) -> Result<()> {
        match &self.child {
            Some(child) => child.signal(sig),
            None => bail!("{} is not running", self.opts.name),
        }
    }

    /// Its exit status once it has exited, within `limit` (`None`: still running, or no
    /// process).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(child) => child.wait_exit(limit).await,
            None => None,
        }
    }

    /// `sig`, then wait up to `limit` for the exit; errors when it did not exit (it is then
    /// SIGKILLed, so that the port is free again). Afterwards it can be started again.
    pub async fn stop(&mut self, sig: &str, limit: Duration) -> Result<()> {
        match self.child.take() {
            Some(mut child) => child.stop(sig, limit).await.map(drop),
            None => Ok(()),
        }
    }

    /// SIGKILL (nothing if it has no process); it can be started again.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }
}

fn readyz_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .context("HTTP client")
}

/// Whether `GET {base}/readyz` answers 200.
pub async fn ready(http: &reqwest::Client, base: &str) -> bool {
    matches!(
        http.get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await,
        Ok(r) if r.status() == 200
    )
}

/// The address of the log line `listening` (`tracing::info!(%addr, .., "listening")`), as
/// JSON (`LOG_FORMAT=json`) or as text (the default format, ANSI colours included).
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            return (v["fields"]["message"] == "listening")
                .then(|| v["fields"]["addr"].as_str()?.parse().ok())
                .flatten();
        }
        let plain = strip_ansi(line);
        let (_, fields) = plain.split_once(": listening ")?;
        let (_, addr) = fields.split_once("addr=")?;
        addr.split_whitespace().next()?.parse().ok()
    })
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn listening_addr_from_json_and_text() {
        let json = concat!(
            r#"{"fields":{"message":"internal port (probes, metrics) listening","addr":"127.0.0.1:9"}}"#,
            "\n",
            r#"{"timestamp":"x","level":"INFO","fields":{"message":"listening","addr":"127.0.0.1:41234","mode":"embedded"}}"#,
        );
        assert_eq!(listening_addr(json), "127.0.0.1:41234".parse().ok());
        let text = "2026-01-01T00:00:00Z  INFO chat_server: internal port (probes, metrics) \
                    listening addr=127.0.0.1:9\n\
                    2026-01-01T00:00:00Z  INFO chat_server: listening addr=127.0.0.1:5555 \
                    mode=\"cluster (Redis fan-out)\"";
        assert_eq!(listening_addr(text), "127.0.0.1:5555".parse().ok());
        let ansi = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mchat_server\u{1b}[0m\
                    \u{1b}[2m:\u{1b}[0m listening \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:7777 \
                    \u{1b}[3mmode\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"embedded\"";
        assert_eq!(listening_addr(ansi), "127.0.0.1:7777".parse().ok());
        assert_eq!(
            listening_addr("starting\nerror: cannot listen on 127.0.0.1:1"),
            None
        );
    }
}
