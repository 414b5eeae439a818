//! docs/protocol.md#conversations, part B: reactions, replies and threads, search — over REST and both socket
//! endpoints, on SQLite and PostgreSQL.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{dual_test, support::*};

fn reaction_path(room: &str, id: &Value, emoji: &str) -> String {
    format!("/api/v1/rooms/{room}/messages/{id}/reactions/{emoji}")
}

/// The `reactions` of message `id` in `room`'s history as `user` reads it.
async fn reactions_of(app: &TestApp, user: &User, room: &str, id: &Value) -> Value {
    let (status, page) = app
        .get(
            &format!("/api/v1/rooms/{room}/messages?limit=200"),
            Some(&user.access),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| &m["id"] == id)
        .map(|m| m["reactions"].clone())
        .expect("the message is in history")
}

/// The `reaction` frames of the socket up to the message `marker`, which the socket sends
/// now: room events keep their order, so the absence of more is proven by the stream.
async fn reactions_before(ws: &mut Ws, marker: &str) -> Vec<Value> {
    ws_send(ws, json!({"type": "message", "content": marker})).await;
    frames_before(ws, marker)
        .await
        .into_iter()
        .filter(|f| f["type"] == "reaction")
        .collect()
}

dual_test!(reactions_over_rest_and_frames, |b| async move {
    let app = spawn_app(b).await;
    let jan = app.register("jan").await;
    let kai = app.register("kai").await;
    let lia = app.register("lia").await;
    app.create_room(&jan, "fun", "public").await;
    app.join_room(&kai, "fun").await;
    let msg = app.post_message(&jan, "fun", "react to me").await;
    let id = msg["id"].clone();
    assert_eq!(msg["reactions"], json!([]), "a new message has none: {msg}");
    let mut kai_ws = ws_connect(&app.ws_url(""), "fun", &kai.access, None).await;
    expect_ready(&mut kai_ws).await;

    // PUT twice: one change, one event.
    for _ in 0..2 {
        let (status, body) = app
            .send(
                Method::PUT,
                &reaction_path("fun", &id, "👍"),
                Some(&jan.access),
                None,
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }
    let events = reactions_before(&mut kai_ws, "mark1").await;
    assert_eq!(
        events.len(),
        1,
        "an idempotent repeat broadcasts nothing: {events:?}"
    );
    let e = &events[0];
    assert_eq!(e["room"], "fun");
    assert_eq!(e["id"], id);
    assert_eq!(e["seq"], msg["seq"]);
    assert_eq!(e["emoji"], "👍");
    assert_eq!(e["on"], true);
    assert_eq!(e["user"]["username"], "jan");

    // The `react` frame; `me` is relative to the reader.
    ws_send(
        &mut kai_ws,
        json!({"type": "react", "id": id, "emoji": "👍", "on": true}),
    )
    .await;
    ws_send(
        &mut kai_ws,
        json!({"type": "react", "id": id, "emoji": ":tada:"}),
    )
    .await;
    let events = reactions_before(&mut kai_ws, "mark2").await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["emoji"], ":tada:");
    assert_eq!(events[1]["user"]["username"], "kai");
    assert_eq!(
        reactions_of(&app, &jan, "fun", &id).await,
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": ":tada:", "count": 1, "me": false}])
    );
    assert_eq!(
        reactions_of(&app, &lia, "fun", &id).await,
        json!([{"emoji": "👍", "count": 2, "me": false}, {"emoji": ":tada:", "count": 1, "me": false}])
    );

    // A replay carries them too, relative to the socket's user.
    let mut replay = ws_connect(&app.ws_url(""), "fun", &kai.access, Some(0)).await;
    expect_ready(&mut replay).await;
    let replayed = next_of(&mut replay, "message", 10).await.expect("replayed");
    assert_eq!(
        replayed["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": ":tada:", "count": 1, "me": true}])
    );

    // Removal, idempotent.
    for _ in 0..2 {
        let (status, _) = app
            .send(
                Method::DELETE,
                &reaction_path("fun", &id, "👍"),
                Some(&jan.access),
                None,
            )
            .await;
        assert_eq!(status, 204);
    }
    let events = reactions_before(&mut kai_ws, "mark3").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["on"], false);
    assert_eq!(
        reactions_of(&app, &kai, "fun", &id).await,
        json!([{"emoji": "👍", "count": 1, "me": true}, {"emoji": ":tada:", "count": 1, "me": true}])
    );

    // Refusals: bad emoji (422 on `emoji`), a non-member (403), no such message (404).
    for bad in ["a", "👍👍", ":Nope:", "%3Ax%20y%3A", "::"] {
        let (status, body) = app
            .send(
                Method::PUT,
                &reaction_path("fun", &id, bad),
                Some(&jan.access),
                None,
            )
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["error"]["fields"]["emoji"].is_array(), "{body}");
    }
    let (status, _) = app
        .send(
            Method::PUT,
            &reaction_path("fun", &id, "👍"),
            Some(&lia.access),
            None,
        )
        .await;
    assert_eq!(status, 403, "only members react");
    let (status, _) = app
        .send(
            Method::PUT,
            &reaction_path("fun", &json!(999_999), "👍"),
            Some(&jan.access),
            None,
        )
        .await;
    assert_eq!(status, 404);
    ws_send(
        &mut kai_ws,
        json!({"type": "react", "id": id, "emoji": "nope"}),
    )
    .await;
    let err = next_of(&mut kai_ws, "error", 10)
        .await
        .expect("error frame");
    assert_eq!(err["code"], "validation_failed", "{err}");
    ws_send(
        &mut kai_ws,
        json!({"type": "react", "id": 999_999, "emoji": "👍"}),
    )
    .await;
    let err = next_of(&mut kai_ws, "error", 10)
        .await
        .expect("error frame");
    assert_eq!(err["code"], "not_found", "{err}");

    // At most 20 distinct emoji: the 21st is a 409 on `emoji`; a used one still counts up.
    for i in 3..=20 {
        let (status, body) = app
            .send(
                Method::PUT,
                &reaction_path("fun", &id, &format!(":e{i}:")),
                Some(&jan.access),
                None,
            )
            .await;
        assert_eq!(status, 204, "{i}: {body}");
    }
    let (status, body) = app
        .send(
            Method::PUT,
            &reaction_path("fun", &id, ":e21:"),
            Some(&jan.access),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["fields"]["emoji"].is_array(), "{body}");
    let (status, _) = app
        .send(
            Method::PUT,
            &reaction_path("fun", &id, ":e20:"),
            Some(&kai.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let all = reactions_of(&app, &kai, "fun", &id).await;
    assert_eq!(all.as_array().unwrap().len(), 20);
    assert_eq!(all[19], json!({"emoji": ":e20:", "count": 2, "me": true}));

    // A retried send (same client_id) answers the original with its reactions.
    let body = json!({"content": "once", "client_id": "retry-1"});
    let (status, first) = app
        .post(
            "/api/v1/rooms/fun/messages",
            Some(&kai.access),
            body.clone(),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .send(
            Method::PUT,
            &reaction_path("fun", &first["id"], "👀"),
            Some(&jan.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, again) = app
        .post("/api/v1/rooms/fun/messages", Some(&kai.access), body)
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        again["reactions"],
        json!([{"emoji": "👀", "count": 1, "me": false}])
    );
});

dual_test!(
    racing_adds_never_exceed_twenty_distinct_emoji,
    |b| async move {
        let app = spawn_app(b).await;
        let users = [app.register("racer_a").await, app.register("racer_b").await];
        app.create_room(&users[0], "race", "public").await;
        app.join_room(&users[1], "race").await;
        let msg = app.post_message(&users[0], "race", "popular").await;
        let id = msg["id"].clone();
        for i in 0..16 {
            let (status, _) = app
                .send(
                    Method::PUT,
                    &reaction_path("race", &id, &format!(":base{i}:")),
                    Some(&users[0].access),
                    None,
                )
                .await;
            assert_eq!(status, 204);
        }
        // 12 new emoji at once from two users: exactly 4 fit.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (client, token) = (app.client.clone(), users[i % 2].access.clone());
            let path = reaction_path("race", &id, &format!(":new{i}:"));
            tasks.push(tokio::spawn(async move {
                client.send(Method::PUT, &path, Some(&token), None).await.0
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 204).count(),
            4,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 409).count(),
            8,
            "{statuses:?}"
        );
        let all = reactions_of(&app, &users[0], "race", &id).await;
        assert_eq!(all.as_array().unwrap().len(), 20, "{all}");
    }
);

dual_test!(reactions_on_the_multiplexed_socket, |b| async move {
    let app = spawn_app(b).await;
    let mia = app.register("mia").await;
    let ned = app.register("ned").await;
    app.create_room(&mia, "mux", "public").await;
    app.join_room(&ned, "mux").await;
    let msg = app.post_message(&mia, "mux", "hello").await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/ws?token={}", ned.access)))
            .await
            .expect("upgrade");
    next_of(&mut ws, "ready", 10).await.expect("ready");
    ws_send(
        &mut ws,
        json!({"type": "react", "id": msg["id"], "emoji": "🎉"}),
    )
    .await;
    let err = next_of(&mut ws, "error", 10).await.expect("needs a room");
    assert_eq!(err["code"], "invalid_frame", "{err}");
    ws_send(
        &mut ws,
        json!({"type": "subscribe", "room": "mux", "since_seq": 0}),
    )
    .await;
    let replayed = next_of(&mut ws, "message", 10).await.expect("replay");
    assert_eq!(replayed["reactions"], json!([]));
    ws_send(
        &mut ws,
        json!({"type": "react", "room": "mux", "id": msg["id"], "emoji": "🎉"}),
    )
    .await;
    let e = next_of(&mut ws, "reaction", 10)
        .await
        .expect("reaction event");
    assert_eq!(e["room"], "mux");
    assert_eq!(e["emoji"], "🎉");
    assert_eq!(e["user"]["username"], "ned");
    assert_eq!(
        reactions_of(&app, &ned, "mux", &msg["id"]).await,
        json!([{"emoji": "🎉", "count": 1, "me": true}])
    );
});

dual_test!(replies_and_threads, |b| async move {
    let app = spawn_app(b).await;
    let oda = app.register("oda").await;
    let pat = app.register("pat").await;
    app.create_room(&oda, "talk", "public").await;
    app.create_room(&oda, "other", "public").await;
    app.join_room(&pat, "talk").await;
    let root = app.post_message(&oda, "talk", "root").await;
    let other = app.post_message(&oda, "other", "elsewhere").await;
    let plain = app.post_message(&oda, "talk", "not in the thread").await;
    assert_eq!(root["reply_to"], Value::Null);
    assert_eq!(root["reply_count"], 0);
    assert_eq!(root["last_reply_at"], Value::Null);

    // REST reply.
    let (status, r1) = app
        .post(
            "/api/v1/rooms/talk/messages",
            Some(&pat.access),
            json!({"content": "first reply", "reply_to": root["id"]}),
        )
        .await;
    assert_eq!(status, 201, "{r1}");
    assert_eq!(r1["reply_to"], root["id"]);
    // Socket replies (room endpoint, then a reply to a reply: same thread).
    let mut ws = ws_connect(&app.ws_url(""), "talk", &pat.access, None).await;
    expect_ready(&mut ws).await;
    ws_send(
        &mut ws,
        json!({"type": "message", "content": "second reply", "reply_to": root["id"]}),
    )
    .await;
    let m2 = next_of(&mut ws, "message", 10).await.expect("delivered");
    assert_eq!(m2["reply_to"], root["id"], "{m2}");
    ws_send(
        &mut ws,
        json!({"type": "message", "content": "reply to a reply", "reply_to": r1["id"]}),
    )
    .await;
    let m3 = next_of(&mut ws, "message", 10).await.expect("delivered");
    assert_eq!(
        m3["reply_to"], root["id"],
        "a reply to a reply joins the root's thread: {m3}"
    );
    assert_eq!(
        m3["seq"].as_i64(),
        Some(r1["seq"].as_i64().unwrap() + 2),
        "same seq sequence"
    );
    // Multiplexed endpoint.
    let (mut mux, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/ws?token={}", oda.access)))
            .await
            .expect("upgrade");
    next_of(&mut mux, "ready", 10).await.expect("ready");
    ws_send(&mut mux, json!({"type": "subscribe", "room": "talk"})).await;
    next_of(&mut mux, "subscribed", 10)
        .await
        .expect("subscribed");
    ws_send(&mut mux, json!({"type": "message", "room": "talk", "content": "mux reply", "reply_to": root["id"], "client_id": "c1"})).await;
    let ack = next_of(&mut mux, "ack", 10).await.expect("ack");

    // Bad targets: 422 on `reply_to` (another room's message, no such message, a deleted one).
    let (status, gone) = app
        .post(
            "/api/v1/rooms/talk/messages",
            Some(&oda.access),
            json!({"content": "to be deleted"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/talk/messages/{}", gone["id"]),
            Some(&oda.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    for target in [other["id"].clone(), json!(987_654), gone["id"].clone()] {
        let (status, body) = app
            .post(
                "/api/v1/rooms/talk/messages",
                Some(&pat.access),
                json!({"content": "x", "reply_to": target}),
            )
            .await;
        assert_eq!(status, 422, "{target}: {body}");
        assert!(body["error"]["fields"]["reply_to"].is_array(), "{body}");
    }
    ws_send(
        &mut ws,
        json!({"type": "message", "content": "x", "reply_to": other["id"]}),
    )
    .await;
    let err = next_of(&mut ws, "error", 10).await.expect("error frame");
    assert_eq!(err["code"], "validation_failed", "{err}");

    // The root counts its replies; the thread lists root and replies in seq order.
    let (status, thread) = app
        .get(
            &format!("/api/v1/rooms/talk/messages?thread={}", root["id"]),
            Some(&oda.access),
        )
        .await;
    assert_eq!(status, 200, "{thread}");
    let items = thread["items"].as_array().unwrap();
    let contents: Vec<&str> = items
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            "root",
            "first reply",
            "second reply",
            "reply to a reply",
            "mux reply"
        ]
    );
    assert_eq!(items[4]["id"], ack["id"]);
    assert_eq!(items[0]["reply_count"], 4, "{}", items[0]);
    assert!(items[0]["last_reply_at"].is_string());
    assert!(!contents.contains(&"not in the thread"), "{}", plain["id"]);
    // Paged as history.
    let (_, page) = app
        .get(
            &format!("/api/v1/rooms/talk/messages?thread={}&limit=2", root["id"]),
            Some(&oda.access),
        )
        .await;
    let contents: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["reply to a reply", "mux reply"]);
    assert_eq!(page["has_more"], true);
    // A deleted reply leaves the count.
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/talk/messages/{}", r1["id"]),
            Some(&pat.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, thread) = app
        .get(
            &format!("/api/v1/rooms/talk/messages?thread={}", root["id"]),
            Some(&oda.access),
        )
        .await;
    assert_eq!(thread["items"][0]["reply_count"], 3, "{thread}");
    assert_eq!(thread["items"].as_array().unwrap().len(), 4);
    // No such root in this room.
    let (status, _) = app
        .get(
            &format!("/api/v1/rooms/talk/messages?thread={}", other["id"]),
            Some(&oda.access),
        )
        .await;
    assert_eq!(status, 404);
});

/// The `content` of each search hit.
fn contents(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {page}"))
        .iter()
        .map(|h| h["message"]["content"].as_str().unwrap().to_owned())
        .collect()
}

async fn search(app: &TestApp, user: &User, query: &str) -> (u16, Value) {
    let url = reqwest::Url::parse_with_params("http://x/api/v1/search/messages", &[("q", query)])
        .unwrap();
    app.get(
        &format!("/api/v1/search/messages?{}", url.query().unwrap()),
        Some(&user.access),
    )
    .await
}

/// Search until `query` finds `n` messages: PostgreSQL indexes new messages in the
/// background, about a second after their commit (SQLite at once).
async fn search_until(app: &TestApp, user: &User, query: &str, n: usize) -> Value {
    wait_until(&format!("{query:?} to find {n} messages"), async || {
        let (status, page) = search(app, user, query).await;
        assert_eq!(status, 200, "{page}");
        if contents(&page).len() == n {
            Ok(page)
        } else {
            Err(page)
        }
    })
    .await
}

dual_test!(search_messages, |b| async move {
    let app = spawn_app(b).await;
    let quin = app.register("quin").await;
    let rae = app.register("rae").await;
    app.create_room(&quin, "open", "public").await;
    app.create_room(&quin, "secret", "private").await;
    app.post_message(&quin, "open", "The runners were running fast")
        .await;
    app.post_message(&quin, "open", "a quick brown fox jumps")
        .await;
    app.post_message(&quin, "open", "the fox is brown and quick")
        .await;
    let edited = app.post_message(&quin, "open", "nothing to see").await;
    let deleted = app.post_message(&quin, "open", "a doomed fox").await;
    app.post_message(&quin, "secret", "secret fox plans <b>bold</b>")
        .await;

    // Searchable once indexed: the last message of each room is.
    search_until(&app, &quin, "foxes", 4).await;

    // Stems, newest first, with highlights (HTML, escaped).
    let (status, page) = search(&app, &quin, "run").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(contents(&page), ["The runners were running fast"]);
    assert!(
        page["items"][0]["highlight"]
            .as_str()
            .unwrap()
            .contains("<mark>running</mark>"),
        "{page}"
    );
    assert_eq!(page["items"][0]["message"]["room"], "open");
    let (_, page) = search(&app, &quin, "foxes").await;
    assert_eq!(
        contents(&page),
        [
            "secret fox plans <b>bold</b>",
            "a doomed fox",
            "the fox is brown and quick",
            "a quick brown fox jumps"
        ]
    );
    // Markup in content never reaches the highlight unescaped (PostgreSQL's headline drops
    // tags, SQLite's snippet keeps them: escaped).
    let secret = page["items"][0]["highlight"].as_str().unwrap();
    assert!(secret.contains("<mark>fox</mark>"), "{secret}");
    assert!(!secret.contains("<b>"), "{secret}");
    // A phrase.
    let (_, page) = search(&app, &quin, "\"brown fox\"").await;
    assert_eq!(contents(&page), ["a quick brown fox jumps"]);
    // Only rooms the caller may read now.
    let (_, page) = search(&app, &rae, "fox").await;
    assert_eq!(contents(&page).len(), 3, "{page}");
    let (status, _) = app
        .get(
            "/api/v1/search/messages?q=fox&room=secret",
            Some(&rae.access),
        )
        .await;
    assert_eq!(status, 404);
    let (_, page) = app
        .get(
            "/api/v1/search/messages?q=fox&room=secret",
            Some(&quin.access),
        )
        .await;
    assert_eq!(contents(&page), ["secret fox plans <b>bold</b>"]);
    // Edits re-index, deletes leave the index.
    let (status, _) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/rooms/open/messages/{}", edited["id"]),
            Some(&quin.access),
            Some(json!({"content": "now a hidden giraffe"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/open/messages/{}", deleted["id"]),
            Some(&quin.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        contents(&search(&app, &quin, "giraffe").await.1),
        ["now a hidden giraffe"]
    );
    assert!(contents(&search(&app, &quin, "nothing").await.1).is_empty());
    assert!(contents(&search(&app, &quin, "doomed").await.1).is_empty());
    // Pages with an opaque cursor.
    let (_, first) = app
        .get("/api/v1/search/messages?q=fox&limit=2", Some(&quin.access))
        .await;
    assert_eq!(contents(&first).len(), 2);
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, second) = app
        .get(
            &format!("/api/v1/search/messages?q=fox&limit=2&cursor={cursor}"),
            Some(&quin.access),
        )
        .await;
    assert_eq!(contents(&second), ["a quick brown fox jumps"]);
    assert_eq!(second["next_cursor"], Value::Null);
    let (status, body) = app
        .get(
            "/api/v1/search/messages?q=fox&cursor=abc",
            Some(&quin.access),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["fields"]["cursor"].is_array());
    // Query syntax never fails; a missing or blank query is a 422.
    for q in [
        "\"unclosed",
        "fox AND (",
        "* NEAR(a b",
        "-",
        "OR",
        "col:fox",
        "a\"b\"\"c",
        "!!!",
    ] {
        let (status, body) = search(&app, &quin, q).await;
        assert_eq!(status, 200, "{q}: {body}");
    }
    for url in [
        "/api/v1/search/messages",
        "/api/v1/search/messages?q=%20%20",
    ] {
        let (status, body) = app.get(url, Some(&quin.access)).await;
        assert_eq!(status, 422, "{url}: {body}");
        assert!(body["error"]["fields"]["q"].is_array());
    }
    let (status, _) = app.get("/api/v1/search/messages?q=fox", None).await;
    assert_eq!(status, 401);
});

// PostgreSQL indexes in the background, at most 1 000 messages of a room per pass: a backlog
// longer than that (and a room with one message beside it) is indexed to its end, and a
// deleted room leaves no hits.
dual_test!(search_catches_up_on_a_backlog, |b| async move {
    let app = spawn_app(b).await;
    let ada = app.register("ada").await;
    app.create_room(&ada, "busy", "public").await;
    app.create_room(&ada, "quiet", "public").await;
    app.post_message(&ada, "busy", "first aardvark").await;
    for i in 1..1100 {
        app.post_message(&ada, "busy", &format!("filler {i}")).await;
    }
    app.post_message(&ada, "busy", "last aardvark").await;
    app.post_message(&ada, "quiet", "lone aardvark").await;
    let page = search_until(&app, &ada, "aardvark", 3).await;
    assert_eq!(
        contents(&page),
        ["lone aardvark", "last aardvark", "first aardvark"]
    );
    let (status, _) = app
        .send(
            Method::DELETE,
            "/api/v1/rooms/quiet",
            Some(&ada.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        contents(&search(&app, &ada, "aardvark").await.1),
        ["last aardvark", "first aardvark"]
    );
});

/// PostgreSQL indexes in the background, and `chat_server::SEARCH_INDEX_LOCK` pauses it: while a
/// session holds the lock nothing is indexed. An edit or a deletion made before the indexer
/// reached the message wins: once released, the indexer passes both (a later message of the
/// room is found) and brings back neither the old words nor the deleted message. (The race
/// inside one indexer statement, an edit committing between its read and its insert, is left
/// to `ON CONFLICT DO NOTHING`; this test does not interleave it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: the indexer is held by a PostgreSQL advisory lock"
)]
async fn an_edit_or_deletion_before_indexing_wins() {
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};
    let url = fresh_database(Backend::Postgres).await;
    let app = spawn_with(chat_server::Config::for_tests(&url)).await;
    // One connection: the lock belongs to its session.
    let mut opts = ConnectOptions::new(url.clone());
    opts.max_connections(1).sqlx_logging(false);
    let holder = Database::connect(opts).await.expect("connect");
    holder
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT pg_advisory_lock({})",
                chat_server::SEARCH_INDEX_LOCK
            ),
        ))
        .await
        .expect("hold the indexer");

    let ada = app.register("ada").await;
    app.create_room(&ada, "drafts", "public").await;
    let edited = app.post_message(&ada, "drafts", "an early zebra").await;
    let deleted = app.post_message(&ada, "drafts", "a doomed walrus").await;
    // Held: the indexer sweeps every 200 ms, none of them may index.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        contents(&search(&app, &ada, "zebra").await.1).is_empty(),
        "indexed while the lock was held"
    );
    let (status, _) = app
        .send(
            Method::PATCH,
            &format!("/api/v1/rooms/drafts/messages/{}", edited["id"]),
            Some(&ada.access),
            Some(json!({"content": "a later yak"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/drafts/messages/{}", deleted["id"]),
            Some(&ada.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    app.post_message(&ada, "drafts", "the last quokka").await;
    holder.close().await.expect("release the indexer");

    // The room is indexed in `seq` order: once its last message is found, the indexer has
    // passed the edited and the deleted one.
    search_until(&app, &ada, "quokka", 1).await;
    assert_eq!(
        contents(&search(&app, &ada, "yak").await.1),
        ["a later yak"]
    );
    assert!(contents(&search(&app, &ada, "zebra").await.1).is_empty());
    assert!(contents(&search(&app, &ada, "walrus").await.1).is_empty());
}

dual_test!(the_migration_runs_forward_over_v1_data, |b| async move {
    use migration::MigratorTrait;
    let url = fresh_database(b).await;
    // Data written before this migration: roll the schema back to v1 around it.
    let db = sea_orm::Database::connect(&url).await.expect("connect");
    migration::Migrator::up(&db, None).await.expect("migrate");
    let newer = u32::try_from(migration::Migrator::migrations().len() - 1).unwrap();
    migration::Migrator::down(&db, Some(newer))
        .await
        .expect("down to v1");
    let mut config = chat_server::Config::for_tests(&url);
    config.auto_migrate = false;
    {
        let v1 = spawn_with(config.clone()).await;
        assert!(!v1.state.schema_current(), "v1 schema");
    }
    seed_v1(&db).await;
    migration::Migrator::up(&db, None)
        .await
        .expect("forward over v1 data");
    db.close().await.ok();

    let app = spawn_with(config).await;
    assert!(app.state.schema_current());
    let (status, login) = app.login("elder", PASSWORD).await;
    assert_eq!(status, 200, "{login}");
    let token = login["access"].as_str().unwrap().to_owned();
    let (status, page) = app
        .get("/api/v1/search/messages?q=elephants", Some(&token))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        contents(&page),
        ["an archived elephant"],
        "old messages are indexed"
    );
    assert!(
        contents(
            &app.get("/api/v1/search/messages?q=gone", Some(&token))
                .await
                .1
        )
        .is_empty()
    );
    let (_, history) = app.get("/api/v1/rooms/legacy/messages", Some(&token)).await;
    let old = &history["items"][0];
    assert_eq!(old["reply_count"], 0, "{old}");
    assert_eq!(old["reply_to"], Value::Null);
    assert_eq!(old["reactions"], json!([]));
    let (status, reply) = app
        .post(
            "/api/v1/rooms/legacy/messages",
            Some(&token),
            json!({"content": "still here", "reply_to": old["id"]}),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["seq"], 3, "the room's counter carries on");
});

/// A v1 database's rows, written as the v1 binary wrote them: a user (password
/// [`PASSWORD`]), a public room, a live message and a deleted one.
async fn seed_v1(db: &sea_orm::DatabaseConnection) {
    use sea_orm::ConnectionTrait;
    let hash = {
        use argon2::password_hash::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(PASSWORD.as_bytes())
            .unwrap()
            .to_string()
    };
    let now = "2026-11-30 12:00:00+00:00";
    for sql in [
        format!(
            "INSERT INTO users (id, username, username_lower, email, email_lower, password_hash, roles, created_at, updated_at) \
             VALUES (1, 'elder', 'elder', 'elder@example.com', 'elder@example.com', '{hash}', 'user', '{now}', '{now}')"
        ),
        format!(
            "INSERT INTO rooms (id, name, visibility, owner_id, last_seq, created_at, updated_at) \
             VALUES (1, 'legacy', 'public', 1, 2, '{now}', '{now}')"
        ),
        format!(
            "INSERT INTO room_members (room_id, user_id, role, joined_at) VALUES (1, 1, 'owner', '{now}')"
        ),
        format!(
            "INSERT INTO messages (id, room_id, seq, author_id, content, created_at) \
             VALUES (1, 1, 1, 1, 'an archived elephant', '{now}')"
        ),
        format!(
            "INSERT INTO messages (id, room_id, seq, author_id, content, created_at, deleted_at) \
             VALUES (2, 1, 2, 1, '', '{now}', '{now}')"
        ),
    ] {
        db.execute_unprepared(&sql).await.expect(&sql);
    }
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        for t in ["users", "rooms", "messages"] {
            db.execute_unprepared(&format!(
                "SELECT setval(pg_get_serial_sequence('{t}', 'id'), 10)"
            ))
            .await
            .expect("sequence");
        }
    }
}

dual_test!(
    reactions_are_rate_limited_like_other_fan_out_frames,
    |b| async move {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let db = fresh_database(b).await;
        let mut config = chat_server::Config::for_tests(&db);
        // The slowest refill there is: the burst, not the machine's speed, bounds what passes.
        config.frame_rate_per_sec = 1;
        config.frame_rate_burst = 20;
        let app = spawn_with(config).await;
        let flooder = app.register("react_flooder").await;
        let watcher = app.register("react_watcher").await;
        app.create_room(&flooder, "rflood", "public").await;
        app.join_room(&watcher, "rflood").await;
        let msg = app.post_message(&watcher, "rflood", "target").await;
        let mut watching = ws_connect(&app.ws_url(""), "rflood", &watcher.access, None).await;
        expect_ready(&mut watching).await;
        let mut flooding = ws_connect(&app.ws_url(""), "rflood", &flooder.access, None).await;
        expect_ready(&mut flooding).await;
        for i in 0..300 {
            let frame = json!({"type": "react", "id": msg["id"], "emoji": "👍", "on": i % 2 == 0});
            if flooding
                .feed(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
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
        app.post_message(&watcher, "rflood", "marker").await;
        let reactions = frames_before(&mut watching, "marker")
            .await
            .into_iter()
            .filter(|f| f["type"] == "reaction")
            .count();
        assert!(
            (1..=30).contains(&reactions),
            "{reactions} reaction events reached the room"
        );
        // REST reactions are under the same per-user limit: a burst of them is refused in part.
        let mut statuses = Vec::new();
        for i in 0..100 {
            let method = if i % 2 == 0 {
                Method::PUT
            } else {
                Method::DELETE
            };
            let path = reaction_path("rflood", &msg["id"], "🎉");
            statuses.push(app.send(method, &path, Some(&watcher.access), None).await.0);
        }
        assert!(statuses.contains(&429), "{statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 204 || *s == 429),
            "{statuses:?}"
        );
    }
);
