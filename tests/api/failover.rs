//! Replicas as processes of the built binary: SIGKILL (clients move and miss nothing; presence
//! expires), SIGTERM (1012, nothing committed is lost, exit 0), and a real load balancer.

use std::time::Duration;

use serde_json::json;

use crate::{
    cluster::{Proc, call, cluster_db, record, register_at},
    support::*,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_replica_clients_resume_elsewhere_and_presence_expires() {
    let redis = RedisServer::start();
    let db = cluster_db().await;
    let mut doomed = Proc::start(&db, &redis.url(), &[]).await;
    let survivor = Proc::start(&db, &redis.url(), &[]).await;
    let (_, owner, _) = register_at(&survivor.base, "k_owner").await;
    let (_, victim, _) = register_at(&survivor.base, "k_victim").await;
    call(
        &survivor.base,
        reqwest::Method::POST,
        "/api/v1/rooms",
        Some(&owner),
        Some(json!({"name": "kill"})),
    )
    .await;
    let mut watcher = ws_connect(&survivor.ws, "kill", &owner, None).await;
    next_json(&mut watcher, 10).await.unwrap();
    let mut ws = ws_connect(&doomed.ws, "kill", &victim, None).await;
    next_json(&mut ws, 10).await.unwrap();
    assert_eq!(
        next_of(&mut watcher, "presence", 5).await.unwrap()["event"],
        "join"
    );
    for i in 0..5 {
        call(
            &survivor.base,
            reqwest::Method::POST,
            "/api/v1/rooms/kill/messages",
            Some(&owner),
            Some(json!({"content": format!("a{i}")})),
        )
        .await;
    }
    let seen = collect_seqs(&mut ws, 5, 10).await;
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    doomed.signal("-KILL");
    doomed.wait_exit(5);
    // Messages keep flowing while the client is away.
    for i in 0..5 {
        let (status, _) = call(
            &survivor.base,
            reqwest::Method::POST,
            "/api/v1/rooms/kill/messages",
            Some(&owner),
            Some(json!({"content": format!("b{i}")})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let mut ws = ws_connect(&survivor.ws, "kill", &victim, Some(5)).await;
    assert_eq!(next_json(&mut ws, 10).await.unwrap()["type"], "ready");
    assert_eq!(collect_seqs(&mut ws, 5, 10).await, [6, 7, 8, 9, 10]);
    drop(ws);
    // The crashed replica's entry for the victim expires (TTL 30 s): one `leave`.
    let leave = next_of(&mut watcher, "presence", 50)
        .await
        .expect("presence leave after the crash");
    assert_eq!(
        (leave["event"].as_str(), leave["user"]["username"].as_str()),
        (Some("leave"), Some("k_victim"))
    );
    let (_, members) = call(
        &survivor.base,
        reqwest::Method::GET,
        "/api/v1/rooms/kill/members",
        Some(&owner),
        None,
    )
    .await;
    let victim_online = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["username"] == "k_victim")
        .unwrap()["online"]
        .clone();
    assert_eq!(victim_online, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_closes_sockets_with_1012_and_loses_nothing() {
    let redis = RedisServer::start();
    let db = cluster_db().await;
    let mut leaving = Proc::start(&db, &redis.url(), &[]).await;
    let staying = Proc::start(&db, &redis.url(), &[]).await;
    let (_, user, _) = register_at(&staying.base, "t_user").await;
    call(
        &staying.base,
        reqwest::Method::POST,
        "/api/v1/rooms",
        Some(&user),
        Some(json!({"name": "term"})),
    )
    .await;
    let mut on_leaving = ws_connect(&leaving.ws, "term", &user, None).await;
    next_json(&mut on_leaving, 10).await.unwrap();
    let on_staying = ws_connect(&staying.ws, "term", &user, None).await;
    let (seen, _task) = record(on_staying);
    // Posts through the leaving replica right up to the signal.
    let base = leaving.base.clone();
    let token = user.clone();
    let poster = tokio::spawn(async move {
        let mut committed = Vec::new();
        for i in 0..400 {
            let (status, body) = call(
                &base,
                reqwest::Method::POST,
                "/api/v1/rooms/term/messages",
                Some(&token),
                Some(json!({"content": format!("t{i}")})),
            )
            .await;
            if status == 201 {
                committed.push(body["seq"].as_i64().unwrap());
            } else {
                break;
            }
        }
        committed
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    leaving.signal("-TERM");
    assert_eq!(close_code(&mut on_leaving, 10).await, Some(1012));
    assert_eq!(leaving.wait_exit(15), Some(0), "exits 0 after draining");
    let committed = poster.await.unwrap();
    assert!(!committed.is_empty());
    let mut stored: Vec<i64> = Vec::new();
    loop {
        let after = stored.last().copied().unwrap_or(0);
        let (_, page) = call(
            &staying.base,
            reqwest::Method::GET,
            &format!("/api/v1/rooms/term/messages?limit=200&after_seq={after}"),
            Some(&user),
            None,
        )
        .await;
        stored.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_i64().unwrap()),
        );
        if page["has_more"] != true {
            break;
        }
    }
    for s in &committed {
        assert!(stored.contains(s), "committed seq {s} is stored");
    }
    let last = *committed.iter().max().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().last().copied().unwrap_or(0) < last
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(
        &got[..usize::try_from(last).unwrap()],
        (1..=last).collect::<Vec<_>>().as_slice(),
        "the other replica's socket has every committed message"
    );
}

/// nginx (Debian `nginx-light`) round-robin in front of two replicas; register, chat, drop the
/// connection, reconnect through the balancer and resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_nginx_round_robin() {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(nginx) = nginx else {
        panic!("nginx is required for this test: apt-get install -y nginx-light");
    };
    let redis = RedisServer::start();
    let apps = crate::cluster::cluster(2, &redis).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream chat {{ server {a}; server {b}; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://chat;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"#,
        dir = dir.path().display(),
        a = apps[0].addr,
        b = apps[1].addr,
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = std::process::Command::new(nginx)
        .args([
            "-c",
            conf_path.to_str().unwrap(),
            "-p",
            dir.path().to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    let lb = format!("http://127.0.0.1:{port}");
    crate::cluster::wait_ready(&lb).await;
    let ws_lb = format!("ws://127.0.0.1:{port}");

    let (_, alice, _) = register_at(&lb, "lb_alice").await;
    let (_, bob, _) = register_at(&lb, "lb_bob").await;
    let (status, _) = call(
        &lb,
        reqwest::Method::PUT,
        "/api/v1/rooms/lb-room",
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 201);
    let mut a = ws_connect(&ws_lb, "lb-room", &alice, None).await;
    next_json(&mut a, 10).await.unwrap();
    let mut b = ws_connect(&ws_lb, "lb-room", &bob, None).await;
    next_json(&mut b, 10).await.unwrap();
    ws_send(
        &mut a,
        json!({"type": "message", "content": "through the balancer"}),
    )
    .await;
    let m = next_of(&mut b, "message", 10).await.unwrap();
    assert_eq!(m["content"], "through the balancer");
    let last = m["seq"].as_i64().unwrap();
    drop(b);
    for i in 0..4 {
        let (status, _) = call(
            &lb,
            reqwest::Method::POST,
            "/api/v1/rooms/lb-room/messages",
            Some(&alice),
            Some(json!({"content": format!("while away {i}")})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let mut b = ws_connect(&ws_lb, "lb-room", &bob, Some(last)).await;
    next_json(&mut b, 10).await.unwrap();
    assert_eq!(collect_seqs(&mut b, 4, 10).await, [2, 3, 4, 5]);
    ws_send(&mut a, json!({"type": "message", "content": "live again"})).await;
    assert_eq!(next_of(&mut b, "message", 10).await.unwrap()["seq"], 6);
    let _ = child.kill();
    let _ = child.wait();
}
