//! Request extractors with rejections in the error shape of docs/protocol.md#errors: our [`Json`] (a type
//! error names the offending field), [`MaybeJson`] (an optional body), [`Path`] and
//! [`Query`]; and the caller, [`CurrentUser`], from `Authorization: Bearer`.

use axum::{
    extract::{FromRef, FromRequest, FromRequestParts, OptionalFromRequestParts, Request},
    http::{StatusCode, header, header::AUTHORIZATION, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::chat::Error;
use crate::chat::{
    Chat,
    auth::{CurrentUser, bearer},
};
use crate::domain::validate::FieldErrors;

/// Our JSON body extractor: like `axum::Json`, but every rejection is an [`Error`] and a
/// type error names the offending field (`fields: {"limit": ["invalid type: …"]}`).
pub(crate) struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(Error::UnsupportedMediaType);
        }
        let bytes = read_body(req, state).await?;
        parse_body(&bytes).map(Json)
    }
}

/// The request body, with the 64 KiB limit reported as 413.
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<axum::body::Bytes, Error> {
    axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge
            } else {
                Error::bad_request(format!("could not read the body: {}", e.body_text()))
            }
        })
}

/// A request body: a JSON object (every request type of the API is one). serde would also
/// read a struct from an array of its fields in order (`["a@b.c"]` as `{"email": "a@b.c"}`,
/// `[null, null]` clearing two fields): an array is refused here instead.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(Error::bad_request(
            "malformed JSON: expected an object, not an array",
        ));
    }
    parse_json(bytes)
}

/// Parse JSON with the path of any type error, for a precise 400.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            Error::bad_request(format!("malformed JSON: {inner}"))
        } else {
            let fields = FieldErrors::from([(path.clone(), vec![inner.to_string()])]);
            Error::BadRequest {
                message: format!("invalid value for `{path}`"),
                fields: Some(fields),
            }
        }
    })
}

/// `#[serde(default, deserialize_with = "integer")]` for an `Option<i64>` field of a request:
/// JSON has one number type, and JSON Schema's `integer` admits `2.0`, so an integral number
/// written with a fraction or an exponent is that integer; `2.5`, or one out of range, is a
/// type error (400) as before.
pub(crate) fn integer<'de, D>(de: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{Deserialize, Error, Unexpected};
    let Some(n) = Option::<serde_json::Number>::deserialize(de)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    // `i64::MAX as f64` rounds up to 2^63, which is out of range: hence `<`.
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        return Ok(Some(f as i64));
    }
    Err(D::Error::invalid_type(
        Unexpected::Float(f),
        &"an integer (i64)",
    ))
}

/// [`integer`] for an `Option<Vec<i64>>` field: each element an integer, written with or
/// without a fraction or an exponent.
pub(crate) fn integers<'de, D>(de: D) -> Result<Option<Vec<i64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{Deserialize, Error, Unexpected};
    let Some(numbers) = Option::<Vec<serde_json::Number>>::deserialize(de)? else {
        return Ok(None);
    };
    numbers
        .into_iter()
        .map(|n| {
            if let Some(i) = n.as_i64() {
                return Ok(i);
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
            if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                return Ok(f as i64);
            }
            Err(D::Error::invalid_type(
                Unexpected::Float(f),
                &"an integer (i64)",
            ))
        })
        .collect::<Result<Vec<i64>, D::Error>>()
        .map(Some)
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Fallback for unknown routes, in the same error shape.
pub(crate) async fn not_found_fallback() -> Error {
    Error::NotFound("route")
}

/// An optional JSON body: an empty body, or the JSON `null`, is `None`; anything else must be
/// valid JSON of `T`. (The OpenAPI document describes such a body as `T` or `null`.)
pub(crate) struct MaybeJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for MaybeJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !has_type {
            return Err(Error::UnsupportedMediaType);
        }
        parse_body::<Option<T>>(&bytes).map(Self)
    }
}

/// `axum::extract::Path` with rejections in our error shape (400).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub(crate) struct Path<T>(pub T);

/// `axum::extract::Query` with rejections in our error shape (400).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub(crate) struct Query<T>(pub T);

impl<S> FromRequestParts<S> for CurrentUser
where
    Chat: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Err(Error::unauthenticated());
        }
        let token = bearer(&parts.headers).ok_or_else(Error::invalid_token)?;
        Chat::from_ref(state).auth().authenticate(token).await
    }
}

/// `Option<CurrentUser>`: `None` only when there is no `Authorization` header; a bad token is
/// still a 401, never "anonymous".
impl<S> OptionalFromRequestParts<S> for CurrentUser
where
    Chat: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Ok(None);
        }
        <Self as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

/// The peer's socket address, when the server was started with connect info.
pub(crate) fn peer_addr(parts: &Parts) -> Option<std::net::SocketAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
}

/// The client's address (see [`crate::chat::limits::client_ip`]), for the per-address limits.
pub(crate) struct ClientAddr(pub(crate) std::net::IpAddr);

impl<S> FromRequestParts<S> for ClientAddr
where
    Chat: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let chat = Chat::from_ref(state);
        Ok(Self(crate::chat::limits::client_ip(
            chat.config(),
            &parts.headers,
            peer_addr(parts),
        )))
    }
}
