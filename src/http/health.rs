//! Probes and metrics (SPEC §9): `/healthz` (the process serves), `/readyz` (database answers,
//! bus live, not draining), `/metrics` (Prometheus text).

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::{bus::BusState, chat::Chat};

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

/// `GET /readyz`: 200 when ready for traffic, else 503 with the failing parts.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready for traffic"),
    (status = 503, description = "Not ready: the database or the bus is down, or the replica is draining"),
))]
pub(crate) async fn readyz(State(chat): State<Chat>) -> impl IntoResponse {
    let db_ok = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        chat.db.execute_unprepared("SELECT 1"),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let bus = chat.bus.state();
    let draining = chat.stop.is_cancelled();
    let ready = db_ok && bus != BusState::Down && !draining;
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "db": if db_ok { "up" } else { "down" },
        "bus": bus,
        "draining": draining,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /metrics`
pub(crate) async fn metrics(State(chat): State<Chat>) -> impl IntoResponse {
    crate::telemetry::metrics::record_db_pool(&chat.db);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics::render(),
    )
}
