//! docs/protocol.md#messages: history, idempotent sends, edits and deletes.

use serde_json::json;

use crate::{dual_test, support::*};

dual_test!(send_history_and_pagination, |b| async move {
    let app = spawn_app(b).await;
    let jan = app.register("jan").await;
    let kai = app.register("kai").await;
    app.create_room(&jan, "hist", "public").await;
    for i in 1..=7 {
        let (status, msg) = app
            .post(
                "/api/v1/rooms/hist/messages",
                Some(&jan.access),
                json!({"content": format!("m{i}")}),
            )
            .await;
        assert_eq!(status, 201, "{msg}");
        assert_eq!(msg["seq"], i);
        assert_eq!(msg["room"], "hist");
        assert_eq!(msg["user"]["username"], "jan");
    }
    let (status, _) = app
        .post(
            "/api/v1/rooms/hist/messages",
            Some(&kai.access),
            json!({"content": "not a member"}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, page) = app
        .get("/api/v1/rooms/hist/messages?limit=3", Some(&kai.access))
        .await;
    assert_eq!(status, 200);
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [5, 6, 7]);
    assert_eq!(page["has_more"], true);
    let (_, page) = app
        .get(
            "/api/v1/rooms/hist/messages?before_seq=5&limit=3",
            Some(&kai.access),
        )
        .await;
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    let (_, page) = app
        .get("/api/v1/rooms/hist/messages?after_seq=5", Some(&kai.access))
        .await;
    let seqs: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7]);
    assert_eq!(page["has_more"], false);
    let (status, _) = app
        .get("/api/v1/rooms/hist/messages?limit=abc", Some(&kai.access))
        .await;
    assert_eq!(status, 400);
    let (_, room) = app.get("/api/v1/rooms/hist", Some(&kai.access)).await;
    assert_eq!(room["last_seq"], 7);
});

dual_test!(content_rules_and_stored_as_sent, |b| async move {
    let app = spawn_app(b).await;
    let lia = app.register("lia").await;
    app.create_room(&lia, "rules", "public").await;
    for bad in [
        json!({"content": ""}),
        json!({"content": "   "}),
        json!({"content": "x".repeat(4001)}),
        json!({}),
    ] {
        let (status, body) = app
            .post("/api/v1/rooms/rules/messages", Some(&lia.access), bad)
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["fields"]["content"].is_array());
    }
    let (status, _) = app
        .post(
            "/api/v1/rooms/rules/messages",
            Some(&lia.access),
            json!({"content": 42}),
        )
        .await;
    assert_eq!(status, 400);
    let tricky = "<script>alert(1)</script> '; DROP TABLE messages; -- ünïcödé 🎉";
    let (status, msg) = app
        .post(
            "/api/v1/rooms/rules/messages",
            Some(&lia.access),
            json!({"content": tricky}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(msg["content"], tricky);
    let (status, _) = app
        .post(
            "/api/v1/rooms/rules/messages",
            Some(&lia.access),
            json!({"content": "é".repeat(4000)}),
        )
        .await;
    assert_eq!(status, 201, "4000 characters, not bytes");
    let (_, page) = app
        .get("/api/v1/rooms/rules/messages", Some(&lia.access))
        .await;
    assert_eq!(page["items"][0]["content"], tricky);
});

dual_test!(client_id_is_idempotent, |b| async move {
    let app = spawn_app(b).await;
    let max = app.register("max").await;
    let ned = app.register("ned").await;
    app.create_room(&max, "idem", "public").await;
    app.join_room(&ned, "idem").await;
    let (s1, first) = app
        .post(
            "/api/v1/rooms/idem/messages",
            Some(&max.access),
            json!({"content": "once", "client_id": "c-1"}),
        )
        .await;
    let (s2, again) = app
        .post(
            "/api/v1/rooms/idem/messages",
            Some(&max.access),
            json!({"content": "once", "client_id": "c-1"}),
        )
        .await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["seq"], again["seq"]);
    assert_eq!(again["client_id"], "c-1");
    // Another author may use the same key.
    let (s3, other) = app
        .post(
            "/api/v1/rooms/idem/messages",
            Some(&ned.access),
            json!({"content": "mine", "client_id": "c-1"}),
        )
        .await;
    assert_eq!(s3, 201);
    assert_eq!(other["seq"], 2);
    let (_, page) = app
        .get("/api/v1/rooms/idem/messages", Some(&max.access))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let (status, _) = app
        .post(
            "/api/v1/rooms/idem/messages",
            Some(&max.access),
            json!({"content": "x", "client_id": "k".repeat(65)}),
        )
        .await;
    assert_eq!(status, 422);
});

dual_test!(edit_and_delete_permissions, |b| async move {
    let app = spawn_app(b).await;
    let owner = app.register("olive").await;
    let author = app.register("paul").await;
    let other = app.register("quinn").await;
    app.create_room(&owner, "edits", "public").await;
    for u in [&author, &other] {
        app.join_room(u, "edits").await;
    }
    let msg = app.post_message(&author, "edits", "typo").await;
    let path = format!("/api/v1/rooms/edits/messages/{}", msg["id"]);
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&other.access),
            Some(json!({"content": "hijack"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, edited) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&author.access),
            Some(json!({"content": "fixed"})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["content"], "fixed");
    assert!(edited["edited_at"].is_string());
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            &path,
            Some(&author.access),
            Some(json!({"content": ""})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&other.access), None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&owner.access), None)
        .await;
    assert_eq!(status, 204, "the room owner may delete");
    let (status, _) = app
        .send(reqwest::Method::DELETE, &path, Some(&author.access), None)
        .await;
    assert_eq!(status, 404);
    let (_, page) = app
        .get("/api/v1/rooms/edits/messages", Some(&author.access))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/rooms/edits/messages/99999",
            Some(&author.access),
            Some(json!({"content": "x"})),
        )
        .await;
    assert_eq!(status, 404);
});
