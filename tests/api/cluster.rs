//! Cluster mode (SPEC §1, §7–9): several replicas on one Redis and one database, losing nothing.
//! Each test starts its own `redis-server` on a free port. The database is a fresh PostgreSQL
//! database when `TEST_DATABASE_URL` is set, else a shared SQLite file.

use std::{
    collections::{BTreeSet, HashMap},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::*;

pub const SECRET: &str = "cluster-secret-cluster-secret-0123";

pub async fn cluster_db() -> String {
    if postgres_enabled() {
        fresh_database(Backend::Postgres).await
    } else {
        fresh_database(Backend::Sqlite).await
    }
}

pub async fn replica(db: &str, redis: &str) -> TestApp {
    let mut config = chat::Config::for_tests(db);
    config.redis_url = Some(redis.to_owned().into());
    config.jwt_secret = Some(SECRET.to_owned().into());
    spawn_with(config).await
}

pub async fn cluster(n: usize, redis: &RedisServer) -> Vec<TestApp> {
    let db = cluster_db().await;
    let mut apps = Vec::new();
    for _ in 0..n {
        apps.push(replica(&db, &redis.url()).await);
    }
    for app in &apps {
        wait_ready(&app.base).await;
    }
    apps
}

pub async fn wait_ready(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(res) = client.get(format!("{base}/readyz")).send().await
            && res.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became ready");
}

/// A replica as a process of the built binary (for SIGKILL / SIGTERM).
pub struct Proc {
    pub base: String,
    pub ws: String,
    child: Child,
}

impl Proc {
    pub async fn start(db: &str, redis: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", db)
            .env("REDIS_URL", redis)
            .env("JWT_SECRET", SECRET)
            .env("AUTO_MIGRATE", "true")
            .env("SHUTDOWN_GRACE_SECS", "5")
            .env("MESSAGE_RATE_PER_SEC", "100000")
            .env("MESSAGE_RATE_BURST", "100000")
            .env("AUTH_RATE_PER_MIN", "100000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start chat-server");
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await;
        Self {
            ws: format!("ws://127.0.0.1:{port}"),
            base,
            child,
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        for _ in 0..secs * 20 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP client against any base URL.
pub async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, format!("{base}{path}"))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let v = res.json::<Value>().await.unwrap_or(Value::Null);
            (status, v)
        }
        Err(_) => (0, Value::Null),
    }
}

pub async fn register_at(base: &str, name: &str) -> (i64, String, String) {
    let (status, body) = call(
        base,
        reqwest::Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse battery"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["user"]["id"].as_i64().unwrap(),
        body["tokens"]["access"].as_str().unwrap().to_owned(),
        body["tokens"]["refresh"].as_str().unwrap().to_owned(),
    )
}

/// A socket that records every message seq it receives, in a shared list.
pub fn record(mut ws: Ws) -> (Arc<Mutex<Vec<i64>>>, tokio::task::JoinHandle<Option<u16>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message as M;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(M::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "message" {
                        out.lock().unwrap().push(v["seq"].as_i64().unwrap());
                    }
                }
                Ok(M::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    });
    (seen, task)
}

fn assert_gap_free(seqs: &[i64], upto: i64, who: &str) {
    assert_eq!(
        seqs,
        (1..=upto).collect::<Vec<_>>(),
        "{who}: every seq once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_deliver_the_same_gap_free_sequence() {
    let redis = RedisServer::start();
    let apps = cluster(3, &redis).await;
    let mut users = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        users.push(app.register(&format!("trio{i}")).await);
    }
    apps[0].create_room(&users[0], "trio", "public").await;
    // Two listening sockets per replica, one per user.
    let mut recorders = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        for u in &users {
            let mut ws = ws_connect(&app.ws_url(""), "trio", &u.access, None).await;
            assert_eq!(next_json(&mut ws, 10).await.unwrap()["type"], "ready");
            recorders.push((format!("replica{i}/{}", u.username), record(ws)));
        }
    }
    // Senders on all three replicas at once.
    let mut senders = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let mut ws = ws_connect(&app.ws_url(""), "trio", &users[i].access, None).await;
        next_json(&mut ws, 10).await.unwrap();
        senders.push(tokio::spawn(async move {
            for k in 0..60 {
                ws_send(
                    &mut ws,
                    json!({"type": "message", "content": format!("r{i} {k}")}),
                )
                .await;
            }
            let mut acks = 0;
            while acks < 60 {
                let v = next_json(&mut ws, 30).await.expect("ack");
                acks += i32::from(v["type"] == "ack");
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let done = recorders
            .iter()
            .all(|(_, (seen, _))| seen.lock().unwrap().len() >= 180);
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (who, (seen, _)) in &recorders {
        assert_gap_free(&seen.lock().unwrap(), 180, who);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_loses_nothing_that_was_committed() {
    let mut redis = RedisServer::start();
    let apps = cluster(3, &redis).await;
    let poster = apps[0].register("poster").await;
    apps[0].create_room(&poster, "outage", "public").await;
    let mut recorders = Vec::new();
    for app in &apps {
        let reader = app.register(&format!("reader{}", app.addr.port())).await;
        let mut ws = ws_connect(&app.ws_url(""), "outage", &reader.access, None).await;
        next_json(&mut ws, 10).await.unwrap();
        recorders.push(record(ws));
    }
    let bases: Vec<String> = apps.iter().map(|a| a.base.clone()).collect();
    let token = poster.access.clone();
    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let post_task = {
        let (committed, statuses, stop) = (committed.clone(), statuses.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.is_cancelled() {
                let base = &bases[i % bases.len()];
                let (status, body) = call(
                    base,
                    reqwest::Method::POST,
                    "/api/v1/rooms/outage/messages",
                    Some(&token),
                    Some(json!({"content": format!("m{i}")})),
                )
                .await;
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                assert!(
                    status == 201 || status == 503,
                    "each send commits or is refused, got {status}: {body}"
                );
                if status == 201 {
                    committed
                        .lock()
                        .unwrap()
                        .insert(body["seq"].as_i64().unwrap());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.cancel();
    post_task.await.unwrap();
    let committed: Vec<i64> = committed.lock().unwrap().iter().copied().collect();
    assert!(!committed.is_empty());
    let last = *committed.last().unwrap();
    // No further message is sent: every socket must catch up on its own within 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let done = recorders
            .iter()
            .all(|(seen, _)| seen.lock().unwrap().last().copied() == Some(last));
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (seen, _) in &recorders {
        let seen = seen.lock().unwrap();
        // Everything committed is there, in order, once.
        assert_gap_free(&seen, last, "reader");
    }
    eprintln!(
        "statuses during the outage run: {:?}",
        statuses.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_on_one_replica_closes_the_socket_on_another() {
    let redis = RedisServer::start();
    let apps = cluster(2, &redis).await;
    let user = apps[0].register("roamer").await;
    apps[0].create_room(&user, "roam", "public").await;
    let mut ws = ws_connect(&apps[1].ws_url(""), "roam", &user.access, None).await;
    next_json(&mut ws, 10).await.unwrap();
    let (status, _) = apps[0]
        .post("/api/v1/auth/logout", Some(&user.access), json!({}))
        .await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut ws, 10).await, Some(4001));
    let (status, _) = apps[1].get("/api/v1/users/me", Some(&user.access)).await;
    assert_eq!(status, 401, "replica B refuses the token");
    assert_eq!(
        ws_refused(&format!(
            "{}/ws/rooms/roam?token={}",
            apps[1].ws_url(""),
            user.access
        ))
        .await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_and_typing_are_cluster_wide_and_fire_once() {
    let redis = RedisServer::start();
    let apps = cluster(2, &redis).await;
    let a = apps[0].register("pres_a").await;
    let b = apps[1].register("pres_b").await;
    apps[0].create_room(&a, "pres", "public").await;
    let mut wa = ws_connect(&apps[0].ws_url(""), "pres", &a.access, None).await;
    next_json(&mut wa, 10).await.unwrap();
    // b on both replicas: one join event, not two.
    let mut wb1 = ws_connect(&apps[1].ws_url(""), "pres", &b.access, None).await;
    let ready = next_json(&mut wb1, 10).await.unwrap();
    assert_eq!(ready["online"].as_array().unwrap().len(), 2, "{ready}");
    let mut wb2 = ws_connect(&apps[0].ws_url(""), "pres", &b.access, None).await;
    next_json(&mut wb2, 10).await.unwrap();
    let join = next_of(&mut wa, "presence", 5).await.unwrap();
    assert_eq!(
        (join["event"].as_str(), join["user"]["username"].as_str()),
        (Some("join"), Some("pres_b"))
    );
    ws_send(&mut wb1, json!({"type": "typing"})).await;
    let typing = next_of(&mut wa, "typing", 5)
        .await
        .expect("typing crosses replicas");
    assert_eq!(typing["user"]["username"], "pres_b");
    assert!(
        next_of(&mut wa, "presence", 1).await.is_none(),
        "no second join"
    );
    let (_, members) = apps[0]
        .get("/api/v1/rooms/pres/members", Some(&a.access))
        .await;
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["online"] == true),
        "{members}"
    );
    drop(wb1);
    assert!(
        next_of(&mut wa, "presence", 2).await.is_none(),
        "still online on the other replica"
    );
    drop(wb2);
    let leave = next_of(&mut wa, "presence", 5).await.expect("leave");
    assert_eq!(leave["event"], "leave");
}

/// Group commit across rooms: senders in four rooms on two replicas at once. Batches span
/// rooms and replicas lock rooms in the same order, so nothing deadlocks and every room's
/// sequence stays gap-free on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_rooms_on_two_replicas_stay_gap_free() {
    let redis = RedisServer::start();
    let apps = cluster(2, &redis).await;
    let alice = apps[0].register("multi_a").await;
    let bob = apps[1].register("multi_b").await;
    let rooms = ["m0", "m1", "m2", "m3"];
    for r in rooms {
        apps[0].create_room(&alice, r, "public").await;
        apps[1]
            .post(
                &format!("/api/v1/rooms/{r}/join"),
                Some(&bob.access),
                json!({}),
            )
            .await;
    }
    let mut recorders = Vec::new();
    for r in rooms {
        for (app, user) in [(&apps[0], &bob), (&apps[1], &alice)] {
            let mut ws = ws_connect(&app.ws_url(""), r, &user.access, None).await;
            next_json(&mut ws, 10).await.unwrap();
            recorders.push((r, record(ws)));
        }
    }
    let mut senders = Vec::new();
    for r in rooms {
        for (app, user) in [(&apps[0], &alice), (&apps[1], &bob)] {
            let mut ws = ws_connect(&app.ws_url(""), r, &user.access, None).await;
            next_json(&mut ws, 10).await.unwrap();
            senders.push(tokio::spawn(async move {
                for k in 0..40 {
                    ws_send(
                        &mut ws,
                        json!({"type": "message", "content": format!("{r} {k}")}),
                    )
                    .await;
                }
                let mut acks = 0;
                while acks < 40 {
                    let v = next_json(&mut ws, 30).await.expect("ack");
                    acks += i32::from(v["type"] == "ack");
                }
            }));
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while recorders
        .iter()
        .any(|(_, (seen, _))| seen.lock().unwrap().len() < 80)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (room, (seen, _)) in &recorders {
        assert_gap_free(&seen.lock().unwrap(), 80, room);
    }
}
