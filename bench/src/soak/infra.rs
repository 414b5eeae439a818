//! The soak's private cluster: PostgreSQL (initdb + pg_ctl in a temporary directory, on a free
//! port), redis-server, N `chat-server` replicas and nginx, each stopped by its own PID (or
//! `pg_ctl stop`) when dropped, so an error or Ctrl-C leaves nothing behind. Never the shared
//! PostgreSQL on 5432 or Redis on 6379.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1 (bound and released; a start on it is retried by the caller).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Send `sig` (e.g. "-TERM") to `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("kill")?
        .success();
    if !ok {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the exit up to `limit`; true when it exited.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

// -------------------------------------------------------------------------------------------
// PostgreSQL

pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<v>/bin` holding initdb and pg_ctl.
pub fn postgres_bin() -> Result<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL (initdb, pg_ctl)")?
        .filter_map(|e| {
            let p = e.ok()?.path();
            let v = p.file_name()?.to_str()?.parse().ok()?;
            let bin = p.join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|d| d.1)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

impl Postgres {
    fn cmd(&self, tool: &str) -> Command {
        pg_cmd(&self.bin, tool)
    }

    /// initdb into `dir/pg` and start on a free port; creates database `chat`.
    pub async fn start(dir: &Path) -> Result<Self> {
        let bin = postgres_bin()?;
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            // PostgreSQL refuses to run as root: its files belong to the postgres user.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?
                .success();
            if !ok {
                bail!("chown {} to postgres failed", dir.display());
            }
        }
        let out = pg_cmd(&bin, "initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .context("initdb")?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut pg = Self {
            port: 0,
            bin,
            dir,
            running: false,
        };
        for _ in 0..10 {
            pg.port = free_port()?;
            if pg.try_start()? {
                let out = pg
                    .cmd("psql")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &pg.port.to_string(),
                        "-U",
                        "postgres",
                    ])
                    .args(["-qc", "CREATE DATABASE chat"])
                    .output()
                    .context("psql")?;
                if !out.status.success() {
                    bail!("CREATE DATABASE: {}", String::from_utf8_lossy(&out.stderr));
                }
                return Ok(pg);
            }
        }
        bail!("private PostgreSQL did not start on any of 10 ports")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/chat", self.port)
    }

    fn try_start(&mut self) -> Result<bool> {
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {} -c max_connections=200 -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.display()
        );
        let ok = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .status()
            .context("pg_ctl start")?
            .success();
        self.running = ok;
        Ok(ok)
    }

    pub fn stop(&mut self, mode: &str) -> Result<()> {
        let ok = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .status()
            .context("pg_ctl stop")?
            .success();
        self.running = false;
        if !ok {
            bail!("pg_ctl stop -m {mode} failed");
        }
        Ok(())
    }

    pub async fn restart(&mut self, down: Duration) -> Result<()> {
        self.stop("fast")?;
        tokio::time::sleep(down).await;
        for _ in 0..20 {
            if self.try_start()? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("PostgreSQL did not start again on port {}", self.port)
    }

    /// The postmaster's PID (first line of postmaster.pid).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop("immediate");
        }
    }
}

fn pg_cmd(bin: &Path, tool: &str) -> Command {
    let program = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.stdin(Stdio::null()).current_dir("/");
    cmd
}

// -------------------------------------------------------------------------------------------
// Redis

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    pub async fn start(dir: &Path) -> Result<Self> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        for _ in 0..10 {
            let port = free_port()?;
            let mut r = Self {
                port,
                dir: dir.clone(),
                proc: None,
            };
            if r.launch().await? {
                return Ok(r);
            }
        }
        bail!("redis-server did not start on any of 10 ports")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    async fn launch(&mut self) -> Result<bool> {
        let log = log_file(&self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("redis-server (is it on PATH?)")?;
        let mut p = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if p.exited() {
                return Ok(false); // port taken
            }
            if ping(self.port).await {
                self.proc = Some(p);
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("redis-server on {} never answered PING", self.port)
    }

    /// SIGTERM, wait for the exit, stay down for `down`, start again on the same port.
    pub async fn restart(&mut self, down: Duration) -> Result<()> {
        if let Some(mut p) = self.proc.take() {
            signal(p.pid(), "-TERM")?;
            if !p.wait_exit(Duration::from_secs(10)).await {
                signal(p.pid(), "-KILL")?;
                p.wait_exit(Duration::from_secs(5)).await;
            }
        }
        tokio::time::sleep(down).await;
        for _ in 0..40 {
            if self.launch().await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("redis-server did not start again on port {}", self.port)
    }
}

/// `PING` over a raw TCP connection answers `+PONG`.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

// -------------------------------------------------------------------------------------------
// chat-server replicas

pub struct Replica {
    pub index: usize,
    pub port: u16,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    pub proc: Option<Proc>,
    pub starts: u32,
}

impl Replica {
    pub fn new(
        index: usize,
        binary: &Path,
        dir: &Path,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        Ok(Self {
            index,
            port: free_port()?,
            binary: binary.to_owned(),
            env,
            log: dir.join(format!("replica{index}.log")),
            proc: None,
            starts: 0,
        })
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Start and wait until `/readyz` answers 200 (at most `limit`).
    pub async fn start(&mut self, http: &reqwest::Client, limit: Duration) -> Result<()> {
        let log = log_file(&self.log)?;
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("BIND_ADDR", format!("127.0.0.1:{}", self.port))
            .current_dir(self.log.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.starts += 1;
        self.proc = Some(Proc { child });
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.proc.as_mut()
                && p.exited()
            {
                bail!(
                    "replica {} exited while starting (log: {})",
                    self.index,
                    self.log.display()
                );
            }
            if ready(http, &self.base()).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "replica {} not ready after {limit:?} (log: {})",
                    self.index,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `sig` ("-TERM" or "-KILL"), then wait for the exit (at most `limit`). Errors when it
    /// did not exit (it is then SIGKILLed so the port is free again).
    pub async fn stop(&mut self, sig: &str, limit: Duration) -> Result<()> {
        let Some(mut p) = self.proc.take() else {
            return Ok(());
        };
        signal(p.pid(), sig)?;
        if p.wait_exit(limit).await {
            return Ok(());
        }
        signal(p.pid(), "-KILL")?;
        p.wait_exit(Duration::from_secs(5)).await;
        bail!(
            "replica {} did not exit within {limit:?} of {sig}",
            self.index
        )
    }
}

pub async fn ready(http: &reqwest::Client, base: &str) -> bool {
    matches!(
        http.get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await,
        Ok(r) if r.status().as_u16() == 200
    )
}

// -------------------------------------------------------------------------------------------
// nginx

pub struct Nginx {
    pub port: u16,
    proc: Proc,
}

impl Nginx {
    /// Round robin over `upstreams` with no stickiness, WebSockets proxied (DEPENDENCIES.md).
    /// `workers` processes share the client sockets (`reuseport`), each under the open-files
    /// limit.
    pub async fn start(
        dir: &Path,
        upstreams: &[u16],
        workers: usize,
        conns: usize,
    ) -> Result<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("nginx not found: apt-get install -y nginx-light")?;
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir)?;
        let servers: String = upstreams
            .iter()
            .map(|p| format!("server 127.0.0.1:{p} max_fails=0; "))
            .collect();
        for _ in 0..10 {
            let port = free_port()?;
            let conf = format!(
                r#"
worker_processes {workers};
worker_rlimit_nofile 19000;
error_log {dir}/error.log error;
pid {dir}/nginx.pid;
events {{ worker_connections {conns}; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream chat {{ {servers} keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location / {{
      proxy_pass http://chat;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 2s;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"#,
                dir = dir.display(),
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let child = Command::new(binary)
                .arg("-c")
                .arg(&conf_path)
                .arg("-p")
                .arg(&dir)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&dir.join("stderr.log"))?)
                .spawn()
                .context("nginx")?;
            let mut proc = Proc { child };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if proc.exited() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Ok(Self { port, proc });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(proc);
        }
        bail!(
            "nginx did not start on any of 10 ports (see {}/error.log)",
            dir.display()
        )
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers (a SIGKILLed master would orphan them).
        if !self.proc.exited() && signal(self.proc.pid(), "-TERM").is_ok() {
            for _ in 0..100 {
                if self.proc.exited() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        }
    }
}
