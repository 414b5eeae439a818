//! `/api/v1/openapi.json` (generated from the handlers' `#[utoipa::path]` annotations) and
//! `/docs`, Swagger UI served from assets embedded in the binary (no CDN).

use axum::Router;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

use super::{auth, health, messages, rooms, users};
use crate::{chat::Chat, domain::model, error};

#[derive(OpenApi)]
#[openapi(
    info(title = "chat-server API", description = "REST API of the chat service. WebSocket frames are documented in the README."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout,
        users::get_me, users::update_me, users::change_password, users::delete_me,
        users::list_users, users::get_user, users::update_user, users::delete_user,
        rooms::create_room, rooms::list_rooms, rooms::get_room, rooms::join_or_create_room,
        rooms::update_room, rooms::delete_room, rooms::join_room, rooms::leave_room,
        rooms::list_members, rooms::invite_member, rooms::remove_member,
        messages::list_messages, messages::create_message, messages::edit_message, messages::delete_message,
        health::healthz, health::readyz,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail,
        model::User, model::PublicUser, model::UserRef, model::Room, model::Message, model::Member,
        auth::Tokens, auth::RegisterResponse, auth::LoginResponse,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, login, token refresh and logout"),
        (name = "users", description = "Profiles and administration"),
        (name = "rooms", description = "Rooms and membership"),
        (name = "messages", description = "History, sending, editing and deleting"),
        (name = "operations", description = "Probes"),
    )
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub(crate) fn routes() -> Router<Chat> {
    Router::new().merge(SwaggerUi::new("/docs").url("/api/v1/openapi.json", ApiDoc::openapi()))
}
