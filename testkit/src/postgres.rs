//! PostgreSQL: a throw-away database on a running server ([`PgDatabase`]), or a private server
//! of its own ([`PrivatePostgres`], `initdb` into a directory, `pg_ctl` on a free port) that a
//! test may stop and start again; never the shared server's configuration.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{command, free_port, is_root, random_hex};
use crate::redis::WorkDir;

/// The `bin` directory of the newest PostgreSQL under `/usr/lib/postgresql` holding `initdb`
/// and `pg_ctl`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let p = e.ok()?.path();
            let version = p.file_name()?.to_str()?.parse().ok()?;
            let bin = p.join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|d| d.1)
}

/// `psql` of the newest installation, else the one on `PATH`.
fn psql_program() -> PathBuf {
    postgres_bin_dir()
        .map(|d| d.join("psql"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("psql"))
}

/// Run one SQL statement with `psql` on the database at `url`.
pub fn psql(url: &str, sql: &str) -> Result<()> {
    let out = command(psql_program(), Path::new("/"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .context("psql (is the PostgreSQL client installed?)")?;
    if !out.status.success() {
        bail!(
            "psql `{sql}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `url` (`postgres://user@host:port[/db][?params]`) with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let authority_from = url.find("://").map_or(0, |i| i + 3);
    let server = match url[authority_from..].find('/') {
        Some(i) => &url[..authority_from + i],
        None => url,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// A fresh database on the server of `server_url`, dropped (`WITH (FORCE)`: connections
/// still open are ended) when this guard is dropped.
pub struct PgDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl PgDatabase {
    /// `CREATE DATABASE <prefix>_<random>` on the server of `server_url` (any database name in
    /// it is ignored; the statements run in database `postgres`).
    pub fn create(server_url: &str, prefix: &str) -> Result<Self> {
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            bail!("database prefix `{prefix}`: use [a-z0-9_]");
        }
        let name = format!("{prefix}_{}", random_hex(6)?);
        let admin_url = with_database(server_url, "postgres");
        psql(&admin_url, &format!(r#"CREATE DATABASE "{name}""#))
            .with_context(|| format!("create database {name} on {server_url}"))?;
        Ok(Self {
            url: with_database(server_url, &name),
            name,
            admin_url,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let drop_it = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        if let Err(e) = psql(&self.admin_url, &drop_it) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Settings of a [`PrivatePostgres`] unless the caller gives others: no fsync (a test
/// database need not survive a power cut), room for several replicas' pools.
pub const DEFAULT_SETTINGS: &[(&str, &str)] = &[("fsync", "off"), ("max_connections", "200")];

/// A private PostgreSQL server: `initdb` into a directory, `pg_ctl` on a free port, database
/// `chat` created. PostgreSQL refuses to run as root: as root, `initdb` and `pg_ctl` run as
/// the `postgres` user (`runuser`) and the directory is handed to it. Stopped (immediate
/// mode) when dropped. Every call blocks until `initdb` / `pg_ctl` are done.
pub struct PrivatePostgres {
    port: u16,
    bin: PathBuf,
    dir: WorkDir,
    settings: String,
    running: bool,
}

impl PrivatePostgres {
    /// In a temporary directory, with [`DEFAULT_SETTINGS`].
    pub fn start() -> Result<Self> {
        Self::start_with(None, DEFAULT_SETTINGS)
    }

    /// In `dir` (created if missing, kept) or a temporary directory, with `settings` (`-c`).
    pub fn start_with(dir: Option<&Path>, settings: &[(&str, &str)]) -> Result<Self> {
        let bin = postgres_bin_dir().context("no initdb under /usr/lib/postgresql/*/bin")?;
        let dir = WorkDir::new(dir)?;
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .context("chown")?
                .success();
            if !ok {
                bail!("chown {} to postgres failed", dir.path().display());
            }
        }
        let out = pg_command(&bin, "initdb", dir.path())
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .context("initdb")?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let settings = settings
            .iter()
            .map(|(k, v)| format!(" -c {k}={v}"))
            .collect();
        let mut pg = Self {
            port: 0,
            bin,
            dir,
            settings,
            running: false,
        };
        for _ in 0..10 {
            pg.port = free_port()?;
            if pg.try_start()? {
                psql(&pg.url("postgres"), "CREATE DATABASE chat")?;
                return Ok(pg);
            }
        }
        bail!("private PostgreSQL did not start on any of 10 ports")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on it (`chat` exists from the start).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The postmaster's PID (first line of `postmaster.pid`) while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn try_start(&mut self) -> Result<bool> {
        let opts = format!(
            "-p {} -h 127.0.0.1 -k {}{}",
            self.port,
            self.dir.path().display(),
            self.settings
        );
        let ok = pg_command(&self.bin, "pg_ctl", self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .status()
            .context("pg_ctl start")?
            .success();
        self.running = ok;
        Ok(ok)
    }

    /// Start it again on the same port (the servers know it), retrying while the port is not
    /// free yet. Errors if it is running.
    pub fn start_again(&mut self) -> Result<()> {
        if self.running {
            bail!("private PostgreSQL on port {} is running", self.port);
        }
        for _ in 0..20 {
            if self.try_start()? {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "private PostgreSQL did not start again on port {}",
            self.port
        )
    }

    /// `pg_ctl stop` in `mode` (`fast`: disconnect every client, `immediate`: no shutdown
    /// checkpoint), waiting until it has stopped.
    pub fn stop(&mut self, mode: &str) -> Result<()> {
        let ok = pg_command(&self.bin, "pg_ctl", self.dir.path())
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .status()
            .context("pg_ctl stop")?
            .success();
        if !ok {
            bail!("pg_ctl stop -m {mode} failed");
        }
        self.running = false;
        Ok(())
    }

    /// Stop (`fast`), stay down for `down`, start again on the same port.
    pub async fn restart(&mut self, down: Duration) -> Result<()> {
        self.stop("fast")?;
        tokio::time::sleep(down).await;
        self.start_again()
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_database() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            ("postgres://u@h:1/test", "postgres://u@h:1/x"),
            (
                "postgres://u@h/test?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
            (
                "postgres://u@h?sslmode=disable",
                "postgres://u@h/x?sslmode=disable",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "x"), want, "{url}");
        }
    }
}
