//! Validation rules, each written once and called by every path that takes the input (REST
//! bodies, WebSocket frames, the admin command). A rule checks one value and gives the
//! human-readable reason it breaks; [`super::input`] parses whole inputs with them.

use std::{net::IpAddr, sync::LazyLock};

use regex::Regex;

/// Field name → messages, as in `"fields": {"username": ["is already taken"]}`.
pub(crate) type FieldErrors = std::collections::BTreeMap<String, Vec<String>>;

/// Content limits of docs/protocol.md#messages.
pub(crate) const MAX_CONTENT_CHARS: usize = 4000;
pub(crate) const MAX_CLIENT_ID_CHARS: usize = 64;
/// Longest room topic.
pub(crate) const MAX_TOPIC_CHARS: usize = 512;

/// Usernames: letters, digits, `_`, `.` and `-` (the length is [`username_length`]).
static USERNAME_RE: LazyLock<Regex> =
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

/// A rule on one text value: the reason it breaks the rule, if it does.
pub(crate) type Rule = fn(&str) -> Result<(), String>;

/// `Err(message)` when `ok` is false.
fn holds(ok: bool, message: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(message.to_owned()) }
}

/// A username is 3 to 32 characters.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn username_length(s: &str) -> Result<(), String> {
    holds(
        (3..=32).contains(&s.chars().count()),
        "must be 3 to 32 characters",
    )
}

/// A username has only letters, digits, `_`, `.` and `-`.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn username_chars(s: &str) -> Result<(), String> {
    holds(
        USERNAME_RE.is_match(s),
        "may contain only letters, digits, `_`, `.` and `-`",
    )
}

/// An email address is at most 254 characters.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn email_length(s: &str) -> Result<(), String> {
    holds(s.chars().count() <= 254, "is too long")
}

/// An email address in the HTML form's sense: a local part of at most 64 of
/// ``[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]``, `@`, and a domain of at most 255 characters that is a
/// host name (an internationalised one in its ASCII form) or an IP address literal in `[…]`.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn email_address(s: &str) -> Result<(), String> {
    holds(is_email(s), "is not a valid email address")
}

static EMAIL_USER_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+\z").expect("literal regex"));
static EMAIL_DOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$",
    )
    .expect("literal regex")
});
static EMAIL_LITERAL_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[([a-fA-F0-9:\.]+)\]\z").expect("literal regex"));

fn is_email(s: &str) -> bool {
    let Some((user, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if user.chars().count() > 64 || domain.chars().count() > 255 {
        return false;
    }
    EMAIL_USER_RE.is_match(user)
        && (email_domain(domain)
            || idna::domain_to_ascii(domain).is_ok_and(|ascii| email_domain(&ascii)))
}

/// A host name, or an IP address literal in brackets.
fn email_domain(domain: &str) -> bool {
    EMAIL_DOMAIN_RE.is_match(domain)
        || EMAIL_LITERAL_RE
            .captures(domain)
            .and_then(|c| c.get(1))
            .is_some_and(|ip| ip.as_str().parse::<IpAddr>().is_ok())
}

/// A password is 8 to 128 characters.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn password_length(s: &str) -> Result<(), String> {
    holds(
        (8..=128).contains(&s.chars().count()),
        "must be 8 to 128 characters",
    )
}

/// A first or last name is at most 100 characters.
///
/// # Errors
/// A human-readable reason.
pub(crate) fn name_length(s: &str) -> Result<(), String> {
    holds(s.chars().count() <= 100, "must be at most 100 characters")
}

/// A rule on an integer: at least `min`. `check` takes the value as an integer, `None` when
/// it is not one (a string, a fraction, out of range), which breaks the rule too.
pub(crate) struct IntRule {
    min: i64,
    message: &'static str,
}

impl IntRule {
    /// # Errors
    /// The rule's message.
    pub(crate) fn check(&self, n: Option<i64>) -> Result<i64, &'static str> {
        n.filter(|n| *n >= self.min).ok_or(self.message)
    }
}

/// A message id: a positive integer.
pub(crate) const MESSAGE_ID: IntRule = IntRule {
    min: 1,
    message: "must be a message id",
};

/// A sequence number (`seq`, `since_seq`): a non-negative integer.
pub(crate) const SEQ: IntRule = IntRule {
    min: 0,
    message: "must be a non-negative integer",
};

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

/// Most distinct emoji on one message (docs/protocol.md#conversations).
pub(crate) const MAX_REACTIONS_PER_MESSAGE: i64 = 20;

static SHORT_NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^:[a-z0-9_+\-]{1,32}:$").expect("literal regex"));

/// A reaction: a `:short_name:` of 1–32 `[a-z0-9_+-]`, or exactly one emoji grapheme (see
/// [`emoji_grapheme`]).
///
/// # Errors
/// A human-readable reason.
pub(crate) fn reaction(emoji: &str) -> Result<(), String> {
    if SHORT_NAME_RE.is_match(emoji) || emoji_grapheme(emoji) {
        Ok(())
    } else {
        Err("must be one emoji or a :short_name: of 1-32 characters [a-z0-9_+-]".into())
    }
}

/// Emoji that stand alone (the pictographic blocks and the older symbols the Unicode emoji
/// list takes in), without a dependency on the Unicode tables: a close over-approximation of
/// `Extended_Pictographic`.
fn pictographic(c: char) -> bool {
    matches!(u32::from(c),
        0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x2194..=0x21AA
        | 0x231A..=0x23FF | 0x24C2 | 0x25AA..=0x25FE | 0x2600..=0x27BF | 0x2934 | 0x2935
        | 0x2B05..=0x2B55 | 0x3030 | 0x303D | 0x3297 | 0x3299
        | 0x1F000..=0x1F0FF | 0x1F10D..=0x1F1AD | 0x1F201..=0x1F64F | 0x1F680..=0x1F6FF
        | 0x1F700..=0x1FAFF | 0x1FC00..=0x1FFFD)
}

fn regional_indicator(c: char) -> bool {
    matches!(u32::from(c), 0x1F1E6..=0x1F1FF)
}

fn skin_tone(c: char) -> bool {
    matches!(u32::from(c), 0x1F3FB..=0x1F3FF)
}

const VS16: char = '\u{FE0F}';
const ZWJ: char = '\u{200D}';
const KEYCAP: char = '\u{20E3}';

/// Exactly one emoji grapheme cluster, in the shapes of Unicode's emoji sequences: a flag
/// (two regional indicators), a keycap (`#`, `*` or a digit, optional VS16, U+20E3), or
/// pictographs joined by ZWJ, each with an optional VS16 and skin tone, the last optionally
/// followed by a tag sequence (subdivision flags). At most 16 code points.
pub(crate) fn emoji_grapheme(s: &str) -> bool {
    let cs: Vec<char> = s.chars().collect();
    if cs.is_empty() || cs.len() > 16 {
        return false;
    }
    if cs.iter().all(|c| regional_indicator(*c)) {
        return cs.len() == 2;
    }
    if matches!(cs[0], '0'..='9' | '#' | '*') {
        return matches!(cs[1..], [KEYCAP] | [VS16, KEYCAP]);
    }
    let mut i = 0;
    loop {
        // One pictograph with its modifiers.
        if !cs.get(i).is_some_and(|c| pictographic(*c)) {
            return false;
        }
        i += 1;
        if cs.get(i) == Some(&VS16) {
            i += 1;
        }
        if cs.get(i).is_some_and(|c| skin_tone(*c)) {
            i += 1;
        }
        match cs.get(i) {
            None => return true,
            Some(&ZWJ) => i += 1,
            // Tags (U+E0020–E007E) closed by CANCEL TAG (U+E007F), at the very end.
            Some(_) => {
                let tags = &cs[i..];
                return tags.len() >= 2
                    && tags.last() == Some(&'\u{E007F}')
                    && tags[..tags.len() - 1]
                        .iter()
                        .all(|c| matches!(u32::from(*c), 0xE0020..=0xE007E));
            }
        }
    }
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

    #[test]
    fn reactions_are_one_emoji_or_a_short_name() {
        for ok in [
            "👍",
            "❤️",
            "❤",
            "👍🏽",
            "👩‍💻",
            "👨‍👩‍👧‍👦",
            "🏳️‍🌈",
            "🇫🇷",
            "1️⃣",
            "#⃣",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
            ":thumbsup:",
            ":+1:",
            ":a-b_c:",
            &format!(":{}:", "a".repeat(32)),
        ] {
            assert!(reaction(ok).is_ok(), "{ok:?} is a reaction");
        }
        for bad in [
            "",
            "a",
            "1",
            "👍👍",
            "🇫",
            "🇫🇷🇩🇪",
            "👍 ",
            " 👍",
            "::",
            ":Thumbs:",
            ":a b:",
            &format!(":{}:", "a".repeat(33)),
            "👩‍",
            "\u{200D}👍",
            "❤️❤️",
            "x\u{20E3}",
            ":x:\u{0}",
            "<b>",
            "\u{FE0F}",
        ] {
            assert!(reaction(bad).is_err(), "{bad:?} is not a reaction");
        }
    }
}
