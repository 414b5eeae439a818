//! docs/protocol.md#rooms: rooms, private rooms, invitations, kicks, join-or-create, members.

use serde_json::json;

use crate::{dual_test, support::*};

dual_test!(create_get_list_and_conflict, |b| async move {
    let app = spawn_app(b).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "general", "public").await;
    assert_eq!(room["name"], "general");
    assert_eq!(room["visibility"], "public");
    assert_eq!(room["owner"]["username"], "ann");
    assert_eq!(room["member_count"], 1);
    assert_eq!(room["last_seq"], 0);
    let (status, body) = app
        .post(
            "/api/v1/rooms",
            Some(&ann.access),
            json!({"name": "general"}),
        )
        .await;
    assert_eq!(status, 409);
    assert!(body["error"]["fields"]["name"].is_array());
    for bad in ["", "Upper", "-dash", "has space", &"x".repeat(65)] {
        let (status, body) = app
            .post("/api/v1/rooms", Some(&ann.access), json!({"name": bad}))
            .await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["error"]["fields"]["name"].is_array());
    }
    let (status, body) = app
        .post(
            "/api/v1/rooms",
            Some(&ann.access),
            json!({"name": "ok", "visibility": "secret"}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(body["error"]["fields"]["visibility"].is_array());
    app.create_room(&ann, "random", "public").await;
    app.create_room(&ann, "hidden", "private").await;
    let ben = app.register("ben").await;
    let (_, list) = app.get("/api/v1/rooms", Some(&ben.access)).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["general", "random"],
        "private rooms are invisible to non-members"
    );
    let (_, list) = app.get("/api/v1/rooms?q=gen", Some(&ben.access)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = app.get("/api/v1/rooms?limit=1", Some(&ann.access)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let cursor = list["next_cursor"].as_str().unwrap();
    let (_, list2) = app
        .get(
            &format!("/api/v1/rooms?limit=5&cursor={cursor}"),
            Some(&ann.access),
        )
        .await;
    assert_eq!(list2["items"].as_array().unwrap().len(), 2);
    let (_, joined) = app
        .get("/api/v1/rooms?joined=true", Some(&ben.access))
        .await;
    assert_eq!(joined["items"].as_array().unwrap().len(), 0);
    let (status, _) = app.get("/api/v1/rooms/hidden", Some(&ben.access)).await;
    assert_eq!(status, 404);
    let (status, got) = app.get("/api/v1/rooms/general", Some(&ben.access)).await;
    assert_eq!(status, 200);
    assert_eq!(got["name"], "general");
});

dual_test!(join_or_create_join_and_leave, |b| async move {
    let app = spawn_app(b).await;
    let cat = app.register("cat").await;
    let dan = app.register("dan").await;
    let (status, room) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/put-room",
            Some(&cat.access),
            None,
        )
        .await;
    assert_eq!(status, 201, "{room}");
    let (status, room) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/put-room",
            Some(&dan.access),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(room["member_count"], 2);
    let (status, _) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/put-room",
            Some(&dan.access),
            None,
        )
        .await;
    assert_eq!(status, 200, "already a member");
    let (status, _) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/secret",
            Some(&cat.access),
            Some(json!({"visibility": "private"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/secret",
            Some(&dan.access),
            None,
        )
        .await;
    assert_eq!(status, 404, "a private room the caller is not in");
    let (status, _) = app
        .post("/api/v1/rooms/secret/join", Some(&dan.access), json!({}))
        .await;
    assert_eq!(status, 404, "a private room is no room to a non-member");
    let (status, _) = app
        .post("/api/v1/rooms/nope/join", Some(&dan.access), json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .post("/api/v1/rooms/put-room/leave", Some(&dan.access), json!({}))
        .await;
    assert_eq!(status, 204);
    let (status, _) = app
        .post("/api/v1/rooms/put-room/leave", Some(&dan.access), json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, room) = app
        .post("/api/v1/rooms/put-room/join", Some(&dan.access), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(room["member_count"], 2);
});

dual_test!(invites_kicks_and_permissions, |b| async move {
    let app = spawn_app(b).await;
    let eve = app.register("eve").await;
    let fay = app.register("fay").await;
    let gus = app.register("gus").await;
    app.create_room(&eve, "club", "private").await;
    let (status, _) = app
        .post(
            "/api/v1/rooms/club/members",
            Some(&fay.access),
            json!({"user_id": gus.id}),
        )
        .await;
    assert_eq!(status, 404, "non-members cannot see the private room");
    let (status, member) = app
        .post(
            "/api/v1/rooms/club/members",
            Some(&eve.access),
            json!({"user_id": fay.id}),
        )
        .await;
    assert_eq!(status, 201, "{member}");
    assert_eq!(member["user"]["username"], "fay");
    assert_eq!(member["role"], "member");
    let (status, _) = app
        .post(
            "/api/v1/rooms/club/members",
            Some(&fay.access),
            json!({"user_id": gus.id}),
        )
        .await;
    assert_eq!(status, 403, "members cannot invite");
    let (status, _) = app
        .post(
            "/api/v1/rooms/club/members",
            Some(&eve.access),
            json!({"user_id": 999999}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, members) = app
        .get("/api/v1/rooms/club/members", Some(&fay.access))
        .await;
    assert_eq!(status, 200);
    let items = members["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["role"], "owner");
    assert_eq!(items[0]["online"], false);
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/club/members/{}", eve.id),
            Some(&fay.access),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/club/members/{}", fay.id),
            Some(&eve.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/v1/rooms/club", Some(&fay.access)).await;
    assert_eq!(status, 404, "kicked from a private room: invisible again");
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/rooms/club/members/{}", fay.id),
            Some(&eve.access),
            None,
        )
        .await;
    assert_eq!(status, 404);
});

dual_test!(update_and_delete_by_owner_only, |b| async move {
    let app = spawn_app(b).await;
    let hal = app.register("hal").await;
    let ida = app.register("ida").await;
    app.create_room(&hal, "news", "public").await;
    app.join_room(&ida, "news").await;
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/rooms/news",
            Some(&ida.access),
            Some(json!({"topic": "x"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, room) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/rooms/news",
            Some(&hal.access),
            Some(json!({"topic": "Daily news", "visibility": "private"})),
        )
        .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["topic"], "Daily news");
    assert_eq!(room["visibility"], "private");
    let (status, _) = app
        .send(
            reqwest::Method::PATCH,
            "/api/v1/rooms/news",
            Some(&hal.access),
            Some(json!({"visibility": "open"})),
        )
        .await;
    assert_eq!(status, 422);
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            "/api/v1/rooms/news",
            Some(&ida.access),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .send(
            reqwest::Method::DELETE,
            "/api/v1/rooms/news",
            Some(&hal.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _) = app.get("/api/v1/rooms/news", Some(&hal.access)).await;
    assert_eq!(status, 404);
    let (status, _) = app
        .post("/api/v1/rooms", Some(&hal.access), json!({"name": "news"}))
        .await;
    assert_eq!(status, 201, "the name is free again");
});
