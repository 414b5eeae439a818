//! `/api/v1/openapi.json` and `/docs`, Swagger UI served from assets embedded in the binary
//! (no CDN). The document's paths are what the routers collected from the handlers'
//! `#[utoipa::path]` annotations (`utoipa_axum::routes!`: a route and its entry are declared
//! once); [`ApiDoc`] adds the info, the tags and the shared schemas, [`document`] the bearer
//! scheme and the common errors.
//!
//! The document must tell the truth: every status an operation can answer is listed, with
//! the error schema of docs/protocol.md#errors ([`ErrorBody`]) for every error. Statuses that follow from an
//! operation's *shape* (it takes a token, a JSON body, path or query parameters) are added by
//! [`CommonErrors`], so that rule lives here once; each `#[utoipa::path]` lists only what its
//! handler decides itself (403, 404, 409, 422, 429). `.ci/run` checks the result with
//! `openapi-spec-validator`, a generated client and schemathesis (`tests/openapi/`).

use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder,
        path::{Operation, PathItem},
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};
use utoipa_swagger_ui::SwaggerUi;

use super::auth;
use super::error;
use super::error::ErrorBody;
use crate::{chat::Chat, domain::model};

/// The document's frame: its paths come from the routers (see [`document`]).
#[derive(OpenApi)]
#[openapi(
    info(title = "chat-server API", description = "REST API of the chat service. WebSocket frames are documented in docs/protocol.md."),
    components(schemas(
        error::ErrorBody, error::ErrorDetail,
        model::User, model::PublicUser, model::UserRef, model::Room, model::Message, model::Member,
        model::Reaction, model::SearchHit,
        auth::Tokens, auth::RegisterResponse, auth::LoginResponse,
    )),
    tags(
        (name = "auth", description = "Registration, login, token refresh and logout"),
        (name = "users", description = "Profiles and administration"),
        (name = "rooms", description = "Rooms, membership and read state"),
        (name = "dms", description = "Direct messages"),
        (name = "messages", description = "History and threads, sending and replying, editing, deleting, reactions, search"),
        (name = "operations", description = "Probes"),
    )
)]
pub(crate) struct ApiDoc;

/// The served document: [`ApiDoc`] with the paths the routers collected, the bearer scheme,
/// and the [`CommonErrors`] of every operation.
pub(crate) fn document(
    collected: impl IntoIterator<Item = utoipa::openapi::OpenApi>,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for part in collected {
        doc.merge(part);
    }
    BearerAuth.modify(&mut doc);
    CommonErrors.modify(&mut doc);
    doc
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The error responses that follow from an operation's shape, added to every operation that
/// has it (a status the annotation already lists keeps its own description):
///
/// | status | operations | produced by |
/// |---|---|---|
/// | 400 | with a request body, path or query parameters | `extract::{Json, MaybeJson, Path, Query}`: malformed JSON, wrong types, unparseable parameters |
/// | 401 | with `security` | `CurrentUser`: no, invalid, expired or revoked token |
/// | 408 | under `/api/v1` | the REST timeout layer (`REQUEST_TIMEOUT_SECS`) |
/// | 413 | with a request body | the 64 KiB body limit |
/// | 415 | with a request body | a body that is not `application/json` |
/// | 500 | under `/api/v1` | a bug; the body never says more than "internal error" |
/// | 503 | under `/api/v1` | the database or Redis is down |
///
/// Every `429` also gets its `Retry-After` header here.
pub(crate) struct CommonErrors;

impl CommonErrors {
    const BAD_REQUEST: &str = "Malformed request: invalid JSON, a value of the wrong type, or an \
        unparseable path or query parameter (`bad_request`)";
    const UNAUTHORIZED: &str = "Missing, invalid, expired or revoked access token \
        (`unauthenticated`, `invalid_token`)";
    const TIMEOUT: &str = "The request took longer than the server's limit (`timeout`)";
    const TOO_LARGE: &str = "The request body is over 64 KiB (`payload_too_large`)";
    const MEDIA_TYPE: &str = "The body is not `application/json` (`unsupported_media_type`)";
    const INTERNAL: &str = "Internal error; details are logged, never returned (`internal`)";
    const UNAVAILABLE: &str =
        "A dependency (database, Redis) is unavailable; retry later (`service_unavailable`)";

    fn apply(path: &str, op: &mut Operation) {
        let api = path.starts_with("/api/");
        let body = op.request_body.is_some();
        let params = path.contains('{') || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
        let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
        let rules = [
            (body || params, "400", Self::BAD_REQUEST),
            (secured, "401", Self::UNAUTHORIZED),
            (api, "408", Self::TIMEOUT),
            (body, "413", Self::TOO_LARGE),
            (body, "415", Self::MEDIA_TYPE),
            (api, "500", Self::INTERNAL),
            (api, "503", Self::UNAVAILABLE),
        ];
        let responses = &mut op.responses.responses;
        for (applies, status, description) in rules {
            if applies && !responses.contains_key(status) {
                responses.insert(status.to_owned(), error_response(description).into());
            }
        }
        if let Some(RefOr::T(limited)) = responses.get_mut("429") {
            limited.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    ))
                    .description(Some("Seconds to wait before retrying"))
                    .build()
                    .into(),
            );
        }
    }
}

/// An error response with the [`ErrorBody`] schema.
fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(
                    <ErrorBody as utoipa::ToSchema>::name(),
                )))
                .build(),
        )
        .build()
}

/// Every operation of a path item.
fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            for op in operations(item) {
                Self::apply(path, op);
            }
        }
    }
}

/// `/docs` and `/api/v1/openapi.json`, serving `openapi`.
pub(crate) fn routes(openapi: utoipa::openapi::OpenApi) -> Router<Chat> {
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", openapi))
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_static(super::DOCS_CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::header::X_FRAME_OPTIONS,
            axum::http::HeaderValue::from_static("DENY"),
        ))
}

#[cfg(test)]
mod tests {
    /// The document is the API's and the probes' (whichever port serves the probes), and
    /// nothing else: no `/metrics`, no WebSocket, no web client.
    #[test]
    fn the_document_describes_the_api_and_the_probes() {
        let doc = crate::http::surface().openapi;
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for probe in ["/healthz", "/readyz"] {
            assert!(paths.contains(&probe), "{probe} missing: {paths:?}");
        }
        let stray: Vec<&&str> = paths
            .iter()
            .filter(|p| !p.starts_with("/api/v1/") && !["/healthz", "/readyz"].contains(p))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
        assert!(paths.contains(&"/api/v1/rooms/{name}/messages/{id}/reactions/{emoji}"));
    }

    /// The rules `tests/openapi/run.sh` checks against the live server, checked here on the
    /// document alone so that a new annotation that forgets one fails `cargo test` at once.
    #[test]
    fn every_response_is_described_and_every_error_has_the_error_schema() {
        let doc = serde_json::to_value(crate::http::surface().openapi).expect("serializable");
        let mut problems = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let responses = op["responses"].as_object().expect("responses");
                let has = |s: &str| responses.contains_key(s);
                let secured = op
                    .get("security")
                    .and_then(|s| s.as_array())
                    .is_some_and(|s| !s.is_empty());
                let must: &[(bool, &str)] = &[
                    (secured, "401"),
                    (op.get("requestBody").is_some(), "415"),
                    (path.starts_with("/api/"), "503"),
                ];
                for (applies, status) in must {
                    if *applies && !has(status) {
                        problems.push(format!("{method} {path}: no {status}"));
                    }
                }
                for (status, res) in responses {
                    if res["description"].as_str().is_none_or(str::is_empty) {
                        problems.push(format!("{method} {path} {status}: no description"));
                    }
                    let schema = &res["content"]["application/json"]["schema"]["$ref"];
                    if path.starts_with("/api/")
                        && status.as_str() >= "400"
                        && schema != "#/components/schemas/ErrorBody"
                    {
                        problems.push(format!("{method} {path} {status}: not ErrorBody"));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
