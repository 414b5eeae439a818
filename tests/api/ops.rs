//! Operations (SPEC §9): probes, metrics that move, logs without secrets, and one trace across
//! two replicas through Redis, received by an OTLP/HTTP endpoint inside the test.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, routing::post};
use prost::Message as _;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_in_embedded_mode() {
    let app = spawn_app(Backend::Sqlite).await;
    let (status, body) = app.get("/healthz", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    let (status, body) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["db"], "up");
    assert_eq!(body["bus"], "local");
}

/// Label pairs a sample must have.
type Labels<'a> = &'a [(&'a str, &'a str)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    // A process of its own: apps in the test process share one recorder, so there another
    // test's traffic could move the counters.
    let db = fresh_database(Backend::Sqlite).await;
    let app = ServerProc::start(&db, &[]).await;
    let before = app.metrics().await;
    // Counters of rare events exist, at 0, before the first event (alerts on their rate need
    // them).
    for name in [
        "chat_slow_consumer_closes_total",
        "chat_redis_reconnects_total",
        "chat_bus_gap_fills_total",
    ] {
        assert_eq!(before.sum(name, &[]), 0.0, "{name}");
    }
    let user = app.register("metric_user").await;
    app.create_room(&user, "metrics", "public").await;
    let mut ws = ws_connect(&app.ws_url(""), "metrics", &user.access, None).await;
    expect_ready(&mut ws).await;
    for i in 0..3 {
        app.post_message(&user, "metrics", &format!("m{i}")).await;
    }
    ws_send(&mut ws, json!({"type": "message", "content": "over ws"})).await;
    assert!(next_of(&mut ws, "ack", 5).await.is_some());
    let after = app.metrics().await;
    // (name, labels, by how much it moved if that is known)
    let moved: [(&str, Labels, Option<f64>); 7] = [
        (
            "chat_messages_accepted_total",
            &[("transport", "rest")],
            Some(3.0),
        ),
        (
            "chat_messages_accepted_total",
            &[("transport", "ws")],
            Some(1.0),
        ),
        ("chat_messages_delivered_total", &[], None),
        ("chat_fanout_latency_seconds_count", &[], None),
        ("chat_commit_batch_size_count", &[], None),
        (
            "http_requests_total",
            &[("route", "/api/v1/rooms/{name}/messages")],
            Some(3.0),
        ),
        (
            "http_request_duration_seconds_count",
            &[("status", "201")],
            None,
        ),
    ];
    for (name, labels, by) in moved {
        let (b, a) = (before.sum_or_zero(name, labels), after.sum(name, labels));
        match by {
            Some(n) => assert_eq!(a - b, n, "{name}{labels:?}: {b} -> {a}"),
            None => assert!(a > b, "{name}{labels:?} did not move: {b} -> {a}"),
        }
    }
    assert!(
        after
            .matching("chat_fanout_latency_seconds_bucket", &[("le", "+Inf")])
            .next()
            .is_some(),
        "a histogram with buckets"
    );
    assert_eq!(
        after.sum("chat_ws_connections", &[("endpoint", "room")]),
        1.0
    );
    assert!(after.has("chat_db_pool_connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_or_passwords() {
    let db = fresh_database(Backend::Sqlite).await;
    let mut server = ServerProc::start(&db, &[("RUST_LOG", "debug")]).await;
    let password = "hunter2-very-secret-pw";
    let (status, reg) = server
        .post(
            "/api/v1/auth/register",
            None,
            json!({"username": "logger", "email": "logger@example.com", "password": password}),
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    let access = reg["tokens"]["access"].as_str().unwrap().to_owned();
    let refresh = reg["tokens"]["refresh"].as_str().unwrap().to_owned();
    let (status, login) = server.login("logger", password).await;
    assert_eq!(status, 200, "{login}");
    let (status, bad) = server
        .post(
            "/api/v1/auth/login",
            None,
            json!({"login": "logger", "password": "wrong-pw-also-secret"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(bad["error"]["code"], "invalid_credentials");
    let (status, rotated) = server
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh": login["refresh"]}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let (status, _) = server
        .send(
            reqwest::Method::PUT,
            "/api/v1/rooms/logs",
            Some(&access),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let mut ws = ws_connect(&server.ws_url(""), "logs", &access, None).await;
    expect_ready(&mut ws).await;
    ws_send(&mut ws, json!({"type": "auth", "token": rotated["access"]})).await;
    ws_send(&mut ws, json!({"type": "message", "content": "hello logs"})).await;
    next_of(&mut ws, "ack", 5).await.unwrap();
    // A percent-encoded parameter name is decoded by the server: still redacted.
    let login_access = login["access"].as_str().unwrap();
    let (mut mux, _) = tokio_tungstenite::connect_async(format!(
        "{}/ws?%74oken={login_access}",
        server.ws_url("")
    ))
    .await
    .expect("upgrade with %74oken");
    assert_eq!(next_json(&mut mux, 5).await.unwrap()["type"], "ready");
    drop(mux);
    // A refused upgrade with a token in the URL.
    assert_eq!(
        ws_refused(&server.ws_url(&format!("/ws/rooms/logs?token={refresh}"))).await,
        401
    );
    let (status, _) = server
        .post(
            "/api/v1/auth/logout",
            Some(&access),
            json!({"refresh": refresh}),
        )
        .await;
    assert_eq!(status, 204);
    drop(ws);
    // A clean stop writes every log line out.
    server.signal("-TERM");
    assert!(server.wait_exit(15).await.is_some(), "stops on SIGTERM");
    let text = server.log();
    assert!(
        text.contains("http.request"),
        "the log was captured: {} bytes",
        text.len()
    );
    assert!(
        text.contains("[redacted]"),
        "the token query parameter is shown redacted"
    );
    for secret in [
        access.as_str(),
        refresh.as_str(),
        login["access"].as_str().unwrap(),
        login["refresh"].as_str().unwrap(),
        rotated["access"].as_str().unwrap(),
        rotated["refresh"].as_str().unwrap(),
        password,
        "wrong-pw-also-secret",
    ] {
        assert!(!text.contains(secret), "a secret leaked into the logs");
    }
}

/// Spans received by the in-test OTLP/HTTP endpoint: (trace id, span name, service.instance.id).
type Spans = Arc<Mutex<Vec<(Vec<u8>, String, String)>>>;

async fn otlp_receiver() -> (String, Spans) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    let spans: Spans = Arc::default();
    let sink = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let decoded = ExportTraceServiceRequest::decode(body.clone());
                if decoded.is_err() {
                    eprintln!(
                        "otlp receiver: undecodable body of {} bytes: {:?}",
                        body.len(),
                        decoded.as_ref().err()
                    );
                }
                if let Ok(req) = decoded {
                    for rs in req.resource_spans {
                        let attrs: HashMap<String, String> = rs
                            .resource
                            .map(|r| r.attributes)
                            .unwrap_or_default()
                            .into_iter()
                            .map(|kv| {
                                (
                                    kv.key,
                                    kv.value
                                        .and_then(|v| v.value)
                                        .map(|v| format!("{v:?}"))
                                        .unwrap_or_default(),
                                )
                            })
                            .collect();
                        let instance = attrs
                            .get("service.instance.id")
                            .cloned()
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                sink.lock().unwrap().push((
                                    span.trace_id,
                                    span.name,
                                    instance.clone(),
                                ));
                            }
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(pg_tests),
    ignore = "set TEST_DATABASE_URL: replicas share one PostgreSQL database"
)]
async fn one_trace_follows_a_message_across_replicas() {
    let (endpoint, spans) = otlp_receiver().await;
    let redis = RedisServer::start().await;
    let db = cluster_db().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "chat-trace-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // Not the default `warn,chat_server=info`: with it and OTLP on, the server hangs at
        // start while migrating PostgreSQL (a server bug, not this test's subject).
        ("RUST_LOG", "info"),
    ];
    let instance = |id| {
        [
            otel[0],
            otel[1],
            otel[2],
            otel[3],
            ("OTEL_RESOURCE_ATTRIBUTES", id),
        ]
    };
    let a = ServerProc::replica(&db, &redis, &instance("service.instance.id=replica-a")).await;
    let b = ServerProc::replica(&db, &redis, &instance("service.instance.id=replica-b")).await;
    let user = a.register("tracer").await;
    a.create_room(&user, "traced", "public").await;
    let mut ws = ws_connect(&b.ws_url(""), "traced", &user.access, None).await;
    expect_ready(&mut ws).await;
    a.post_message(&user, "traced", "follow me").await;
    assert_eq!(
        next_of(&mut ws, "message", 10).await.unwrap()["content"],
        "follow me"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        {
            let spans = spans.lock().unwrap();
            let delivered_on_b: Vec<&Vec<u8>> = spans
                .iter()
                .filter(|(_, name, inst)| name == "message.deliver" && inst.contains("replica-b"))
                .map(|(t, _, _)| t)
                .collect();
            let accepted_on_a: Vec<&Vec<u8>> = spans
                .iter()
                .filter(|(_, name, inst)| {
                    (name == "message.commit" || name.starts_with("POST"))
                        && inst.contains("replica-a")
                })
                .map(|(t, _, _)| t)
                .collect();
            if delivered_on_b.iter().any(|t| accepted_on_a.contains(t)) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no shared trace; spans seen: {:?}",
            spans
                .lock()
                .unwrap()
                .iter()
                .map(|(_, n, i)| (n.clone(), i.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
