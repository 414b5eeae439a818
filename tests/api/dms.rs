//! docs/protocol.md#conversations, part A: direct messages, read state (unread and mention counts, receipts) and
//! mentions, over real HTTP and WebSocket, on SQLite and PostgreSQL; the cross-replica
//! events and the DM race in cluster mode.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{dual_test, support::*};

async fn patch(app: &Client, path: &str, token: &str, body: Value) -> (u16, Value) {
    app.send(Method::PATCH, path, Some(token), Some(body)).await
}

/// The room named `name` in the caller's joined-rooms list.
async fn joined(app: &Client, user: &User, name: &str) -> Value {
    let (status, page) = app
        .get("/api/v1/rooms?joined=true&limit=100", Some(&user.access))
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {page}"))
}

async fn read(app: &Client, user: &User, room: &str, seq: i64) -> u16 {
    app.post(
        &format!("/api/v1/rooms/{room}/read"),
        Some(&user.access),
        json!({"seq": seq}),
    )
    .await
    .0
}

fn usernames(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_owned())
        .collect()
}

dual_test!(a_dm_is_the_one_room_of_its_people, |b| async move {
    let app = spawn_app(b).await;
    let ann = app.register("ann").await;
    let ben = app.register("ben").await;
    let cid = app.register("cid").await;
    let (status, dm) = app
        .post(
            "/api/v1/dms",
            Some(&ann.access),
            json!({"user_ids": [ben.id]}),
        )
        .await;
    assert_eq!(status, 201, "{dm}");
    assert_eq!(dm["kind"], "dm");
    assert_eq!(dm["visibility"], "private");
    assert_eq!(usernames(&dm["members"]), ["ann", "ben"]);
    let name = dm["name"].as_str().unwrap().to_owned();
    // The same set, from the other member, and with repeats: the same room.
    let (status, again) = app
        .post(
            "/api/v1/dms",
            Some(&ben.access),
            json!({"user_ids": [ann.id, ann.id]}),
        )
        .await;
    assert_eq!(
        (status, &again["id"], &again["name"]),
        (200, &dm["id"], &dm["name"])
    );
    // JSON has one number type: an integral `2.0` is the id 2.
    #[allow(clippy::cast_precision_loss)]
    let as_float = json!({"user_ids": [ben.id as f64]});
    let (status, again) = app.post("/api/v1/dms", Some(&ann.access), as_float).await;
    assert_eq!((status, &again["id"]), (200, &dm["id"]), "{again}");
    // A group DM is another room, whatever the order.
    let (status, group) = app
        .post(
            "/api/v1/dms",
            Some(&cid.access),
            json!({"user_ids": [ben.id, ann.id]}),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    assert_ne!(group["id"], dm["id"]);
    let (status, same) = app
        .post(
            "/api/v1/dms",
            Some(&ann.access),
            json!({"user_ids": [cid.id, ben.id]}),
        )
        .await;
    assert_eq!((status, &same["id"]), (200, &group["id"]));
    assert_eq!(usernames(&same["members"]), ["ann", "ben", "cid"]);
    // Bad sets: 422 on `user_ids`.
    let unknown = cid.id + 1000;
    for body in [
        json!({"user_ids": []}),
        json!({"user_ids": [ann.id]}),
        json!({"user_ids": [unknown]}),
        json!({"user_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9]}),
        json!({}),
    ] {
        let (status, err) = app
            .post("/api/v1/dms", Some(&ann.access), body.clone())
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(err["error"]["fields"]["user_ids"].is_array(), "{err}");
    }
    // Nobody joins or is invited; outsiders do not see it (to them it is no room at all).
    let (status, _) = app
        .post(
            &format!("/api/v1/rooms/{name}/join"),
            Some(&cid.access),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .get(&format!("/api/v1/rooms/{name}"), Some(&cid.access))
        .await;
    assert_eq!(status, 404);
    let (status, _) = app
        .post(
            &format!("/api/v1/rooms/{name}/members"),
            Some(&ann.access),
            json!({"user_id": cid.id}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = patch(
        &app,
        &format!("/api/v1/rooms/{name}"),
        &ann.access,
        json!({"visibility": "public"}),
    )
    .await;
    assert_eq!(status, 403);
    // Members talk in it like in any room.
    app.post_message(&ben, &name, "hello ann").await;
    let (status, page) = app
        .get(&format!("/api/v1/rooms/{name}/messages"), Some(&ann.access))
        .await;
    assert_eq!(
        (status, page["items"][0]["content"].as_str()),
        (200, Some("hello ann"))
    );
    // Other rooms are of kind `room`; names starting with `dm-` are reserved.
    let room = app.create_room(&ann, "plain", "public").await;
    assert_eq!(room["kind"], "room");
    assert!(room.get("members").is_none(), "{room}");
    let (status, _) = app
        .post(
            "/api/v1/rooms",
            Some(&ann.access),
            json!({"name": "dm-mine"}),
        )
        .await;
    assert_eq!(status, 422);
    // A user refusing DMs: 403 for a new DM with them; the flags are in their profile.
    let (status, me) = patch(
        &app,
        "/api/v1/users/me",
        &cid.access,
        json!({"accept_dms": false, "send_receipts": false}),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["accept_dms"].as_bool(), me["send_receipts"].as_bool()),
        (Some(false), Some(false))
    );
    let (_, me) = app.get("/api/v1/users/me", Some(&ann.access)).await;
    assert_eq!(
        (me["accept_dms"].as_bool(), me["send_receipts"].as_bool()),
        (Some(true), Some(true))
    );
    let (status, err) = app
        .post(
            "/api/v1/dms",
            Some(&ann.access),
            json!({"user_ids": [cid.id]}),
        )
        .await;
    assert_eq!(status, 403, "{err}");
});

dual_test!(dms_are_listed_by_latest_activity, |b| async move {
    let app = spawn_app(b).await;
    let me = app.register("lister").await;
    let mut names = Vec::new();
    for who in ["pal1", "pal2", "pal3"] {
        let pal = app.register(who).await;
        let (status, dm) = app
            .post(
                "/api/v1/dms",
                Some(&me.access),
                json!({"user_ids": [pal.id]}),
            )
            .await;
        assert_eq!(status, 201);
        names.push(dm["name"].as_str().unwrap().to_owned());
    }
    // A room that is not a DM is not listed.
    app.create_room(&me, "notadm", "public").await;
    // The oldest DM gets a message: it comes first.
    app.post_message(&me, &names[0], "bump").await;
    let (status, page) = app.get("/api/v1/dms?limit=2", Some(&me.access)).await;
    assert_eq!(status, 200, "{page}");
    let first: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(first, [names[0].as_str(), names[2].as_str()]);
    assert_eq!(page["items"][0]["unread"], 0, "own messages are not unread");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let (status, rest) = app
        .get(
            &format!("/api/v1/dms?limit=2&cursor={cursor}"),
            Some(&me.access),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["name"], names[1].as_str());
    assert!(rest["next_cursor"].is_null());
    let (status, _) = app.get("/api/v1/dms?cursor=nope", Some(&me.access)).await;
    assert_eq!(status, 422);
});

dual_test!(unread_and_mention_counts_follow_reading, |b| async move {
    let app = spawn_app(b).await;
    let ada = app.register("Ada").await;
    let bo = app.register("bo_b").await;
    let out = app.register("outsider").await;
    app.create_room(&ada, "talk", "public").await;
    app.join_room(&bo, "talk").await;
    app.post_message(&bo, "talk", "one").await; // 1
    let m2 = app
        .post_message(&bo, "talk", "hey @ada and @outsider, ping @nobody")
        .await; // 2
    // Only members of the room are mentioned, with their own spelling of the name.
    assert_eq!(usernames(&m2["mentions"]), ["Ada"]);
    assert_eq!(m2["mentions"][0]["id"], ada.id);
    app.post_message(&ada, "talk", "mine @bo_b").await; // 3
    app.post_message(&bo, "talk", "four").await; // 4
    let room = joined(&app, &ada, "talk").await;
    assert_eq!(
        (
            room["unread"].as_i64(),
            room["mentions"].as_i64(),
            room["last_read_seq"].as_i64()
        ),
        (Some(3), Some(1), Some(0)),
        "{room}"
    );
    let room = joined(&app, &bo, "talk").await;
    assert_eq!(
        (room["unread"].as_i64(), room["mentions"].as_i64()),
        (Some(1), Some(1)),
        "{room}"
    );
    // History carries the mentions.
    let (_, page) = app
        .get("/api/v1/rooms/talk/messages", Some(&ada.access))
        .await;
    assert_eq!(usernames(&page["items"][1]["mentions"]), ["Ada"]);
    assert_eq!(
        usernames(&page["items"][0]["mentions"]),
        Vec::<String>::new()
    );
    // Reading moves forward only; beyond the end it is clamped.
    assert_eq!(read(&app, &ada, "talk", 2).await, 204);
    let room = joined(&app, &ada, "talk").await;
    assert_eq!(
        (
            room["unread"].as_i64(),
            room["mentions"].as_i64(),
            room["last_read_seq"].as_i64()
        ),
        (Some(1), Some(0), Some(2))
    );
    assert_eq!(read(&app, &ada, "talk", 1).await, 204);
    assert_eq!(joined(&app, &ada, "talk").await["last_read_seq"], 2);
    assert_eq!(read(&app, &ada, "talk", 999).await, 204);
    let room = joined(&app, &ada, "talk").await;
    assert_eq!(
        (room["unread"].as_i64(), room["last_read_seq"].as_i64()),
        (Some(0), Some(4))
    );
    // A deleted message is not unread.
    let m5 = app.post_message(&bo, "talk", "oops @Ada").await;
    assert_eq!(joined(&app, &ada, "talk").await["mentions"], 1);
    let (status, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/rooms/talk/messages/{}", m5["id"]),
            Some(&bo.access),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let room = joined(&app, &ada, "talk").await;
    assert_eq!(
        (room["unread"].as_i64(), room["mentions"].as_i64()),
        (Some(0), Some(0))
    );
    // An edit resolves the mentions again.
    let m6 = app.post_message(&bo, "talk", "plain").await;
    let (status, edited) = patch(
        &app,
        &format!("/api/v1/rooms/talk/messages/{}", m6["id"]),
        &bo.access,
        json!({"content": "now @ADA"}),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(usernames(&edited["mentions"]), ["Ada"]);
    assert_eq!(joined(&app, &ada, "talk").await["mentions"], 1);
    // Bad input and non-members.
    assert_eq!(read(&app, &ada, "talk", -1).await, 422);
    let (status, _) = app
        .post("/api/v1/rooms/talk/read", Some(&ada.access), json!({}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(read(&app, &out, "talk", 1).await, 403);
    assert_eq!(read(&app, &out, "nosuchroom", 1).await, 404);
    // DMs carry the same state.
    let (_, dm) = app
        .post(
            "/api/v1/dms",
            Some(&bo.access),
            json!({"user_ids": [ada.id]}),
        )
        .await;
    let dm_name = dm["name"].as_str().unwrap().to_owned();
    app.post_message(&bo, &dm_name, "psst @ada").await;
    let (_, page) = app.get("/api/v1/dms", Some(&ada.access)).await;
    let item = &page["items"][0];
    assert_eq!(
        (
            item["unread"].as_i64(),
            item["mentions"].as_i64(),
            item["last_read_seq"].as_i64()
        ),
        (Some(1), Some(1), Some(0)),
        "{page}"
    );
});

dual_test!(read_frames_send_throttled_receipts, |b| async move {
    let app = spawn_app(b).await;
    let rea = app.register("reader").await;
    let wat = app.register("watcher").await;
    app.create_room(&rea, "rr", "public").await;
    app.join_room(&wat, "rr").await;
    for i in 1..=4 {
        app.post_message(&wat, "rr", &format!("m{i}")).await;
    }
    assert_eq!(read(&app, &rea, "rr", 1).await, 204);
    let mut watcher = ws_connect(&app.ws_url(""), "rr", &wat.access, None).await;
    let ready = expect_ready(&mut watcher).await;
    assert_eq!(ready["last_read_seq"], 0);
    let mut reader = ws_connect(&app.ws_url(""), "rr", &rea.access, None).await;
    let ready = expect_ready(&mut reader).await;
    assert_eq!(ready["last_read_seq"], 1);
    // Two reads in a row: the first goes out at once or is throttled after the REST read;
    // either way the latest value arrives.
    ws_send(&mut reader, json!({"type": "read", "seq": 2})).await;
    ws_send(&mut reader, json!({"type": "read", "seq": 3})).await;
    let mut last = 0;
    while last < 3 {
        let r = next_of(&mut watcher, "receipt", 10).await.expect("receipt");
        assert_eq!(
            (r["room"].as_str(), r["user"]["username"].as_str()),
            (Some("rr"), Some("reader"))
        );
        let seq = r["seq"].as_i64().unwrap();
        assert!(seq > last, "receipts move forward: {seq} after {last}");
        last = seq;
    }
    assert_eq!(joined(&app, &rea, "rr").await["last_read_seq"], 3);
    // A bad read frame gets an error; the socket stays usable.
    ws_send(&mut reader, json!({"type": "read", "seq": "x"})).await;
    assert_eq!(
        next_of(&mut reader, "error", 10).await.expect("error")["code"],
        "invalid_frame"
    );
    // Opted out: no receipt for the reads that follow.
    let (status, _) = patch(
        &app,
        "/api/v1/users/me",
        &rea.access,
        json!({"send_receipts": false}),
    )
    .await;
    assert_eq!(status, 200);
    ws_send(&mut reader, json!({"type": "read", "seq": 4})).await;
    // The read is recorded before the marker is posted (the frame is handled in order).
    ws_send(&mut reader, json!({"type": "ping"})).await;
    next_of(&mut reader, "pong", 10).await.expect("pong");
    let room = joined(&app, &rea, "rr").await;
    assert_eq!(room["last_read_seq"], 4);
    app.post_message(&wat, "rr", "marker").await;
    let before = frames_before(&mut watcher, "marker").await;
    assert!(
        !before
            .iter()
            .any(|f| f["type"] == "receipt" && f["seq"] == 4),
        "no receipt after opting out: {before:?}"
    );
    // The multiplexed endpoint: `subscribed` carries it, `read` names the room.
    let (mut mux, _) =
        tokio_tungstenite::connect_async(app.ws_url(&format!("/ws?token={}", wat.access)))
            .await
            .expect("upgrade");
    ws_send(&mut mux, json!({"type": "subscribe", "room": "rr"})).await;
    let sub = next_of(&mut mux, "subscribed", 10)
        .await
        .expect("subscribed");
    assert_eq!(sub["last_read_seq"], 0);
    ws_send(&mut mux, json!({"type": "read", "room": "rr", "seq": 5})).await;
    ws_send(&mut mux, json!({"type": "read", "seq": 5})).await;
    assert_eq!(
        next_of(&mut mux, "error", 10).await.expect("error")["code"],
        "invalid_frame"
    );
    assert_eq!(joined(&app, &wat, "rr").await["last_read_seq"], 5);
});

dual_test!(
    mentions_reach_the_users_multiplexed_sockets,
    |b| async move {
        let app = spawn_app(b).await;
        let poster = app.register("poster").await;
        let target = app.register("target").await;
        app.create_room(&poster, "hall", "public").await;
        app.create_room(&target, "elsewhere", "public").await;
        app.join_room(&target, "hall").await;
        // Subscribed to another room only.
        let (mut mux, _) =
            tokio_tungstenite::connect_async(app.ws_url(&format!("/ws?token={}", target.access)))
                .await
                .expect("upgrade");
        ws_send(&mut mux, json!({"type": "subscribe", "room": "elsewhere"})).await;
        next_of(&mut mux, "subscribed", 10)
            .await
            .expect("subscribed");
        let mut ws = ws_connect(&app.ws_url(""), "hall", &poster.access, None).await;
        expect_ready(&mut ws).await;
        ws_send(
            &mut ws,
            json!({"type": "message", "content": "over here @Target!"}),
        )
        .await;
        let live = next_of(&mut ws, "message", 10).await.expect("message");
        assert_eq!(usernames(&live["mentions"]), ["target"]);
        let m = next_of(&mut mux, "mention", 10).await.expect("mention");
        assert_eq!(m["room"], "hall");
        assert_eq!(m["message"]["content"], "over here @Target!");
        assert_eq!(usernames(&m["message"]["mentions"]), ["target"]);
        // Replay carries the mentions too.
        let mut late = ws_connect(&app.ws_url(""), "hall", &target.access, Some(0)).await;
        expect_ready(&mut late).await;
        let replayed = next_of(&mut late, "message", 10).await.expect("replayed");
        assert_eq!(usernames(&replayed["mentions"]), ["target"]);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn two_members_opening_the_same_dm_on_two_replicas_get_one_room() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    for round in 0..5 {
        let a = apps[0].register(&format!("racea{round}")).await;
        let b = apps[1].register(&format!("raceb{round}")).await;
        let (ra, rb) = tokio::join!(
            apps[0].post("/api/v1/dms", Some(&a.access), json!({"user_ids": [b.id]})),
            apps[1].post("/api/v1/dms", Some(&b.access), json!({"user_ids": [a.id]})),
        );
        assert_eq!(ra.1["id"], rb.1["id"], "one room: {ra:?} {rb:?}");
        let mut statuses = [ra.0, rb.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 201], "one created, one found");
        assert_eq!(usernames(&ra.1["members"]).len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn receipts_and_mentions_cross_replicas() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let ada = apps[0].register("xada").await;
    let bea = apps[1].register("xbea").await;
    apps[0].create_room(&ada, "xroom", "public").await;
    apps[1].join_room(&bea, "xroom").await;
    apps[1].post_message(&bea, "xroom", "first").await;
    // Bea listens on replica 1: to the room, and on /ws subscribed to nothing.
    let mut room_ws = ws_connect(&apps[1].ws_url(""), "xroom", &bea.access, None).await;
    expect_ready(&mut room_ws).await;
    let (mut mux, _) =
        tokio_tungstenite::connect_async(apps[1].ws_url(&format!("/ws?token={}", bea.access)))
            .await
            .expect("upgrade");
    next_of(&mut mux, "ready", 10).await.expect("ready");
    // Ada reads and mentions on replica 0.
    assert_eq!(read(&apps[0], &ada, "xroom", 1).await, 204);
    let r = next_of(&mut room_ws, "receipt", 10)
        .await
        .expect("receipt from the other replica");
    assert_eq!(
        (r["user"]["username"].as_str(), r["seq"].as_i64()),
        (Some("xada"), Some(1))
    );
    apps[0].post_message(&ada, "xroom", "@xbea see this").await;
    let m = next_of(&mut mux, "mention", 10)
        .await
        .expect("mention from the other replica");
    assert_eq!(
        (m["room"].as_str(), m["message"]["content"].as_str()),
        (Some("xroom"), Some("@xbea see this"))
    );
}

dual_test!(
    the_migration_runs_forward_over_existing_data,
    |b| async move {
        use migration::MigratorTrait;
        let url = fresh_database(b).await;
        // Data written by a server, then the schema taken back to the version before this
        // migration (its `down`), so the migration runs again over rows it did not create.
        let app = spawn_with(chat_server::Config::for_tests(&url)).await;
        let old = app.register("oldtimer").await;
        let other = app.register("other_old").await;
        app.create_room(&old, "legacy", "public").await;
        app.join_room(&other, "legacy").await;
        app.post_message(&other, "legacy", "from before @oldtimer")
            .await;
        drop(app);
        let db = sea_orm::Database::connect(&url).await.expect("connect");
        // Every migration after the initial one is rolled back.
        let newer = u32::try_from(migration::Migrator::migrations().len() - 1).unwrap();
        migration::Migrator::down(&db, Some(newer))
            .await
            .expect("down to the initial schema");
        migration::Migrator::up(&db, None)
            .await
            .expect("forward over existing data");
        db.close().await.ok();
        let app = spawn_with(chat_server::Config::for_tests(&url)).await;
        let (status, login) = app.login("oldtimer", PASSWORD).await;
        assert_eq!(status, 200, "{login}");
        let token = login["access"].as_str().unwrap().to_owned();
        let (_, me) = app.get("/api/v1/users/me", Some(&token)).await;
        assert_eq!(
            (me["accept_dms"].as_bool(), me["send_receipts"].as_bool()),
            (Some(true), Some(true))
        );
        let (_, page) = app.get("/api/v1/rooms?joined=true", Some(&token)).await;
        let room = &page["items"][0];
        assert_eq!(
            (
                room["kind"].as_str(),
                room["unread"].as_i64(),
                room["last_read_seq"].as_i64()
            ),
            (Some("room"), Some(1), Some(0)),
            "{page}"
        );
        let (_, history) = app.get("/api/v1/rooms/legacy/messages", Some(&token)).await;
        assert_eq!(history["items"][0]["content"], "from before @oldtimer");
        let (status, dm) = app
            .post("/api/v1/dms", Some(&token), json!({"user_ids": [other.id]}))
            .await;
        assert_eq!(status, 201, "{dm}");
    }
);
