//! docs/protocol.md#limits limits: open sockets per user and per address, rooms per multiplexed socket, rooms
//! created per user per hour; in cluster mode each holds across the replicas, not once per
//! replica.

use std::time::Duration;

use serde_json::json;

use crate::{dual_test, support::*};

async fn app_with(b: Backend, tune: impl FnOnce(&mut chat_server::Config)) -> TestApp {
    let db = fresh_database(b).await;
    let mut config = chat_server::Config::for_tests(&db);
    tune(&mut config);
    spawn_with(config).await
}

/// Wait until an upgrade gets `want` (a closed socket's place is given back once its session
/// has ended).
async fn upgrade_until(url: &str, want: u16) {
    wait_until(&format!("an upgrade answered {want}"), async || {
        let got = ws_refused(url).await;
        if got == want { Ok(()) } else { Err(got) }
    })
    .await;
}

dual_test!(
    open_sockets_are_limited_per_user_and_per_address,
    |b| async move {
        let app = app_with(b, |c| {
            c.ws_max_sockets_per_user = 2;
            c.ws_max_sockets_per_address = 3;
        })
        .await;
        let ann = app.register("sock_ann").await;
        let bea = app.register("sock_bea").await;
        let cyd = app.register("sock_cyd").await;
        app.create_room(&ann, "sock-room", "public").await;
        let mux_url = |u: &User| format!("{}/ws?token={}", app.ws_url(""), u.access);

        let room_url =
            |u: &User| format!("{}/ws/rooms/sock-room?token={}", app.ws_url(""), u.access);
        let mut first = ws_connect(&app.ws_url(""), "sock-room", &ann.access, None).await;
        expect_ready(&mut first).await;
        let (mut second, _) = tokio_tungstenite::connect_async(mux_url(&ann))
            .await
            .expect("second socket");
        next_of(&mut second, "ready", 5).await.expect("ready");
        // A third socket of the same user, on either endpoint: 429 before the upgrade.
        assert_eq!(ws_refused(&mux_url(&ann)).await, 429);
        assert_eq!(ws_refused(&room_url(&ann)).await, 429);

        // Another user from the same address fits once; then the address is full (3).
        let (mut b1, _) = tokio_tungstenite::connect_async(mux_url(&bea))
            .await
            .expect("bea's socket");
        next_of(&mut b1, "ready", 5).await.expect("ready");
        assert_eq!(ws_refused(&room_url(&cyd)).await, 429);
        let (status, body) = app
            .get("/api/v1/rooms/sock-room/members", Some(&ann.access))
            .await;
        assert_eq!(status, 200);
        assert!(
            !body.to_string().contains("sock_cyd"),
            "a refused upgrade joins nothing: {body}"
        );

        // Closing one gives its place back.
        close_ws(first).await;
        upgrade_until(&room_url(&cyd), 101).await;
        drop((second, b1));
    }
);

dual_test!(rooms_per_multiplexed_socket_are_limited, |b| async move {
    let app = app_with(b, |c| c.ws_max_rooms_per_socket = 2).await;
    let user = app.register("many_rooms").await;
    for r in ["mr-a", "mr-b", "mr-c"] {
        app.create_room(&user, r, "public").await;
    }
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}/ws?token={}", app.ws_url(""), user.access))
            .await
            .expect("upgrade");
    next_of(&mut ws, "ready", 5).await.expect("ready");
    for r in ["mr-a", "mr-b"] {
        ws_send(&mut ws, json!({"type": "subscribe", "room": r})).await;
        next_of(&mut ws, "subscribed", 5).await.expect("subscribed");
    }
    ws_send(&mut ws, json!({"type": "subscribe", "room": "mr-c"})).await;
    let refused = next_of(&mut ws, "error", 5).await.expect("error");
    assert_eq!(refused["code"], "limit_reached", "{refused}");
    assert_eq!(refused["room"], "mr-c");
    ws_send(&mut ws, json!({"type": "unsubscribe", "room": "mr-a"})).await;
    next_of(&mut ws, "unsubscribed", 5)
        .await
        .expect("unsubscribed");
    ws_send(&mut ws, json!({"type": "subscribe", "room": "mr-c"})).await;
    let sub = next_of(&mut ws, "subscribed", 5).await.expect("subscribed");
    assert_eq!(sub["room"], "mr-c");
});

dual_test!(rooms_created_per_hour_are_limited, |b| async move {
    let app = app_with(b, |c| c.rooms_per_hour = 2).await;
    let maker = app.register("room_maker").await;
    let other = app.register("room_other").await;
    app.create_room(&maker, "rph-1", "public").await;
    app.create_room(&maker, "rph-2", "public").await;
    let res = reqwest::Client::new()
        .post(app.url("/api/v1/rooms"))
        .bearer_auth(&maker.access)
        .json(&json!({"name": "rph-3"}))
        .send()
        .await
        .expect("response");
    assert_eq!(res.status().as_u16(), 429);
    let retry: u64 = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry > 60, "one room every 30 minutes: {retry}");
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Join-or-create counts when it creates, and not when it joins.
    let (status, _) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/rph-4",
            Some(&maker.access),
            None,
        )
        .await;
    assert_eq!(status, 429);
    let (status, _) = app
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/rph-1",
            Some(&other.access),
            None,
        )
        .await;
    assert_eq!(status, 200, "joining is not creating");
    // Per user: someone else may still create.
    app.create_room(&other, "rph-5", "public").await;
    let (status, _) = app.get("/api/v1/rooms/rph-3", Some(&maker.access)).await;
    assert_eq!(status, 404, "nothing was created");
});

/// Two replicas on one Redis, each with the same limits: the limits are the cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn limits_hold_across_the_cluster_not_per_replica() {
    let redis = RedisServer::start().await;
    let apps = cluster_with(2, &redis, |c| {
        c.message_rate_per_sec = 1;
        c.message_rate_burst = 4;
        c.rooms_per_hour = 2;
        c.ws_max_sockets_per_user = 2;
    })
    .await;
    let user = apps[0].register("cl_limits").await;

    // Rooms: one on each replica, then neither accepts a third.
    apps[0].create_room(&user, "cl-1", "public").await;
    apps[1].create_room(&user, "cl-2", "public").await;
    for app in &apps {
        let (status, _) = app
            .post("/api/v1/rooms", Some(&user.access), json!({"name": "cl-3"}))
            .await;
        assert_eq!(status, 429, "rooms per hour are counted cluster-wide");
    }

    // Messages: a burst of 4 in all, whichever replica they go to. Replica 1 refuses before
    // it has accepted its own burst: only the cluster-wide count can refuse it then (a refill
    // only ever admits more, so this holds however slowly the posts go).
    let mut accepted = [0usize; 2];
    let mut statuses = Vec::new();
    for k in 0..100 {
        let (status, _) = apps[k % 2]
            .post(
                "/api/v1/rooms/cl-1/messages",
                Some(&user.access),
                json!({"content": format!("m{k}")}),
            )
            .await;
        statuses.push(status);
        match status {
            201 => accepted[k % 2] += 1,
            429 if k % 2 == 1 => break,
            429 => {}
            other => panic!("a post answered {other}: {statuses:?}"),
        }
    }
    assert_eq!(
        statuses.last(),
        Some(&429),
        "replica 1 refuses at last: {statuses:?}"
    );
    assert!(
        accepted[1] < 4,
        "replica 1 refused after {} of its own: the burst is counted cluster-wide ({statuses:?})",
        accepted[1]
    );

    // Sockets: two in all.
    let url = |app: &TestApp| format!("{}/ws?token={}", app.ws_url(""), user.access);
    let (mut a, _) = tokio_tungstenite::connect_async(url(&apps[0]))
        .await
        .expect("socket on replica 0");
    next_of(&mut a, "ready", 5).await.expect("ready");
    let (mut b, _) = tokio_tungstenite::connect_async(url(&apps[1]))
        .await
        .expect("socket on replica 1");
    next_of(&mut b, "ready", 5).await.expect("ready");
    assert_eq!(ws_refused(&url(&apps[0])).await, 429);
    assert_eq!(ws_refused(&url(&apps[1])).await, 429);
    // A closed socket frees its place on the other replica too.
    close_ws(a).await;
    upgrade_until(&url(&apps[1]), 101).await;
    drop(b);
}

/// Script calls Redis has run so far (`EVAL` and `EVALSHA`).
async fn script_calls(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .expect("INFO");
    info.lines()
        .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The message rate is cluster-wide without a Redis call per message: each replica leases a
/// quarter of the burst at a time, and Redis never grants more than the burst (plus what
/// refills meanwhile); a replica's unspent lease only makes the limit stricter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn message_limits_lease_cells_instead_of_asking_redis_per_message() {
    const BURST: usize = 40;
    let redis = RedisServer::start().await;
    let apps = cluster_with(2, &redis, |c| {
        c.message_rate_per_sec = 1;
        c.message_rate_burst = u32::try_from(BURST).expect("small");
    })
    .await;
    let user = apps[0].register("leaser").await;
    apps[0].create_room(&user, "leased", "public").await;
    let before = script_calls(&redis).await;
    // Alternating replicas until each has refused once. Each refuses before it has accepted
    // a burst of its own (only the cluster-wide count can refuse it then), and however slowly
    // the posts go: a refill only ever admits more.
    let (mut accepted, mut first_refusal) = ([0usize; 2], [None::<usize>; 2]);
    let mut statuses = Vec::new();
    for k in 0..4 * BURST {
        if first_refusal.iter().all(Option::is_some) {
            break;
        }
        let (status, _) = apps[k % 2]
            .post(
                "/api/v1/rooms/leased/messages",
                Some(&user.access),
                json!({"content": format!("m{k}")}),
            )
            .await;
        statuses.push(status);
        match status {
            201 => accepted[k % 2] += 1,
            429 => {
                first_refusal[k % 2].get_or_insert(accepted[k % 2]);
            }
            other => panic!("a post answered {other}: {statuses:?}"),
        }
    }
    let calls = script_calls(&redis).await - before;
    let refused_after = first_refusal.map(|r| r.expect("each replica refuses at last"));
    assert!(
        refused_after.iter().all(|n| *n < BURST),
        "each replica refused before a burst of its own ({refused_after:?}): the burst is \
         the cluster's; {statuses:?}"
    );
    // Two replicas, leases of 10: at most 9 cells left unspent on each.
    let total: usize = accepted.iter().sum();
    assert!(
        total >= BURST - 18,
        "about the burst across both replicas: {total} accepted, {statuses:?}"
    );
    assert!(
        calls * 2 < statuses.len() as u64,
        "{} messages took {calls} script calls: cells are leased, not asked for one by one",
        statuses.len()
    );
}

dual_test!(members_are_listed_in_pages, |b| async move {
    let app = spawn_app(b).await;
    let owner = app.register("pages_owner").await;
    app.create_room(&owner, "pages", "public").await;
    let mut ids = vec![owner.id];
    for i in 0..4 {
        let u = app.register(&format!("pages_m{i}")).await;
        app.join_room(&u, "pages").await;
        ids.push(u.id);
    }
    ids.sort_unstable();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/rooms/pages/members?limit=2&cursor={c}"),
            None => "/api/v1/rooms/pages/members?limit=2".to_owned(),
        };
        let (status, page) = app.get(&path, Some(&owner.access)).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|m| m["user"]["id"].as_i64().expect("id")));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(seen, ids, "every member once, in id order");
    assert_eq!(pages, 3);
    let (status, body) = app
        .get(
            "/api/v1/rooms/pages/members?cursor=not-a-cursor",
            Some(&owner.access),
        )
        .await;
    // A string, as the document allows, but not one this server issued: 422 on `cursor`.
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
    assert!(body["error"]["fields"]["cursor"].is_array(), "{body}");
    // The joined-rooms list (one query for all counts) still counts members and owners.
    let (status, list) = app
        .get("/api/v1/rooms?joined=true", Some(&owner.access))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["member_count"], 5, "{list}");
    assert_eq!(list["items"][0]["owner"]["id"], owner.id, "{list}");
});

dual_test!(
    a_long_replay_in_a_busy_room_arrives_complete_without_4429,
    |b| async move {
        use sea_orm::{ConnectionTrait, Database};
        const STORED: i64 = 20_000;
        const LIVE: i64 = 400;
        let db_url = fresh_database(b).await;
        let mut config = chat_server::Config::for_tests(&db_url);
        // A small queue, so the live traffic overflows the replaying socket's paused buffer.
        config.ws_queue_capacity = 8;
        config.ws_flush_interval_ms = 0;
        let app = spawn_with(config).await;
        let user = app.register("replayer").await;
        let room = app.create_room(&user, "long", "public").await;
        let room_id = room["id"].as_i64().expect("id");
        app.post_message(&user, "long", "first").await;
        // History written straight into the database: 20 000 more messages.
        let db = Database::connect(&db_url).await.expect("db");
        db.execute_unprepared(&format!(
            "INSERT INTO messages (room_id, seq, author_id, content, created_at) \
             WITH RECURSIVE s(n) AS (SELECT 2 UNION ALL SELECT n + 1 FROM s WHERE n < {last}) \
             SELECT {room_id}, n, {author}, 'bulk', \
                    (SELECT created_at FROM messages WHERE room_id = {room_id} AND seq = 1) \
             FROM s",
            last = STORED + 1,
            author = user.id,
        ))
        .await
        .expect("bulk insert");
        db.execute_unprepared(&format!(
            "UPDATE rooms SET last_seq = {} WHERE id = {room_id}",
            STORED + 1
        ))
        .await
        .expect("counter");
        db.close().await.ok();

        // A sender keeps the room busy (over REST) while the listener replays from 0.
        let (url, token) = (app.url("/api/v1/rooms/long/messages"), user.access.clone());
        let mut busy = tokio::spawn(async move {
            let http = reqwest::Client::new();
            for k in 0..LIVE {
                let res = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"content": format!("live {k}")}))
                    .send()
                    .await
                    .expect("post");
                let status = res.status().as_u16();
                assert_eq!(
                    status,
                    201,
                    "live {k}: {}",
                    res.text().await.unwrap_or_default()
                );
            }
        });
        let mut listener = ws_connect(&app.ws_url(""), "long", &user.access, Some(0)).await;
        // The client reads nothing for a moment, so the replay fills its queue and the socket
        // buffers: it must still go live without being taken for a slow consumer.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let total = STORED + 1 + LIVE;
        let mut next = 1;
        while next <= total {
            let frame = match next_json_or_close(&mut listener, 30).await {
                Ok(frame) => frame,
                Err(code) => {
                    let sender = if busy.is_finished() {
                        format!("{:?}", (&mut busy).await)
                    } else {
                        "still sending".to_owned()
                    };
                    panic!("stopped at seq {next} of {total}, close code {code:?}, sender {sender}")
                }
            };
            if frame["type"] == "message" {
                assert_eq!(frame["seq"], next, "in order, no gap, no duplicate");
                next += 1;
            }
        }
        busy.await.expect("sender");
    }
);

/// A reconnect storm is spread out: above its upgrade rate a replica answers 503 with
/// `Retry-After` before the upgrade (the client retries, maybe on another replica). The rate
/// is the slowest there is (one a second), so the upgrades outrun it however slow the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_admitted_at_a_bounded_rate() {
    let app = app_with(Backend::Sqlite, |c| c.ws_upgrades_per_sec = 1).await;
    let user = app.register("stormy").await;
    let url = format!("{}/ws?token={}", app.ws_url(""), user.access);
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..100 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => held.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                refused = Some(res);
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let res = refused.expect("an upgrade beyond the rate is refused");
    assert!(!held.is_empty(), "the burst is admitted");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value =
        serde_json::from_slice(res.body().as_deref().unwrap_or_default()).expect("json body");
    assert_eq!(body["error"]["code"], "service_unavailable");
    // The rate admits again once it has refilled.
    upgrade_until(&url, 101).await;
}

/// Redis keeps nothing on disk: after a restart the replicas put their live sockets back
/// (heartbeat), so the per-user socket limit holds again within one heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn socket_counts_come_back_after_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let apps = cluster_with(2, &redis, |c| {
        c.ws_max_sockets_per_user = 1;
    })
    .await;
    let user = apps[0].register("cl_heartbeat").await;
    let url = |app: &TestApp| format!("{}/ws?token={}", app.ws_url(""), user.access);
    let (mut held, _) = tokio_tungstenite::connect_async(url(&apps[0]))
        .await
        .expect("socket on replica 0");
    next_of(&mut held, "ready", 5).await.expect("ready");
    assert_eq!(ws_refused(&url(&apps[1])).await, 429);

    redis.kill();
    redis.restart().await;
    for app in &apps {
        app.wait_ready().await;
    }
    // Replica 1 refuses again once replica 0's heartbeat has put its socket back (within
    // 10 s); a socket admitted in between is closed at once by the test, so it does not count.
    upgrade_until(&url(&apps[1]), 429).await;
    drop(held);
}

// A replica admits upgrades at a shared rate; one user's upgrades refused by their own socket
// limit must not spend it, or that user alone keeps everyone else from connecting. Here one
// user who holds their one socket keeps asking for more, from four tasks at once, on both
// endpoints: every answer is their own limit (429), never the replica's rate (503), and
// meanwhile another user connects.
dual_test!(
    refused_upgrades_do_not_spend_the_replicas_upgrade_rate,
    |b| async move {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        };
        let app = app_with(b, |c| {
            c.ws_max_sockets_per_user = 1;
            c.ws_upgrades_per_sec = 2;
        })
        .await;
        let ann = app.register("greedy_ann").await;
        let bea = app.register("patient_bea").await;
        app.create_room(&ann, "greedy-room", "public").await;
        let mux_url = |u: &User| format!("{}/ws?token={}", app.ws_url(""), u.access);
        let room_url =
            |u: &User| format!("{}/ws/rooms/greedy-room?token={}", app.ws_url(""), u.access);
        let (mut held, _) = tokio_tungstenite::connect_async(mux_url(&ann))
            .await
            .expect("ann's one socket");
        next_of(&mut held, "ready", 5).await.expect("ready");

        let (tries, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let hammers: Vec<_> = (0..4)
            .map(|i| {
                let url = if i % 2 == 0 {
                    mux_url(&ann)
                } else {
                    room_url(&ann)
                };
                let (tries, stop) = (tries.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut answers = std::collections::BTreeMap::<u16, usize>::new();
                    // Bounded: stopped once the other user is in, or after 500 tries.
                    for _ in 0..500 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        *answers.entry(ws_refused(&url).await).or_default() += 1;
                        tries.fetch_add(1, Ordering::Relaxed);
                    }
                    answers
                })
            })
            .collect();
        // Long enough for the refused upgrades to have spent the whole rate, were they to.
        wait_until("ann's refused upgrades", async || {
            tries.load(Ordering::Relaxed) >= 40
        })
        .await;
        let bea_got = ws_refused(&mux_url(&bea)).await;
        stop.store(true, Ordering::Relaxed);
        let mut answers = std::collections::BTreeMap::<u16, usize>::new();
        for hammer in hammers {
            for (status, n) in hammer.await.expect("hammer") {
                *answers.entry(status).or_default() += n;
            }
        }
        assert_eq!(bea_got, 101, "bea connects while ann hammers: {answers:?}");
        assert_eq!(
            answers.keys().copied().collect::<Vec<_>>(),
            vec![429],
            "ann is refused by her own limit only: {answers:?}"
        );
        drop(held);
    }
);
