//! Cluster mode (docs/architecture.md#overview, §7–9): several replicas on one Redis and one PostgreSQL database,
//! losing nothing. Each test starts its own `redis-server`. Without `TEST_DATABASE_URL` these
//! tests are reported as ignored: replicas on a shared SQLite file would prove little.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn three_replicas_deliver_the_same_gap_free_sequence() {
    let redis = RedisServer::start().await;
    let apps = cluster(3, &redis).await;
    let mut users = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        users.push(app.register(&format!("trio{i}")).await);
    }
    apps[0].create_room(&users[0], "trio", "public").await;
    // Two listening sockets per replica, one per user.
    let mut recorders = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        for u in &users {
            let mut ws = ws_connect(&app.ws_url(""), "trio", &u.access, None).await;
            expect_ready(&mut ws).await;
            recorders.push((format!("replica{i}/{}", u.username), record(ws)));
        }
    }
    // Senders on all three replicas at once.
    let mut senders = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        let mut ws = ws_connect(&app.ws_url(""), "trio", &users[i].access, None).await;
        expect_ready(&mut ws).await;
        senders.push(tokio::spawn(async move {
            for k in 0..60 {
                ws_send(
                    &mut ws,
                    json!({"type": "message", "content": format!("r{i} {k}")}),
                )
                .await;
            }
            let mut acks = 0;
            while acks < 60 {
                let v = next_json(&mut ws, 30).await.expect("ack");
                acks += i32::from(v["type"] == "ack");
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let seen: Vec<&Seen> = recorders.iter().map(|(_, (seen, _))| seen).collect();
    wait_for_counts(&seen, 180).await;
    for (who, (seen, _)) in &recorders {
        assert_gap_free(&seen.lock().unwrap(), 180, who);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn redis_outage_loses_nothing_that_was_committed() {
    // Processes, not apps in this process: each has its own /metrics.
    let mut redis = RedisServer::start().await;
    let db = cluster_db().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ServerProc::replica(&db, &redis, &[]).await);
    }
    let poster = replicas[0].register("poster").await;
    replicas[0].create_room(&poster, "outage", "public").await;
    let mut recorders = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        let reader = replica.register(&format!("reader{i}")).await;
        let mut ws = ws_connect(&replica.ws_url(""), "outage", &reader.access, None).await;
        expect_ready(&mut ws).await;
        recorders.push(record(ws));
    }
    let counters = |m: &Metrics| {
        (
            m.sum("chat_redis_reconnects_total", &[]),
            m.sum("chat_bus_gap_fills_total", &[]),
        )
    };
    let mut before = Vec::new();
    for replica in &replicas {
        before.push(counters(&replica.metrics().await));
    }
    let clients: Vec<Client> = replicas.iter().map(|r| r.client.clone()).collect();
    let token = poster.access.clone();
    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let post_task = {
        let (committed, statuses, stop) = (committed.clone(), statuses.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.is_cancelled() {
                let (status, body) = clients[i % clients.len()]
                    .post(
                        "/api/v1/rooms/outage/messages",
                        Some(&token),
                        json!({"content": format!("m{i}")}),
                    )
                    .await;
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                assert!(
                    status == 201 || status == 503,
                    "each send commits or is refused, got {status}: {body}"
                );
                if status == 201 {
                    committed
                        .lock()
                        .unwrap()
                        .insert(body["seq"].as_i64().unwrap());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let answered = || statuses.lock().unwrap().values().sum::<usize>();
    wait_until("sends before the outage", async || {
        committed.lock().unwrap().len() >= 10
    })
    .await;

    redis.kill();
    // The outage happened: every replica sees its bus down.
    for replica in &replicas {
        replica.wait_readyz(503).await;
    }
    let during = answered();
    wait_until("sends answered during the outage", async || {
        answered() >= during + 3
    })
    .await;
    redis.restart().await;
    for replica in &replicas {
        replica.wait_readyz(200).await;
    }
    // Each replica reconnected and read its room's gap from the database.
    for (replica, (reconnects, gap_fills)) in replicas.iter().zip(&before) {
        let what = format!("{}: a reconnect and a gap fill", replica.base);
        wait_until(&what, async || {
            let (r, g) = counters(&replica.metrics().await);
            if r > *reconnects && g > *gap_fills {
                Ok(())
            } else {
                Err(format!(
                    "reconnects {reconnects} -> {r}, gap fills {gap_fills} -> {g}"
                ))
            }
        })
        .await;
    }
    let after_restart = committed.lock().unwrap().len();
    wait_until("sends committed after the outage", async || {
        committed.lock().unwrap().len() >= after_restart + 10
    })
    .await;
    stop.cancel();
    post_task.await.unwrap();
    let committed: Vec<i64> = committed.lock().unwrap().iter().copied().collect();
    let last = *committed.last().unwrap();
    // No further message is sent: every socket must catch up on its own.
    wait_until("every socket to reach the last committed seq", async || {
        let lasts: Vec<Option<i64>> = recorders
            .iter()
            .map(|(seen, _)| seen.lock().unwrap().last().copied())
            .collect();
        if lasts.iter().all(|l| *l == Some(last)) {
            Ok(())
        } else {
            Err(lasts)
        }
    })
    .await;
    for (i, (seen, _)) in recorders.iter().enumerate() {
        let seen = seen.lock().unwrap();
        // Everything committed (every 201) is there, in order, once.
        assert_gap_free(&seen, last, &format!("reader{i}"));
        for seq in &committed {
            assert!(seen.contains(seq), "reader{i}: acknowledged seq {seq}");
        }
    }
    eprintln!(
        "statuses during the outage run: {:?}",
        statuses.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn logout_on_one_replica_closes_the_socket_on_another() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let user = apps[0].register("roamer").await;
    apps[0].create_room(&user, "roam", "public").await;
    let mut ws = ws_connect(&apps[1].ws_url(""), "roam", &user.access, None).await;
    expect_ready(&mut ws).await;
    let (status, _) = apps[0]
        .post("/api/v1/auth/logout", Some(&user.access), json!({}))
        .await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut ws, 10).await, Some(4001));
    let (status, _) = apps[1].get("/api/v1/users/me", Some(&user.access)).await;
    assert_eq!(status, 401, "replica B refuses the token");
    assert_eq!(
        ws_refused(&format!(
            "{}/ws/rooms/roam?token={}",
            apps[1].ws_url(""),
            user.access
        ))
        .await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn presence_and_typing_are_cluster_wide_and_fire_once() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let a = apps[0].register("pres_a").await;
    let b = apps[1].register("pres_b").await;
    apps[0].create_room(&a, "pres", "public").await;
    let mut wa = ws_connect(&apps[0].ws_url(""), "pres", &a.access, None).await;
    expect_ready(&mut wa).await;
    // b on both replicas: one join event, not two.
    let mut wb1 = ws_connect(&apps[1].ws_url(""), "pres", &b.access, None).await;
    let ready = expect_ready(&mut wb1).await;
    assert_eq!(ready["online"].as_array().unwrap().len(), 2, "{ready}");
    let mut wb2 = ws_connect(&apps[0].ws_url(""), "pres", &b.access, None).await;
    expect_ready(&mut wb2).await;
    let join = next_of(&mut wa, "presence", 5).await.unwrap();
    assert_eq!(
        (join["event"].as_str(), join["user"]["username"].as_str()),
        (Some("join"), Some("pres_b"))
    );
    ws_send(&mut wb1, json!({"type": "typing"})).await;
    let typing = next_of(&mut wa, "typing", 5)
        .await
        .expect("typing crosses replicas");
    assert_eq!(typing["user"]["username"], "pres_b");
    // A second join would come from the replica of wb2: a later message from there comes after.
    apps[0].post_message(&a, "pres", "marker 1").await;
    let before = frames_before(&mut wa, "marker 1").await;
    assert!(
        before.iter().all(|f| f["type"] != "presence"),
        "no second join: {before:?}"
    );
    let (status, members) = apps[0]
        .get("/api/v1/rooms/pres/members", Some(&a.access))
        .await;
    assert_eq!(status, 200, "{members}");
    assert!(
        members["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["online"] == true),
        "{members}"
    );
    close_ws(wb1).await;
    apps[1].post_message(&b, "pres", "marker 2").await;
    let before = frames_before(&mut wa, "marker 2").await;
    assert!(
        before.iter().all(|f| f["type"] != "presence"),
        "still online on the other replica: {before:?}"
    );
    drop(wb2);
    let leave = next_of(&mut wa, "presence", 5).await.expect("leave");
    assert_eq!(leave["event"], "leave");
}

/// Group commit across rooms: senders in four rooms on two replicas at once. Batches span
/// rooms and replicas lock rooms in the same order, so nothing deadlocks and every room's
/// sequence stays gap-free on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn many_rooms_on_two_replicas_stay_gap_free() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let alice = apps[0].register("multi_a").await;
    let bob = apps[1].register("multi_b").await;
    let rooms = ["m0", "m1", "m2", "m3"];
    for r in rooms {
        apps[0].create_room(&alice, r, "public").await;
        apps[1].join_room(&bob, r).await;
    }
    let mut recorders = Vec::new();
    for r in rooms {
        for (app, user) in [(&apps[0], &bob), (&apps[1], &alice)] {
            let mut ws = ws_connect(&app.ws_url(""), r, &user.access, None).await;
            expect_ready(&mut ws).await;
            recorders.push((r, record(ws)));
        }
    }
    let mut senders = Vec::new();
    for r in rooms {
        for (app, user) in [(&apps[0], &alice), (&apps[1], &bob)] {
            let mut ws = ws_connect(&app.ws_url(""), r, &user.access, None).await;
            expect_ready(&mut ws).await;
            senders.push(tokio::spawn(async move {
                for k in 0..40 {
                    ws_send(
                        &mut ws,
                        json!({"type": "message", "content": format!("{r} {k}")}),
                    )
                    .await;
                }
                let mut acks = 0;
                while acks < 40 {
                    let v = next_json(&mut ws, 30).await.expect("ack");
                    acks += i32::from(v["type"] == "ack");
                }
            }));
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    let seen: Vec<&Seen> = recorders.iter().map(|(_, (seen, _))| seen).collect();
    wait_for_counts(&seen, 80).await;
    for (room, (seen, _)) in &recorders {
        assert_gap_free(&seen.lock().unwrap(), 80, room);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn password_change_and_account_deletion_work_in_cluster_mode() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let change = |token: String, app: usize| {
        let apps = &apps;
        async move {
            apps[app]
                .send(
                    reqwest::Method::PUT,
                    "/api/v1/users/me/password",
                    Some(&token),
                    Some(json!({"current_password": PASSWORD, "new_password": "another horse battery"})),
                )
                .await
        }
    };
    // A new user with one session (nothing else to revoke): 204, the old password refused.
    let solo = apps[0].register("solo_pw").await;
    let (status, body) = change(solo.access.clone(), 0).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(apps[1].login("solo_pw", PASSWORD).await.0, 401);
    assert_eq!(
        apps[1].login("solo_pw", "another horse battery").await.0,
        200
    );

    // A second session, with a socket on the other replica: revoked and closed everywhere;
    // the session that changed the password stays.
    let multi = apps[0].register("multi_pw").await;
    apps[0].create_room(&multi, "pw-room", "public").await;
    let (status, second) = apps[1].login("multi_pw", PASSWORD).await;
    assert_eq!(status, 200, "{second}");
    let second = second["access"].as_str().expect("access").to_owned();
    let mut ws = ws_connect(&apps[1].ws_url(""), "pw-room", &second, None).await;
    expect_ready(&mut ws).await;
    let (status, body) = change(multi.access.clone(), 0).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(close_code(&mut ws, 10).await, Some(4001));
    for app in &apps {
        assert_eq!(app.get("/api/v1/users/me", Some(&second)).await.0, 401);
        assert_eq!(
            app.get("/api/v1/users/me", Some(&multi.access)).await.0,
            200
        );
    }

    // Account deletion, then an admin deleting someone: their tokens die on every replica.
    let gone = apps[0].register("gone_pw").await;
    let (status, body) = apps[0]
        .send(
            reqwest::Method::DELETE,
            "/api/v1/users/me",
            Some(&gone.access),
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        apps[1].get("/api/v1/users/me", Some(&gone.access)).await.0,
        401
    );
    let admin = apps[0].register("pw_admin").await;
    apps[0]
        .state
        .ensure_admin("pw_admin", "pw_admin@example.com", PASSWORD)
        .await
        .expect("admin");
    let (_, login) = apps[0].login("pw_admin", PASSWORD).await;
    let admin_token = login["access"].as_str().expect("access").to_owned();
    let victim = apps[0].register("pw_victim").await;
    let (status, body) = apps[1]
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/users/{}", victim.id),
            Some(&admin_token),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        apps[0]
            .get("/api/v1/users/me", Some(&victim.access))
            .await
            .0,
        401
    );
    drop(admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn a_reaction_on_one_replica_reaches_a_socket_on_another() {
    let redis = RedisServer::start().await;
    let apps = cluster(2, &redis).await;
    let ann = apps[0].register("reactor").await;
    let bob = apps[1].register("watcher").await;
    apps[0].create_room(&ann, "reacts", "public").await;
    apps[1].join_room(&bob, "reacts").await;
    let msg = apps[0].post_message(&ann, "reacts", "like me").await;
    let mut ws = ws_connect(&apps[1].ws_url(""), "reacts", &bob.access, None).await;
    expect_ready(&mut ws).await;
    let (status, body) = apps[0]
        .send(
            reqwest::Method::PUT,
            &format!("/api/v1/rooms/reacts/messages/{}/reactions/🚀", msg["id"]),
            Some(&ann.access),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let event = next_of(&mut ws, "reaction", 10)
        .await
        .expect("the reaction crossed replicas");
    assert_eq!(event["emoji"], "🚀");
    assert_eq!(event["id"], msg["id"]);
    assert_eq!(event["user"]["username"], "reactor");
    assert_eq!(event["on"], true);
    // Replica 2 reads it back from the shared database, relative to its reader.
    let mut replay = ws_connect(&apps[1].ws_url(""), "reacts", &ann.access, Some(0)).await;
    expect_ready(&mut replay).await;
    let replayed = next_of(&mut replay, "message", 10).await.expect("replay");
    assert_eq!(
        replayed["reactions"],
        json!([{"emoji": "🚀", "count": 1, "me": true}])
    );
}
