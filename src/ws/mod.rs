//! WebSocket endpoints (SPEC §8): `GET /ws/rooms/{name}` (one room) and `GET /ws`
//! (multiplexed). The access token is verified, and the room checked, *before* the upgrade,
//! so refusals are plain HTTP 401/403/404 in the error format of SPEC §3.

pub mod protocol;
pub mod session;
pub mod upgrade;

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, header},
    response::Response,
    routing::get,
};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use self::upgrade::WsUpgrade;
use crate::{auth::extract::bearer, error::ApiError, state::AppState, store};

/// Largest client frame; bigger ones close the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    since_seq: Option<i64>,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ws/rooms/{name}", get(room_socket))
        .route("/ws", get(mux_socket))
}

fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let allowed = &state.config.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // Non-browser clients send no Origin; browsers always do.
        None => Ok(()),
        Some(origin) if allowed.iter().any(|a| a == origin || a == "*") => Ok(()),
        Some(_) => Err(ApiError::Forbidden("origin not allowed")),
    }
}

async fn authenticate(
    state: &AppState,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<crate::auth::CurrentUser, ApiError> {
    let token = query
        .token
        .as_deref()
        .or_else(|| bearer(headers))
        .ok_or_else(ApiError::unauthenticated)?;
    state.authenticate(token).await
}

/// Bytes read from the network per read call (tungstenite's read buffer).
pub const READ_BUFFER_BYTES: usize = 512;

fn config() -> WebSocketConfig {
    // Chat frames are small: a small read buffer keeps an idle socket cheap (larger frames,
    // up to 16 KiB, still fit: the buffer grows for them; tungstenite's default 128 KiB read
    // buffer is also zeroed on every read). Writes go straight through to `BufIo`, which
    // gathers a flush's frames and frees its buffer once they are written.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// `GET /ws/rooms/{name}?token=…[&since_seq=N]`: one room's live events.
async fn room_socket(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WsUpgrade, ApiError>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    check_origin(&state, &headers)?;
    let user = authenticate(&state, &query, &headers).await?;
    let room = store::rooms::find_by_name(&state.db, &name)
        .await?
        .ok_or(ApiError::NotFound("room"))?;
    if store::rooms::role_of(&state.db, room.id, user.id)
        .await?
        .is_none()
    {
        if room.visibility != "public" {
            return Err(ApiError::Forbidden("this private room needs an invitation"));
        }
        store::rooms::add_member(&state.db, room.id, user.id).await?;
    }
    if query.since_seq.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_request(
            "since_seq must be a non-negative integer",
        ));
    }
    let since = query.since_seq;
    Ok(ws?.on_upgrade(config(), move |socket| {
        session::run(state, socket, user, session::Mode::Room { room, since })
    }))
}

/// `GET /ws?token=…`: many rooms on one socket, by `subscribe`/`unsubscribe` frames.
async fn mux_socket(
    State(state): State<AppState>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WsUpgrade, ApiError>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    check_origin(&state, &headers)?;
    let user = authenticate(&state, &query, &headers).await?;
    Ok(ws?.on_upgrade(config(), move |socket| {
        session::run(state, socket, user, session::Mode::Mux)
    }))
}
