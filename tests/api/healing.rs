//! Self-healing delivery: the database is the source of truth, the bus only the
//! fast path. A message committed and acknowledged whose publish never happened still reaches
//! every connected socket, found by the periodic reconciliation of the active rooms.

use sea_orm::{ConnectionTrait, Database};

use crate::{dual_test, support::*};

/// Commit a message the way the send path does, but publish nothing (a publish lost with its
/// replica, or dropped from a retry queue).
async fn commit_without_publishing(db_url: &str, room_id: i64, author: i64, seq: i64) {
    let db = Database::connect(db_url).await.expect("db");
    db.execute_unprepared(&format!(
        "INSERT INTO messages (room_id, seq, author_id, content, created_at) \
         SELECT {room_id}, {seq}, {author}, 'never published', created_at \
         FROM messages WHERE room_id = {room_id} AND seq = 1"
    ))
    .await
    .expect("insert");
    db.execute_unprepared(&format!(
        "UPDATE rooms SET last_seq = {seq} WHERE id = {room_id}"
    ))
    .await
    .expect("counter");
    db.close().await.ok();
}

/// The next `message` frame, skipping others, within `secs`.
async fn next_message(ws: &mut Ws, secs: u64) -> Option<serde_json::Value> {
    next_of(ws, "message", secs).await
}

dual_test!(
    a_message_whose_publish_was_lost_still_reaches_the_sockets,
    |b| async move {
        let db_url = fresh_database(b).await;
        let app = spawn_with(chat_server::Config::for_tests(&db_url)).await;
        let user = app.register("healer").await;
        let room = app.create_room(&user, "heal", "public").await;
        let room_id = room["id"].as_i64().expect("id");
        let mut ws = ws_connect(&app.ws_url(""), "heal", &user.access, None).await;
        expect_ready(&mut ws).await;
        app.post_message(&user, "heal", "published").await;
        assert_eq!(next_message(&mut ws, 5).await.expect("live")["seq"], 1);

        commit_without_publishing(&db_url, room_id, user.id, 2).await;
        // No later message comes to reveal the gap: the reconciliation must find it.
        let healed = next_message(&mut ws, 15)
            .await
            .expect("the unpublished message");
        assert_eq!(healed["seq"], 2);
        assert_eq!(healed["content"], "never published");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn every_replica_heals_a_lost_publish() {
    let redis = RedisServer::start().await;
    let db_url = cluster_db().await;
    let apps = vec![
        replica(&db_url, &redis).await,
        replica(&db_url, &redis).await,
    ];
    for app in &apps {
        app.wait_ready().await;
    }
    let user = apps[0].register("cl_healer").await;
    let room = apps[0].create_room(&user, "cl-heal", "public").await;
    let room_id = room["id"].as_i64().expect("id");
    let mut sockets = Vec::new();
    for app in &apps {
        let mut ws = ws_connect(&app.ws_url(""), "cl-heal", &user.access, None).await;
        expect_ready(&mut ws).await;
        sockets.push(ws);
    }
    apps[1].post_message(&user, "cl-heal", "published").await;
    for ws in &mut sockets {
        assert_eq!(next_message(ws, 5).await.expect("live")["seq"], 1);
    }
    commit_without_publishing(&db_url, room_id, user.id, 2).await;
    for ws in &mut sockets {
        let healed = next_message(ws, 15).await.expect("the unpublished message");
        assert_eq!(healed["seq"], 2);
    }
}

/// Redis keeps nothing on disk: a restart empties it. A token revoked before the restart
/// (logout, password change, account deletion) must stay revoked during the outage and after
/// the restart, and valid tokens keep working during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn revocations_survive_a_redis_restart() {
    let mut redis = RedisServer::start().await;
    let db_url = cluster_db().await;
    let apps = vec![
        replica(&db_url, &redis).await,
        replica(&db_url, &redis).await,
    ];
    for app in &apps {
        app.wait_ready().await;
    }
    let user = apps[0].register("durable").await;
    // A second session, logged out on replica 0.
    let (status, login) = apps[0].login("durable", PASSWORD).await;
    assert_eq!(status, 200, "{login}");
    let doomed = login["access"].as_str().expect("access").to_owned();
    let (status, _) = apps[0]
        .post(
            "/api/v1/auth/logout",
            Some(&doomed),
            serde_json::json!({"refresh": login["refresh"]}),
        )
        .await;
    assert_eq!(status, 204);
    for app in &apps {
        let (status, _) = app.get("/api/v1/users/me", Some(&doomed)).await;
        assert_eq!(status, 401, "revoked before the restart");
    }

    apps[0].create_room(&user, "outage", "public").await;
    redis.kill();
    // While Redis is down the database answers the deny-list check: the revoked token stays
    // refused, and a valid one still authenticates and opens a socket (clients reconnecting
    // through an outage are not turned away).
    for app in &apps {
        let (status, body) = app.get("/api/v1/users/me", Some(&doomed)).await;
        assert_eq!(status, 401, "revoked while Redis is down: {body}");
        let (status, body) = app.get("/api/v1/users/me", Some(&user.access)).await;
        assert_eq!(status, 200, "a valid token while Redis is down: {body}");
    }
    let mut ws = ws_connect(&apps[1].ws_url(""), "outage", &user.access, None).await;
    expect_ready(&mut ws).await;
    drop(ws);
    redis.restart().await;
    for app in &apps {
        app.wait_ready().await;
    }
    for app in &apps {
        let (status, body) = app.get("/api/v1/users/me", Some(&doomed)).await;
        assert_eq!(status, 401, "still revoked after Redis restarted: {body}");
        let (status, _) = app.get("/api/v1/users/me", Some(&user.access)).await;
        assert_eq!(status, 200, "the other session still works");
    }
}

/// Kicks and revocations made while Redis was down (their events lost) still close the
/// sockets concerned, once the bus is back: every socket is checked against the deny-list and
/// its memberships.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn kicks_and_revocations_lost_with_redis_still_close_the_sockets() {
    let mut redis = RedisServer::start().await;
    let db_url = cluster_db().await;
    let apps = vec![
        replica(&db_url, &redis).await,
        replica(&db_url, &redis).await,
    ];
    for app in &apps {
        app.wait_ready().await;
    }
    let owner = apps[0].register("audit_owner").await;
    let kicked = apps[0].register("audit_kicked").await;
    let revoked = apps[0].register("audit_revoked").await;
    apps[0].create_room(&owner, "audit", "public").await;
    apps[0].join_room(&kicked, "audit").await;
    apps[0].join_room(&revoked, "audit").await;
    let mut kicked_ws = ws_connect(&apps[1].ws_url(""), "audit", &kicked.access, None).await;
    expect_ready(&mut kicked_ws).await;
    let mut revoked_ws = ws_connect(&apps[0].ws_url(""), "audit", &revoked.access, None).await;
    expect_ready(&mut revoked_ws).await;

    redis.kill();
    // What a kick and an account-wide revocation write, without their (lost) events.
    let db = Database::connect(&db_url).await.expect("db");
    db.execute_unprepared(&format!(
        "DELETE FROM room_members WHERE user_id = {}",
        kicked.id
    ))
    .await
    .expect("kick");
    db.execute_unprepared(&format!(
        "INSERT INTO revoked_tokens (key, expires_at) VALUES ('user:{}', NOW() + INTERVAL '1 hour')",
        revoked.id
    ))
    .await
    .expect("revoke");
    db.close().await.ok();
    redis.restart().await;

    assert_eq!(
        close_code(&mut kicked_ws, 20).await,
        Some(4003),
        "the kicked member's socket is removed"
    );
    assert_eq!(
        close_code(&mut revoked_ws, 20).await,
        Some(4001),
        "the revoked user's socket is closed"
    );
}

/// `logout` with `all` in cluster mode: the current session is among the user's live sessions,
/// so its key comes twice; the durable deny-list must not refuse the repeat (found by
/// schemathesis: 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn logout_everywhere_in_cluster_mode() {
    let redis = RedisServer::start().await;
    let db_url = cluster_db().await;
    let app = replica(&db_url, &redis).await;
    app.wait_ready().await;
    let user = app.register("everywhere").await;
    let (status, other) = app.login("everywhere", PASSWORD).await;
    assert_eq!(status, 200, "{other}");
    let (status, body) = app
        .post(
            "/api/v1/auth/logout",
            Some(&user.access),
            serde_json::json!({"all": true, "refresh": ""}),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    for token in [
        user.access.as_str(),
        other["access"].as_str().expect("access"),
    ] {
        let (status, _) = app.get("/api/v1/users/me", Some(token)).await;
        assert_eq!(status, 401, "every session ended");
    }
}

dual_test!(
    a_client_ahead_of_the_replica_gets_nothing_twice,
    |b| async move {
        // A client resumes with a since_seq this replica has not delivered yet (it saw the
        // message on another replica, or in history): when the replica catches up, it must
        // not send that message again.
        let db_url = fresh_database(b).await;
        let app = spawn_with(chat_server::Config::for_tests(&db_url)).await;
        let user = app.register("ahead").await;
        let room = app.create_room(&user, "ahead", "public").await;
        let room_id = room["id"].as_i64().expect("id");
        let mut watcher = ws_connect(&app.ws_url(""), "ahead", &user.access, None).await;
        expect_ready(&mut watcher).await;
        app.post_message(&user, "ahead", "published").await;
        assert_eq!(next_message(&mut watcher, 5).await.expect("live")["seq"], 1);

        commit_without_publishing(&db_url, room_id, user.id, 2).await;
        let mut ahead = ws_connect(&app.ws_url(""), "ahead", &user.access, Some(2)).await;
        expect_ready(&mut ahead).await;
        // The replica catches up (the reconciliation finds seq 2)…
        let healed = next_message(&mut watcher, 15)
            .await
            .expect("the unpublished message");
        assert_eq!(healed["seq"], 2);
        // …and the resumed socket's next message is the next new one.
        app.post_message(&user, "ahead", "next").await;
        let next = next_message(&mut ahead, 5).await.expect("the next message");
        assert_eq!(next["seq"], 3, "{next}");
    }
);
