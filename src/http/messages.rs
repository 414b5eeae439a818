//! `/api/v1/rooms/{name}/messages*` (SPEC §7, §11): history and threads, send (and reply),
//! edit, delete, reactions.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, patch, put},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Path, Query};
use crate::{
    chat::{
        Chat,
        auth::CurrentUser,
        send::{Draft, Sent},
    },
    domain::{
        event::Event,
        model::{Message, UserRef},
        validate,
    },
    error::{ApiError, ErrorBody},
    fanout::route,
    store,
    telemetry::metrics,
};

pub(crate) fn routes() -> Router<Chat> {
    Router::new()
        .route(
            "/rooms/{name}/messages",
            get(list_messages).post(create_message),
        )
        .route(
            "/rooms/{name}/messages/{id}",
            patch(edit_message).delete(delete_message),
        )
        .route(
            "/rooms/{name}/messages/{id}/reactions/{emoji}",
            put(add_reaction).delete(remove_reaction),
        )
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

/// A 422 for `fields`, unless empty.
fn check(fields: crate::error::FieldErrors) -> Result<(), ApiError> {
    if fields.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        })
    }
}

/// `GET /api/v1/rooms/{name}/messages?before_seq=&after_seq=&limit=&thread=`
#[utoipa::path(get, path = "/api/v1/rooms/{name}/messages", tag = "messages", security(("bearer" = [])), params(HistoryQuery),
    responses((status = 200, description = "Messages in ascending `seq`", body = HistoryResponse), (status = 404, description = "No such room, or a private room the caller is not in, or no such `thread` root in the room (`not_found`)", body = ErrorBody)))]
pub(crate) async fn list_messages(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 200);
    if let Some(root) = q.thread
        && !store::messages::exists(&chat.db, room.id, root).await?
    {
        return Err(ApiError::NotFound("message"));
    }
    let filter = store::messages::HistoryFilter {
        before_seq: q.before_seq,
        after_seq: q.after_seq,
        thread: q.thread,
        limit,
    };
    let (items, has_more) =
        store::messages::history(&chat.db, room.id, &room.name, filter, me.id).await?;
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
) -> Result<impl IntoResponse, ApiError> {
    let room = chat.writable_room(&name, &me).await?;
    check(validate::draft(
        body.content.as_deref(),
        body.client_id.as_deref(),
    ))?;
    let reply_to = chat.thread_root(room.id, body.reply_to).await?;
    chat.admit(me.id).await?;
    let draft = Draft {
        author: UserRef {
            id: me.id,
            username: me.username.clone(),
        },
        content: body.content.unwrap_or_default(),
        client_id: body.client_id,
        reply_to,
    };
    match chat.sender.submit(room.id, &room.name, draft).await? {
        Sent::Created(msg) => {
            metrics::accepted("rest");
            Ok((StatusCode::CREATED, Json(msg)))
        }
        Sent::Duplicate(mut msg) => {
            // The original may have gathered reactions since (a retry is rare: one query).
            msg.reactions = store::reactions::of_messages(&chat.db, &[msg.id], Some(me.id))
                .await
                .map_err(store::StoreError::from)?
                .remove(&msg.id)
                .unwrap_or_default();
            Ok((StatusCode::OK, Json(msg)))
        }
    }
}

/// `PATCH /api/v1/rooms/{name}/messages/{id}` (author): broadcasts `message_edited`.
#[utoipa::path(patch, path = "/api/v1/rooms/{name}/messages/{id}", tag = "messages", security(("bearer" = [])), request_body = EditRequest,
    responses(
        (status = 200, description = "The edited message", body = Message),
        (status = 403, description = "The caller is not the author (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such message (`not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid `content` (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn edit_message(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, id)): Path<(String, i64)>,
    Json(body): Json<EditRequest>,
) -> Result<Json<Message>, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    let row = store::messages::find(&chat.db, room.id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    if row.author_id != Some(me.id) {
        return Err(ApiError::Forbidden("only the author may edit a message"));
    }
    check(validate::draft(body.content.as_deref(), None))?;
    let row = store::messages::edit(&chat.db, row, body.content.unwrap_or_default()).await?;
    let msg = store::messages::to_wire(&chat.db, &room.name, vec![row], Some(me.id))
        .await?
        .pop()
        .ok_or(ApiError::NotFound("message"))?;
    // One frame for every socket of the room: reactions without a reader's `me`.
    let mut shared = msg.clone();
    for r in &mut shared.reactions {
        r.me = false;
    }
    chat.publish(route::to_room(room.id, &Event::MessageEdited(&shared)))
        .await;
    Ok(Json(msg))
}

/// `DELETE /api/v1/rooms/{name}/messages/{id}` (author, room owner, admin): broadcasts `message_deleted`.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}/messages/{id}", tag = "messages", security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; `message_deleted` is broadcast"),
        (status = 403, description = "The caller is not the author, the room owner or an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such message (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn delete_message(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    let row = store::messages::find(&chat.db, room.id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    if row.author_id != Some(me.id) && room.owner_id != Some(me.id) && !me.is_admin() {
        return Err(ApiError::Forbidden(
            "only the author, the room owner or an admin may delete a message",
        ));
    }
    let seq = row.seq;
    store::messages::delete(&chat.db, row).await?;
    let deleted = Event::MessageDeleted {
        room: &room.name,
        id,
        seq,
    };
    chat.publish(route::to_room(room.id, &deleted)).await;
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
) -> Result<StatusCode, ApiError> {
    react(&chat, &me, &name, id, &emoji, true).await
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
) -> Result<StatusCode, ApiError> {
    react(&chat, &me, &name, id, &emoji, false).await
}

async fn react(
    chat: &Chat,
    me: &CurrentUser,
    name: &str,
    id: i64,
    emoji: &str,
    on: bool,
) -> Result<StatusCode, ApiError> {
    let room = chat.writable_room(name, me).await?;
    chat.admit_frame(me.id).await?;
    let user = UserRef {
        id: me.id,
        username: me.username.clone(),
    };
    chat.react(room.id, &room.name, &user, id, emoji, on)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
