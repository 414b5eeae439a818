//! `/api/v1/rooms*` (docs/protocol.md#rooms): rooms, membership, invitations and kicks. Private rooms are
//! invisible (404) to non-members.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::{
    extract::{Json, MaybeJson, Path, Query},
    users::double_option,
};
use crate::chat::Error;
use crate::{
    chat::{
        Chat,
        auth::CurrentUser,
        rooms::{NewRoom, Outcome, RoomChanges, RoomQuery},
    },
    domain::{
        input,
        model::{Member, Page, Room},
        validate::Visibility,
    },
};

/// The routes, each declared by its handler's `#[utoipa::path]` (one `routes!` per path).
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new()
        .routes(routes!(create_room, list_rooms))
        .routes(routes!(
            get_room,
            join_or_create_room,
            update_room,
            delete_room
        ))
        .routes(routes!(join_room))
        .routes(routes!(leave_room))
        .routes(routes!(mark_read))
        .routes(routes!(list_members, invite_member))
        .routes(routes!(remove_member))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct CreateRoomRequest {
    /// 1–64 of `[a-z0-9_-]`, starting with a letter or digit; unique and immutable.
    #[schema(value_type = String, required = true, pattern = "^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub name: Option<String>,
    #[schema(max_length = 512)]
    pub topic: Option<String>,
    /// `public` (default) or `private`.
    #[schema(value_type = Option<Visibility>)]
    pub visibility: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct UpdateRoomRequest {
    /// At most 512 characters; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 512)]
    pub topic: Option<Option<String>>,
    #[schema(value_type = Option<Visibility>)]
    pub visibility: Option<String>,
    /// Transfer the room to this member; the previous owner stays a member.
    #[serde(default, deserialize_with = "super::extract::integer")]
    pub owner_id: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct InviteRequest {
    #[schema(value_type = i64, required = true)]
    #[serde(default, deserialize_with = "super::extract::integer")]
    pub user_id: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct ListRoomsQuery {
    /// Substring of the name. No control characters but `\n` and `\t` (else 400).
    #[param(pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F]*$")]
    pub q: Option<String>,
    /// Only rooms the caller is a member of.
    pub joined: Option<bool>,
    /// 1–100, default 50.
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F]*$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ReadRequest {
    /// The highest `seq` read. Beyond the room's last message it is clamped to it; a value
    /// below the current `last_read_seq` changes nothing.
    #[schema(value_type = i64, required = true, minimum = 0)]
    #[serde(default, deserialize_with = "super::extract::integer")]
    pub seq: Option<i64>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub(crate) struct MembersResponse {
    pub items: Vec<Member>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct MembersQuery {
    /// Page size, 1–200 (default 100).
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page; anything else is a 422.
    pub cursor: Option<String>,
}

impl CreateRoomRequest {
    fn settings(self) -> NewRoom {
        NewRoom {
            topic: self.topic,
            visibility: self.visibility,
        }
    }
}

/// A cursor this server issued (a user id); anything else is a 422.
fn id_cursor(cursor: Option<&str>) -> Result<Option<i64>, Error> {
    match cursor.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c.parse::<i64>().map(Some).map_err(|_| {
            Error::invalid_field("cursor", "is not the `next_cursor` of a previous page")
        }),
    }
}

/// `POST /api/v1/rooms`: the creator becomes owner and member.
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", security(("bearer" = [])), request_body = CreateRoomRequest,
    responses(
        (status = 201, description = "Created; the caller is its owner and a member", body = Room),
        (status = 409, description = "The name is taken (`conflict`)", body = ErrorBody),
        (status = 422, description = "Invalid name, topic or visibility (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "The caller created too many rooms in the last hour (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn create_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Json(body): Json<CreateRoomRequest>,
) -> Result<impl IntoResponse, Error> {
    let name = body.name.clone();
    let room = chat
        .rooms()
        .create(&me, name.as_deref(), body.settings())
        .await?;
    Ok((StatusCode::CREATED, Json(room)))
}

/// `GET /api/v1/rooms?q=&joined=&limit=&cursor=`: public rooms plus the caller's private ones.
/// With `joined=true`, each room carries the caller's `last_read_seq`, `unread` and
/// `mentions`.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms", security(("bearer" = [])), params(ListRoomsQuery),
    responses((status = 200, description = "A page of rooms", body = Page<Room>)))]
pub(crate) async fn list_rooms(
    State(chat): State<Chat>,
    me: CurrentUser,
    Query(q): Query<ListRoomsQuery>,
) -> Result<Json<Page<Room>>, Error> {
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    super::plain_query("q", q.q.as_deref())?;
    super::plain_query("cursor", q.cursor.as_deref())?;
    let query = RoomQuery {
        q: q.q.as_deref(),
        joined: q.joined.unwrap_or(false),
        limit,
        cursor: q.cursor.as_deref(),
    };
    Ok(Json(chat.rooms().list(&me, query).await?))
}

/// `GET /api/v1/rooms/{name}`
#[utoipa::path(get, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, description = "The room", body = Room), (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody)))]
pub(crate) async fn get_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Room>, Error> {
    Ok(Json(chat.rooms().get(&me, &name).await?))
}

/// `PUT /api/v1/rooms/{name}`: join-or-create. 201 created; 200 joined (or already a member).
#[utoipa::path(put, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])), request_body(content = Option<CreateRoomRequest>),
    responses(
        (status = 200, description = "Joined an existing public room (or already a member)", body = Room),
        (status = 201, description = "Created; the caller is its owner", body = Room),
        (status = 403, description = "An admin outside a private room, which needs an invitation, or a DM (`forbidden`)", body = ErrorBody),
        (status = 404, description = "A private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid name (a `dm-` name included, whether or not it is a DM the caller may not see), topic or visibility (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "The caller created too many rooms in the last hour (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn join_or_create_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    MaybeJson(body): MaybeJson<CreateRoomRequest>,
) -> Result<impl IntoResponse, Error> {
    let settings = body.unwrap_or_default().settings();
    let (room, outcome) = chat.rooms().join_or_create(&me, &name, settings).await?;
    let status = match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Joined => StatusCode::OK,
    };
    Ok((status, Json(room)))
}

/// `POST /api/v1/rooms/{name}/join`: public rooms; a private room the caller may not see is no
/// room (404).
#[utoipa::path(post, path = "/api/v1/rooms/{name}/join", tag = "rooms", security(("bearer" = [])),
    responses(
        (status = 200, description = "Joined (or already a member)", body = Room),
        (status = 403, description = "An admin outside a private room, which needs an invitation, or a DM (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn join_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Room>, Error> {
    Ok(Json(chat.rooms().join(&me, &name).await?))
}

/// `POST /api/v1/rooms/{name}/leave`: the caller's sockets in the room close with 4003. The
/// owner cannot leave (409) until the room is transferred.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/leave", tag = "rooms", security(("bearer" = [])),
    responses(
        (status = 204, description = "Left; the caller's sockets in the room close with 4003"),
        (status = 404, description = "No such room, or the caller is not a member (`not_found`)", body = ErrorBody),
        (status = 409, description = "The caller owns the room: transfer it (`owner_id`) or delete it first (`conflict`)", body = ErrorBody),
    ))]
pub(crate) async fn leave_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    chat.rooms().leave(&me, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /api/v1/rooms/{name}` (owner, admin): `topic`, `visibility`, `owner_id` (transfer to
/// a member); broadcasts `room_updated`.
#[utoipa::path(patch, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])), request_body = UpdateRoomRequest,
    responses(
        (status = 200, description = "The updated room", body = Room),
        (status = 403, description = "The caller is neither the owner nor an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid topic or visibility, or `owner_id` is not a member (`validation_failed`, with `fields`)", body = ErrorBody),
    ))]
pub(crate) async fn update_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<UpdateRoomRequest>,
) -> Result<Json<Room>, Error> {
    let changes = RoomChanges {
        topic: body.topic,
        visibility: body.visibility,
        owner_id: body.owner_id,
    };
    Ok(Json(chat.rooms().update(&me, &name, changes).await?))
}

/// `DELETE /api/v1/rooms/{name}` (owner, admin): sockets get `room_deleted`, then close 4404.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; its sockets get `room_deleted`, then close with 4404"),
        (status = 403, description = "The caller is neither the owner nor an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn delete_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    chat.rooms().delete(&me, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/rooms/{name}/members?limit=&cursor=`: one page, in user-id order; `online` is
/// cluster-wide.
#[utoipa::path(get, path = "/api/v1/rooms/{name}/members", tag = "rooms", security(("bearer" = [])), params(MembersQuery),
    responses(
        (status = 200, description = "One page of members", body = MembersResponse),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "`cursor` is not one this server issued (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn list_members(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Json<MembersResponse>, Error> {
    let limit = q.limit.unwrap_or(100).clamp(1, 200);
    let after = id_cursor(q.cursor.as_deref())?;
    let (items, next) = chat.rooms().members(&me, &name, limit, after).await?;
    Ok(Json(MembersResponse {
        items,
        next_cursor: next.map(|id| id.to_string()),
    }))
}

/// `POST /api/v1/rooms/{name}/members` (owner, admin): invite `user_id`.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/members", tag = "rooms", security(("bearer" = [])), request_body = InviteRequest,
    responses(
        (status = 201, description = "Invited: the user is a member", body = Member),
        (status = 403, description = "The caller is neither the owner nor an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or no such user (`not_found`)", body = ErrorBody),
        (status = 422, description = "`user_id` missing (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn invite_member(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<InviteRequest>,
) -> Result<impl IntoResponse, Error> {
    let member = chat.rooms().invite(&me, &name, body.user_id).await?;
    Ok((StatusCode::CREATED, Json(member)))
}

/// `DELETE /api/v1/rooms/{name}/members/{user_id}` (owner, admin): their sockets close 4003.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}/members/{user_id}", tag = "rooms", security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed; their sockets in the room close with 4003"),
        (status = 403, description = "The caller is neither the owner nor an admin, or the target is the owner (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room (or a private room the caller is not in), or the user is not a member (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn remove_member(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path((name, user_id)): Path<(String, i64)>,
) -> Result<StatusCode, Error> {
    chat.rooms().remove_member(&me, &name, user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/rooms/{name}/read` (member): the caller read up to `seq`. `last_read_seq`
/// never moves backwards; a `seq` beyond the room's last message is clamped to it. Others in
/// the room get a `receipt` (throttled) unless the caller set `send_receipts: false`.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/read", tag = "rooms", security(("bearer" = [])), request_body = ReadRequest,
    responses(
        (status = 204, description = "Recorded (or already further)"),
        (status = 403, description = "The caller is not a member of this public room (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "`seq` missing or negative (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn mark_read(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<ReadRequest>,
) -> Result<StatusCode, Error> {
    let seq = input::required("seq", body.seq).map_err(Error::validation)?;
    chat.dms().mark_read(&me, &name, seq).await?;
    Ok(StatusCode::NO_CONTENT)
}
