//! PostgreSQL restarted under traffic, on a private PostgreSQL (initdb + pg_ctl on a free port):
//! while it is down every send is refused with the retryable 503 (docs/protocol.md#errors) and nothing is
//! acknowledged; once it is back the same replica (never restarted) accepts sends again, the
//! retried `client_id`s are stored once, and every acknowledged message is in history and on
//! the socket, in order, with no gap and no duplicate.

use serde_json::{Value, json};

use crate::support::*;

/// A send over REST: the status and body, or `None` on a transport error.
async fn send(server: &ServerProc, user: &User, client_id: &str) -> Option<(u16, Value)> {
    server
        .try_send(
            reqwest::Method::POST,
            "/api/v1/rooms/pgr/messages",
            Some(&user.access),
            Some(json!({"content": format!("text {client_id}"), "client_id": client_id})),
        )
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(private_pg),
    ignore = "skipped: no initdb under /usr/lib/postgresql/*/bin to start a private PostgreSQL"
)]
async fn postgres_restart_under_traffic_loses_nothing_acknowledged() {
    let mut pg = PrivatePostgres::start().await;
    let server = ServerProc::start(&pg.url("chat"), &[]).await;
    let user = server.register("pg_restart").await;
    server.create_room(&user, "pgr", "public").await;
    let mut ws = ws_connect(&server.ws_url(""), "pgr", &user.access, None).await;
    expect_ready(&mut ws).await;
    let (seen, _reader) = record(ws);
    let mut sender = ws_connect(&server.ws_url(""), "pgr", &user.access, None).await;
    expect_ready(&mut sender).await;

    // client_id → seq of every acknowledged send.
    let mut acked: Vec<(String, i64)> = Vec::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        let (status, body) = send(&server, &user, &id).await.expect("server answers");
        assert_eq!(status, 201, "{body}");
        acked.push((id, body["seq"].as_i64().expect("seq")));
    }

    pg.stop("fast");
    // While it is down: every answer is the retryable 503 `service_unavailable`; nothing
    // is acknowledged.
    let mut refused = Vec::new();
    for i in 0..5 {
        let id = format!("during-{i}");
        let (status, body) = send(&server, &user, &id).await.expect("server answers");
        assert_eq!(status, 503, "send while PostgreSQL is down: {body}");
        assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
        refused.push(id);
    }
    // The same over the socket: an `error` frame, and the socket stays open.
    let ws_frame = json!({"type": "message", "content": "over ws", "client_id": "ws-during"});
    ws_send(&mut sender, ws_frame.clone()).await;
    let error = next_of(&mut sender, "error", 30)
        .await
        .expect("an error frame while PostgreSQL is down");
    assert_eq!(error["code"], "service_unavailable", "{error}");
    server.wait_readyz(503).await;

    pg.start_again();
    // The same process recovers by itself: ready again, and sends are acknowledged.
    server.wait_readyz(200).await;
    // Retry the refused sends with the same client_ids (as clients do), twice each: the
    // second attempt must get the original message back (200), not a new one.
    for id in &refused {
        let (status, body) = send(&server, &user, id).await.expect("server answers");
        assert_eq!(status, 201, "retry of {id} after the restart: {body}");
        let seq = body["seq"].as_i64().expect("seq");
        let (again, body) = send(&server, &user, id).await.expect("server answers");
        assert_eq!(again, 200, "second retry of {id} is deduplicated: {body}");
        assert_eq!(body["seq"].as_i64(), Some(seq), "{body}");
        acked.push((id.clone(), seq));
    }

    // The socket send, retried on the same socket with its client_id.
    ws_send(&mut sender, ws_frame).await;
    let ack = next_of(&mut sender, "ack", 15)
        .await
        .expect("the retried socket send is acknowledged");
    assert_eq!(ack["client_id"], "ws-during", "{ack}");
    acked.push(("ws-during".to_owned(), ack["seq"].as_i64().expect("seq")));

    let last = acked.iter().map(|(_, s)| *s).max().expect("acked");
    assert_eq!(last, 11, "eleven distinct messages: {acked:?}");
    wait_for_counts(&[&seen], 11).await;
    assert_gap_free(&seen.lock().unwrap(), last, "the socket");
    let (status, history) = server
        .get("/api/v1/rooms/pgr/messages?limit=200", Some(&user.access))
        .await;
    assert_eq!(status, 200, "{history}");
    let items = history["items"].as_array().expect("items");
    let stored: Vec<(String, i64)> = items
        .iter()
        .map(|m| {
            (
                m["client_id"].as_str().unwrap_or_default().to_owned(),
                m["seq"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        stored, acked,
        "history holds every acknowledged message once, in order"
    );
}
