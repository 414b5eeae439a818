//! Replicas as processes of the built binary: SIGKILL (clients move and miss nothing; presence
//! expires), SIGTERM (1012, nothing acknowledged is lost, exit 0), and a real load balancer.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn sigkilled_replica_clients_resume_elsewhere_and_presence_expires() {
    let redis = RedisServer::start().await;
    let db = cluster_db().await;
    let mut doomed = ServerProc::replica(&db, &redis, &[]).await;
    let survivor = ServerProc::replica(&db, &redis, &[]).await;
    let owner = survivor.register("k_owner").await;
    let victim = survivor.register("k_victim").await;
    survivor.create_room(&owner, "kill", "public").await;
    let mut watcher = ws_connect(&survivor.ws_url(""), "kill", &owner.access, None).await;
    expect_ready(&mut watcher).await;
    let mut ws = ws_connect(&doomed.ws_url(""), "kill", &victim.access, None).await;
    expect_ready(&mut ws).await;
    assert_eq!(
        next_of(&mut watcher, "presence", 5).await.unwrap()["event"],
        "join"
    );
    for i in 0..5 {
        survivor
            .post_message(&owner, "kill", &format!("a{i}"))
            .await;
    }
    let seen = collect_seqs(&mut ws, 5, 10).await;
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    doomed.signal("-KILL");
    assert!(doomed.wait_exit(5).await.is_some(), "SIGKILL ends it");
    // Messages keep flowing while the client is away.
    for i in 0..5 {
        survivor
            .post_message(&owner, "kill", &format!("b{i}"))
            .await;
    }
    let mut ws = ws_connect(&survivor.ws_url(""), "kill", &victim.access, Some(5)).await;
    expect_ready(&mut ws).await;
    assert_eq!(collect_seqs(&mut ws, 5, 10).await, [6, 7, 8, 9, 10]);
    drop(ws);
    // The crashed replica's entry for the victim expires (TTL 30 s): one `leave`.
    let leave = next_of(&mut watcher, "presence", 50)
        .await
        .expect("presence leave after the crash");
    assert_eq!(
        (leave["event"].as_str(), leave["user"]["username"].as_str()),
        (Some("leave"), Some("k_victim"))
    );
    let (status, members) = survivor
        .get("/api/v1/rooms/kill/members", Some(&owner.access))
        .await;
    assert_eq!(status, 200, "{members}");
    let victim_online = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["username"] == "k_victim")
        .unwrap()["online"]
        .clone();
    assert_eq!(victim_online, false);
}

/// Every send that got a 201 or an ack, by seq, whichever way it went.
type Acked = Arc<Mutex<Vec<i64>>>;

/// Frames a pipelined socket may have unanswered.
const WINDOW: usize = 32;

/// Frames sent and answered on a pipelined socket.
#[derive(Default)]
struct Pipeline {
    sent: AtomicUsize,
    answered: AtomicUsize,
    /// Woken by each answer and by the close.
    moved: tokio::sync::Notify,
}

/// Sends into one room through one replica, back to back, until the replica goes: a socket
/// that keeps up to [`WINDOW`] frames unanswered (`client_id` `w…`), and four REST posters
/// (`p…`).
struct Traffic {
    pipeline: Arc<Pipeline>,
    posts_started: Arc<AtomicUsize>,
    acked: Acked,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<(Vec<Value>, Option<u16>)>,
    posters: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    async fn start(server: &ServerProc, user: &User, room: &str) -> Self {
        let acked = Acked::default();
        let pipeline = Arc::new(Pipeline::default());
        let mut ws = ws_connect(&server.ws_url(""), room, &user.access, None).await;
        expect_ready(&mut ws).await;
        let (sink, stream) = ws.split();
        let closed = tokio_util::sync::CancellationToken::new();
        let writer = tokio::spawn(write_pipelined(sink, pipeline.clone(), closed.clone()));
        let reader = tokio::spawn(read_answers(
            stream,
            pipeline.clone(),
            closed,
            acked.clone(),
        ));
        let posts_started = Arc::new(AtomicUsize::new(0));
        let posters = (0..4)
            .map(|p| {
                tokio::spawn(post_until_refused(
                    server.client.clone(),
                    user.access.clone(),
                    format!("/api/v1/rooms/{room}/messages"),
                    p,
                    (posts_started.clone(), acked.clone()),
                ))
            })
            .collect();
        Self {
            pipeline,
            posts_started,
            acked,
            writer,
            reader,
            posters,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Sends of both kinds are held back by `hold`: a commit waits for it, and both the socket
    /// and the posters have sent more than is stored (nothing of the room commits while the
    /// hold lasts, so once true this stays true until it ends). Err: the state so far.
    async fn held_back(&self, hold: &RoomHold) -> Result<(), String> {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let waiting = hold.waiting().await;
        let row = hold
            .db()
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE client_id LIKE 'w%') AS w, \
                 count(*) FILTER (WHERE client_id LIKE 'p%') AS p FROM messages",
            ))
            .await
            .expect("count messages")
            .expect("a row");
        let stored_w: i64 = row.try_get("", "w").expect("w");
        let stored_p: i64 = row.try_get("", "p").expect("p");
        let sent = i64::try_from(self.pipeline.sent.load(Ordering::SeqCst)).unwrap();
        let posted = i64::try_from(self.posts_started.load(Ordering::SeqCst)).unwrap();
        if waiting > 0 && sent > stored_w && posted > stored_p {
            Ok(())
        } else {
            Err(format!(
                "{waiting} waiting; socket {sent} sent, {stored_w} stored; \
                 REST {posted} sent, {stored_p} stored"
            ))
        }
    }

    /// Once the replica has gone: its sending socket was closed with 1012 after clear
    /// answers, every poster stopped at a clear refusal; what was acknowledged.
    async fn finish(self) -> Vec<i64> {
        let (errors, code) = self.reader.await.unwrap();
        assert_eq!(
            code,
            Some(1012),
            "the sending socket is closed with 1012 too"
        );
        for e in &errors {
            assert!(e["code"].is_string(), "a clear error: {e}");
        }
        self.writer.await.unwrap();
        for p in self.posters {
            p.await.unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

/// Message frames (`client_id` `w…`) as fast as the window allows, until the socket closes.
async fn write_pipelined(
    mut sink: futures::stream::SplitSink<Ws, WsMessage>,
    pipeline: Arc<Pipeline>,
    closed: tokio_util::sync::CancellationToken,
) {
    for i in 0.. {
        loop {
            // Created before the check: an answer in between still wakes it.
            let moved = pipeline.moved.notified();
            if closed.is_cancelled() {
                return;
            }
            let sent = pipeline.sent.load(Ordering::SeqCst);
            if sent < pipeline.answered.load(Ordering::SeqCst) + WINDOW {
                break;
            }
            moved.await;
        }
        let frame =
            json!({"type": "message", "content": format!("w{i}"), "client_id": format!("w{i}")});
        if sink
            .send(WsMessage::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        pipeline.sent.fetch_add(1, Ordering::SeqCst);
    }
}

/// The pipelined socket's answers, until its close: the errors and the close code.
async fn read_answers(
    mut stream: futures::stream::SplitStream<Ws>,
    pipeline: Arc<Pipeline>,
    closed: tokio_util::sync::CancellationToken,
    acked: Acked,
) -> (Vec<Value>, Option<u16>) {
    let mut errors = Vec::new();
    let code = loop {
        match stream.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ack" {
                    acked.lock().unwrap().push(v["seq"].as_i64().expect("seq"));
                } else if v["type"] == "error" {
                    errors.push(v);
                } else {
                    continue;
                }
                pipeline.answered.fetch_add(1, Ordering::SeqCst);
                pipeline.moved.notify_waiters();
            }
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    closed.cancel();
    pipeline.moved.notify_waiters();
    (errors, code)
}

/// REST posts back to back (`client_id` `p{p}-{i}`) until one is refused: refused by the
/// shutdown, with a clear error, never a hang or a wrong answer.
async fn post_until_refused(
    client: Client,
    token: String,
    path: String,
    p: usize,
    (started, acked): (Arc<AtomicUsize>, Acked),
) {
    for i in 0.. {
        let id = format!("p{p}-{i}");
        started.fetch_add(1, Ordering::SeqCst);
        let res = client
            .try_send(
                reqwest::Method::POST,
                &path,
                Some(&token),
                Some(json!({"content": id, "client_id": id})),
            )
            .await;
        match res {
            Ok((201, body)) => acked.lock().unwrap().push(body["seq"].as_i64().unwrap()),
            Ok((status, body)) => {
                assert!(
                    status == 503 && body["error"]["code"].is_string(),
                    "a send cut off by SIGTERM: {status} {body}"
                );
                return;
            }
            Err(e) => {
                assert!(!e.is_timeout(), "a send cut off by SIGTERM hung: {e}");
                return;
            }
        }
    }
}

/// The largest `seq` stored so far (0: none).
async fn last_stored_seq(db: &sea_orm::DatabaseConnection) -> i64 {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    db.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT coalesce(max(seq), 0) AS last FROM messages",
    ))
    .await
    .expect("max seq")
    .expect("a row")
    .try_get("", "last")
    .expect("last")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn sigterm_closes_sockets_with_1012_and_loses_nothing() {
    let redis = RedisServer::start().await;
    let db = cluster_db().await;
    // `chat_server::app` logs the start of the shutdown.
    let env = [
        ("RUST_LOG", "warn,chat_server=info,chat_server::app=info"),
        ("SHUTDOWN_GRACE_SECS", "30"),
    ];
    let mut leaving = ServerProc::replica(&db, &redis, &env).await;
    let staying = ServerProc::replica(&db, &redis, &[]).await;
    let user = staying.register("t_user").await;
    staying.create_room(&user, "term", "public").await;
    let mut on_leaving = ws_connect(&leaving.ws_url(""), "term", &user.access, None).await;
    expect_ready(&mut on_leaving).await;
    let mut on_staying = ws_connect(&staying.ws_url(""), "term", &user.access, None).await;
    expect_ready(&mut on_staying).await;
    let (seen, _recorder) = record(on_staying);

    let traffic = Traffic::start(&leaving, &user, "term").await;
    wait_until("sends committed before the hold", async || {
        traffic.pipeline.answered.load(Ordering::SeqCst) >= 20 && traffic.acked() >= 60
    })
    .await;
    // Sends in flight when the signal arrives, arranged rather than hoped for: the room is
    // held, so a commit waits and both kinds of sends have more sent than stored.
    let hold = RoomHold::take(&db, "term").await;
    wait_until("sends of both kinds held back", async || {
        traffic.held_back(&hold).await
    })
    .await;
    let last_before_signal = last_stored_seq(hold.db()).await;
    leaving.signal("-TERM");
    wait_until("the leaving replica to start its shutdown", async || {
        leaving.log().contains("shutting down")
    })
    .await;
    hold.release().await;

    assert_eq!(
        close_code(&mut on_leaving, WAIT_BOUND.as_secs()).await,
        Some(1012)
    );
    let acked = traffic.finish().await;
    assert!(
        acked.iter().any(|s| *s > last_before_signal),
        "sends held back at the signal commit and are answered before the replica goes \
         (acked {acked:?}, stored up to {last_before_signal} at the signal)"
    );
    assert_eq!(
        leaving
            .wait_exit(WAIT_BOUND.as_secs())
            .await
            .and_then(|s| s.code()),
        Some(0),
        "exits 0 after draining"
    );
    nothing_acknowledged_is_lost(&staying, &user, &acked, &seen).await;
}

/// Every acknowledged send is stored, and every stored message reaches the other replica's
/// socket once, in order: a marker sent last proves that nothing before it is still on its
/// way.
async fn nothing_acknowledged_is_lost(
    staying: &ServerProc,
    user: &User,
    acked: &[i64],
    seen: &Seen,
) {
    let stored = staying.history_seqs(&user.access, "term").await;
    for s in acked {
        assert!(stored.contains(s), "acknowledged seq {s} is stored");
    }
    let marker = staying.post_message(user, "term", "marker").await["seq"]
        .as_i64()
        .unwrap();
    wait_until("the marker on the staying replica's socket", async || {
        seen.lock().unwrap().last() == Some(&marker)
    })
    .await;
    let mut expected = stored;
    expected.push(marker);
    assert_eq!(
        *seen.lock().unwrap(),
        expected,
        "the other replica's socket has every stored message"
    );
}

/// nginx (Debian `nginx-light`) round-robin in front of two replicas; register, chat, drop the
/// connection, reconnect through the balancer and resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn through_nginx_round_robin() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let lb = Nginx::start(&[apps[0].addr, apps[1].addr]).await;
    let ws_lb = lb.ws_url("");

    let alice = lb.register("lb_alice").await;
    let bob = lb.register("lb_bob").await;
    let (status, _) = lb
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/lb-room",
            Some(&alice.access),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let mut a = ws_connect(&ws_lb, "lb-room", &alice.access, None).await;
    expect_ready(&mut a).await;
    let mut b = ws_connect(&ws_lb, "lb-room", &bob.access, None).await;
    expect_ready(&mut b).await;
    ws_send(
        &mut a,
        json!({"type": "message", "content": "through the balancer"}),
    )
    .await;
    let m = next_of(&mut b, "message", 10).await.unwrap();
    assert_eq!(m["content"], "through the balancer");
    let last = m["seq"].as_i64().unwrap();
    drop(b);
    for i in 0..4 {
        lb.post_message(&alice, "lb-room", &format!("while away {i}"))
            .await;
    }
    let mut b = ws_connect(&ws_lb, "lb-room", &bob.access, Some(last)).await;
    expect_ready(&mut b).await;
    assert_eq!(collect_seqs(&mut b, 4, 10).await, [2, 3, 4, 5]);
    ws_send(&mut a, json!({"type": "message", "content": "live again"})).await;
    assert_eq!(next_of(&mut b, "message", 10).await.unwrap()["seq"], 6);
}

/// Shutdown answers what it has read: sends committed after SIGTERM still get their acks
/// before the 1012 close. The commit is held back by a row lock taken in the test, so the
/// sends are certainly in flight when the signal arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: the commit is held by a PostgreSQL row lock"
)]
async fn sigterm_sends_the_acks_already_earned_before_1012() {
    use sea_orm::ConnectionTrait;
    let db = fresh_database(Backend::Postgres).await;
    let mut server = ServerProc::start(&db, &[("RUST_LOG", "info")]).await;
    let user = server.register("earned").await;
    server.create_room(&user, "earned", "public").await;
    let mut ws = ws_connect(&server.ws_url(""), "earned", &user.access, None).await;
    expect_ready(&mut ws).await;

    let hold = RoomHold::take(&db, "earned").await;
    for i in 0..5 {
        ws_send(
            &mut ws,
            json!({"type": "message", "content": format!("e{i}"), "client_id": format!("e{i}")}),
        )
        .await;
    }
    // The group commit is waiting for the lock: the sends are in flight.
    hold.wait_for_a_commit().await;
    server.signal("-TERM");
    wait_until("the server to start its shutdown", async || {
        server.log().contains("shutting down")
    })
    .await;
    let watcher = hold.db().clone();
    hold.release().await;

    // What the server had read is answered (an ack if stored, else an error); what it had
    // not read yet is neither answered nor stored: the client resends it after reconnecting.
    let (mut acks, mut errors) = (Vec::new(), Vec::new());
    let code = loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "ack" {
                    acks.push(v["client_id"].as_str().unwrap_or_default().to_owned());
                } else if v["type"] == "error" {
                    errors.push(v);
                }
            }
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let status = server.wait_exit(10).await;
                panic!("socket error {e}; exit {status:?}; log {}", server.log())
            }
            None => break None,
        }
    };
    assert_eq!(
        code,
        Some(1012),
        "acks {acks:?}, errors {errors:?}, log {}",
        server.log()
    );
    assert!(
        !acks.is_empty(),
        "the commit under way when the signal came is acked"
    );
    assert_eq!(server.wait_exit(15).await.and_then(|s| s.code()), Some(0));
    let stored: Vec<String> = watcher
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT client_id FROM messages ORDER BY seq",
        ))
        .await
        .expect("messages")
        .iter()
        .map(|r| r.try_get::<String>("", "client_id").expect("client_id"))
        .collect();
    assert_eq!(stored, acks, "acked exactly what was stored");
}
