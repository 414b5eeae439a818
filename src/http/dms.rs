//! `/api/v1/dms` (docs/protocol.md#conversations): direct messages, the private rooms of a fixed set of people.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::extract::{Json, Query};
use crate::chat::Error;
use crate::{
    chat::{Chat, auth::CurrentUser},
    domain::{
        input,
        model::{Page, Room},
    },
};

/// The routes, each declared by its handler's `#[utoipa::path]`.
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new().routes(routes!(open_dm, list_dms))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct OpenDmRequest {
    /// The other people: 1–8 user ids, not the caller (repeats count once).
    #[schema(value_type = Vec<i64>, required = true, min_items = 1, max_items = 8)]
    #[serde(default, deserialize_with = "super::extract::integers")]
    pub user_ids: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct ListDmsQuery {
    /// 1–100, default 50.
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page; anything else is a 422.
    pub cursor: Option<String>,
}

/// `POST /api/v1/dms`: the one DM of exactly these people and the caller, created or found.
#[utoipa::path(post, path = "/api/v1/dms", tag = "dms", security(("bearer" = [])), request_body = OpenDmRequest,
    responses(
        (status = 200, description = "The DM of this set of people existed (the caller is a member)", body = Room),
        (status = 201, description = "Created, with every one of them as a member", body = Room),
        (status = 403, description = "One of the users does not accept direct messages (`forbidden`)", body = ErrorBody),
        (status = 422, description = "`user_ids` missing, empty, over 8, naming the caller or an unknown user (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "The caller created too many rooms in the last hour (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn open_dm(
    State(chat): State<Chat>,
    me: CurrentUser,
    Json(body): Json<OpenDmRequest>,
) -> Result<impl IntoResponse, Error> {
    let ids = input::required("user_ids", body.user_ids).map_err(Error::validation)?;
    let (room, created) = chat.dms().open(&me, &ids).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(room)))
}

/// `GET /api/v1/dms?limit=&cursor=`: the caller's DMs, most recent activity first, with
/// `unread`, `mentions` and `last_read_seq`.
#[utoipa::path(get, path = "/api/v1/dms", tag = "dms", security(("bearer" = [])), params(ListDmsQuery),
    responses(
        (status = 200, description = "A page of the caller's DMs", body = Page<Room>),
        (status = 422, description = "A `cursor` this server did not issue (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn list_dms(
    State(chat): State<Chat>,
    me: CurrentUser,
    Query(q): Query<ListDmsQuery>,
) -> Result<Json<Page<Room>>, Error> {
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    Ok(Json(
        chat.dms().list(&me, limit, q.cursor.as_deref()).await?,
    ))
}
