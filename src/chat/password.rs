//! argon2id password hashing on a small pool of dedicated threads, off the async runtime.
//!
//! Each hash takes ~19 MiB and tens of milliseconds of CPU. The pool size is the cap on
//! concurrent hashes (`HASH_CONCURRENCY`, default: CPUs); waiting for a free thread is the
//! back-pressure. Dedicated, long-lived threads (rather than tokio's blocking pool, whose
//! threads come and go) also keep the allocator from parking a fresh 19 MiB block in a new
//! arena for every thread that ever hashed.

use std::sync::{Arc, LazyLock, Mutex};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher as _, PasswordVerifier, phc::PasswordHash},
};
use tokio::sync::{mpsc, oneshot};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub(crate) struct PasswordHasher {
    jobs: mpsc::Sender<Job>,
}

/// A real hash of a random password, verified against when a login names an unknown user, so
/// that "no such user" and "wrong password" take about the same time.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(uuid::Uuid::new_v4().as_bytes())
        .map(|h| h.to_string())
        .unwrap_or_default()
});

impl PasswordHasher {
    pub(crate) fn new(concurrency: usize) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // One thread waits on the queue at a time; the others wait for the lock.
                        let job = rx
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .blocking_recv();
                        match job {
                            Some(job) => job(),
                            None => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self { jobs }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            // The request gave up (timed out, or its client went away) while the job waited:
            // don't spend a hash on nobody.
            if tx.is_closed() {
                return;
            }
            let _enter = span.enter();
            let _ = tx.send(f());
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| anyhow::anyhow!("password hashing pool stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("password hashing job dropped"))
    }

    /// # Errors
    /// If the pool is gone or argon2 refuses its parameters (neither expected).
    pub(crate) async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .await?
    }

    /// Check `password` against `hash`; `None` verifies against a dummy hash and returns false.
    ///
    /// # Errors
    /// If the pool is gone.
    pub(crate) async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> anyhow::Result<bool> {
        self.run(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
            let ok = PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false);
            known && ok
        })
        .await
    }
}
