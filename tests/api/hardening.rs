//! docs/protocol.md#limits: a hostile member or a careless client cannot get past a rule. Each test here
//! failed on the code before its fix.

use serde_json::{Value, json};

use crate::{dual_test, support::*};

/// A socket on the multiplexed `/ws` endpoint, subscribed to `rooms`.
async fn mux(app: &TestApp, user: &User, rooms: &[&str]) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws?token={}", app.ws_url(""), user.access))
            .await
            .expect("upgrade");
    assert_eq!(next_json(&mut ws, 5).await.expect("ready")["type"], "ready");
    for room in rooms {
        ws_send(&mut ws, json!({"type": "subscribe", "room": room})).await;
        let sub = next_of(&mut ws, "subscribed", 5).await.expect("subscribed");
        assert_eq!(sub["room"], *room);
    }
    ws
}

async fn contents(app: &Client, token: &str, room: &str) -> Vec<String> {
    let (status, body) = app
        .get(
            &format!("/api/v1/rooms/{room}/messages?limit=200"),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

dual_test!(
    a_removed_member_cannot_write_on_the_multiplexed_socket,
    |b| async move {
        let app = spawn_app(b).await;
        let owner = app.register("kick_owner").await;
        let member = app.register("kick_member").await;
        app.create_room(&owner, "kick-private", "private").await;
        let (status, body) = app
            .post(
                "/api/v1/rooms/kick-private/members",
                Some(&owner.access),
                json!({"user_id": member.id}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        app.create_room(&owner, "kick-gone", "public").await;
        app.join_room(&member, "kick-gone").await;
        let mut ws = mux(&app, &member, &["kick-private", "kick-gone"]).await;

        // Removed: the socket hears `removed`, then nothing it sends there is stored.
        let (status, _) = app
            .send(
                reqwest::Method::DELETE,
                &format!("/api/v1/rooms/kick-private/members/{}", member.id),
                Some(&owner.access),
                None,
            )
            .await;
        assert_eq!(status, 204);
        let removed = next_of(&mut ws, "removed", 5).await.expect("removed");
        assert_eq!(removed["room"], "kick-private");
        ws_send(
            &mut ws,
            json!({"type": "message", "room": "kick-private", "content": "after kick", "client_id": "k1"}),
        )
        .await;
        let answer = next_json(&mut ws, 5).await.expect("an answer");
        assert_eq!(answer["type"], "error", "refused, not acked: {answer}");
        assert_eq!(answer["room"], "kick-private");
        ws_send(
            &mut ws,
            json!({"type": "subscribe", "room": "kick-private"}),
        )
        .await;
        let again = next_of(&mut ws, "error", 5).await.expect("error");
        assert_eq!(again["code"], "not_found", "{again}");

        // Deleted room: same.
        let (status, _) = app
            .send(
                reqwest::Method::DELETE,
                "/api/v1/rooms/kick-gone",
                Some(&owner.access),
                None,
            )
            .await;
        assert_eq!(status, 204);
        next_of(&mut ws, "room_deleted", 5)
            .await
            .expect("room_deleted");
        ws_send(
            &mut ws,
            json!({"type": "message", "room": "kick-gone", "content": "after delete"}),
        )
        .await;
        let answer = next_json(&mut ws, 5).await.expect("an answer");
        assert_eq!(answer["type"], "error", "refused, not acked: {answer}");

        // The socket itself stays usable, and nothing reached the private room.
        ws_send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(
            next_of(&mut ws, "pong", 5).await.expect("pong")["type"],
            "pong"
        );
        assert!(
            !contents(&app, &owner.access, "kick-private")
                .await
                .iter()
                .any(|c| c.starts_with("after")),
            "a removed member's message was stored"
        );
    }
);

dual_test!(
    control_characters_are_refused_before_they_reach_the_database,
    |b| async move {
        let app = spawn_app(b).await;
        let user = app.register("nul_user").await;
        app.create_room(&user, "nul-room", "public").await;
        let post = |body: Value| {
            let app = &app;
            let token = user.access.clone();
            async move {
                app.post("/api/v1/rooms/nul-room/messages", Some(&token), body)
                    .await
            }
        };
        let (status, body) = post(json!({"content": "a\u{0}b"})).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["fields"]["content"].is_array(), "{body}");
        let (status, body) = post(json!({"content": "ok", "client_id": "id\u{0}"})).await;
        assert_eq!(status, 422, "{body}");
        let (status, body) = post(json!({"content": "bell\u{7}"})).await;
        assert_eq!(status, 422, "{body}");
        let (status, body) = post(json!({"content": "two\nlines\tand a tab"})).await;
        assert_eq!(status, 201, "newline and tab stay allowed: {body}");

        let (status, body) = app
            .send(
                reqwest::Method::PATCH,
                "/api/v1/rooms/nul-room",
                Some(&user.access),
                Some(json!({"topic": "t\u{0}"})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        let (status, body) = app
            .send(
                reqwest::Method::PATCH,
                "/api/v1/users/me",
                Some(&user.access),
                Some(json!({"first_name": "x\u{0}"})),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(app.login("nul\u{0}user", PASSWORD).await.0, 422);
        let (status, body) = app
            .get("/api/v1/rooms/nul%00room/messages", Some(&user.access))
            .await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = app.get("/api/v1/rooms?q=%00", Some(&user.access)).await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = app.get("/api/v1/users?q=%00", Some(&user.access)).await;
        assert_eq!(status, 400, "{body}");

        // On a socket: a `validation_failed` error frame, and the socket goes on.
        let mut ws = ws_connect(&app.ws_url(""), "nul-room", &user.access, None).await;
        expect_ready(&mut ws).await;
        ws_send(&mut ws, json!({"type": "message", "content": "x\u{0}"})).await;
        let err = next_of(&mut ws, "error", 5).await.expect("error");
        assert_eq!(err["code"], "validation_failed", "{err}");
        ws_send(
            &mut ws,
            json!({"type": "message", "content": "fine", "client_id": "c"}),
        )
        .await;
        assert_eq!(
            next_of(&mut ws, "ack", 5).await.expect("ack")["client_id"],
            "c"
        );
        assert_eq!(
            contents(&app, &user.access, "nul-room").await,
            ["two\nlines\tand a tab", "fine"]
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let server = ServerProc::start(&fresh_database(Backend::Sqlite).await, &[]).await;
    let client = &server.client;
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("FOO{i}").as_bytes()).expect("method");
        client
            .send(method, &format!("/made/up/{i}"), None, None)
            .await;
        client.get(&format!("/nowhere-{i}"), None).await;
    }
    let metrics = client.metrics().await;
    let labels: Vec<(String, String)> = metrics
        .matching("http_requests_total", &[])
        .map(|s| {
            (
                s.labels.get("method").cloned().unwrap_or_default(),
                s.labels.get("route").cloned().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        labels
            .iter()
            .all(|(m, r)| !m.starts_with("FOO") && !r.contains("made") && !r.contains("nowhere")),
        "client input became label values: {labels:?}"
    );
    assert!(
        labels.iter().any(|(m, r)| m == "other" && r == "unmatched"),
        "{labels:?}"
    );
}

dual_test!(
    a_text_frame_that_is_not_utf8_closes_with_1007,
    |b| async move {
        use futures::SinkExt;
        use tokio_tungstenite::tungstenite::{
            Bytes, Message,
            protocol::frame::{
                Frame,
                coding::{Data, OpCode},
            },
        };
        let app = spawn_app(b).await;
        let user = app.register("utf8_user").await;
        app.create_room(&user, "utf8-room", "public").await;
        let mut ws = ws_connect(&app.ws_url(""), "utf8-room", &user.access, None).await;
        expect_ready(&mut ws).await;
        let bad = Frame::message(
            Bytes::from_static(&[b'{', 0xff, 0xfe, b'}']),
            OpCode::Data(Data::Text),
            true,
        );
        ws.send(Message::Frame(bad)).await.expect("sent");
        assert_eq!(close_code(&mut ws, 5).await, Some(1007));
    }
);

dual_test!(
    a_typing_flood_is_limited_and_closed_with_1008,
    |b| async move {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let db = fresh_database(b).await;
        let mut config = chat_server::Config::for_tests(&db);
        // The slowest refill there is: the burst, not the machine's speed, bounds what passes.
        config.frame_rate_per_sec = 1;
        config.frame_rate_burst = 20;
        let app = spawn_with(config).await;
        let typist = app.register("flood_typist").await;
        let watcher = app.register("flood_watcher").await;
        app.create_room(&typist, "flood", "public").await;
        app.join_room(&watcher, "flood").await;
        let mut watching = ws_connect(&app.ws_url(""), "flood", &watcher.access, None).await;
        expect_ready(&mut watching).await;
        let mut flooding = ws_connect(&app.ws_url(""), "flood", &typist.access, None).await;
        expect_ready(&mut flooding).await;

        let typing = Message::Text(json!({"type": "typing"}).to_string().into());
        for _ in 0..600 {
            if flooding.feed(typing.clone()).await.is_err() {
                break;
            }
        }
        let _ = flooding.flush().await;
        let (mut refused, mut code) = (0, None);
        while let Ok(Some(frame)) =
            tokio::time::timeout(std::time::Duration::from_secs(10), flooding.next()).await
        {
            match frame {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["type"] == "error" && v["code"] == "rate_limited" {
                        refused += 1;
                    }
                }
                Ok(Message::Close(frame)) => {
                    code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        assert_eq!(code, Some(1008), "the flood closes the socket");
        assert!(refused > 0, "refusals are answered before the close");

        // What reached the others: the burst, not 600 (a marker message ends the count).
        app.post_message(&watcher, "flood", "marker").await;
        let before = frames_before(&mut watching, "marker").await;
        let typed = before.iter().filter(|f| f["type"] == "typing").count();
        assert!(
            (1..=30).contains(&typed),
            "{typed} typing events reached the room"
        );
    }
);

/// An app whose credential limits are the defaults (tests elsewhere lift them).
async fn app_with_credential_limits(b: Backend) -> TestApp {
    let db = fresh_database(b).await;
    let mut config = chat_server::Config::for_tests(&db);
    config.account_rate_per_min = 10;
    config.auth_rate_per_min = 30;
    spawn_with(config).await
}

dual_test!(
    password_guessing_on_a_session_is_throttled,
    |b| async move {
        let app = app_with_credential_limits(b).await;
        let user = app.register("guessed").await;
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for i in 0..35 {
            let res = app
            .client
            .http
            .put(app.url("/api/v1/users/me/password"))
            .bearer_auth(&user.access)
            .json(&json!({"current_password": format!("wrong-{i}-password"), "new_password": "whatever-new-password"}))
            .send()
            .await
            .expect("request");
            let status = res.status().as_u16();
            if status == 429 && retry_after.is_none() {
                retry_after = res.headers().get("retry-after").cloned();
            }
            statuses.push(status);
        }
        assert_eq!(statuses[0], 422, "a wrong password is a 422 at first");
        assert!(statuses.contains(&429), "{statuses:?}");
        assert!(retry_after.is_some(), "429 carries Retry-After");
        // Deleting the account with guessed passwords is limited the same way (the same account).
        let (status, _) = app
            .send(
                reqwest::Method::DELETE,
                "/api/v1/users/me",
                Some(&user.access),
                Some(json!({"password": "another-guess"})),
            )
            .await;
        assert_eq!(status, 429);
    }
);

dual_test!(email_probing_is_throttled, |b| async move {
    let app = app_with_credential_limits(b).await;
    let prober = app.register("prober").await;
    for i in 0..5 {
        app.register(&format!("target{i}")).await;
    }
    let mut statuses = Vec::new();
    for i in 0..15 {
        let (status, _) = app
            .send(
                reqwest::Method::PATCH,
                "/api/v1/users/me",
                Some(&prober.access),
                Some(json!({"email": format!("target{}@example.com", i % 5)})),
            )
            .await;
        statuses.push(status);
    }
    assert_eq!(statuses[0], 409);
    assert!(statuses.contains(&429), "{statuses:?}");
    // Changing only the name is not an email probe.
    let (status, body) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            Some(&prober.access),
            Some(json!({"first_name": "Pro"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
});

dual_test!(
    a_refresh_racing_logout_or_a_password_change_leaves_no_live_token,
    |b| async move {
        let app = spawn_app(b).await;
        app.register("racer").await;
        let session = |password: &'static str| {
            let app = &app;
            async move {
                let (status, body) = app.login("racer", password).await;
                assert_eq!(status, 200, "{body}");
                (
                    body["access"].as_str().expect("access").to_owned(),
                    body["refresh"].as_str().expect("refresh").to_owned(),
                )
            }
        };
        let survived = |refresh: String| {
            let app = &app;
            async move {
                let (status, _) = app
                    .post("/api/v1/auth/refresh", None, json!({"refresh": refresh}))
                    .await;
                status == 200
            }
        };
        for _ in 0..15 {
            let (access, refresh) = session(PASSWORD).await;
            let (rotated, logout) = tokio::join!(
                app.post("/api/v1/auth/refresh", None, json!({"refresh": refresh})),
                app.post(
                    "/api/v1/auth/logout",
                    Some(&access),
                    json!({"refresh": refresh})
                ),
            );
            assert_eq!(logout.0, 204, "{}", logout.1);
            if rotated.0 == 200 {
                let next = rotated.1["refresh"].as_str().expect("refresh").to_owned();
                assert!(!survived(next).await, "a refresh token outlived the logout");
            }
        }
        let passwords = [PASSWORD, "another horse battery"];
        for i in 0..10 {
            let (current, new) = (passwords[i % 2], passwords[(i + 1) % 2]);
            let (changer, _) = session(current).await;
            let (_, other_refresh) = session(current).await;
            let (rotated, changed) = tokio::join!(
                app.post(
                    "/api/v1/auth/refresh",
                    None,
                    json!({"refresh": other_refresh})
                ),
                app.send(
                    reqwest::Method::PUT,
                    "/api/v1/users/me/password",
                    Some(&changer),
                    Some(json!({"current_password": current, "new_password": new})),
                ),
            );
            assert_eq!(changed.0, 204, "{}", changed.1);
            if rotated.0 == 200 {
                let next = rotated.1["refresh"].as_str().expect("refresh").to_owned();
                assert!(
                    !survived(next).await,
                    "a refresh token outlived the password change"
                );
            }
        }
    }
);

dual_test!(
    the_owner_cannot_leave_until_the_room_is_transferred,
    |b| async move {
        let app = spawn_app(b).await;
        let owner = app.register("own_owner").await;
        let heir = app.register("own_heir").await;
        let outsider = app.register("own_outsider").await;
        app.create_room(&owner, "own-private", "private").await;
        let (status, body) = app
            .post(
                "/api/v1/rooms/own-private/members",
                Some(&owner.access),
                json!({"user_id": heir.id}),
            )
            .await;
        assert_eq!(status, 201, "{body}");

        // The owner may not leave and so lose the room.
        let (status, body) = app
            .post(
                "/api/v1/rooms/own-private/leave",
                Some(&owner.access),
                json!({}),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "conflict");
        let (status, _) = app
            .get("/api/v1/rooms/own-private", Some(&owner.access))
            .await;
        assert_eq!(status, 200, "still the owner's room");

        // Only to a member, and only by the owner (or an admin).
        let patch = |token: &str, owner_id: i64| {
            let (app, token) = (&app, token.to_owned());
            async move {
                app.send(
                    reqwest::Method::PATCH,
                    "/api/v1/rooms/own-private",
                    Some(&token),
                    Some(json!({"owner_id": owner_id})),
                )
                .await
            }
        };
        let (status, body) = patch(&owner.access, outsider.id).await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["fields"]["owner_id"].is_array(), "{body}");
        let (status, _) = patch(&heir.access, heir.id).await;
        assert_eq!(status, 403, "a member cannot take the room");
        let (status, room) = patch(&owner.access, heir.id).await;
        assert_eq!(status, 200, "{room}");
        assert_eq!(room["owner"]["id"], heir.id);
        let (_, members) = app
            .get("/api/v1/rooms/own-private/members", Some(&heir.access))
            .await;
        let role = |id: i64| {
            members["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|m| m["user"]["id"] == id)
                .map(|m| m["role"].clone())
        };
        assert_eq!(role(heir.id), Some(json!("owner")), "{members}");
        assert_eq!(role(owner.id), Some(json!("member")), "{members}");

        // Now the former owner may leave, and the new one may not.
        let (status, _) = app
            .post(
                "/api/v1/rooms/own-private/leave",
                Some(&owner.access),
                json!({}),
            )
            .await;
        assert_eq!(status, 204);
        let (status, _) = app
            .post(
                "/api/v1/rooms/own-private/leave",
                Some(&heir.access),
                json!({}),
            )
            .await;
        assert_eq!(status, 409);
        let (status, _) = app
            .get("/api/v1/rooms/own-private", Some(&owner.access))
            .await;
        assert_eq!(
            status, 404,
            "a private room is invisible to a former member"
        );
    }
);

dual_test!(
    an_auth_frame_with_another_users_token_is_refused_and_closes_nothing,
    |b| async move {
        let app = spawn_app(b).await;
        let alice = app.register("authf_alice").await;
        let bob = app.register("authf_bob").await;
        app.create_room(&alice, "authf-room", "public").await;
        app.join_room(&bob, "authf-room").await;
        let mut a = mux(&app, &alice, &["authf-room"]).await;
        let mut b_ws = mux(&app, &bob, &["authf-room"]).await;

        ws_send(&mut a, json!({"type": "auth", "token": bob.access})).await;
        let refused = next_of(&mut a, "error", 5).await.expect("an error frame");
        assert_eq!(refused["code"], "invalid_token", "{refused}");

        // Alice's socket still works, as Alice; Bob's socket is untouched.
        ws_send(
            &mut a,
            json!({"type": "message", "room": "authf-room", "content": "still alice", "client_id": "af1"}),
        )
        .await;
        next_of(&mut a, "ack", 5).await.expect("ack");
        let msg = next_of(&mut b_ws, "message", 5)
            .await
            .expect("bob hears it");
        assert_eq!(msg["user"]["id"], alice.id, "{msg}");
        ws_send(&mut b_ws, json!({"type": "ping"})).await;
        next_of(&mut b_ws, "pong", 5)
            .await
            .expect("bob's socket open");
        // Bob's token still works.
        let (status, _) = app.get("/api/v1/users/me", Some(&bob.access)).await;
        assert_eq!(status, 200);
    }
);

/// A trigger that makes the database refuse any message whose content is `poison`.
async fn refuse_poison(db_url: &str) {
    use sea_orm::{ConnectionTrait, Database};
    Database::connect(db_url)
        .await
        .expect("db")
        .execute_unprepared(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.content = 'poison' THEN RAISE EXCEPTION 'poisoned draft'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON messages \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        )
        .await
        .expect("trigger");
}

/// One draft that the database refuses fails alone; the rest of its group-commit batch
/// commits. The refusal is a trigger added to the test database (standing in for a constraint
/// or a foreign key racing a deleted author). The batch is arranged, not hoped for: a row lock
/// holds the commit of a first send while ten more queue behind it, then the server's own
/// `chat_commit_batch_size` histogram (a server process of its own, so no other test's
/// batches) shows the ten committed as one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: the refusal is a PostgreSQL trigger"
)]
async fn one_refused_draft_fails_alone_and_its_batch_commits() {
    let db_url = fresh_database(Backend::Postgres).await;
    let server = ServerProc::start(&db_url, &[]).await;
    let user = server.register("batcher").await;
    let watcher = server.register("batch_watcher").await;
    server.create_room(&user, "batch", "public").await;
    server.join_room(&watcher, "batch").await;
    refuse_poison(&db_url).await;
    let mut watching = ws_connect(&server.ws_url(""), "batch", &watcher.access, None).await;
    expect_ready(&mut watching).await;
    let mut ws = ws_connect(&server.ws_url(""), "batch", &user.access, None).await;
    expect_ready(&mut ws).await;

    let hold = RoomHold::take(&db_url, "batch").await;
    let send = |content: &str| json!({"type": "message", "content": content, "client_id": content});
    ws_send(&mut ws, send("first")).await;
    hold.wait_for_a_commit().await;
    let drafts: Vec<String> = (0..10)
        .map(|i| {
            if i == 5 {
                "poison".into()
            } else {
                format!("ok {i}")
            }
        })
        .collect();
    for content in &drafts {
        ws_send(&mut ws, send(content)).await;
    }
    // The session handles its frames in order and queues each draft before it reads the next
    // frame; a `typing` frame is published at once: once the watcher sees it, all ten drafts
    // wait behind the held commit.
    ws_send(&mut ws, json!({"type": "typing"})).await;
    next_of(&mut watching, "typing", WAIT_BOUND.as_secs())
        .await
        .expect("the typing event");
    hold.release().await;

    // Answers come in the order of the frames (an error carries no `client_id`).
    let mut answers = Vec::new();
    while answers.len() < 11 {
        let v = next_json(&mut ws, WAIT_BOUND.as_secs())
            .await
            .expect("an answer");
        if v["type"] == "ack" || v["type"] == "error" {
            answers.push(v);
        }
    }
    for (content, answer) in ["first"]
        .into_iter()
        .chain(drafts.iter().map(String::as_str))
        .zip(&answers)
    {
        if content == "poison" {
            assert_eq!(answer["type"], "error", "the refused draft fails: {answer}");
        } else {
            assert_eq!(
                (answer["type"].as_str(), answer["client_id"].as_str()),
                (Some("ack"), Some(content)),
                "{content} commits although its batch held a bad draft"
            );
        }
    }
    let m = server.metrics().await;
    assert_eq!(
        (
            m.sum("chat_commit_batch_size_count", &[]),
            m.sum("chat_commit_batch_size_sum", &[])
        ),
        (2.0, 11.0),
        "two batches: the held first send, then the ten queued behind it as one"
    );
    let stored = contents(&server, &user.access, "batch").await;
    assert_eq!(stored.len(), 10, "{stored:?}");
    assert!(!stored.iter().any(|c| c == "poison"));
}

/// The inline element `tag` of `page`, as a browser hashes it for a Content-Security-Policy.
fn csp_hash(page: &str, tag: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let body = page
        .split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(body, _)| body)
        .unwrap_or_else(|| panic!("no <{tag}> in the page"));
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body.as_bytes()))
    )
}

/// The web client runs only its own script and style (no `unsafe-inline`), `/` and `/docs`
/// can never be framed, and no response may be sniffed as another type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_a_content_security_policy_and_nothing_is_sniffed() {
    let app = spawn_app(Backend::Sqlite).await;
    let res = app
        .http
        .get(format!("{}/", app.base))
        .send()
        .await
        .expect("GET /");
    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    let page = res.text().await.expect("page");
    let csp = headers["content-security-policy"].to_str().expect("ascii");
    assert!(
        csp.contains(&format!("script-src {};", csp_hash(&page, "script"))),
        "{csp}"
    );
    assert!(
        csp.contains(&format!("style-src {};", csp_hash(&page, "style"))),
        "{csp}"
    );
    for rule in [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(rule), "{rule} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let res = app
        .http
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .expect("GET /docs/");
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");

    // An API answer, an error included.
    let res = app
        .http
        .get(format!("{}/api/v1/rooms", app.base))
        .send()
        .await
        .expect("GET /api/v1/rooms");
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
}

/// The refusal of a socket upgrade: its status and error body (`101` and `null` if admitted).
async fn upgrade_answer(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => (101, Value::Null),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (res.status().as_u16(), body)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Every answer `user` gets about room `name`, on every path that names a room: each REST
/// operation on it (status and body), the socket upgrade (status and body), and a `subscribe`
/// frame on `/ws` (its answer, without the echoed `room`). `msg` is a message id used on the
/// message paths; `other` a user id for invitations and removals; `put`: `PUT /rooms/{name}`
/// too (it would create a free name).
async fn answers_about(
    app: &TestApp,
    user: &User,
    name: &str,
    (msg, other): (i64, i64),
    put: bool,
) -> Vec<(String, u16, Value)> {
    use reqwest::Method;
    let room = format!("/api/v1/rooms/{name}");
    let react = format!("{room}/messages/{msg}/reactions/%F0%9F%91%8D");
    let mut calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, room.clone(), None),
        (Method::POST, format!("{room}/join"), Some(json!({}))),
        (Method::POST, format!("{room}/leave"), Some(json!({}))),
        (Method::GET, format!("{room}/members"), None),
        (
            Method::POST,
            format!("{room}/members"),
            Some(json!({"user_id": other})),
        ),
        (Method::DELETE, format!("{room}/members/{other}"), None),
        (Method::PATCH, room.clone(), Some(json!({"topic": "mine"}))),
        (Method::DELETE, room.clone(), None),
        (Method::GET, format!("{room}/messages"), None),
        (Method::GET, format!("{room}/messages?thread={msg}"), None),
        (
            Method::POST,
            format!("{room}/messages"),
            Some(json!({"content": "anyone here?"})),
        ),
        (
            Method::PATCH,
            format!("{room}/messages/{msg}"),
            Some(json!({"content": "edited"})),
        ),
        (Method::DELETE, format!("{room}/messages/{msg}"), None),
        (Method::PUT, react.clone(), None),
        (Method::DELETE, react, None),
        (
            Method::POST,
            format!("{room}/read"),
            Some(json!({"seq": 1})),
        ),
        (
            Method::GET,
            format!("/api/v1/search/messages?q=hello&room={name}"),
            None,
        ),
    ];
    if put {
        calls.push((Method::PUT, room.clone(), None));
    }
    let mut answers = Vec::new();
    for (method, path, body) in calls {
        let label = format!("{method} {}", path.replace(name, "{name}"));
        let (status, body) = app.send(method, &path, Some(&user.access), body).await;
        answers.push((label, status, body));
    }
    let url = format!("{}/ws/rooms/{name}?token={}", app.ws_url(""), user.access);
    let (status, body) = upgrade_answer(&url).await;
    answers.push(("upgrade /ws/rooms/{name}".into(), status, body));
    let mut ws = mux(app, user, &[]).await;
    ws_send(&mut ws, json!({"type": "subscribe", "room": name})).await;
    let mut answer = next_json(&mut ws, 5).await.expect("an answer to subscribe");
    assert_eq!(answer["room"], name, "{answer}");
    answer.as_object_mut().expect("object").remove("room");
    answers.push(("subscribe frame".into(), 0, answer));
    answers
}

/// `hidden` and `absent` answer alike, path by path.
fn assert_same_answers(hidden: &[(String, u16, Value)], absent: &[(String, u16, Value)]) {
    assert_eq!(hidden.len(), absent.len());
    for (h, a) in hidden.iter().zip(absent) {
        assert_eq!(h, a, "{}: the hidden room answers unlike no room", h.0);
    }
}

// A DM's name is derived from its members' ids: had a stranger been answered otherwise for it
// than for a name that is no room (403 to a join or an upgrade, 404 to `PUT` where a free
// `dm-` name gets 422), anyone could tell whether two users share a DM. A private room is
// no room to a non-member either, on every path but creation (its name is taken).
dual_test!(
    a_room_the_caller_may_not_see_answers_as_no_room_on_every_path,
    |b| async move {
        let app = spawn_app(b).await;
        let ann = app.register("hide_ann").await;
        let ben = app.register("hide_ben").await;
        let eve = app.register("hide_eve").await;
        let (status, dm) = app
            .post(
                "/api/v1/dms",
                Some(&ann.access),
                json!({"user_ids": [ben.id]}),
            )
            .await;
        assert_eq!(status, 201, "{dm}");
        let dm = dm["name"].as_str().expect("name").to_owned();
        let in_dm = app.post_message(&ann, &dm, "hello ben").await["id"]
            .as_i64()
            .expect("id");
        let no_dm = format!("dm-{}", "0".repeat(24));
        assert_ne!(dm, no_dm);

        let hidden = answers_about(&app, &eve, &dm, (in_dm, ann.id), true).await;
        let absent = answers_about(&app, &eve, &no_dm, (in_dm, ann.id), true).await;
        assert_same_answers(&hidden, &absent);
        for (path, status, body) in &hidden {
            let want = match path.as_str() {
                "PUT /api/v1/rooms/{name}" => 422,
                "subscribe frame" => 0,
                _ => 404,
            };
            assert_eq!(*status, want, "{path}: {body}");
        }

        app.create_room(&ann, "hide-private", "private").await;
        let in_private = app.post_message(&ann, "hide-private", "hello").await["id"]
            .as_i64()
            .expect("id");
        let ids = (in_private, ann.id);
        let hidden = answers_about(&app, &eve, "hide-private", ids, false).await;
        let absent = answers_about(&app, &eve, "hide-nothing", ids, false).await;
        assert_same_answers(&hidden, &absent);

        // Nothing the stranger tried changed anything.
        for (room, members) in [(&dm, 2), (&"hide-private".to_owned(), 1)] {
            let (status, page) = app
                .get(&format!("/api/v1/rooms/{room}/messages"), Some(&ann.access))
                .await;
            assert_eq!(status, 200, "{page}");
            let items = page["items"].as_array().expect("items");
            assert_eq!(items.len(), 1, "{page}");
            assert_eq!(items[0]["edited_at"], Value::Null, "{page}");
            assert_eq!(items[0]["reactions"], json!([]), "{page}");
            let (_, list) = app
                .get(&format!("/api/v1/rooms/{room}/members"), Some(&ann.access))
                .await;
            assert_eq!(list["items"].as_array().map(Vec::len), Some(members));
        }
    }
);

/// A request: method, path, JSON body.
type Call = (reqwest::Method, String, Option<Value>);
/// The request of each attempt, by its number.
type CallFor<'a> = Box<dyn Fn(usize) -> Call + 'a>;

/// Send `call` until it is refused (at most `tries` times): how many passed first, and the
/// refusal (status, `Retry-After`, body). `call` gets the attempt's number.
async fn until_refused(
    app: &TestApp,
    user: &User,
    tries: usize,
    call: impl Fn(usize) -> Call,
) -> (usize, Option<(u16, Option<u64>, Value)>) {
    for n in 0..tries {
        let (method, path, body) = call(n);
        let mut req = app
            .http
            .request(method, app.url(&path))
            .bearer_auth(&user.access);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("response");
        let status = res.status().as_u16();
        if status == 429 {
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = res.json().await.unwrap_or(Value::Null);
            return (n, Some((status, retry, body)));
        }
        assert!(status < 300 || status == 404, "{path}: {status}");
    }
    (tries, None)
}

// An account could edit (and delete, and read history) as fast as it liked: 258 edits/s, each
// a message-sized frame to every socket in the room. Edits and deletions count as messages,
// reactions (REST and socket) as frames, history pages and searches as reads; past each the
// answer is 429 with `Retry-After` (a `rate_limited` error frame on a socket).
dual_test!(
    edits_deletes_reactions_and_reads_are_rate_limited,
    |b| async move {
        use reqwest::Method;
        const BURST: u32 = 5;
        let db = fresh_database(b).await;
        let mut config = chat_server::Config::for_tests(&db);
        // The slowest refill there is: the burst, not the machine's speed, bounds what passes.
        config.message_rate_per_sec = 1;
        config.message_rate_burst = BURST;
        config.frame_rate_per_sec = 1;
        config.frame_rate_burst = BURST;
        config.read_rate_per_sec = 1;
        config.read_rate_burst = BURST;
        let app = spawn_with(config).await;
        let room = "rl-room";
        let mut users = Vec::new();
        for name in [
            "rl_editor",
            "rl_deleter",
            "rl_reactor",
            "rl_reader",
            "rl_seeker",
        ] {
            users.push(app.register(name).await);
        }
        app.create_room(&users[0], room, "public").await;
        for user in &users[1..] {
            app.join_room(user, room).await;
        }
        let base = format!("/api/v1/rooms/{room}/messages");
        // One message each for the editor and the deleter (a cell of their message limit).
        let edited = app.post_message(&users[0], room, "draft").await["id"].clone();
        let doomed = app.post_message(&users[1], room, "oops").await["id"].clone();
        let react = format!("{base}/{edited}/reactions/%F0%9F%91%8D");
        let checks: Vec<(&str, &User, CallFor<'_>)> = vec![
            (
                "edit",
                &users[0],
                Box::new(|n| {
                    (
                        Method::PATCH,
                        format!("{base}/{edited}"),
                        Some(json!({"content": format!("take {n}")})),
                    )
                }),
            ),
            // The first deletes; the next ones find nothing (404), each counted all the same.
            (
                "delete",
                &users[1],
                Box::new(|_| (Method::DELETE, format!("{base}/{doomed}"), None)),
            ),
            (
                "reaction",
                &users[2],
                Box::new(|n| {
                    let method = if n % 2 == 0 {
                        Method::PUT
                    } else {
                        Method::DELETE
                    };
                    (method, react.clone(), None)
                }),
            ),
            (
                "history",
                &users[3],
                Box::new(|_| (Method::GET, format!("{base}?limit=200"), None)),
            ),
            (
                "search",
                &users[4],
                Box::new(|_| {
                    (
                        Method::GET,
                        format!("/api/v1/search/messages?q=draft&room={room}"),
                        None,
                    )
                }),
            ),
        ];
        for (what, user, call) in checks {
            let (passed, refusal) = until_refused(&app, user, 50, call).await;
            let (status, retry, body) =
                refusal.unwrap_or_else(|| panic!("{what}: 50 in a row, none refused"));
            assert_eq!(status, 429, "{what}");
            assert!(
                retry.is_some_and(|s| s >= 1),
                "{what}: Retry-After {retry:?}"
            );
            assert_eq!(body["error"]["code"], "rate_limited", "{what}: {body}");
            // The burst (a refill or two on a slow machine) passes, not more.
            assert!(passed <= BURST as usize + 2, "{what}: {passed} passed");
        }

        // On a socket, reactions are frames: past the limit, `rate_limited` error frames.
        let reactor = app.register("rl_socket").await;
        app.join_room(&reactor, room).await;
        let mut ws = ws_connect(&app.ws_url(""), room, &reactor.access, None).await;
        expect_ready(&mut ws).await;
        for n in 0..12 {
            let frame = json!({"type": "react", "id": edited, "emoji": "🎉", "on": n % 2 == 0});
            ws_send(&mut ws, frame).await;
        }
        let refused = next_of(&mut ws, "error", 10).await.expect("an error frame");
        assert_eq!(refused["code"], "rate_limited", "{refused}");
    }
);
