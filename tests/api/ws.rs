//! docs/protocol.md#websocket and §10 over real WebSockets: ordering under concurrency, resume, bad frames, close
//! codes, idempotency, slow consumers, presence, typing, the multiplexed endpoint.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{dual_test, support::*};

async fn room_with_members(app: &TestApp, n: usize, room: &str) -> Vec<User> {
    let mut users = Vec::new();
    for i in 0..n {
        users.push(app.register(&format!("{room}_u{i}")).await);
    }
    app.create_room(&users[0], room, "public").await;
    for u in &users[1..] {
        app.join_room(u, room).await;
    }
    users
}

dual_test!(
    concurrent_senders_every_socket_sees_every_seq_in_order,
    |b| async move {
        let app = spawn_app(b).await;
        let users = room_with_members(&app, 8, "race").await;
        let ws_base = app.ws_url("");
        let mut sockets = Vec::new();
        for u in &users {
            let mut ws = ws_connect(&ws_base, "race", &u.access, None).await;
            expect_ready(&mut ws).await;
            sockets.push(ws);
        }
        // 4 senders × 100 messages at once, each on its own socket.
        let mut senders = Vec::new();
        for (k, u) in users.iter().take(4).enumerate() {
            let mut ws = ws_connect(&ws_base, "race", &u.access, None).await;
            expect_ready(&mut ws).await;
            senders.push(tokio::spawn(async move {
            for i in 0..100 {
                ws_send(&mut ws, json!({"type": "message", "content": format!("s{k}-{i}"), "client_id": format!("s{k}-{i}")})).await;
            }
            let mut acks = 0;
            while acks < 100 {
                let v = next_json(&mut ws, 30).await.expect("ack");
                if v["type"] == "ack" {
                    acks += 1;
                }
            }
            ws
        }));
        }
        let mut readers = Vec::new();
        for mut ws in sockets {
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 400 {
                    match next_json(&mut ws, 30).await {
                        Some(v) if v["type"] == "message" => got.push((
                            v["seq"].as_i64().unwrap(),
                            v["content"].as_str().unwrap().to_owned(),
                        )),
                        Some(_) => {}
                        None => break,
                    }
                }
                got
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        for r in readers {
            let got = r.await.unwrap();
            let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=400).collect::<Vec<_>>(),
                "every seq exactly once, in order"
            );
            let mut per_sender: HashMap<String, Vec<u32>> = HashMap::new();
            for (_, content) in &got {
                let (s, i) = content.split_once('-').unwrap();
                per_sender
                    .entry(s.to_owned())
                    .or_default()
                    .push(i.parse().unwrap());
            }
            assert_eq!(per_sender.len(), 4);
            for (_, order) in per_sender {
                assert_eq!(
                    order,
                    (0..100).collect::<Vec<_>>(),
                    "each sender's messages in the order sent"
                );
            }
        }
    }
);

dual_test!(
    resume_with_since_seq_has_no_gap_and_no_duplicate,
    |b| async move {
        let app = spawn_app(b).await;
        let users = room_with_members(&app, 2, "resume").await;
        let ws_base = app.ws_url("");
        for i in 0..3 {
            app.post_message(&users[0], "resume", &format!("before {i}"))
                .await;
        }
        let mut ws = ws_connect(&ws_base, "resume", &users[1].access, None).await;
        let r = expect_ready(&mut ws).await;
        assert_eq!(r["last_seq"], 3);
        assert_eq!(r["room"]["name"], "resume");
        assert_eq!(r["user"]["username"], "resume_u1");
        let last = r["last_seq"].as_i64().unwrap();
        drop(ws);
        for i in 0..5 {
            app.post_message(&users[0], "resume", &format!("missed {i}"))
                .await;
        }
        let mut ws = ws_connect(&ws_base, "resume", &users[1].access, Some(last)).await;
        expect_ready(&mut ws).await;
        let replay = collect_seqs(&mut ws, 5, 10).await;
        assert_eq!(replay, [4, 5, 6, 7, 8]);
        app.post_message(&users[0], "resume", "live").await;
        let live = next_of(&mut ws, "message", 10).await.expect("live message");
        assert_eq!(live["seq"], 9);
        assert_eq!(live["content"], "live");
    }
);

dual_test!(
    bad_frames_get_errors_and_the_socket_stays_usable,
    |b| async move {
        let app = spawn_app(b).await;
        let users = room_with_members(&app, 1, "badframes").await;
        let mut ws = ws_connect(&app.ws_url(""), "badframes", &users[0].access, None).await;
        expect_ready(&mut ws).await;
        let cases: Vec<(WsMessage, &str)> = vec![
            (WsMessage::Text("{oops".into()), "invalid_json"),
            (
                WsMessage::Text(r#"{"type":"dance"}"#.into()),
                "unknown_type",
            ),
            (
                WsMessage::Text(r#"{"type":"message","content":123}"#.into()),
                "invalid_frame",
            ),
            (
                WsMessage::Text(r#"{"type":"message","content":""}"#.into()),
                "validation_failed",
            ),
            (
                WsMessage::Text(
                    json!({"type":"message","content":"x".repeat(4001)})
                        .to_string()
                        .into(),
                ),
                "validation_failed",
            ),
            (WsMessage::Text("[]".into()), "invalid_frame"),
            (
                WsMessage::Binary(vec![0, 159, 146, 150].into()),
                "unsupported_frame",
            ),
        ];
        for (frame, code) in cases {
            futures::SinkExt::send(&mut ws, frame).await.unwrap();
            let v = next_of(&mut ws, "error", 5).await.expect("error frame");
            assert_eq!(v["code"], code, "{v}");
            ws_send(&mut ws, json!({"type": "ping"})).await;
            assert_eq!(
                next_of(&mut ws, "pong", 5).await.expect("pong")["type"],
                "pong"
            );
        }
        // Compatibility frames.
        ws_send(&mut ws, json!({"message": "compat one"})).await;
        ws_send(&mut ws, json!({"text": "compat two"})).await;
        let a = next_of(&mut ws, "message", 5).await.unwrap();
        let b2 = next_of(&mut ws, "message", 5).await.unwrap();
        assert_eq!(
            (a["content"].as_str(), b2["content"].as_str()),
            (Some("compat one"), Some("compat two"))
        );
        let (_, page) = app
            .get("/api/v1/rooms/badframes/messages", Some(&users[0].access))
            .await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            2,
            "nothing else was stored"
        );
        // A frame over 16 KiB closes with 1009.
        futures::SinkExt::send(&mut ws, WsMessage::Text("x".repeat(17 * 1024).into()))
            .await
            .unwrap();
        assert_eq!(close_code(&mut ws, 5).await, Some(1009));
    }
);

dual_test!(handshake_refusals_are_plain_http, |b| async move {
    let app = spawn_app(b).await;
    let users = room_with_members(&app, 2, "hs").await;
    app.create_room(&users[0], "hs-private", "private").await;
    let base = app.ws_url("");
    assert_eq!(
        ws_refused(&format!("{base}/ws/rooms/hs?token=garbage")).await,
        401
    );
    assert_eq!(ws_refused(&format!("{base}/ws/rooms/hs")).await, 401);
    assert_eq!(
        ws_refused(&format!("{base}/ws/rooms/nope?token={}", users[1].access)).await,
        404
    );
    assert_eq!(
        ws_refused(&format!(
            "{base}/ws/rooms/hs-private?token={}",
            users[1].access
        ))
        .await,
        404,
        "a private room is no room to a non-member"
    );
    // A plain GET (no upgrade) with a good token: 400 in the error format, no session opened
    // (that it joins no room is `a_refused_upgrade_joins_no_room`).
    let outsider = app.register("hs_outsider").await;
    for token in [&users[1].access, &outsider.access] {
        let (status, body) = app.get("/ws/rooms/hs", Some(token)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        let (status, body) = app.get("/ws", Some(token)).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_request"))
        );
    }
    let (status, members) = app
        .get("/api/v1/rooms/hs/members", Some(&users[0].access))
        .await;
    assert_eq!(status, 200, "{members}");
    let members = members["items"].as_array().unwrap();
    assert!(
        members.iter().all(|m| m["online"] == false),
        "no session was opened: {members:?}"
    );
    assert_eq!(
        app.state.subscribed_room_count(),
        0,
        "no socket subscribed to a room"
    );
    // Connecting to a public room joins it.
    let mut ws = ws_connect(&base, "hs", &outsider.access, None).await;
    expect_ready(&mut ws).await;
    let (_, members) = app
        .get("/api/v1/rooms/hs/members", Some(&outsider.access))
        .await;
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["user"]["username"] == "hs_outsider")
    );
});

/// A request refused before the upgrade (no upgrade, or a bad `since_seq`) leaves no trace:
/// the caller does not become a member of the public room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_joins_no_room() {
    let app = spawn_app(Backend::Sqlite).await;
    let owner = app.register("refused_owner").await;
    let outsider = app.register("refused_outsider").await;
    app.create_room(&owner, "refused", "public").await;
    let (status, body) = app.get("/ws/rooms/refused", Some(&outsider.access)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        ws_refused(&app.ws_url(&format!(
            "/ws/rooms/refused?token={}&since_seq=-1",
            outsider.access
        )))
        .await,
        400
    );
    let (status, members) = app
        .get("/api/v1/rooms/refused/members", Some(&owner.access))
        .await;
    assert_eq!(status, 200, "{members}");
    let names: Vec<&str> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["username"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["refused_owner"],
        "the refused outsider joined nothing"
    );
}

dual_test!(
    rest_posts_reach_sockets_once_per_client_id,
    |b| async move {
        let app = spawn_app(b).await;
        let users = room_with_members(&app, 2, "restws").await;
        let mut ws = ws_connect(&app.ws_url(""), "restws", &users[1].access, None).await;
        expect_ready(&mut ws).await;
        let mut statuses = Vec::new();
        for _ in 0..2 {
            let (status, body) = app
                .post(
                    "/api/v1/rooms/restws/messages",
                    Some(&users[0].access),
                    json!({"content": "hello", "client_id": "dup"}),
                )
                .await;
            assert_eq!(body["seq"], 1, "{body}");
            statuses.push(status);
        }
        assert_eq!(statuses, [201, 200], "created, then the same message again");
        app.post_message(&users[0], "restws", "second").await;
        let first = next_of(&mut ws, "message", 5).await.unwrap();
        let second = next_of(&mut ws, "message", 5).await.unwrap();
        assert_eq!(
            (first["seq"].as_i64(), first["content"].as_str()),
            (Some(1), Some("hello"))
        );
        assert_eq!(
            (second["seq"].as_i64(), second["content"].as_str()),
            (Some(2), Some("second"))
        );
        // Same client_id over the socket: one ack per send, one stored message.
        ws_send(
            &mut ws,
            json!({"type": "message", "content": "via ws", "client_id": "w1"}),
        )
        .await;
        ws_send(
            &mut ws,
            json!({"type": "message", "content": "via ws", "client_id": "w1"}),
        )
        .await;
        let mut acks = Vec::new();
        let mut messages = 0;
        while acks.len() < 2 {
            let v = next_json(&mut ws, 5).await.expect("frame");
            if v["type"] == "ack" {
                acks.push(v);
            } else if v["type"] == "message" {
                messages += 1;
            }
        }
        assert_eq!(acks[0]["seq"], acks[1]["seq"]);
        assert_eq!(acks[0]["client_id"], "w1");
        // Delivered once: nothing but the one message comes before a later marker.
        app.post_message(&users[0], "restws", "marker").await;
        let before = frames_before(&mut ws, "marker").await;
        messages += before.iter().filter(|v| v["type"] == "message").count();
        assert_eq!(messages, 1, "delivered once: {before:?}");
    }
);

dual_test!(room_deleted_kicked_and_logout_close_codes, |b| async move {
    let app = spawn_app(b).await;
    let users = room_with_members(&app, 3, "closes").await;
    let base = app.ws_url("");
    let mut kicked = ws_connect(&base, "closes", &users[1].access, None).await;
    expect_ready(&mut kicked).await;
    let mut logged_out = ws_connect(&base, "closes", &users[2].access, None).await;
    expect_ready(&mut logged_out).await;
    let mut owner = ws_connect(&base, "closes", &users[0].access, None).await;
    expect_ready(&mut owner).await;

    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/closes/members/{}", users[1].id),
            Some(&users[0].access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut kicked, 5).await, Some(4003));

    let (status, _) = app
        .post("/api/v1/auth/logout", Some(&users[2].access), json!({}))
        .await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut logged_out, 5).await, Some(4001));
    assert_eq!(
        ws_refused(&format!("{base}/ws/rooms/closes?token={}", users[2].access)).await,
        401
    );

    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            "/api/v1/rooms/closes",
            Some(&users[0].access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let deleted = next_of(&mut owner, "room_deleted", 5)
        .await
        .expect("room_deleted frame");
    assert_eq!(deleted["room"], "closes");
    assert_eq!(close_code(&mut owner, 5).await, Some(4404));
    // Sockets the hub closed itself still release their room: nothing stays subscribed.
    wait_until("room channels released", async || {
        match app.state.subscribed_room_count() {
            0 => Ok(()),
            n => Err(n),
        }
    })
    .await;
});

dual_test!(presence_typing_edits_and_updates, |b| async move {
    let app = spawn_app(b).await;
    let users = room_with_members(&app, 2, "live").await;
    let base = app.ws_url("");
    let mut a = ws_connect(&base, "live", &users[0].access, None).await;
    expect_ready(&mut a).await;
    let mut b2 = ws_connect(&base, "live", &users[1].access, None).await;
    let r = expect_ready(&mut b2).await;
    let online: Vec<&str> = r["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(
        online.contains(&"live_u0") && online.contains(&"live_u1"),
        "{r}"
    );
    let join = next_of(&mut a, "presence", 5).await.expect("join");
    assert_eq!(
        (join["event"].as_str(), join["user"]["username"].as_str()),
        (Some("join"), Some("live_u1"))
    );
    // A second socket of the same user is not a new join.
    let mut b_again = ws_connect(&base, "live", &users[1].access, None).await;
    expect_ready(&mut b_again).await;
    ws_send(&mut b2, json!({"type": "typing"})).await;
    let typing = next_of(&mut a, "typing", 5).await.expect("typing");
    assert_eq!(typing["user"]["username"], "live_u1");
    let (status, members) = app
        .get("/api/v1/rooms/live/members", Some(&users[0].access))
        .await;
    assert_eq!(status, 200, "{members}");
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["online"] == true)
    );
    let msg = app.post_message(&users[0], "live", "v1").await;
    let path = format!("/api/v1/rooms/live/messages/{}", msg["id"]);
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&users[0].access),
            Some(json!({"content": "v2"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let edited = next_of(&mut b2, "message_edited", 5).await.expect("edited");
    assert_eq!(edited["content"], "v2");
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&users[0].access), None)
        .await;
    assert_eq!(status, 204);
    let deleted = next_of(&mut b2, "message_deleted", 5)
        .await
        .expect("deleted");
    assert_eq!(deleted["id"], msg["id"]);
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/rooms/live",
            Some(&users[0].access),
            Some(json!({"topic": "new topic"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let updated = next_of(&mut b2, "room_updated", 5)
        .await
        .expect("room_updated");
    assert_eq!(updated["room"]["topic"], "new topic");
    close_ws(b2).await;
    app.post_message(&users[0], "live", "marker").await;
    let before = frames_before(&mut a, "marker").await;
    assert!(
        before.iter().all(|f| f["type"] != "presence"),
        "still online through the other socket: {before:?}"
    );
    drop(b_again);
    let leave = next_of(&mut a, "presence", 5).await.expect("leave");
    assert_eq!(
        (leave["event"].as_str(), leave["user"]["username"].as_str()),
        (Some("leave"), Some("live_u1"))
    );
});

dual_test!(multiplexed_socket_carries_many_rooms, |b| async move {
    let app = spawn_app(b).await;
    let users = room_with_members(&app, 2, "mux-a").await;
    app.create_room(&users[0], "mux-b", "public").await;
    app.post_message(&users[0], "mux-a", "old").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{}/ws?token={}",
        app.ws_url(""),
        users[1].access
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws, 5).await.unwrap()["type"], "ready");
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "room": "mux-a", "since_seq": 0}),
    )
    .await;
    let sub = next_json(&mut ws, 5).await.unwrap();
    assert_eq!(
        (sub["type"].as_str(), sub["room"].as_str()),
        (Some("subscribed"), Some("mux-a"))
    );
    let replay = next_of(&mut ws, "message", 5).await.unwrap();
    assert_eq!(
        (replay["room"].as_str(), replay["content"].as_str()),
        (Some("mux-a"), Some("old"))
    );
    ws_send(&mut ws, json!({"type": "subscribe", "room": "mux-b"})).await;
    assert_eq!(
        next_of(&mut ws, "subscribed", 5).await.unwrap()["room"],
        "mux-b"
    );
    ws_send(&mut ws, json!({"type": "subscribe", "room": "nope"})).await;
    let err = next_of(&mut ws, "error", 5).await.unwrap();
    assert_eq!(
        (err["code"].as_str(), err["room"].as_str()),
        (Some("not_found"), Some("nope"))
    );
    app.post_message(&users[0], "mux-b", "in b").await;
    let m = next_of(&mut ws, "message", 5).await.unwrap();
    assert_eq!(
        (m["room"].as_str(), m["content"].as_str()),
        (Some("mux-b"), Some("in b"))
    );
    ws_send(
        &mut ws,
        json!({"type": "message", "room": "mux-a", "content": "from mux"}),
    )
    .await;
    let ack = next_of(&mut ws, "ack", 5).await.unwrap();
    assert_eq!(
        (ack["room"].as_str(), ack["seq"].as_i64()),
        (Some("mux-a"), Some(2))
    );
    ws_send(&mut ws, json!({"type": "unsubscribe", "room": "mux-b"})).await;
    assert_eq!(
        next_of(&mut ws, "unsubscribed", 5).await.unwrap()["room"],
        "mux-b"
    );
    app.post_message(&users[0], "mux-b", "unseen").await;
    app.post_message(&users[0], "mux-a", "seen").await;
    // The own message may arrive before or after its ack; "unseen" must never arrive.
    loop {
        let m = next_of(&mut ws, "message", 5).await.expect("message");
        if m["content"] == "from mux" {
            continue;
        }
        assert_eq!(
            (m["room"].as_str(), m["content"].as_str()),
            (Some("mux-a"), Some("seen"))
        );
        break;
    }
});

dual_test!(auth_frame_replaces_the_token, |b| async move {
    let app = spawn_app(b).await;
    let users = room_with_members(&app, 1, "authf").await;
    let mut ws = ws_connect(&app.ws_url(""), "authf", &users[0].access, None).await;
    expect_ready(&mut ws).await;
    let (status, fresh) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": users[0].refresh}),
        )
        .await;
    assert_eq!(status, 200, "{fresh}");
    ws_send(&mut ws, json!({"type": "auth", "token": fresh["access"]})).await;
    assert_eq!(next_json(&mut ws, 5).await.unwrap()["type"], "auth_ok");
    ws_send(&mut ws, json!({"type": "auth", "token": "forged"})).await;
    assert_eq!(
        next_of(&mut ws, "error", 5).await.unwrap()["code"],
        "invalid_token"
    );
    ws_send(&mut ws, json!({"type": "ping"})).await;
    assert!(next_of(&mut ws, "pong", 5).await.is_some());
});

/// The JWT secret of the apps of the expiry tests, to re-sign their tokens with another `exp`.
const EXPIRY_SECRET: &str = "expiry-secret-expiry-secret-0123";

/// A socket on `room` whose token runs out while it is open: `user`'s token re-signed to
/// expire a second or two from now. If the upgrade came too late for it (a loaded machine:
/// the token had expired when the server checked it), again with twice the margin, so the
/// test does not depend on how fast the upgrade is.
async fn socket_expiring_soon(app: &TestApp, user: &User, room: &str) -> Ws {
    let mut margin = 2;
    loop {
        let exp = unix_now() + margin;
        let token = expiring_at(&user.access, EXPIRY_SECRET, exp);
        let url = format!("{}/ws/rooms/{room}?token={token}", app.ws_url(""));
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => return ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(res))
                if res.status() == 401 && unix_now() > exp && margin < 64 =>
            {
                margin *= 2;
            }
            Err(e) => panic!("upgrade with a token valid until {exp}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_closes_with_4001() {
    let db = fresh_database(Backend::Sqlite).await;
    let mut config = chat_server::Config::for_tests(&db);
    config.jwt_secret = Some(EXPIRY_SECRET.to_owned().into());
    let app = spawn_with(config).await;
    let users = room_with_members(&app, 1, "expiry").await;
    let mut ws = socket_expiring_soon(&app, &users[0], "expiry").await;
    expect_ready(&mut ws).await;
    // The close is awaited, however long the machine takes to get there.
    assert_eq!(close_code(&mut ws, WAIT_BOUND.as_secs()).await, Some(4001));
    assert_eq!(
        ws_refused(&format!(
            "{}/ws/rooms/expiry?token={}",
            app.ws_url(""),
            expiring_at(&users[0].access, EXPIRY_SECRET, unix_now() - 1)
        ))
        .await,
        401,
        "an expired token opens no socket"
    );
    // REST agrees: a second past `exp` the token is refused, with no grace period; the same
    // token with `exp` ahead is accepted (so nothing else about it is wrong).
    let me = async |exp: i64| {
        let token = expiring_at(&users[0].access, EXPIRY_SECRET, exp);
        app.get("/api/v1/users/me", Some(&token)).await
    };
    let (status, body) = me(unix_now() + 600).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = me(unix_now() - 1).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_flood_gets_errors_then_1008() {
    let db = fresh_database(Backend::Sqlite).await;
    let mut config = chat_server::Config::for_tests(&db);
    config.message_rate_per_sec = 1;
    config.message_rate_burst = 2;
    let app = spawn_with(config).await;
    let users = room_with_members(&app, 1, "flood").await;
    let mut ws = ws_connect(&app.ws_url(""), "flood", &users[0].access, None).await;
    expect_ready(&mut ws).await;
    for i in 0..40 {
        ws_send(
            &mut ws,
            json!({"type": "message", "content": format!("spam {i}")}),
        )
        .await;
    }
    let mut rate_limited = 0;
    let code = loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" && v["code"] == "rate_limited" {
                    rate_limited += 1;
                }
            }
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => break None,
        }
    };
    assert!(rate_limited > 0);
    assert_eq!(code, Some(1008));
}

dual_test!(
    slow_consumer_is_closed_with_4429_others_unaffected,
    |b| async move {
        let app = spawn_app(b).await;
        let users = room_with_members(&app, 3, "slow").await;
        let base = app.ws_url("");
        let mut slow = ws_connect(&base, "slow", &users[1].access, None).await;
        expect_ready(&mut slow).await;
        let mut fast = ws_connect(&base, "slow", &users[2].access, None).await;
        expect_ready(&mut fast).await;
        const TOTAL: i64 = 10_000;
        let reader =
            tokio::spawn(async move { collect_seqs(&mut fast, TOTAL as usize, 180).await });
        // Four sender sockets push 10 000 messages; the slow socket is never read meanwhile.
        let mut senders = Vec::new();
        for k in 0..4 {
            let mut ws = ws_connect(&base, "slow", &users[0].access, None).await;
            expect_ready(&mut ws).await;
            senders.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
            for i in 0..TOTAL / 4 {
                let frame = json!({"type": "message", "content": format!("{k}:{i} {}", "p".repeat(100))});
                futures::SinkExt::send(&mut sink, WsMessage::Text(frame.to_string().into())).await.unwrap();
            }
            (sink, drain)
        }));
        }
        let mut keep = Vec::new();
        for s in senders {
            keep.push(s.await.unwrap());
        }
        let seqs = reader.await.unwrap();
        assert_eq!(
            seqs,
            (1..=TOTAL).collect::<Vec<_>>(),
            "the reading socket got everything in order"
        );
        assert_eq!(close_code(&mut slow, 30).await, Some(4429));
        drop(keep);
    }
);

dual_test!(pipelined_frames_are_answered_in_order, |b| async move {
    // A socket does not wait for one message's commit before reading its next frame, but
    // its answers still come back in the order of its frames: acks (with increasing seq),
    // then the rate-limit errors, with an invalid frame's error in its place.
    let db = fresh_database(b).await;
    let mut config = chat_server::Config::for_tests(&db);
    config.message_rate_per_sec = 1;
    config.message_rate_burst = 6;
    let app = spawn_with(config).await;
    let users = room_with_members(&app, 1, "pipeline").await;
    let mut ws = ws_connect(&app.ws_url(""), "pipeline", &users[0].access, None).await;
    expect_ready(&mut ws).await;
    for i in 0..5 {
        ws_send(
            &mut ws,
            json!({"type": "message", "content": format!("m{i}"), "client_id": format!("c{i}")}),
        )
        .await;
    }
    ws_send(&mut ws, json!({"type": "nonsense"})).await;
    for i in 5..9 {
        ws_send(
            &mut ws,
            json!({"type": "message", "content": format!("m{i}"), "client_id": format!("c{i}")}),
        )
        .await;
    }
    let mut answers = Vec::new();
    while answers.len() < 10 {
        let v = next_json(&mut ws, 10).await.expect("an answer per frame");
        if v["type"] == "ack" || v["type"] == "error" {
            answers.push(v);
        }
    }
    let kinds: Vec<String> = answers
        .iter()
        .map(|v| match v["type"].as_str() {
            Some("ack") => format!("ack {} {}", v["client_id"].as_str().unwrap(), v["seq"]),
            _ => format!("error {}", v["code"].as_str().unwrap()),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ack c0 1",
            "ack c1 2",
            "ack c2 3",
            "ack c3 4",
            "ack c4 5",
            "error unknown_type",
            "ack c5 6",
            "error rate_limited",
            "error rate_limited",
            "error rate_limited",
        ]
    );
});

dual_test!(long_frames_arrive_whole, |b| async move {
    // Frames longer than the server's fragment size (a 4000-character message of two-byte
    // characters, a `ready` frame listing many users) go out as fragments; clients see
    // whole messages, with the UTF-8 split across fragments put back together.
    let app = spawn_app(b).await;
    let users = room_with_members(&app, 40, "long").await;
    let base = app.ws_url("");
    let mut sockets = Vec::new();
    for u in &users {
        let mut ws = ws_connect(&base, "long", &u.access, None).await;
        expect_ready(&mut ws).await;
        sockets.push(ws);
    }
    let mut late = ws_connect(&base, "long", &users[0].access, None).await;
    let r = expect_ready(&mut late).await;
    let online = r["online"].as_array().expect("online list");
    assert_eq!(online.len(), 40, "{r}");
    assert!(
        r.to_string().len() > 1024,
        "the ready frame is long enough to be fragmented"
    );
    let content = "é".repeat(4000);
    ws_send(
        &mut sockets[1],
        json!({"type": "message", "content": content, "client_id": "long-1"}),
    )
    .await;
    // The sender gets its ack and the message itself, in either order.
    let mut got = Vec::new();
    while got.len() < 2 {
        let v = next_json(&mut sockets[1], 10)
            .await
            .expect("ack and message");
        if v["type"] == "ack" || v["type"] == "message" {
            got.push(v);
        }
    }
    assert!(
        got.iter()
            .any(|v| v["type"] == "ack" && v["client_id"] == "long-1")
    );
    for (k, ws) in sockets
        .iter_mut()
        .chain(std::iter::once(&mut late))
        .enumerate()
    {
        let m = if k == 1 {
            got.iter().find(|v| v["type"] == "message").cloned()
        } else {
            next_of(ws, "message", 10).await
        };
        let m = m.expect("the long message");
        assert_eq!(m["content"].as_str(), Some(content.as_str()));
    }
    // Small frames after a long one are unaffected.
    ws_send(
        &mut sockets[2],
        json!({"type": "message", "content": "short"}),
    )
    .await;
    let m = next_of(&mut late, "message", 10)
        .await
        .expect("short message");
    assert_eq!(m["content"], "short");
});
