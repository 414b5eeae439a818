//! Validation rules, each written once and called by every path that takes the input (REST
//! bodies, WebSocket frames, the admin command).

use std::sync::LazyLock;

use regex::Regex;

use crate::error::FieldErrors;

/// Content limits of SPEC §7.
pub(crate) const MAX_CONTENT_CHARS: usize = 4000;
pub(crate) const MAX_CLIENT_ID_CHARS: usize = 64;
/// Longest room topic.
pub(crate) const MAX_TOPIC_CHARS: usize = 512;

/// Usernames: letters, digits, `_`, `.` and `-` (length is checked by the request's derive).
pub(crate) static USERNAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9_.\-]+$").expect("literal regex"));

static ROOM_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9][a-z0-9_-]{0,63}$").expect("literal regex"));

/// Text a user may store: no NUL and no other C0 control character but `\n` and `\t` (the
/// databases refuse NUL, and controls only hide text).
///
/// # Errors
/// A human-readable reason.
pub(crate) fn plain_text(s: &str) -> Result<(), String> {
    if s.chars()
        .any(|c| c.is_ascii_control() && c != '\n' && c != '\t')
    {
        return Err("must not contain control characters (other than newline and tab)".into());
    }
    Ok(())
}

/// Message content: 1–4000 characters, not blank, [`plain_text`].
///
/// # Errors
/// A human-readable reason.
pub(crate) fn content(content: &str) -> Result<(), String> {
    if content.trim().is_empty() {
        return Err("content must not be blank".into());
    }
    plain_text(content).map_err(|m| format!("content {m}"))?;
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        ));
    }
    Ok(())
}

/// An idempotency key: 1–64 characters, [`plain_text`].
///
/// # Errors
/// A human-readable reason.
pub(crate) fn client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_CLIENT_ID_CHARS {
        return Err(format!(
            "client_id must be 1–{MAX_CLIENT_ID_CHARS} characters"
        ));
    }
    plain_text(id).map_err(|m| format!("client_id {m}"))
}

/// A draft's fields (`content` required), as field errors for a 422.
pub(crate) fn draft(content: Option<&str>, client_id: Option<&str>) -> FieldErrors {
    let mut fields = FieldErrors::new();
    match content {
        None => {
            fields.insert("content".into(), vec!["is required".into()]);
        }
        Some(c) => {
            if let Err(m) = self::content(c) {
                fields.insert("content".into(), vec![m]);
            }
        }
    }
    if let Some(Err(m)) = client_id.map(self::client_id) {
        fields.insert("client_id".into(), vec![m]);
    }
    fields
}

/// A room name: 1–64 of `[a-z0-9_-]`, starting with a letter or digit.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn room_name(name: &str) -> Result<(), String> {
    if ROOM_NAME_RE.is_match(name) {
        Ok(())
    } else {
        Err(
            "must be 1 to 64 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"
                .into(),
        )
    }
}

/// A room's topic (at most 512 characters) and visibility (`public` or `private`), into
/// `fields`.
pub(crate) fn room_settings(
    fields: &mut FieldErrors,
    topic: Option<&str>,
    visibility: Option<&str>,
) {
    if let Some(topic) = topic {
        if topic.chars().count() > MAX_TOPIC_CHARS {
            fields.insert(
                "topic".into(),
                vec![format!("must be at most {MAX_TOPIC_CHARS} characters")],
            );
        } else if let Err(m) = plain_text(topic) {
            fields.insert("topic".into(), vec![m]);
        }
    }
    if visibility.is_some_and(|v| Visibility::parse(v).is_none()) {
        fields.insert(
            "visibility".into(),
            vec!["must be `public` or `private`".into()],
        );
    }
}

/// Who may find and join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum Visibility {
    /// Listed to everyone; anyone may join.
    Public,
    /// Invisible (404) to non-members; joined by invitation only.
    Private,
}

impl Visibility {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Self::Public),
            "private" => Some(Self::Private),
            _ => None,
        }
    }

    /// A stored value; anything unknown is treated as private (fail closed).
    pub(crate) fn of(stored: &str) -> Self {
        Self::parse(stored).unwrap_or(Self::Private)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_limits_count_characters() {
        assert!(content("  ").is_err());
        assert!(content(&"x".repeat(4001)).is_err());
        assert!(content(&"é".repeat(4000)).is_ok());
        assert!(client_id("").is_err());
        assert!(client_id(&"a".repeat(65)).is_err());
        assert!(content("a\u{0}b").is_err());
        assert!(content("bell\u{7}").is_err());
        assert!(content("two\nlines\tand a tab").is_ok());
        assert!(client_id("k\u{0}").is_err());
    }

    #[test]
    fn room_names_and_settings() {
        assert!(room_name("general-1").is_ok());
        assert!(room_name("-x").is_err());
        assert!(room_name("Upper").is_err());
        let mut fields = FieldErrors::new();
        room_settings(&mut fields, Some(&"t".repeat(513)), Some("secret"));
        assert_eq!(fields.len(), 2);
        assert_eq!(Visibility::of("weird"), Visibility::Private);
    }
}
