//! Test harness: the real app on 127.0.0.1:0 against a fresh database (a temporary SQLite
//! file, or a fresh PostgreSQL database per test when `TEST_DATABASE_URL` is set), plus
//! helpers for HTTP, WebSockets and private `redis-server` processes.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use chat::{AppState, Config};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as WsMessage};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Run a test body against SQLite, and against PostgreSQL when `TEST_DATABASE_URL` is set.
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
            async fn postgres() {
                if !$crate::support::postgres_enabled() {
                    eprintln!("TEST_DATABASE_URL not set: PostgreSQL variant skipped");
                    return;
                }
                let f = $body;
                f($crate::support::Backend::Postgres).await;
            }
        }
    };
}

pub fn postgres_enabled() -> bool {
    std::env::var("TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty())
}

/// `postgres://user@host:port` of `TEST_DATABASE_URL`, without the database name.
fn pg_server() -> String {
    let url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url,
    }
}

/// A fresh PostgreSQL database (created from a migrated template) or SQLite file.
pub async fn fresh_database(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("chat-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(format!("{}.db", uuid::Uuid::new_v4().simple()));
            format!("sqlite://{}?mode=rwc", path.display())
        }
        Backend::Postgres => {
            use sea_orm::{ConnectionTrait, Database};
            static LOCK: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
            let server = pg_server();
            let mut ready = LOCK.lock().await;
            let admin = Database::connect(format!("{server}/postgres"))
                .await
                .expect("postgres is up");
            let template = "chat_test_template";
            if !*ready {
                // One migrated template per test run; each test copies it.
                admin
                    .execute_unprepared(&format!(
                        r#"DROP DATABASE IF EXISTS "{template}" WITH (FORCE)"#
                    ))
                    .await
                    .expect("drop template");
                admin
                    .execute_unprepared(&format!(r#"CREATE DATABASE "{template}""#))
                    .await
                    .expect("create template");
                let t = Database::connect(format!("{server}/{template}"))
                    .await
                    .expect("connect template");
                <migration::Migrator as migration::MigratorTrait>::up(&t, None)
                    .await
                    .expect("migrate template");
                t.close().await.expect("close template");
                *ready = true;
            }
            let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
            admin
                .execute_unprepared(&format!(
                    r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#
                ))
                .await
                .expect("create test db");
            admin.close().await.ok();
            format!("{server}/{name}")
        }
    }
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

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub db_url: String,
    shutdown: CancellationToken,
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

pub async fn spawn_with(config: Config) -> TestApp {
    init_tracing();
    let db_url = secrecy::ExposeSecret::expose_secret(&config.database_url).to_owned();
    let shutdown = CancellationToken::new();
    let state = AppState::build(config, shutdown.clone())
        .await
        .expect("app state builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(chat::run(state.clone(), listener));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        state,
        db_url,
        shutdown,
    }
}

pub struct User {
    pub id: i64,
    pub username: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn register(&self, username: &str) -> User {
        let (status, body) = self
            .post(
                "/api/v1/auth/register",
                None,
                json!({"username": username, "email": format!("{username}@example.com"), "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 201, "register {username}: {body}");
        User {
            id: body["user"]["id"].as_i64().expect("id"),
            username: username.to_owned(),
            access: body["tokens"]["access"]
                .as_str()
                .expect("access")
                .to_owned(),
            refresh: body["tokens"]["refresh"]
                .as_str()
                .expect("refresh")
                .to_owned(),
        }
    }

    pub async fn create_room(&self, user: &User, name: &str, visibility: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/rooms",
                Some(&user.access),
                json!({"name": name, "visibility": visibility}),
            )
            .await;
        assert_eq!(status, 201, "create room {name}: {body}");
        body
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connect a socket to a room; panics unless the upgrade succeeds.
pub async fn ws_connect(base_ws: &str, room: &str, token: &str, since: Option<i64>) -> Ws {
    let mut url = format!("{base_ws}/ws/rooms/{room}?token={token}");
    if let Some(s) = since {
        url.push_str(&format!("&since_seq={s}"));
    }
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket upgrade");
    ws
}

/// The HTTP status of a refused upgrade.
pub async fn ws_refused(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The next text frame as JSON (skipping pings), within `secs`.
pub async fn next_json(ws: &mut Ws, secs: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match msg {
            WsMessage::Text(t) => {
                return Some(serde_json::from_str(&t).expect("server frames are JSON"));
            }
            WsMessage::Close(_) => return None,
            _ => {}
        }
    }
}

/// The next frame of `kind`, skipping others.
pub async fn next_of(ws: &mut Ws, kind: &str, secs: u64) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_secs()
            .max(1);
        let v = next_json(ws, left).await?;
        if v["type"] == kind {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
    }
}

/// Read until the close frame; its code (None if the stream ended without one).
pub async fn close_code(ws: &mut Ws, secs: u64) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Close(Some(frame))))) => return Some(frame.code.into()),
            Ok(Some(Ok(WsMessage::Close(None)))) | Ok(None) | Err(_) => return None,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) => return None,
        }
    }
}

pub async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .expect("send frame");
}

/// Collect `message` frames until `n` have arrived (or `secs` pass); returns their seqs.
pub async fn collect_seqs(ws: &mut Ws, n: usize, secs: u64) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await else {
            break;
        };
        if let WsMessage::Text(t) = msg {
            let v: Value = serde_json::from_str(&t).expect("json");
            if v["type"] == "message" {
                seqs.push(v["seq"].as_i64().expect("seq"));
            }
        }
    }
    seqs
}

/// A private `redis-server` on a free port, stopped (by PID) on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let mut s = Self { port, child: None };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        // Wait until it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
