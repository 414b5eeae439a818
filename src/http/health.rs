//! Probes and metrics (docs/operations.md#probes): `/healthz` (the process serves), `/readyz` (database answers,
//! its schema has every migration of this binary, bus live, not draining), `/metrics`
//! (Prometheus text). With `INTERNAL_ADDR` set they are served on that port only.

use axum::{
    Extension, Json, extract::State, http::StatusCode, response::IntoResponse, routing::get,
};
use serde_json::json;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::chat::{Chat, ops::SchemaGate};

/// The probes, declared by their handlers' `#[utoipa::path]`, and `/metrics` (not an API
/// operation: no document entry).
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
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
    (status = 503, description = "Not ready: the database or the bus is down, the schema is behind, or the replica is draining"),
))]
pub(crate) async fn readyz(
    State(chat): State<Chat>,
    gate: Option<Extension<SchemaGate>>,
) -> impl IntoResponse {
    let readiness = chat.ops().readiness(gate.as_deref()).await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

/// `GET /metrics`
pub(crate) async fn metrics(
    State(chat): State<Chat>,
    gate: Option<Extension<SchemaGate>>,
) -> impl IntoResponse {
    chat.ops().refresh_gauges(gate.as_deref()).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics::render(),
    )
}
