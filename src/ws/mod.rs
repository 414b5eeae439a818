//! WebSocket endpoints (docs/protocol.md#websocket): `GET /ws/rooms/{name}` (one room) and
//! `GET /ws` (multiplexed). The access token is verified, and the room checked, *before* the
//! upgrade, so refusals are plain HTTP 401/403/404 in the error format of docs/protocol.md#errors.
//!
//! May import: `chat`, `fanout` (the socket handle, its queue and close reasons), `domain`,
//! `config`, `telemetry` — never `http`, `store`, `bus` or Redis.

mod protocol;
mod session;
mod upgrade;
mod writer;

use axum::{
    Extension, Router,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, header},
    response::Response,
    routing::get,
};
use std::net::SocketAddr;

use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use futures::StreamExt;

use self::upgrade::WsUpgrade;
use crate::chat::Error;
use crate::chat::{
    Chat,
    auth::{CurrentUser, bearer},
    limits::SocketPermit,
};

/// Largest client frame; bigger ones close the socket with 1009.
const MAX_FRAME_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
    since_seq: Option<i64>,
}

pub(crate) fn routes() -> Router<Chat> {
    Router::new()
        .route("/ws/rooms/{name}", get(room_socket))
        .route("/ws", get(mux_socket))
}

fn check_origin(chat: &Chat, headers: &HeaderMap) -> Result<(), Error> {
    let allowed = &chat.config().allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // Non-browser clients send no Origin; browsers always do.
        None => Ok(()),
        Some(origin) if allowed.iter().any(|a| a == origin || a == "*") => Ok(()),
        Some(_) => Err(Error::Forbidden("origin not allowed")),
    }
}

async fn authenticate(
    chat: &Chat,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<CurrentUser, Error> {
    let token = query
        .token
        .as_deref()
        .or_else(|| bearer(headers))
        .ok_or_else(Error::unauthenticated)?;
    chat.auth().authenticate(token).await
}

/// Bytes read from the network per read call (tungstenite's read buffer).
const READ_BUFFER_BYTES: usize = 512;

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
    State(chat): State<Chat>,
    Path(name): Path<String>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: Result<WsUpgrade, Error>,
) -> Result<Response, Error> {
    let Query(query) = query?;
    check_origin(&chat, &headers)?;
    let user = authenticate(&chat, &query, &headers).await?;
    let pass = chat.sockets().check_room_socket(&user, &name).await?;
    if query.since_seq.is_some_and(|s| s < 0) {
        return Err(Error::bad_request(
            "since_seq must be a non-negative integer",
        ));
    }
    let since = query.since_seq;
    let ws = ws?;
    let ip = client_ip(&chat, &headers, peer);
    let (permit, room) = chat.sockets().admit_room_socket(&user, ip, pass).await?;
    let tasks = chat.tasks().clone();
    Ok(ws.on_upgrade(&tasks, config(), move |socket| {
        let session = session::run(
            chat,
            socket.split(),
            user,
            session::Mode::Room {
                room: Box::new(room),
                since,
            },
        );
        holding(permit, session)
    }))
}

/// `GET /ws?token=…`: many rooms on one socket, by `subscribe`/`unsubscribe` frames.
async fn mux_socket(
    State(chat): State<Chat>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: Result<WsUpgrade, Error>,
) -> Result<Response, Error> {
    let Query(query) = query?;
    check_origin(&chat, &headers)?;
    let user = authenticate(&chat, &query, &headers).await?;
    let ws = ws?;
    let ip = client_ip(&chat, &headers, peer);
    let permit = chat.sockets().admit_mux_socket(&user, ip).await?;
    let tasks = chat.tasks().clone();
    Ok(ws.on_upgrade(&tasks, config(), move |socket| {
        holding(
            permit,
            session::run(chat, socket.split(), user, session::Mode::Mux),
        )
    }))
}

/// The client's address, for the per-address socket limit.
fn client_ip(
    chat: &Chat,
    headers: &HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> std::net::IpAddr {
    crate::chat::limits::client_ip(chat.config(), headers, peer.map(|Extension(c)| c.0))
}

/// Run `session` while holding the socket's place in the limits (released when it ends, or
/// if the upgrade never completes).
async fn holding(permit: SocketPermit, session: impl Future<Output = ()>) {
    session.await;
    drop(permit);
}
