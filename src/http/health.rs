//! Probes and metrics (SPEC §9): `/healthz` (the process serves), `/readyz` (database answers,
//! its schema has every migration of this binary, bus live, not draining), `/metrics`
//! (Prometheus text). With `INTERNAL_ADDR` set they are served on that port only.

use axum::{
    Extension, Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get,
};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::{bus::BusState, chat::Chat, store::schema::SchemaGate};

pub(crate) fn routes() -> Router<Chat> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// `GET /healthz`
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process serves")))]
pub(crate) async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Whether this replica should get traffic, and the state of each part. Also exported as the
/// `chat_ready`, `chat_bus_live` and `chat_schema_current` gauges.
async fn readiness(chat: &Chat, gate: Option<&SchemaGate>) -> (bool, Value) {
    let db_ok = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        chat.db.execute_unprepared("SELECT 1"),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let bus = chat.bus.state();
    let draining = chat.stop.is_cancelled();
    // Without a gate (a router built without one) the schema is not checked.
    let schema_ok = gate.is_none_or(SchemaGate::is_current);
    let ready = db_ok && schema_ok && bus != BusState::Down && !draining;
    crate::telemetry::metrics::health(ready, bus != BusState::Down, schema_ok);
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "db": if db_ok { "up" } else { "down" },
        "schema": if schema_ok { "current" } else { "behind" },
        "bus": bus,
        "draining": draining,
    });
    (ready, body)
}

/// `GET /readyz`: 200 when ready for traffic, else 503 with the failing parts.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready for traffic"),
    (status = 503, description = "Not ready: the database or the bus is down, the schema is behind, or the replica is draining"),
))]
pub(crate) async fn readyz(
    State(chat): State<Chat>,
    gate: Option<Extension<SchemaGate>>,
) -> impl IntoResponse {
    let (ready, body) = readiness(&chat, gate.as_deref()).await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /metrics`
pub(crate) async fn metrics(
    State(chat): State<Chat>,
    gate: Option<Extension<SchemaGate>>,
) -> impl IntoResponse {
    crate::telemetry::metrics::record_db_pool(&chat.db, "main");
    if let Some(commit_db) = &chat.commit_db {
        crate::telemetry::metrics::record_db_pool(commit_db, "commit");
    }
    crate::telemetry::metrics::record_process();
    let _ = readiness(&chat, gate.as_deref()).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics::render(),
    )
}
