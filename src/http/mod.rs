//! The HTTP surface: feature routers merged under one tower stack.
//!
//! Layers, outermost first: request id (set and propagated), a tracing span per request whose
//! URI has the `token` query parameter redacted and whose `Authorization` header is marked
//! sensitive, HTTP metrics, panic catching, CORS, a timeout for REST requests, the 64 KiB body
//! limit, and finally [`json_errors`], which gives the few responses produced outside our
//! handlers (405, 408, 413, panics) the error shape of SPEC §3.

pub mod auth;
pub mod docs;
pub mod health;
pub mod messages;
pub mod rooms;
pub mod users;

use std::{net::SocketAddr, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    sensitive_headers::SetSensitiveRequestHeadersLayer,
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::{error::ApiError, state::AppState, telemetry};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(auth::routes())
        .merge(users::routes())
        .merge(rooms::routes())
        .merge(messages::routes())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(state.config.request_timeout_secs),
        ));

    let allowed = &state.config.allowed_origins;
    let cors = if allowed.is_empty() || allowed.iter().any(|o| o == "*") {
        CorsLayer::new().allow_origin(Any)
    } else {
        let origins: Vec<HeaderValue> = state
            .config
            .allowed_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new().allow_origin(AllowOrigin::list(origins))
    }
    .allow_methods([
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ])
    .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);

    Router::new()
        .nest("/api/v1", api)
        .merge(crate::ws::routes())
        .merge(health::routes())
        .merge(docs::routes())
        .route("/", get(index))
        .fallback(crate::error::not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed)
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
                .layer(middleware::from_fn(telemetry::metrics::track_http))
                .layer(CatchPanicLayer::new())
                .layer(cors)
                .layer(DefaultBodyLimit::max(BODY_LIMIT))
                .layer(middleware::from_fn(json_errors)),
        )
        .with_state(state)
}

/// `GET /`: the web chat client, built into the binary.
async fn index() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}

async fn method_not_allowed() -> Response {
    let mut res = ApiError::bad_request("method not allowed on this path").into_response();
    *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    res
}

/// Give error responses that were produced outside our handlers (timeouts, panics, body
/// limits) the JSON error shape.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (code, message) = match status {
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body is too large"),
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "method not allowed on this path")
            }
            StatusCode::NOT_FOUND => ("not_found", "not found"),
            s if s.is_server_error() => ("internal", "internal error"),
            _ => ("bad_request", "bad request"),
        };
        let body = serde_json::json!({"error": {"code": code, "message": message}});
        let mut out = (status, axum::Json(body)).into_response();
        for (k, v) in res.headers() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                out.headers_mut().insert(k.clone(), v.clone());
            }
        }
        return out;
    }
    res
}

/// The client's address: the peer, or, behind a trusted proxy, the **last** `X-Forwarded-For`
/// entry — the address the proxy itself appended (nginx's `$proxy_add_x_forwarded_for`).
/// Entries before it come from the client and could be anything.
pub fn client_ip(
    state: &AppState,
    req_headers: &axum::http::HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
) -> std::net::IpAddr {
    if state.config.trust_proxy_headers
        && let Some(ip) = req_headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return ip;
    }
    peer.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip())
}

/// The route template of a request, for metric labels.
pub fn route_of(req: &Request<Body>) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}
