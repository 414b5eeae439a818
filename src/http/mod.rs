//! The REST surface (docs/protocol.md#rest-api, docs/operations.md#probes): one module per
//! resource, each handler parsing its input, calling one `chat` use-case and mapping the
//! result; the extractors, and the one mapping of `chat::Error` to HTTP ([`error`]).
//!
//! May import: `chat`, `domain`, `config`, `telemetry` — never `ws`, `store`, `bus` or `fanout`.

pub(crate) mod auth;
pub(crate) mod dms;
pub(crate) mod docs;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod health;
pub(crate) mod messages;
pub(crate) mod rooms;
pub(crate) mod search;
pub(crate) mod users;

use axum::{
    Router,
    extract::Request,
    http::{StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Response},
};

use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::chat::{Chat, Error};

/// Request bodies above this are refused with 413.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// The HTTP surface, every route declared once, by its handler's `#[utoipa::path]`: the
/// routers, and the OpenAPI document they collected.
pub(crate) struct Surface {
    /// The REST API: every path under `/api/v1`.
    pub(crate) api: Router<Chat>,
    /// `/healthz`, `/readyz` and `/metrics`.
    pub(crate) probes: Router<Chat>,
    /// The document of both, served by [`docs::routes`] whether or not the probes are served
    /// on the same port.
    pub(crate) openapi: OpenApi,
}

/// The REST API and the probes, with their document.
pub(crate) fn surface() -> Surface {
    let (api, api_doc) = api_routes().split_for_parts();
    let (probes, probes_doc) = health::routes().split_for_parts();
    Surface {
        api,
        probes,
        openapi: docs::document([api_doc, probes_doc]),
    }
}

/// The `/api/v1` routes (their annotations carry the full path).
fn api_routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new()
        .merge(auth::routes())
        .merge(users::routes())
        .merge(rooms::routes())
        .merge(dms::routes())
        .merge(messages::routes())
        .merge(search::routes())
}

/// The web client, built into the binary.
const WEB_CLIENT: &str = include_str!("../web/index.html");

/// `GET /`: the web chat client, with a Content-Security-Policy that lets run only its own
/// script and style (by their hashes), talk only to this origin, and never be framed.
pub(crate) async fn index() -> Response {
    (
        [
            (header::CONTENT_SECURITY_POLICY, web_client_csp()),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(WEB_CLIENT),
    )
        .into_response()
}

/// The policy of `/`: the client's one inline `<script>` and `<style>` by their SHA-256,
/// computed once from the page as built.
fn web_client_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; img-src 'self' data:; \
             connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
            inline_hash(WEB_CLIENT, "<script>", "</script>"),
            inline_hash(WEB_CLIENT, "<style>", "</style>"),
        )
    })
}

/// `'sha256-…'` of the text between the first `open` and the next `close` in `page`
/// (`'none'` if there is none).
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let Some(body) = page
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map(|(body, _)| body)
    else {
        return "'none'".to_owned();
    };
    let digest = Sha256::digest(body.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy of `/docs` (Swagger UI: its scripts are files of this origin; it sets inline
/// styles and uses `data:` images).
pub(crate) const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) async fn method_not_allowed() -> Response {
    let mut res = Error::bad_request("method not allowed on this path").into_response();
    *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    res
}

/// Give error responses that were produced outside our handlers (timeouts, panics, body
/// limits) the JSON error shape.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
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

/// A 400 for a query parameter with control characters (the database would refuse NUL).
pub(crate) fn plain_query(name: &str, value: Option<&str>) -> Result<(), Error> {
    match value.map(crate::domain::validate::plain_text) {
        Some(Err(m)) => Err(Error::bad_request(format!(
            "invalid query parameter: `{name}` {m}"
        ))),
        _ => Ok(()),
    }
}
