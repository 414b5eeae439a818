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

use crate::{
    cluster::{Proc, call, cluster_db, register_at},
    support::*,
};

fn metric_sum(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter(|l| l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let app = spawn_app(Backend::Sqlite).await;
    let before = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Counters of rare events exist before the first event (alerts on their rate need them).
    for name in [
        "chat_slow_consumer_closes_total",
        "chat_redis_reconnects_total",
        "chat_bus_gap_fills_total",
    ] {
        assert!(before.contains(name), "{name} missing from /metrics");
    }
    let user = app.register("metric_user").await;
    app.create_room(&user, "metrics", "public").await;
    let mut ws = ws_connect(&app.ws_url(""), "metrics", &user.access, None).await;
    next_json(&mut ws, 5).await.unwrap();
    for i in 0..3 {
        app.post(
            "/api/v1/rooms/metrics/messages",
            Some(&user.access),
            json!({"content": format!("m{i}")}),
        )
        .await;
    }
    ws_send(&mut ws, json!({"type": "message", "content": "over ws"})).await;
    assert!(next_of(&mut ws, "ack", 5).await.is_some());
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let after = res.text().await.unwrap();
    for (name, labels) in [
        ("chat_messages_accepted_total", "transport=\"rest\""),
        ("chat_messages_accepted_total", "transport=\"ws\""),
        ("chat_messages_delivered_total", ""),
        ("chat_fanout_latency_seconds_count", ""),
        ("chat_commit_batch_size_count", ""),
        (
            "http_requests_total",
            "route=\"/api/v1/rooms/{name}/messages\"",
        ),
        ("http_request_duration_seconds_count", "status=\"201\""),
    ] {
        let (b, a) = (
            metric_sum(&before, name, labels),
            metric_sum(&after, name, labels),
        );
        assert!(a > b, "{name}{{{labels}}} did not move: {b} -> {a}");
    }
    assert!(
        after.contains("chat_fanout_latency_seconds_bucket"),
        "a histogram with buckets"
    );
    assert!(metric_sum(&after, "chat_ws_connections", "endpoint=\"room\"") >= 1.0);
    assert!(after.contains("chat_db_pool_connections"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_or_passwords() {
    let db = fresh_database(Backend::Sqlite).await;
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &db)
        .env("JWT_SECRET", "log-test-secret-log-test-secret")
        .env("RUST_LOG", "debug")
        .env("LOG_FORMAT", "json")
        .env_remove("REDIS_URL")
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    crate::cluster::wait_ready(&base).await;
    let password = "hunter2-very-secret-pw";
    let (status, reg) = call(
        &base,
        reqwest::Method::POST,
        "/api/v1/auth/register",
        None,
        Some(json!({"username": "logger", "email": "logger@example.com", "password": password})),
    )
    .await;
    assert_eq!(status, 201);
    let access = reg["tokens"]["access"].as_str().unwrap().to_owned();
    let refresh = reg["tokens"]["refresh"].as_str().unwrap().to_owned();
    let (_, login) = call(
        &base,
        reqwest::Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"login": "logger", "password": password})),
    )
    .await;
    let (_, bad) = call(
        &base,
        reqwest::Method::POST,
        "/api/v1/auth/login",
        None,
        Some(json!({"login": "logger", "password": "wrong-pw-also-secret"})),
    )
    .await;
    assert_eq!(bad["error"]["code"], "invalid_credentials");
    let (_, rotated) = call(
        &base,
        reqwest::Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh": login["refresh"]})),
    )
    .await;
    call(
        &base,
        reqwest::Method::PUT,
        "/api/v1/rooms/logs",
        Some(&access),
        None,
    )
    .await;
    let mut ws = ws_connect(&format!("ws://127.0.0.1:{port}"), "logs", &access, None).await;
    next_json(&mut ws, 5).await.unwrap();
    ws_send(&mut ws, json!({"type": "auth", "token": rotated["access"]})).await;
    ws_send(&mut ws, json!({"type": "message", "content": "hello logs"})).await;
    next_of(&mut ws, "ack", 5).await.unwrap();
    // A refused upgrade with a token in the URL.
    assert_eq!(
        ws_refused(&format!(
            "ws://127.0.0.1:{port}/ws/rooms/logs?token={refresh}"
        ))
        .await,
        401
    );
    call(
        &base,
        reqwest::Method::POST,
        "/api/v1/auth/logout",
        Some(&access),
        Some(json!({"refresh": refresh})),
    )
    .await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(log.path()).unwrap();
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
async fn one_trace_follows_a_message_across_replicas() {
    let (endpoint, spans) = otlp_receiver().await;
    let redis = RedisServer::start();
    let db = cluster_db().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "chat-trace-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let a = Proc::start(
        &db,
        &redis.url(),
        &[
            otel[0],
            otel[1],
            otel[2],
            ("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=replica-a"),
        ],
    )
    .await;
    let b = Proc::start(
        &db,
        &redis.url(),
        &[
            otel[0],
            otel[1],
            otel[2],
            ("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=replica-b"),
        ],
    )
    .await;
    let (_, token, _) = register_at(&a.base, "tracer").await;
    call(
        &a.base,
        reqwest::Method::POST,
        "/api/v1/rooms",
        Some(&token),
        Some(json!({"name": "traced"})),
    )
    .await;
    let mut ws = ws_connect(&b.ws, "traced", &token, None).await;
    next_json(&mut ws, 10).await.unwrap();
    let (status, _) = call(
        &a.base,
        reqwest::Method::POST,
        "/api/v1/rooms/traced/messages",
        Some(&token),
        Some(json!({"content": "follow me"})),
    )
    .await;
    assert_eq!(status, 201);
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
