//! `/api/v1/users*` (docs/protocol.md#users): the caller's profile, the directory, and admin operations.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::extract::{ClientAddr, Json, Path, Query};
use crate::chat::Error;
use crate::{
    chat::{Chat, auth::CurrentUser},
    domain::{
        input,
        model::{Page, PublicUser, User},
    },
};

/// The routes, each declared by its handler's `#[utoipa::path]` (one `routes!` per path).
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new()
        .routes(routes!(get_me, update_me, delete_me))
        .routes(routes!(change_password))
        .routes(routes!(list_users))
        .routes(routes!(get_user, update_user, delete_user))
}

// Checked by `input::ProfileChanges::parse`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct UpdateMeRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// At most 100 characters; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 100)]
    pub first_name: Option<Option<String>>,
    /// At most 100 characters; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, max_length = 100)]
    pub last_name: Option<Option<String>>,
    /// `false`: others get 403 when they open a direct message with the caller.
    pub accept_dms: Option<bool>,
    /// `false`: others in a room get no `receipt` events for the caller's reads.
    pub send_receipts: Option<bool>,
}

/// Distinguish an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn double_option<'de, D, T>(de: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de).map(Some)
}

// Checked by `input::PasswordChange::parse`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChangePasswordRequest {
    #[schema(value_type = String, required = true)]
    pub current_password: Option<String>,
    #[schema(value_type = String, required = true, min_length = 8, max_length = 128)]
    pub new_password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct DeleteMeRequest {
    /// The account's current password.
    #[schema(value_type = String, required = true)]
    pub password: Option<String>,
}

/// A role, as `PATCH /users/{id}` takes it (documentation only: the handler checks the names).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(crate) enum RoleName {
    User,
    Admin,
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct UpdateUserRequest {
    /// Any of `user`, `admin`; `user` is always kept.
    #[schema(value_type = Vec<RoleName>, required = true)]
    pub roles: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct ListUsersQuery {
    /// Substring of the username, case-insensitive. No control characters but `\n` and `\t`
    /// (else 400).
    #[param(pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F]*$")]
    pub q: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page; anything else is a 422.
    pub cursor: Option<String>,
}

/// `GET /api/v1/users/me`
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The caller's full profile", body = User)))]
pub(crate) async fn get_me(State(chat): State<Chat>, me: CurrentUser) -> Result<Json<User>, Error> {
    Ok(Json(chat.accounts().me(&me).await?))
}

/// `PATCH /api/v1/users/me`: `email`, `first_name`, `last_name`, `accept_dms`, `send_receipts`.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])), request_body = UpdateMeRequest,
    responses(
        (status = 200, description = "The updated profile", body = User),
        (status = 409, description = "The email is already registered (`conflict`)", body = ErrorBody),
        (status = 422, description = "Invalid field values (`validation_failed`, with `fields`)", body = ErrorBody),
        (status = 429, description = "Too many email changes from this address or account (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn update_me(
    State(chat): State<Chat>,
    me: CurrentUser,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<UpdateMeRequest>,
) -> Result<Json<User>, Error> {
    let changes = input::ProfileChanges::parse(
        body.email,
        body.first_name,
        body.last_name,
        body.accept_dms,
        body.send_receipts,
    )
    .map_err(Error::validation)?;
    Ok(Json(
        chat.accounts().update_profile(&me, ip, changes).await?,
    ))
}

/// `PUT /api/v1/users/me/password`: every other session is revoked.
#[utoipa::path(put, path = "/api/v1/users/me/password", tag = "users", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "Changed; every other session of the user is revoked"),
        (status = 422, description = "A field missing or invalid, or `current_password` is incorrect (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this account (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn change_password(
    State(chat): State<Chat>,
    me: CurrentUser,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<ChangePasswordRequest>,
) -> Result<StatusCode, Error> {
    let input::PasswordChange { current, new } =
        input::PasswordChange::parse(body.current_password, body.new_password)
            .map_err(Error::validation)?;
    chat.accounts()
        .change_password(&me, ip, current, new)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/users/me`: needs the password; messages stay with a `null` author.
#[utoipa::path(delete, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])), request_body = DeleteMeRequest,
    responses(
        (status = 204, description = "Deleted; every session is revoked, messages stay with a `null` author"),
        (status = 422, description = "`password` missing or incorrect (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address or for this account (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn delete_me(
    State(chat): State<Chat>,
    me: CurrentUser,
    ClientAddr(ip): ClientAddr,
    Json(body): Json<DeleteMeRequest>,
) -> Result<StatusCode, Error> {
    let password = input::required("password", body.password.filter(|p| !p.is_empty()))
        .map_err(Error::validation)?;
    chat.accounts().delete_account(&me, ip, password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/users?q=&limit=&cursor=`
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), params(ListUsersQuery),
    responses(
        (status = 200, description = "A page of users; `email` only for the caller (or for an admin)", body = Page<PublicUser>),
        (status = 422, description = "`cursor` is not one this server issued (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn list_users(
    State(chat): State<Chat>,
    me: CurrentUser,
    Query(q): Query<ListUsersQuery>,
) -> Result<Json<Page<PublicUser>>, Error> {
    // A well-formed request whose cursor this server did not issue: a 422, like any value
    // the handler refuses (the document calls every string a cursor).
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            Error::invalid_field("cursor", "is not the `next_cursor` of a previous page")
        })?),
        None => None,
    };
    super::plain_query("q", q.q.as_deref())?;
    Ok(Json(
        chat.accounts()
            .list_users(&me, q.q.as_deref(), q.limit, cursor)
            .await?,
    ))
}

/// `GET /api/v1/users/{id}`
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The user; `email` only for the caller (or for an admin)", body = PublicUser),
        (status = 404, description = "No such user (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn get_user(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<PublicUser>, Error> {
    Ok(Json(chat.accounts().user(&me, id).await?))
}

/// `PATCH /api/v1/users/{id}` (admin): set `roles`.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The user with the new roles", body = PublicUser),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such user (`not_found`)", body = ErrorBody),
        (status = 422, description = "`roles` missing or naming an unknown role (`validation_failed`)", body = ErrorBody),
    ))]
pub(crate) async fn update_user(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(id): Path<i64>,
    Json(body): Json<UpdateUserRequest>,
) -> Result<Json<PublicUser>, Error> {
    Ok(Json(chat.accounts().set_roles(&me, id, body.roles).await?))
}

/// `DELETE /api/v1/users/{id}` (admin): their sockets are closed.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted; their sessions are revoked and their sockets closed"),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorBody),
        (status = 404, description = "No such user (`not_found`)", body = ErrorBody),
    ))]
pub(crate) async fn delete_user(
    State(chat): State<Chat>,
    me: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, Error> {
    chat.accounts().delete_user(&me, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
