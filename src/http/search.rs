//! `/api/v1/search/messages` (docs/protocol.md#conversations): full-text search in the rooms the caller may read.

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::ErrorBody;
use super::extract::{Json, Query};
use crate::chat::Error;
use crate::{
    chat::{
        Chat,
        auth::CurrentUser,
        messages::{DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT},
    },
    domain::model::{Page, SearchHit},
};

/// Longest search query, in characters.
const MAX_QUERY_CHARS: usize = 256;

/// The routes, each declared by its handler's `#[utoipa::path]`.
pub(crate) fn routes() -> OpenApiRouter<Chat> {
    OpenApiRouter::new().routes(routes!(search_messages))
}

#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct SearchQuery {
    /// Words (matched by their stem: `running` finds `runs`) and `"quoted phrases"`; every
    /// one must match. 1–256 characters; no control characters but `\n` and `\t` (else 400).
    #[param(pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F]*$")]
    pub q: Option<String>,
    /// Only this room (404 if the caller may not see it).
    pub room: Option<String>,
    /// 1–100, default 20.
    pub limit: Option<u64>,
    /// `next_cursor` of the previous page; anything else is a 422.
    pub cursor: Option<String>,
}

/// `GET /api/v1/search/messages?q=&room=&limit=&cursor=`: newest first.
#[utoipa::path(get, path = "/api/v1/search/messages", tag = "messages", security(("bearer" = [])), params(SearchQuery),
    responses(
        (status = 200, description = "A page of matches, newest first, from the rooms the caller may read now; `highlight` is HTML (text escaped, matches in `<mark>`)", body = Page<SearchHit>),
        (status = 404, description = "`room` does not exist or is a private room the caller is not in (`not_found`)", body = ErrorBody),
        (status = 422, description = "`q` missing, blank or too long, or `cursor` not one this server issued (`validation_failed`)", body = ErrorBody),
        (status = 429, description = "Reading too fast (`rate_limited`)", body = ErrorBody),
    ))]
pub(crate) async fn search_messages(
    State(chat): State<Chat>,
    me: CurrentUser,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Page<SearchHit>>, Error> {
    super::plain_query("q", q.q.as_deref())?;
    let text = q.q.as_deref().unwrap_or_default();
    if text.trim().is_empty() {
        return Err(Error::invalid_field("q", "is required"));
    }
    if text.chars().count() > MAX_QUERY_CHARS {
        return Err(Error::invalid_field("q", "must be at most 256 characters"));
    }
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
            Error::invalid_field("cursor", "is not the `next_cursor` of a previous page")
        })?),
        None => None,
    };
    let limit = q
        .limit
        .unwrap_or(DEFAULT_SEARCH_LIMIT)
        .clamp(1, MAX_SEARCH_LIMIT);
    let (items, next) = chat
        .messages()
        .search(&me, text, q.room.as_deref(), cursor, limit)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: next.map(|id| id.to_string()),
    }))
}
