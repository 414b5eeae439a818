//! nginx (Debian `nginx-light`) as the load balancer in front of replicas: round robin, no
//! stickiness, WebSocket upgrades proxied.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

use crate::process::{ChildGuard, command, free_port, log_file, random_hex};
use crate::redis::WorkDir;

/// How nginx is run.
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// Worker processes (they share the listening socket, `reuseport`). With 1, nginx runs as
    /// a single process (`master_process off`).
    pub workers: usize,
    /// `worker_connections` of each worker (every client socket costs two).
    pub connections: usize,
    /// The port to listen on; 0: a free one (another is tried if it was taken meanwhile).
    pub port: u16,
}

impl Default for NginxOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            connections: 1024,
            port: 0,
        }
    }
}

/// nginx in front of some upstreams; stopped (SIGTERM, so that a master ends its workers,
/// then SIGKILL) when dropped.
pub struct Nginx {
    port: u16,
    child: ChildGuard,
    _dir: WorkDir,
}

impl Nginx {
    /// Round robin over `upstreams` (never marked down: a restarting replica is retried on
    /// the next request), WebSockets proxied, in `dir` (created, kept) or a temporary
    /// directory. Ready when nginx itself answers a probe with a token of this start: what
    /// listens on the port is this nginx. Errors if nginx is not installed.
    pub async fn start(
        upstreams: &[SocketAddr],
        opts: &NginxOptions,
        dir: Option<&Path>,
    ) -> Result<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("nginx not found: apt-get install -y nginx-light")?;
        let dir = WorkDir::new(dir)?;
        let token = format!("nginx-{}", random_hex(8)?);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let tries = if opts.port == 0 { 10 } else { 1 };
        for _ in 0..tries {
            let port = if opts.port == 0 {
                free_port()?
            } else {
                opts.port
            };
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(
                &conf_path,
                config(dir.path(), port, upstreams, opts, &token),
            )
            .with_context(|| format!("write {}", conf_path.display()))?;
            let mut child = ChildGuard::spawn(
                command(binary, dir.path())
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-p")
                    .arg(dir.path())
                    .args(["-g", "daemon off;"])
                    .stdout(Stdio::null())
                    .stderr(log_file(&dir.path().join("stderr.log"))?),
                "nginx",
            )?;
            let probe = format!("http://127.0.0.1:{port}/__nginx_probe");
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.exited().is_none() {
                if let Ok(r) = http.get(&probe).send().await
                    && r.status() == 200
                    && r.text().await.is_ok_and(|body| body == token)
                {
                    return Ok(Self {
                        port,
                        child,
                        _dir: dir,
                    });
                }
                if Instant::now() >= deadline {
                    child.terminate_blocking(Duration::from_secs(3));
                    bail!("nginx never answered on port {port}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            child.terminate_blocking(Duration::from_secs(3));
        }
        bail!(
            "nginx did not start on port {} (see {}/error.log)",
            if opts.port == 0 {
                "any of 10 free ports".to_owned()
            } else {
                opts.port.to_string()
            },
            dir.path().display()
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // A SIGKILLed master would leave its workers behind.
        self.child.terminate_blocking(Duration::from_secs(3));
    }
}

/// The whole `nginx.conf`.
fn config(
    dir: &Path,
    port: u16,
    upstreams: &[SocketAddr],
    opts: &NginxOptions,
    token: &str,
) -> String {
    let dir = dir.display();
    let servers: String = upstreams
        .iter()
        .map(|a| format!("server {a} max_fails=0; "))
        .collect();
    let processes = if opts.workers <= 1 {
        "master_process off;\nworker_processes 1;".to_owned()
    } else {
        format!("worker_processes {};", opts.workers)
    };
    let (conns, nofile) = (opts.connections, opts.connections + 1000);
    format!(
        r#"
{processes}
worker_rlimit_nofile {nofile};
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
    location = /__nginx_probe {{ return 200 "{token}"; }}
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
"#
    )
}
