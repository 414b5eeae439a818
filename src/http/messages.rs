//! `/api/v1/rooms/{name}/messages*` (SPEC §7): history, send, edit, delete.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, patch},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::rooms::{publish, visible};
use crate::{
    auth::CurrentUser,
    error::{ApiError, FieldErrors, Json, Path, Query},
    model::{Message, UserRef},
    send::{Draft, Sent},
    state::AppState,
    store,
    telemetry::metrics,
    ws::protocol::{self, validate_client_id, validate_content},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/rooms/{name}/messages",
            get(list_messages).post(create_message),
        )
        .route(
            "/rooms/{name}/messages/{id}",
            patch(edit_message).delete(delete_message),
        )
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Messages with a smaller `seq`.
    pub before_seq: Option<i64>,
    /// Messages with a larger `seq` (oldest first).
    pub after_seq: Option<i64>,
    /// 1–200, default 50.
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryResponse {
    /// Ascending `seq`.
    pub items: Vec<Message>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SendRequest {
    /// 1–4000 characters, not blank.
    pub content: Option<String>,
    /// Idempotency key (1–64 characters), unique per room and author.
    pub client_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EditRequest {
    pub content: Option<String>,
}

fn content_errors(content: Option<&str>, fields: &mut FieldErrors) {
    match content {
        None => {
            fields.insert("content".into(), vec!["is required".into()]);
        }
        Some(c) => {
            if let Err(m) = validate_content(c) {
                fields.insert("content".into(), vec![m]);
            }
        }
    }
}

/// `GET /api/v1/rooms/{name}/messages?before_seq=&after_seq=&limit=`
#[utoipa::path(get, path = "/api/v1/rooms/{name}/messages", tag = "messages", security(("bearer" = [])), params(HistoryQuery),
    responses((status = 200, body = HistoryResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_messages(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    let (items, has_more) = store::messages::history(
        &state.db,
        room.id,
        &room.name,
        q.before_seq,
        q.after_seq,
        limit,
    )
    .await?;
    Ok(Json(HistoryResponse { items, has_more }))
}

/// `POST /api/v1/rooms/{name}/messages`: 201 new; 200 with the original for a repeated `client_id`.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/messages", tag = "messages", security(("bearer" = [])), request_body = SendRequest,
    responses((status = 201, body = Message), (status = 200, body = Message), (status = 403, body = crate::error::ErrorBody),
        (status = 422, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn create_message(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<SendRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (room, role) = visible(&state, &name, &me).await?;
    if role.is_none() {
        return Err(ApiError::Forbidden("join the room to post in it"));
    }
    let mut fields = FieldErrors::new();
    content_errors(body.content.as_deref(), &mut fields);
    if let Some(Err(m)) = body.client_id.as_deref().map(validate_client_id) {
        fields.insert("client_id".into(), vec![m]);
    }
    if !fields.is_empty() {
        return Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        });
    }
    if let Err(not_until) = state.msg_limiter.check_key(&me.id) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        return Err(ApiError::RateLimited(wait.as_secs().max(1)));
    }
    let draft = Draft {
        author: UserRef {
            id: me.id,
            username: me.username.clone(),
        },
        content: body.content.unwrap_or_default(),
        client_id: body.client_id,
    };
    match state.sender.send(room.id, &room.name, draft).await? {
        Sent::Created(msg) => {
            metrics::accepted("rest");
            Ok((StatusCode::CREATED, Json(msg)))
        }
        Sent::Duplicate(msg) => Ok((StatusCode::OK, Json(msg))),
    }
}

/// `PATCH /api/v1/rooms/{name}/messages/{id}` (author): broadcasts `message_edited`.
#[utoipa::path(patch, path = "/api/v1/rooms/{name}/messages/{id}", tag = "messages", security(("bearer" = [])), request_body = EditRequest,
    responses((status = 200, body = Message), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn edit_message(
    State(state): State<AppState>,
    me: CurrentUser,
    Path((name, id)): Path<(String, i64)>,
    Json(body): Json<EditRequest>,
) -> Result<Json<Message>, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    let row = store::messages::find(&state.db, room.id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    if row.author_id != Some(me.id) {
        return Err(ApiError::Forbidden("only the author may edit a message"));
    }
    let mut fields = FieldErrors::new();
    content_errors(body.content.as_deref(), &mut fields);
    if !fields.is_empty() {
        return Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        });
    }
    let row = store::messages::edit(&state.db, row, body.content.unwrap_or_default()).await?;
    let msg = store::messages::to_wire(&state.db, &room.name, vec![row])
        .await?
        .pop()
        .ok_or(ApiError::NotFound("message"))?;
    publish(&state, protocol::message_edited(room.id, &msg)).await;
    Ok(Json(msg))
}

/// `DELETE /api/v1/rooms/{name}/messages/{id}` (author, room owner, admin): broadcasts `message_deleted`.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}/messages/{id}", tag = "messages", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_message(
    State(state): State<AppState>,
    me: CurrentUser,
    Path((name, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    let row = store::messages::find(&state.db, room.id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    if row.author_id != Some(me.id) && room.owner_id != Some(me.id) && !me.is_admin() {
        return Err(ApiError::Forbidden(
            "only the author, the room owner or an admin may delete a message",
        ));
    }
    let seq = row.seq;
    store::messages::delete(&state.db, row).await?;
    publish(
        &state,
        protocol::message_deleted(room.id, &room.name, id, seq),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
