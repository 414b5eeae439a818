//! `/api/v1/rooms*` (SPEC §6): rooms, membership, invitations and kicks. Private rooms are
//! invisible (404) to non-members.

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{Json, MaybeJson, Path, Query},
    users::double_option,
};
use crate::{
    chat::{
        Chat,
        access::{Refusal, may_invite, may_manage},
        auth::CurrentUser,
    },
    domain::{
        event::Event,
        model::{Member, Page, Room},
        validate::{self, Visibility},
    },
    error::{ApiError, ErrorBody, FieldErrors},
    fanout::route,
    store::{self, rooms::RoomRow},
};

pub(crate) fn routes() -> Router<Chat> {
    Router::new()
        .route("/rooms", post(create_room).get(list_rooms))
        .route(
            "/rooms/{name}",
            get(get_room)
                .put(join_or_create_room)
                .patch(update_room)
                .delete(delete_room),
        )
        .route("/rooms/{name}/join", post(join_room))
        .route("/rooms/{name}/leave", post(leave_room))
        .route("/rooms/{name}/read", post(mark_read))
        .route(
            "/rooms/{name}/members",
            get(list_members).post(invite_member),
        )
        .route("/rooms/{name}/members/{user_id}", delete(remove_member))
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

/// A room as its clients see it, with its online count.
async fn wire(chat: &Chat, row: RoomRow) -> Result<Room, ApiError> {
    let online = i64::try_from(chat.online_ids(row.id).await.len()).unwrap_or(0);
    Ok(store::rooms::to_wire(&chat.db, row, online).await?)
}

async fn create(
    chat: &Chat,
    me: &CurrentUser,
    name: &str,
    body: CreateRoomRequest,
) -> Result<RoomRow, ApiError> {
    let mut fields = FieldErrors::new();
    if let Err(m) = validate::room_name(name) {
        fields.insert("name".into(), vec![m]);
    } else if name.starts_with("dm-") {
        // Generated DM names start so; a room must not take one first.
        fields.insert(
            "name".into(),
            vec!["must not start with `dm-` (reserved for direct messages)".into()],
        );
    }
    validate::room_settings(
        &mut fields,
        body.topic.as_deref(),
        body.visibility.as_deref(),
    );
    if !fields.is_empty() {
        return Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        });
    }
    chat.admit_room_creation(me.id).await?;
    let visibility = body
        .visibility
        .as_deref()
        .unwrap_or(Visibility::Public.as_str());
    Ok(store::rooms::create(&chat.db, name, body.topic, visibility, me.id).await?)
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
) -> Result<impl IntoResponse, ApiError> {
    let Some(name) = body.name.clone() else {
        let mut fields = FieldErrors::from([("name".to_owned(), vec!["is required".to_owned()])]);
        validate::room_settings(
            &mut fields,
            body.topic.as_deref(),
            body.visibility.as_deref(),
        );
        return Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        });
    };
    let row = create(&chat, &me, &name, body).await?;
    Ok((StatusCode::CREATED, Json(wire(&chat, row).await?)))
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
) -> Result<Json<Page<Room>>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    super::plain_query("q", q.q.as_deref())?;
    super::plain_query("cursor", q.cursor.as_deref())?;
    let (rows, next) = store::rooms::list(
        &chat.db,
        me.id,
        q.q.as_deref(),
        q.joined.unwrap_or(false),
        limit,
        q.cursor.as_deref(),
    )
    .await?;
    let items = if q.joined == Some(true) {
        // The caller's rooms carry their read state (one grouped query for the page).
        chat.rooms_with_read_state(&me, rows).await?
    } else {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let online = chat.online_counts(&ids).await;
        store::rooms::to_wire_many(&chat.db, rows, &online).await?
    };
    Ok(Json(Page {
        items,
        next_cursor: next,
    }))
}

/// `GET /api/v1/rooms/{name}`
#[utoipa::path(get, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, description = "The room", body = Room), (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody)))]
pub(crate) async fn get_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Room>, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    Ok(Json(wire(&chat, room).await?))
}

/// `PUT /api/v1/rooms/{name}`: join-or-create. 201 created; 200 joined (or already a member).
#[utoipa::path(put, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])), request_body(content = Option<CreateRoomRequest>),
    responses(
        (status = 200, description = "Joined an existing public room (or already a member)", body = Room),
        (status = 201, description = "Created; the caller is its owner", body = Room),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "Invalid name, topic or visibility (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "The caller created too many rooms in the last hour (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn join_or_create_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
    MaybeJson(body): MaybeJson<CreateRoomRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(room) = existing(&chat, &name).await? {
        return join_existing(&chat, &me, room, Refusal::NotFound)
            .await
            .map(|r| (StatusCode::OK, Json(r)));
    }
    match create(&chat, &me, &name, body.unwrap_or_default()).await {
        Ok(row) => Ok((StatusCode::CREATED, Json(wire(&chat, row).await?))),
        // Lost a race with a concurrent creator: join theirs.
        Err(ApiError::Conflict { .. }) => {
            let room = chat.room_named(&name).await?;
            join_existing(&chat, &me, room, Refusal::NotFound)
                .await
                .map(|r| (StatusCode::OK, Json(r)))
        }
        Err(e) => Err(e),
    }
}

/// The room called `name`, if there is one.
async fn existing(chat: &Chat, name: &str) -> Result<Option<RoomRow>, ApiError> {
    match chat.room_named(name).await {
        Ok(room) => Ok(Some(room)),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Join an existing room (or stay a member) and answer it.
async fn join_existing(
    chat: &Chat,
    me: &CurrentUser,
    room: RoomRow,
    refusal: Refusal,
) -> Result<Room, ApiError> {
    let room = chat.enter_room(room, me.id, refusal).await?;
    wire(chat, room).await
}

/// `POST /api/v1/rooms/{name}/join`: public rooms; private ones need an invitation (403).
#[utoipa::path(post, path = "/api/v1/rooms/{name}/join", tag = "rooms", security(("bearer" = [])),
    responses(
        (status = 200, description = "Joined (or already a member)", body = Room),
        (status = 403, description = "A private room that needs an invitation (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller is not in (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn join_room(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Room>, ApiError> {
    let room = chat
        .enter_room_named(&name, me.id, Refusal::NeedsInvitation)
        .await?;
    Ok(Json(wire(&chat, room).await?))
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
) -> Result<StatusCode, ApiError> {
    let (room, role) = chat.visible_room(&name, &me).await?;
    if role.is_none() {
        return Err(ApiError::NotFound("membership"));
    }
    if room.owner_id == Some(me.id) {
        return Err(ApiError::Conflict {
            message: "the owner cannot leave the room: transfer it first (PATCH the room with \
                      `owner_id`) or delete it"
                .into(),
            fields: FieldErrors::new(),
        });
    }
    store::rooms::remove_member(&chat.db, room.id, me.id).await?;
    chat.publish(route::removed(room.id, &room.name, me.id))
        .await;
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
) -> Result<Json<Room>, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    if !may_manage(&room, &me) {
        return Err(ApiError::Forbidden(
            "only the owner or an admin may change the room",
        ));
    }
    let mut fields = FieldErrors::new();
    validate::room_settings(
        &mut fields,
        body.topic.as_ref().and_then(Option::as_deref),
        body.visibility.as_deref(),
    );
    if !fields.is_empty() {
        return Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        });
    }
    let changes = store::rooms::RoomChanges {
        topic: body.topic,
        visibility: body.visibility,
        owner_id: body.owner_id,
    };
    let row = match store::rooms::update(&chat.db, room, changes).await {
        Err(store::StoreError::NotMember) => {
            fields.insert(
                "owner_id".into(),
                vec!["must be a member of the room".into()],
            );
            return Err(ApiError::Validation {
                message: "validation failed".into(),
                fields,
            });
        }
        other => other?,
    };
    let room = wire(&chat, row).await?;
    chat.publish(route::to_room(room.id, &Event::RoomUpdated { room: &room }))
        .await;
    Ok(Json(room))
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
) -> Result<StatusCode, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    if !may_manage(&room, &me) {
        return Err(ApiError::Forbidden(
            "only the owner or an admin may delete the room",
        ));
    }
    store::rooms::delete(&chat.db, room.id).await?;
    chat.publish(route::room_deleted(room.id, &room.name)).await;
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
) -> Result<Json<MembersResponse>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 200);
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        // A string the document allows but this server did not issue: 422, as for users.
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::invalid_field("cursor", "is not the `next_cursor` of a previous page")
        })?),
    };
    let (room, _) = chat.visible_room(&name, &me).await?;
    let (mut items, next) = store::rooms::members(&chat.db, room.id, limit, after).await?;
    let online = chat.online_ids(room.id).await;
    for m in &mut items {
        m.online = online.contains(&m.user.id);
    }
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
) -> Result<impl IntoResponse, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    may_invite(&room, &me)?;
    let Some(user_id) = body.user_id else {
        return Err(ApiError::invalid_field("user_id", "is required"));
    };
    let user = store::users::find(&chat.db, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    store::rooms::add_member(&chat.db, room.id, user_id).await?;
    let member = store::rooms::member(&chat.db, room.id, user.id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
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
) -> Result<StatusCode, ApiError> {
    let (room, _) = chat.visible_room(&name, &me).await?;
    if !may_manage(&room, &me) {
        return Err(ApiError::Forbidden(
            "only the owner or an admin may remove members",
        ));
    }
    if room.owner_id == Some(user_id) {
        return Err(ApiError::Forbidden("the owner cannot be removed"));
    }
    if !store::rooms::remove_member(&chat.db, room.id, user_id).await? {
        return Err(ApiError::NotFound("member"));
    }
    chat.publish(route::removed(room.id, &room.name, user_id))
        .await;
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
) -> Result<StatusCode, ApiError> {
    let Some(seq) = body.seq else {
        return Err(ApiError::invalid_field("seq", "is required"));
    };
    chat.mark_read(&me, &name, seq).await?;
    Ok(StatusCode::NO_CONTENT)
}
