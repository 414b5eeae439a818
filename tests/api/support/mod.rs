//! Test harness, the one every test file uses: the real app on 127.0.0.1:0 against a fresh
//! database (a temporary SQLite file, or a fresh PostgreSQL database per test when
//! `TEST_DATABASE_URL` is set), one HTTP client ([`Client`]), WebSocket helpers, Prometheus
//! parsing, and the processes some tests need (the built server binary, `redis-server`, nginx),
//! each killed when its guard is dropped.
//!
//! Tests that need PostgreSQL (the `postgres` variant of [`dual_test!`], and every test with
//! several replicas, which must share a real database) are built with
//! `#[cfg_attr(not(pg_tests), ignore = "set TEST_DATABASE_URL ...")]`: the root `build.rs` sets
//! `pg_tests` when `TEST_DATABASE_URL` is set, so without it they are listed as ignored, with
//! the reason, instead of passing without running.

mod client;
mod cluster;
mod db;
mod metrics;
mod procs;
mod ws;

use std::{ops::Deref, sync::OnceLock};

use chat_server::{AppState, Config};
use tokio_util::sync::CancellationToken;

pub use self::{client::*, cluster::*, db::*, metrics::*, procs::*, ws::*};

/// Run a test body against SQLite, and against PostgreSQL: the `postgres` variant is ignored
/// (and says why) unless `TEST_DATABASE_URL` was set when the tests were built.
#[macro_export]
macro_rules! dual_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let f = $body;
                f($crate::support::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(
                not(pg_tests),
                ignore = "set TEST_DATABASE_URL to run the PostgreSQL suite"
            )]
            async fn postgres() {
                let f = $body;
                f($crate::support::Backend::Postgres).await;
            }
        }
    };
}

/// Process-wide test logging, to a sink unless `TEST_LOG` is set.
pub fn init_tracing() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,chat=debug")
                .with_test_writer()
                .try_init();
        }
    });
}

/// The app served in this process; its [`Client`] is reached through `Deref`. Dropping it
/// shuts the app down.
pub struct TestApp {
    pub client: Client,
    pub state: AppState,
    shutdown: CancellationToken,
}

impl Deref for TestApp {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let db_url = fresh_database(backend).await;
    spawn_with(Config::for_tests(&db_url)).await
}

/// Build the app from `config` and serve it on a listener bound to 127.0.0.1:0 (the listener
/// is handed over, so no other process can take the port in between).
pub async fn spawn_with(config: Config) -> TestApp {
    init_tracing();
    let shutdown = CancellationToken::new();
    let state = AppState::build(config, shutdown.clone())
        .await
        .expect("app state builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(chat_server::run(state.clone(), listener));
    TestApp {
        client: Client::new(addr),
        state,
        shutdown,
    }
}

/// [`spawn_with`], with probes and metrics on a second listener (`INTERNAL_ADDR`); the
/// second value is a client of that internal port.
pub async fn spawn_with_internal(config: Config) -> (TestApp, Client) {
    init_tracing();
    let shutdown = CancellationToken::new();
    let state = AppState::build(config, shutdown.clone())
        .await
        .expect("app state builds");
    let public = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let internal = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let (addr, internal_addr) = (
        public.local_addr().expect("local addr"),
        internal.local_addr().expect("local addr"),
    );
    tokio::spawn(chat_server::run_with_internal(
        state.clone(),
        public,
        internal,
    ));
    let app = TestApp {
        client: Client::new(addr),
        state,
        shutdown,
    };
    (app, Client::new(internal_addr))
}

/// How long [`wait_until`] waits before it gives up: generous, so that only a condition that
/// never comes reaches it, however loaded the machine.
pub const WAIT_BOUND: std::time::Duration = std::time::Duration::from_secs(60);

/// What a [`wait_until`] probe answers: `bool` (done or not), or `Result<T, E>`: `Ok(T)`
/// when done (handed back to the caller), `Err(state)` while not (the last state is shown if
/// the wait gives up).
pub trait Probe {
    type Done;
    /// `Ok` when done; else what to say about the state so far.
    fn done(self) -> Result<Self::Done, String>;
}

impl Probe for bool {
    type Done = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("not yet".into()) }
    }
}

impl<T, E: std::fmt::Debug> Probe for Result<T, E> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|state| format!("{state:?}"))
    }
}

/// The one way a test waits for something it cannot be told about (instead of a fixed sleep
/// or a loop of its own): `probe` until it is done, every 20 ms, up to [`WAIT_BOUND`]; then
/// panic with `what` and the last state the probe reported.
pub async fn wait_until<P: Probe>(what: &str, mut probe: impl AsyncFnMut() -> P) -> P::Done {
    let deadline = tokio::time::Instant::now() + WAIT_BOUND;
    loop {
        let state = match probe().await.done() {
            Ok(done) => return done,
            Err(state) => state,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {} s waiting for {what}; last: {state}",
            WAIT_BOUND.as_secs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
