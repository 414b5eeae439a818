//! Processes some tests need: the built `chat-server`, private `redis-server`s and nginx. Each
//! runs in its own temporary working directory with an explicit environment (no `.env` of the
//! checkout and no variable of the developer's shell reaches it), and is killed when its guard
//! is dropped, also when an assertion fails first.

use std::{
    net::SocketAddr,
    ops::Deref,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use tempfile::TempDir;

use super::{Client, SECRET};

/// A child process, killed (and reaped) on drop.
pub struct ChildGuard {
    child: Child,
}

/// A command for `program` that runs in `dir` with only `PATH` of this process's environment.
pub fn command(program: impl AsRef<std::ffi::OsStr>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

impl ChildGuard {
    fn spawn(cmd: &mut Command, what: &str) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self { child }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---------------------------------------------------------------------------------------------
// redis-server

/// A private `redis-server`. It cannot report a port it chose, so a free port is picked and
/// the start is retried on another one if that port was taken meanwhile.
pub struct RedisServer {
    pub port: u16,
    child: Option<ChildGuard>,
    dir: TempDir,
}

impl RedisServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = launch_redis(dir.path(), port).await {
                return Self {
                    port,
                    child: Some(child),
                    dir,
                };
            }
        }
        panic!("redis-server did not start on any of 10 ports");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Start again on the same port (the replicas know it).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        for _ in 0..20 {
            if let Some(child) = launch_redis(self.dir.path(), self.port).await {
                self.child = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

/// Start `redis-server` on `port`; `None` if it exits (the port is taken). Ready means it
/// answers `PING` and `INFO` names its own process: another server on that port doesn't count.
async fn launch_redis(dir: &Path, port: u16) -> Option<ChildGuard> {
    let mut child = ChildGuard::spawn(
        command("redis-server", dir)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "redis-server (is it on PATH?)",
    );
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("redis url");
    let pid_line = format!("process_id:{}", child.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if child.exited().is_some() {
            return None;
        }
        if let Ok(Ok(mut con)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
            let info: redis::RedisResult<String> =
                redis::cmd("INFO").arg("server").query_async(&mut con).await;
            if matches!(pong.as_deref(), Ok("PONG")) {
                return info
                    .is_ok_and(|i| i.lines().any(|l| l.trim() == pid_line))
                    .then_some(child);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server on port {port} never answered PING");
}

// ---------------------------------------------------------------------------------------------
// chat-server

/// The address of the JSON log line `listening` (`tracing::info!(%addr, .., "listening")`).
fn listening_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "listening")
        .and_then(|v| v["fields"]["addr"].as_str()?.parse().ok())
}

/// The built `chat-server` binary as a process (for SIGKILL, SIGTERM, logs, and metrics of one
/// process only). It binds 127.0.0.1:0 and the address is read from its `listening` log line.
pub struct ServerProc {
    pub client: Client,
    child: ChildGuard,
    log: PathBuf,
    _dir: TempDir,
}

impl Deref for ServerProc {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl ServerProc {
    /// Start the server on `database_url` with test settings, then `env` (which wins), and wait
    /// until it is ready.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = command(env!("CARGO_BIN_EXE_chat-server"), dir.path());
        cmd.env("BIND_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", database_url)
            .env("JWT_SECRET", SECRET)
            .env("AUTO_MIGRATE", "true")
            .env("SHUTDOWN_GRACE_SECS", "5")
            .env("MESSAGE_RATE_PER_SEC", "100000")
            .env("MESSAGE_RATE_BURST", "100000")
            .env("AUTH_RATE_PER_MIN", "100000")
            .env("ROOMS_PER_HOUR", "100000")
            .env("WS_MAX_SOCKETS_PER_USER", "0")
            .env("WS_MAX_SOCKETS_PER_ADDRESS", "0")
            .env("WS_UPGRADES_PER_SEC", "0")
            .env("RUST_LOG", "warn,chat_server=info")
            .env("LOG_FORMAT", "json")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = ChildGuard::spawn(&mut cmd, "chat-server");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = listening_addr(&text) {
                break addr;
            }
            if let Some(status) = child.exited() {
                panic!("chat-server exited ({status}) before listening:\n{text}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chat-server never logged `listening`:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let server = Self {
            client: Client::new(addr),
            child,
            log,
            _dir: dir,
        };
        server.wait_ready().await;
        server
    }

    /// A replica of a cluster: `database_url` and Redis shared with the others.
    pub async fn replica(database_url: &str, redis: &RedisServer, env: &[(&str, &str)]) -> Self {
        let url = redis.url();
        let mut all = vec![("REDIS_URL", url.as_str())];
        all.extend_from_slice(env);
        Self::start(database_url, &all).await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    }

    /// Its exit status once it has exited, within `secs` (None: still running).
    pub async fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.exited() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// nginx

/// nginx (Debian `nginx-light`) round-robin in front of `upstreams`, WebSockets proxied.
pub struct Nginx {
    pub client: Client,
    _child: ChildGuard,
    _dir: TempDir,
}

impl Deref for Nginx {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Nginx {
    /// Panics if nginx is not installed. nginx cannot report a port it chose: a free port is
    /// picked, and another one tried if nginx exits (the port was taken meanwhile).
    pub async fn start(upstreams: &[SocketAddr]) -> Self {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is required for this test: apt-get install -y nginx-light");
        let servers: String = upstreams.iter().map(|a| format!("server {a}; ")).collect();
        // Answered by nginx itself: proves that what listens on the port is this nginx.
        let token = format!("nginx-{}", uuid::Uuid::new_v4().simple());
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let conf = format!(
                r#"
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream chat {{ {servers} }}
  server {{
    listen 127.0.0.1:{port};
    location = /__nginx_probe {{ return 200 "{token}"; }}
    location / {{
      proxy_pass http://chat;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"#,
                dir = dir.path().display(),
            );
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut child = ChildGuard::spawn(
                command(binary, dir.path())
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-p")
                    .arg(dir.path())
                    .args(["-g", "daemon off;"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
                "nginx",
            );
            let client = Client::new(SocketAddr::from(([127, 0, 0, 1], port)));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if child.exited().is_some() {
                    break; // the port was taken: try another
                }
                if let Ok((200, body)) = client
                    .try_send(reqwest::Method::GET, "/__nginx_probe", None, None)
                    .await
                    && body == serde_json::Value::String(token.clone())
                {
                    client.wait_ready().await;
                    return Self {
                        client,
                        _child: child,
                        _dir: dir,
                    };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx never answered on port {port}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("nginx did not start on any of 10 ports");
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The `bin` directory of the newest PostgreSQL under `/usr/lib/postgresql` holding `initdb`.
/// `build.rs` sets `cfg(private_pg)` only when there is one.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// A private PostgreSQL cluster (`initdb` into a temporary directory, `pg_ctl` on a free port),
/// which a test may stop and start again; never the shared server on 5432. PostgreSQL refuses
/// to run as root: as root, `initdb` and `pg_ctl` run as the `postgres` user (`runuser`).
/// Stopped (immediate mode) when dropped.
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    running: bool,
    /// `name=value` server settings, each passed as `-c name=value`.
    settings: Vec<String>,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`Self::start`] with server `settings` (`name=value`, e.g.
    /// `shared_preload_libraries=pg_stat_statements`).
    pub async fn start_with(settings: &[&str]) -> Self {
        let bin = postgres_bin_dir().expect("no initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data directory to postgres");
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin, "initdb", dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Self {
            port: 0,
            bin,
            dir,
            running: false,
            settings: settings.iter().map(|s| format!(" -c {s}")).collect(),
        };
        for _ in 0..10 {
            pg.port = free_port();
            if pg.try_start() {
                let admin = sea_orm::Database::connect(pg.url("postgres"))
                    .await
                    .expect("connect to the private postgres");
                sea_orm::ConnectionTrait::execute_unprepared(&admin, "CREATE DATABASE chat")
                    .await
                    .expect("create database chat");
                admin.close().await.ok();
                return pg;
            }
        }
        panic!("private postgres did not start on any of 10 ports");
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn try_start(&mut self) -> bool {
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {} -c fsync=off{}",
            self.port,
            self.dir.path().display(),
            self.settings.concat()
        );
        let status = pg_command(&self.bin, "pg_ctl", self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl start");
        self.running = status.success();
        self.running
    }

    /// Start it again on the same port (the servers know it).
    pub fn start_again(&mut self) {
        assert!(!self.running, "stop it first");
        for _ in 0..20 {
            if self.try_start() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("private postgres did not restart on port {}", self.port);
    }

    /// `pg_ctl stop` in `mode` (`fast`: disconnect every client, `immediate`: no shutdown
    /// checkpoint), waiting until it has stopped.
    pub fn stop(&mut self, mode: &str) {
        let status = pg_command(&self.bin, "pg_ctl", self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(status.success(), "pg_ctl stop");
        self.running = false;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command(&self.bin, "pg_ctl", self.dir.path())
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `bin/<tool>` in `dir`, as the `postgres` user when this process is root.
fn pg_command(bin: &Path, tool: &str, dir: &Path) -> Command {
    let program = bin.join(tool);
    if is_root() {
        let mut cmd = command("runuser", dir);
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        command(program, dir)
    }
}
