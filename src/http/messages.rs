//! `/api/v1/rooms/{name}/messages*` (docs/protocol.md#messages, §11): history and threads, send (and reply),
//! edit, delete, reactions.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::extract::{Json, Path, Query};
use crate::chat::Error;
use crate::{
    chat::{
        Chat,
        auth::CurrentUser,
        messages::{HistoryPage, Post},
        send::Sent,
    },
    domain::model::Message,
    telemetry::metrics,
};

/// The routes, each declared by its handler's `#[utoipa::path]` (one `routes!` per path).
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new()
        .routes(routes!(list_messages, create_message))
        .routes(routes!(edit_message, delete_message))
        .routes(routes!(add_reaction, remove_reaction))
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct HistoryQuery {
    /// Messages with a smaller `seq`.
    pub before_seq: Option<i64>,
    /// Messages with a larger `seq` (oldest first).
    pub after_seq: Option<i64>,
    /// 1–200, default 50.
    pub limit: Option<u64>,
    /// Only this thread: the root with this id and its replies (paged like history).
    pub thread: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HistoryResponse {
    /// Ascending `seq`.
    pub items: Vec<Message>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct SendRequest {
    /// 1–4000 characters, not blank.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 4000)]
    pub content: Option<String>,
    /// Idempotency key (1–64 characters), unique per room and author.
    #[schema(min_length = 1, max_length = 64)]
    pub client_id: Option<String>,
    /// Reply to this message of the same room (not deleted): the reply joins its thread (a
    /// reply to a reply joins the same thread: `reply_to` of the stored message is the root).
    #[serde(default, deserialize_with = "super::extract::integer")]
    pub reply_to: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct EditRequest {
    /// 1–4000 characters, not blank.
    #[schema(value_type = String, required = true, min_length = 1, max_length = 4000)]
    pub content: Option<String>,
}

/// `GET /api/v1/rooms/{name}/messages?before_seq=&after_seq=&limit=&thread=`
#[utoipa::path(get, path = "/api/v1/rooms/{name}/messages", tag = "messages", security(("bearer" = [])), params(HistoryQuery),
    responses((status = 200, description = "Messages in ascending `seq`", body = HistoryResponse), (status = 404, description = "No such room, or a private room the caller is not in, or no such `thread` root in the room (`not_found`)", body = ErrorBody), (status = 429, description = "Reading too fast (`rate_limited`)", body = ErrorBody)))]
pub(crate) async fn list_messages(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryResponse>, Error> {
    let page = HistoryPage {
        before_seq: q.before_seq,
        after_seq: q.after_seq,
        thread: q.thread,
        limit: q.limit.unwrap_or(50).clamp(1, 200),
    };
    let (items, has_more) = chat.messages().history(&me, &name, page).await?;
    Ok(Json(HistoryResponse { items, has_more }))
}

/// `POST /api/v1/rooms/{name}/messages`: 201 new; 200 with the original for a repeated `client_id`.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/messages", tag = "messages", security(("bearer" = [])), request_body = SendRequest,
    responses(
        (status = 201, description = "Committed and delivered", body = Message),
        (status = 200, description = "The same `client_id` again: the original message, nothing new stored", body = Message),
        (status = 403, description = "The caller is not a member (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid `content` or `client_id`, or `reply_to` not a live message of the room (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "Sending too fast (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn create_message(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<SendRequest>,
) -> Result<impl IntoResponse, Error> {
    let post = Post {
        content: body.content,
        client_id: body.client_id,
        reply_to: body.reply_to,
    };
    match chat.messages().send(&me, &name, post).await? {
        Sent::Created(msg) => {
            metrics::accepted("rest");
            Ok((StatusCode::CREATED, Json(msg)))
        }
        Sent::Duplicate(msg) => Ok((StatusCode::OK, Json(msg))),
    }
}

/// `PATCH /api/v1/rooms/{name}/messages/{id}` (author): broadcasts `message_edited`.
#[utoipa::path(patch, path = "/api/v1/rooms/{name}/messages/{id}", tag = "messages", security(("bearer" = [])), request_body = EditRequest,
    responses(
        (status = 200, description = "The edited message", body = Message),
        (status = 403, description = "The caller is not the author (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such message (`not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid `content` (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Sending (or editing, or deleting) too fast (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn edit_message(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, id)): Path<(String, i64)>,
    Json(body): Json<EditRequest>,
) -> Result<Json<Message>, Error> {
    Ok(Json(
        chat.messages()
            .edit_message(&me, &name, id, body.content)
            .await?,
    ))
}

/// `DELETE /api/v1/rooms/{name}/messages/{id}` (author, room owner, admin): broadcasts `message_deleted`.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}/messages/{id}", tag = "messages", security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; `message_deleted` is broadcast"),
        (status = 403, description = "The caller is not the author, the room owner or an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such message (`not_found`)", body = ErrorBody),
        (status = 429, description = "Sending (or editing, or deleting) too fast (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn delete_message(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, id)): Path<(String, i64)>,
) -> Result<StatusCode, Error> {
    chat.messages().delete_message(&me, &name, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /api/v1/rooms/{name}/messages/{id}/reactions/{emoji}` (members): idempotent.
#[utoipa::path(put, path = "/api/v1/rooms/{name}/messages/{id}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(("name" = String, Path, description = "The room's name"), ("id" = i64, Path, description = "The message's id"),
        ("emoji" = String, Path, description = "One emoji grapheme, or `:short_name:` of 1–32 `[a-z0-9_+-]` (URL-encoded)")),
    responses(
        (status = 204, description = "The caller reacts with `emoji` (already did: nothing changes); a change broadcasts `reaction`"),
        (status = 403, description = "The caller is not a member (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such message (`not_found`)", body = ErrorBody),
        (status = 409, description = "The message already has 20 distinct emoji (`conflict`, on `emoji`)", body = ErrorBody),
        (status = 422, description = "`emoji` is neither one emoji nor a `:short_name:` (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Too many frames and reactions (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn add_reaction(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, id, emoji)): Path<(String, i64, String)>,
) -> Result<StatusCode, Error> {
    chat.messages()
        .react_in(&me, &name, id, &emoji, true)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/rooms/{name}/messages/{id}/reactions/{emoji}` (members): idempotent.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}/messages/{id}/reactions/{emoji}", tag = "messages", security(("bearer" = [])),
    params(("name" = String, Path, description = "The room's name"), ("id" = i64, Path, description = "The message's id"),
        ("emoji" = String, Path, description = "One emoji grapheme, or `:short_name:` (URL-encoded)")),
    responses(
        (status = 204, description = "The caller no longer reacts with `emoji` (did not: nothing changes); a change broadcasts `reaction`"),
        (status = 403, description = "The caller is not a member (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such message (`not_found`)", body = ErrorBody),
        (status = 422, description = "`emoji` is neither one emoji nor a `:short_name:` (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Too many frames and reactions (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn remove_reaction(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, id, emoji)): Path<(String, i64, String)>,
) -> Result<StatusCode, Error> {
    chat.messages()
        .react_in(&me, &name, id, &emoji, false)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
