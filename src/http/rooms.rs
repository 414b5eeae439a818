//! `/api/v1/rooms*` (SPEC §6): rooms, membership, invitations and kicks. Private rooms are
//! invisible (404) to non-members.

use std::sync::LazyLock;

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
};
use regex::Regex;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::users::double_option;
use crate::{
    auth::CurrentUser,
    error::{ApiError, FieldErrors, Json, MaybeJson, Path, Query},
    model::{Member, Page, Room, UserRef},
    state::AppState,
    store::{self, rooms::RoomRow},
    ws::protocol,
};

static ROOM_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]{0,63}$").expect("literal regex"));

pub fn routes() -> Router<AppState> {
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
        .route(
            "/rooms/{name}/members",
            get(list_members).post(invite_member),
        )
        .route("/rooms/{name}/members/{user_id}", delete(remove_member))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateRoomRequest {
    /// 1–64 of `[a-z0-9_-]`, starting with a letter or digit.
    pub name: Option<String>,
    pub topic: Option<String>,
    /// `public` (default) or `private`.
    pub visibility: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRoomRequest {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub topic: Option<Option<String>>,
    pub visibility: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InviteRequest {
    pub user_id: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListRoomsQuery {
    /// Substring of the name.
    pub q: Option<String>,
    /// Only rooms the caller is a member of.
    pub joined: Option<bool>,
    /// 1–100, default 50.
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct MembersResponse {
    pub items: Vec<Member>,
}

pub fn validate_room_name(name: &str) -> Result<(), String> {
    if ROOM_NAME_RE.is_match(name) {
        Ok(())
    } else {
        Err(
            "must be 1 to 64 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"
                .into(),
        )
    }
}

fn check_topic_visibility(fields: &mut FieldErrors, topic: Option<&str>, visibility: Option<&str>) {
    if topic.is_some_and(|t| t.chars().count() > 512) {
        fields.insert(
            "topic".into(),
            vec!["must be at most 512 characters".into()],
        );
    }
    if visibility.is_some_and(|v| v != "public" && v != "private") {
        fields.insert(
            "visibility".into(),
            vec!["must be `public` or `private`".into()],
        );
    }
}

/// Users online in `room_id`, cluster-wide (empty, with a warning, if presence is unreachable).
pub async fn online_users(state: &AppState, room_id: i64) -> Vec<UserRef> {
    match state.presence.online(room_id).await {
        Ok(ids) => store::users::refs(&state.db, &ids)
            .await
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "presence unavailable");
            Vec::new()
        }
    }
}

async fn online_count(state: &AppState, room_id: i64) -> i64 {
    state
        .presence
        .online(room_id)
        .await
        .map_or(0, |v| i64::try_from(v.len()).unwrap_or(0))
}

pub async fn wire(state: &AppState, row: RoomRow) -> Result<Room, ApiError> {
    let online = online_count(state, row.id).await;
    store::rooms::to_wire(&state.db, row, online).await
}

/// The room if the caller may see it, with the caller's role in it.
pub async fn visible(
    state: &AppState,
    name: &str,
    me: &CurrentUser,
) -> Result<(RoomRow, Option<String>), ApiError> {
    let room = store::rooms::find_by_name(&state.db, name)
        .await?
        .ok_or(ApiError::NotFound("room"))?;
    let role = store::rooms::role_of(&state.db, room.id, me.id).await?;
    if room.visibility != "public" && role.is_none() && !me.is_admin() {
        return Err(ApiError::NotFound("room"));
    }
    Ok((room, role))
}

fn can_manage(room: &RoomRow, me: &CurrentUser) -> bool {
    me.is_admin() || room.owner_id == Some(me.id)
}

async fn create(
    state: &AppState,
    me: &CurrentUser,
    name: &str,
    body: CreateRoomRequest,
) -> Result<RoomRow, ApiError> {
    let mut fields = FieldErrors::new();
    if let Err(m) = validate_room_name(name) {
        fields.insert("name".into(), vec![m]);
    }
    check_topic_visibility(
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
    let visibility = body.visibility.as_deref().unwrap_or("public");
    store::rooms::create(&state.db, name, body.topic, visibility, me.id).await
}

/// `POST /api/v1/rooms`: the creator becomes owner and member.
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", security(("bearer" = [])), request_body = CreateRoomRequest,
    responses((status = 201, body = Room), (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn create_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Json(body): Json<CreateRoomRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let Some(name) = body.name.clone() else {
        let mut fields = FieldErrors::from([("name".to_owned(), vec!["is required".to_owned()])]);
        check_topic_visibility(
            &mut fields,
            body.topic.as_deref(),
            body.visibility.as_deref(),
        );
        return Err(ApiError::Validation {
            message: "validation failed".into(),
            fields,
        });
    };
    let row = create(&state, &me, &name, body).await?;
    Ok((StatusCode::CREATED, Json(wire(&state, row).await?)))
}

/// `GET /api/v1/rooms?q=&joined=&limit=&cursor=`: public rooms plus the caller's private ones.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms", security(("bearer" = [])), params(ListRoomsQuery),
    responses((status = 200, body = Page<Room>)))]
pub async fn list_rooms(
    State(state): State<AppState>,
    me: CurrentUser,
    Query(q): Query<ListRoomsQuery>,
) -> Result<Json<Page<Room>>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    let (rows, next) = store::rooms::list(
        &state.db,
        me.id,
        q.q.as_deref(),
        q.joined.unwrap_or(false),
        limit,
        q.cursor.as_deref(),
    )
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(wire(&state, row).await?);
    }
    Ok(Json(Page {
        items,
        next_cursor: next,
    }))
}

/// `GET /api/v1/rooms/{name}`
#[utoipa::path(get, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = Room), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Room>, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    Ok(Json(wire(&state, room).await?))
}

/// `PUT /api/v1/rooms/{name}`: join-or-create. 201 created; 200 joined (or already a member).
#[utoipa::path(put, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])), request_body(content = Option<CreateRoomRequest>),
    responses((status = 200, body = Room), (status = 201, body = Room), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn join_or_create_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
    MaybeJson(body): MaybeJson<CreateRoomRequest>,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(room) = store::rooms::find_by_name(&state.db, &name).await? {
        return join_existing(&state, &me, room, true)
            .await
            .map(|r| (StatusCode::OK, Json(r)));
    }
    match create(&state, &me, &name, body.unwrap_or_default()).await {
        Ok(row) => Ok((StatusCode::CREATED, Json(wire(&state, row).await?))),
        // Lost a race with a concurrent creator: join theirs.
        Err(ApiError::Conflict { .. }) => {
            let room = store::rooms::find_by_name(&state.db, &name)
                .await?
                .ok_or(ApiError::NotFound("room"))?;
            join_existing(&state, &me, room, true)
                .await
                .map(|r| (StatusCode::OK, Json(r)))
        }
        Err(e) => Err(e),
    }
}

async fn join_existing(
    state: &AppState,
    me: &CurrentUser,
    room: RoomRow,
    private_is_404: bool,
) -> Result<Room, ApiError> {
    let role = store::rooms::role_of(&state.db, room.id, me.id).await?;
    if role.is_none() {
        if room.visibility != "public" {
            return Err(if private_is_404 {
                ApiError::NotFound("room")
            } else {
                ApiError::Forbidden("this private room needs an invitation")
            });
        }
        store::rooms::add_member(&state.db, room.id, me.id).await?;
    }
    wire(state, room).await
}

/// `POST /api/v1/rooms/{name}/join`: public rooms; private ones need an invitation (403).
#[utoipa::path(post, path = "/api/v1/rooms/{name}/join", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = Room), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn join_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Room>, ApiError> {
    let room = store::rooms::find_by_name(&state.db, &name)
        .await?
        .ok_or(ApiError::NotFound("room"))?;
    Ok(Json(join_existing(&state, &me, room, false).await?))
}

/// `POST /api/v1/rooms/{name}/leave`: the caller's sockets in the room close with 4003.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/leave", tag = "rooms", security(("bearer" = [])),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
pub async fn leave_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (room, role) = visible(&state, &name, &me).await?;
    if role.is_none() {
        return Err(ApiError::NotFound("membership"));
    }
    store::rooms::remove_member(&state.db, room.id, me.id).await?;
    publish(&state, protocol::kicked(room.id, &room.name, me.id)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /api/v1/rooms/{name}` (owner, admin): `topic`, `visibility`; broadcasts `room_updated`.
#[utoipa::path(patch, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])), request_body = UpdateRoomRequest,
    responses((status = 200, body = Room), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
pub async fn update_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<UpdateRoomRequest>,
) -> Result<Json<Room>, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    if !can_manage(&room, &me) {
        return Err(ApiError::Forbidden(
            "only the owner or an admin may change the room",
        ));
    }
    let mut fields = FieldErrors::new();
    check_topic_visibility(
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
    let row = store::rooms::update(&state.db, room, body.topic, body.visibility).await?;
    let room = wire(&state, row).await?;
    publish(&state, protocol::room_updated(&room)).await;
    Ok(Json(room))
}

/// `DELETE /api/v1/rooms/{name}` (owner, admin): sockets get `room_deleted`, then close 4404.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}", tag = "rooms", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn delete_room(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    if !can_manage(&room, &me) {
        return Err(ApiError::Forbidden(
            "only the owner or an admin may delete the room",
        ));
    }
    store::rooms::delete(&state.db, room.id).await?;
    publish(&state, protocol::room_deleted(room.id, &room.name)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/rooms/{name}/members`: `online` is cluster-wide.
#[utoipa::path(get, path = "/api/v1/rooms/{name}/members", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = MembersResponse), (status = 404, body = crate::error::ErrorBody)))]
pub async fn list_members(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<MembersResponse>, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    let online = state.presence.online(room.id).await.unwrap_or_default();
    let mut items = store::rooms::members(&state.db, room.id).await?;
    for m in &mut items {
        m.online = online.contains(&m.user.id);
    }
    Ok(Json(MembersResponse { items }))
}

/// `POST /api/v1/rooms/{name}/members` (owner, admin): invite `user_id`.
#[utoipa::path(post, path = "/api/v1/rooms/{name}/members", tag = "rooms", security(("bearer" = [])), request_body = InviteRequest,
    responses((status = 201, body = Member), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn invite_member(
    State(state): State<AppState>,
    me: CurrentUser,
    Path(name): Path<String>,
    Json(body): Json<InviteRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    if !can_manage(&room, &me) {
        return Err(ApiError::Forbidden("only the owner or an admin may invite"));
    }
    let Some(user_id) = body.user_id else {
        return Err(ApiError::invalid_field("user_id", "is required"));
    };
    let user = store::users::find(&state.db, user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    store::rooms::add_member(&state.db, room.id, user_id).await?;
    let member = store::rooms::members(&state.db, room.id)
        .await?
        .into_iter()
        .find(|m| m.user.id == user.id)
        .ok_or(ApiError::NotFound("user"))?;
    Ok((StatusCode::CREATED, Json(member)))
}

/// `DELETE /api/v1/rooms/{name}/members/{user_id}` (owner, admin): their sockets close 4003.
#[utoipa::path(delete, path = "/api/v1/rooms/{name}/members/{user_id}", tag = "rooms", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    me: CurrentUser,
    Path((name, user_id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    let (room, _) = visible(&state, &name, &me).await?;
    if !can_manage(&room, &me) {
        return Err(ApiError::Forbidden(
            "only the owner or an admin may remove members",
        ));
    }
    if room.owner_id == Some(user_id) {
        return Err(ApiError::Forbidden("the owner cannot be removed"));
    }
    if !store::rooms::remove_member(&state.db, room.id, user_id).await? {
        return Err(ApiError::NotFound("member"));
    }
    publish(&state, protocol::kicked(room.id, &room.name, user_id)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Publish a room event; a failure is logged (the state change is committed either way).
pub async fn publish(state: &AppState, env: crate::bus::Envelope) {
    if let Err(e) = state.bus.publish(env).await {
        tracing::warn!(error = %e, "event not published");
    }
}
