//! Child processes owned by a guard: started with an explicit environment, signalled by PID
//! only while the PID is certainly still theirs, killed and reaped on drop.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

/// A command for `program` that runs in `dir` with only `PATH` of this process's environment
/// (no variable of the caller's shell, no `.env` of a checkout reaches it) and no stdin.
pub fn command(program: impl AsRef<OsStr>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null());
    cmd
}

/// A child process, SIGKILLed and reaped when dropped (also when a test panics first).
pub struct ChildGuard {
    child: Child,
    what: String,
    /// Set once `try_wait` reaped it: from then on its PID may belong to someone else.
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawn `cmd`; `what` names it in errors.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Self {
            child,
            what: what.to_owned(),
            status: None,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Send `sig` (`-TERM`, `-KILL`, ...) with kill(1). Refused once the child was reaped:
    /// its PID could name another process by then.
    pub fn signal(&self, sig: &str) -> Result<()> {
        if self.status.is_some() {
            bail!("{} (pid {}) has already exited", self.what, self.id());
        }
        signal_pid(self.id(), sig)
    }

    /// Its exit status once it has exited within `limit` (`None`: still running).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `sig`, then wait up to `limit` for the exit; SIGKILL if it did not come (an error then).
    pub async fn stop(&mut self, sig: &str, limit: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        self.signal(sig)?;
        if let Some(status) = self.wait_exit(limit).await {
            return Ok(status);
        }
        self.kill();
        bail!(
            "{} (pid {}) did not exit within {limit:?} of {sig}",
            self.what,
            self.id()
        )
    }

    /// SIGKILL and reap (nothing if it has exited already).
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Like [`ChildGuard::stop`] for drop paths: `-TERM`, a blocking wait up to `limit`,
    /// then SIGKILL. For processes that must end their own children (an nginx master).
    pub fn terminate_blocking(&mut self, limit: Duration) {
        if self.exited().is_none() && self.signal("-TERM").is_ok() {
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline {
                if self.exited().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `kill <sig> <pid>`.
pub fn signal_pid(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("kill")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

/// `path` opened for appending (created if missing): a log that survives restarts.
pub fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// The last `n` lines of the file at `path` (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on 127.0.0.1 (bound and released: whoever starts on it must retry on
/// another one if it was taken meanwhile).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("bind 127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether this process runs as root (PostgreSQL refuses to).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `bytes` random bytes from the kernel, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
