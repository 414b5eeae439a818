//! Router assembly: the REST API under `/api/v1`, the WebSocket endpoints, probes, docs and
//! the web client, under one tower stack.
//!
//! Layers, outermost first: request id (set and propagated), a tracing span per request whose
//! URI has the `token` query parameter redacted and whose `Authorization` header is marked
//! sensitive, HTTP metrics, panic catching, CORS, a timeout for REST requests, the 64 KiB body
//! limit, and finally [`http::json_errors`], which gives the few responses produced outside
//! our handlers (405, 408, 413, panics) the error shape of docs/protocol.md#errors.

use std::time::Duration;

use axum::{
    Extension, Router,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::{
    chat::Chat,
    config::Config,
    http,
    http::error::{ErrorBody, ErrorDetail},
    store::schema::SchemaGate,
    telemetry, ws,
};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The public router. `with_probes`: `/healthz`, `/readyz` and `/metrics` are served here too
/// (no `INTERNAL_ADDR`).
pub(super) fn router(chat: Chat, schema: SchemaGate, with_probes: bool) -> Router {
    let http::Surface {
        api,
        probes,
        openapi,
    } = http::surface();
    let api = api.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        Duration::from_secs(chat.config().request_timeout_secs),
    ));
    let cors = cors(chat.config());
    let ops = http::docs::routes(openapi);
    let ops = if with_probes { ops.merge(probes) } else { ops };
    Router::new()
        .merge(api)
        .merge(ws::routes())
        .merge(ops)
        .route("/", get(http::index))
        .fallback(http::extract::not_found_fallback)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    X_REQUEST_ID.clone(),
                    MakeRequestUuid,
                ))
                .layer(SetSensitiveRequestHeadersLayer::new([
                    header::AUTHORIZATION,
                    header::COOKIE,
                ]))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(telemetry::http_span)
                        .on_response(telemetry::on_response),
                )
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                // No response is to be read as another type than it says.
                .layer(SetResponseHeaderLayer::if_not_present(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ))
                .layer(middleware::from_fn(telemetry::metrics::track_http))
                .layer(Extension(schema.clone()))
                .layer(middleware::from_fn_with_state(schema, require_schema))
                .layer(CatchPanicLayer::new())
                .layer(cors)
                .layer(axum::extract::DefaultBodyLimit::max(http::BODY_LIMIT))
                .layer(middleware::from_fn(http::json_errors)),
        )
        .with_state(chat)
}

/// The internal router (`INTERNAL_ADDR`): probes and metrics only, for the kubelet and
/// Prometheus.
pub(super) fn internal_router(chat: Chat, schema: SchemaGate) -> Router {
    Router::from(http::health::routes())
        .fallback(http::extract::not_found_fallback)
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(telemetry::metrics::track_http))
                .layer(Extension(schema))
                .layer(CatchPanicLayer::new()),
        )
        .with_state(chat)
}

/// Paths a replica serves while its database schema is behind its migrations.
const ALWAYS_SERVED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// A replica whose database lacks some of its migrations serves nothing but its probes and
/// metrics: every other request gets 503 `service_unavailable` (docs/protocol.md#errors error shape), a
/// WebSocket upgrade included.
async fn require_schema(State(schema): State<SchemaGate>, req: Request, next: Next) -> Response {
    if schema.is_current() || ALWAYS_SERVED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let body = ErrorBody {
        error: ErrorDetail {
            code: "service_unavailable".to_owned(),
            message: "the database schema is behind this release; waiting for migrations"
                .to_owned(),
            fields: None,
        },
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// CORS for `ALLOWED_ORIGINS` (any origin when unset or `*`).
fn cors(config: &Config) -> CorsLayer {
    let allowed = &config.allowed_origins;
    let cors = if allowed.is_empty() || allowed.iter().any(|o| o == "*") {
        CorsLayer::new().allow_origin(Any)
    } else {
        let origins: Vec<HeaderValue> = allowed
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new().allow_origin(AllowOrigin::list(origins))
    };
    cors.allow_methods([
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ])
    .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}
