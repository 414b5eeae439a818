//! The WebSocket protocol (docs/protocol.md#websocket): client frames in, per-socket frames out, and the close
//! code of each close reason.
//!
//! Client frames are parsed by hand from a `serde_json::Value` so that every bad frame gets a
//! precise `error` frame (`invalid_json`, `invalid_frame`, `unknown_type`, `validation_failed`)
//! and the socket stays usable. Their fields follow the rules REST bodies follow
//! ([`crate::domain::validate`]): `content`, `client_id`, message ids (`reply_to`, `id`) and
//! sequence numbers (`seq`, `since_seq`) here; `emoji` and the room name in the use-cases
//! that take them. Room events (messages, typing, presence…) have their wire form
//! in [`crate::domain::event`]; the frames here (`ready`, `ack`, `pong`, `error`…) are each
//! socket's own.

use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    domain::{
        model::{Message, Room, UserRef},
        validate::{self, IntRule},
    },
    fanout::socket::CloseReason,
};

/// The close code and reason of a [`CloseReason`] (docs/protocol.md#websocket).
pub(crate) fn close_code(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::Normal => (1000, ""),
        CloseReason::GoingAway => (1001, "going away"),
        CloseReason::Flood => (1008, "rate limit exceeded"),
        CloseReason::TooBig => (1009, "frame too large"),
        CloseReason::InvalidData => (1007, "text frames must be UTF-8"),
        CloseReason::Restart => (1012, "server restarting; reconnect"),
        CloseReason::TokenRevoked => (4001, "token expired or revoked"),
        CloseReason::Removed => (4003, "removed from room"),
        CloseReason::RoomDeleted => (4404, "room deleted"),
        CloseReason::SlowConsumer => (4429, "slow consumer; resume with since_seq"),
    }
}

#[derive(Debug, PartialEq)]
pub(crate) enum ClientFrame {
    Message {
        room: Option<String>,
        content: String,
        client_id: Option<String>,
        reply_to: Option<i64>,
    },
    /// Add (`on`) or remove a reaction to message `id`.
    React {
        room: Option<String>,
        id: i64,
        emoji: String,
        on: bool,
    },
    Typing {
        room: Option<String>,
    },
    Ping,
    Auth {
        token: String,
    },
    Subscribe {
        room: String,
        since_seq: Option<i64>,
    },
    Unsubscribe {
        room: String,
    },
    /// Read up to `seq` (docs/protocol.md#conversations).
    Read {
        room: Option<String>,
        seq: i64,
    },
}

/// A frame the server could not accept: becomes an `error` frame.
#[derive(Debug, PartialEq)]
pub(crate) struct FrameError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> FrameError {
    FrameError {
        code,
        message: message.into(),
    }
}

type Object = serde_json::Map<String, Value>;

fn opt_string(obj: &Object, key: &str) -> Result<Option<String>, FrameError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad("invalid_frame", format!("`{key}` must be a string"))),
    }
}

/// A present integer field under `rule`: an `invalid_frame` naming `key` otherwise.
fn int(value: Option<&Value>, key: &str, rule: &IntRule) -> Result<i64, FrameError> {
    rule.check(value.and_then(Value::as_i64))
        .map_err(|m| bad("invalid_frame", format!("`{key}` {m}")))
}

/// An optional integer field under `rule` (`null` is absent).
fn opt_int(obj: &Object, key: &str, rule: &IntRule) -> Result<Option<i64>, FrameError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        v => int(v, key, rule).map(Some),
    }
}

/// An optional message id: a positive integer.
fn opt_id(obj: &Object, key: &str) -> Result<Option<i64>, FrameError> {
    opt_int(obj, key, &validate::MESSAGE_ID)
}

fn req_string(obj: &Object, key: &str) -> Result<String, FrameError> {
    opt_string(obj, key)?.ok_or_else(|| bad("invalid_frame", format!("`{key}` is required")))
}

/// Parse one text frame.
///
/// # Errors
/// A [`FrameError`] for the `error` frame.
pub(crate) fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| bad("invalid_json", format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad("invalid_frame", "a frame must be a JSON object"));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(bad("invalid_frame", "`type` must be a string")),
        None => {
            // The compatibility forms `{"message": …}` and `{"text": …}`.
            for key in ["message", "text"] {
                if obj.contains_key(key) {
                    let content = req_string(&obj, key)?;
                    validate::content(&content).map_err(|m| bad("validation_failed", m))?;
                    return Ok(ClientFrame::Message {
                        room: opt_string(&obj, "room")?,
                        content,
                        client_id: None,
                        reply_to: opt_id(&obj, "reply_to")?,
                    });
                }
            }
            return Err(bad("invalid_frame", "`type` is required"));
        }
    };
    match kind {
        "message" => message(&obj),
        "react" => react(&obj),
        "typing" => Ok(ClientFrame::Typing {
            room: opt_string(&obj, "room")?,
        }),
        "ping" => Ok(ClientFrame::Ping),
        "auth" => Ok(ClientFrame::Auth {
            token: req_string(&obj, "token")?,
        }),
        "subscribe" => subscribe(&obj),
        "read" => read(&obj),
        "unsubscribe" => Ok(ClientFrame::Unsubscribe {
            room: req_string(&obj, "room")?,
        }),
        other => Err(bad("unknown_type", format!("unknown frame type `{other}`"))),
    }
}

fn message(obj: &Object) -> Result<ClientFrame, FrameError> {
    let content = req_string(obj, "content")?;
    validate::content(&content).map_err(|m| bad("validation_failed", m))?;
    let client_id = opt_string(obj, "client_id")?;
    if let Some(id) = &client_id {
        validate::client_id(id).map_err(|m| bad("validation_failed", m))?;
    }
    Ok(ClientFrame::Message {
        room: opt_string(obj, "room")?,
        content,
        client_id,
        reply_to: opt_id(obj, "reply_to")?,
    })
}

fn react(obj: &Object) -> Result<ClientFrame, FrameError> {
    Ok(ClientFrame::React {
        room: opt_string(obj, "room")?,
        id: opt_id(obj, "id")?.ok_or_else(|| bad("invalid_frame", "`id` is required"))?,
        emoji: req_string(obj, "emoji")?,
        on: match obj.get("on") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(on)) => *on,
            Some(_) => return Err(bad("invalid_frame", "`on` must be true or false")),
        },
    })
}

fn subscribe(obj: &Object) -> Result<ClientFrame, FrameError> {
    let room = req_string(obj, "room")?;
    let since_seq = opt_int(obj, "since_seq", &validate::SEQ)?;
    Ok(ClientFrame::Subscribe { room, since_seq })
}

fn read(obj: &Object) -> Result<ClientFrame, FrameError> {
    let seq = int(obj.get("seq"), "seq", &validate::SEQ)?;
    Ok(ClientFrame::Read {
        room: opt_string(obj, "room")?,
        seq,
    })
}

fn text(value: &impl Serialize) -> Utf8Bytes {
    // Serialising our own plain structs cannot fail.
    serde_json::to_string(value).unwrap_or_default().into()
}

pub(crate) fn ready(
    room: &Room,
    user: &UserRef,
    online: &[UserRef],
    last_seq: i64,
    last_read_seq: i64,
) -> Utf8Bytes {
    text(
        &json!({"type": "ready", "room": room, "user": user, "online": online, "last_seq": last_seq, "last_read_seq": last_read_seq}),
    )
}

pub(crate) fn ready_mux(user: &UserRef) -> Utf8Bytes {
    text(&json!({"type": "ready", "user": user}))
}

pub(crate) fn subscribed(
    room: &Room,
    online: &[UserRef],
    last_seq: i64,
    last_read_seq: i64,
) -> Utf8Bytes {
    text(
        &json!({"type": "subscribed", "room": room.name, "room_info": room, "online": online, "last_seq": last_seq, "last_read_seq": last_read_seq}),
    )
}

pub(crate) fn unsubscribed(room: &str) -> Utf8Bytes {
    text(&json!({"type": "unsubscribed", "room": room}))
}

pub(crate) fn ack(room: &str, msg: &Message) -> Utf8Bytes {
    text(
        &json!({"type": "ack", "room": room, "client_id": msg.client_id, "id": msg.id, "seq": msg.seq}),
    )
}

pub(crate) fn auth_ok() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"type":"auth_ok"}"#)
}

pub(crate) fn pong() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"type":"pong"}"#)
}

pub(crate) fn error(code: &str, message: &str, room: Option<&str>) -> Utf8Bytes {
    match room {
        Some(room) => {
            text(&json!({"type": "error", "code": code, "message": message, "room": room}))
        }
        None => text(&json!({"type": "error", "code": code, "message": message})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            parse(r#"{"type":"message","content":"hi","client_id":"a1"}"#),
            Ok(ClientFrame::Message {
                room: None,
                content: "hi".into(),
                client_id: Some("a1".into()),
                reply_to: None,
            })
        );
        assert_eq!(
            parse(r#"{"message":"hi"}"#),
            Ok(ClientFrame::Message {
                room: None,
                content: "hi".into(),
                client_id: None,
                reply_to: None,
            })
        );
        assert_eq!(
            parse(r#"{"text":"hi"}"#),
            Ok(ClientFrame::Message {
                room: None,
                content: "hi".into(),
                client_id: None,
                reply_to: None,
            })
        );
        assert_eq!(
            parse(r#"{"type":"typing"}"#),
            Ok(ClientFrame::Typing { room: None })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
    }

    #[test]
    fn parses_replies_reactions_reads_and_subscriptions() {
        assert_eq!(
            parse(r#"{"type":"message","content":"re","reply_to":7}"#),
            Ok(ClientFrame::Message {
                room: None,
                content: "re".into(),
                client_id: None,
                reply_to: Some(7),
            })
        );
        assert_eq!(
            parse(r#"{"type":"react","room":"r","id":3,"emoji":"👍","on":false}"#),
            Ok(ClientFrame::React {
                room: Some("r".into()),
                id: 3,
                emoji: "👍".into(),
                on: false,
            })
        );
        assert_eq!(
            parse(r#"{"type":"react","id":"3","emoji":"x"}"#)
                .unwrap_err()
                .code,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"react","id":3,"emoji":"x","on":1}"#)
                .unwrap_err()
                .code,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"message","content":"re","reply_to":-1}"#)
                .unwrap_err()
                .code,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientFrame::Auth { token: "t".into() })
        );
        assert_eq!(
            parse(r#"{"type":"read","room":"r","seq":7}"#),
            Ok(ClientFrame::Read {
                room: Some("r".into()),
                seq: 7
            })
        );
        assert_eq!(
            parse(r#"{"type":"read","seq":-1}"#).unwrap_err().code,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","room":"r","since_seq":3}"#),
            Ok(ClientFrame::Subscribe {
                room: "r".into(),
                since_seq: Some(3)
            })
        );
    }

    /// Ids and sequence numbers follow the domain's rules, their message naming the field.
    #[test]
    fn integer_fields_name_the_rule_they_break() {
        let message = |frame: &str| parse(frame).unwrap_err().message;
        assert_eq!(
            message(r#"{"type":"read","seq":-1}"#),
            "`seq` must be a non-negative integer"
        );
        assert_eq!(
            message(r#"{"type":"read","room":"r"}"#),
            "`seq` must be a non-negative integer"
        );
        assert_eq!(
            message(r#"{"type":"subscribe","room":"r","since_seq":1.5}"#),
            "`since_seq` must be a non-negative integer"
        );
        assert_eq!(
            message(r#"{"type":"message","content":"x","reply_to":"7"}"#),
            "`reply_to` must be a message id"
        );
        assert_eq!(
            message(r#"{"type":"react","id":0,"emoji":"x"}"#),
            "`id` must be a message id"
        );
        assert_eq!(
            message(r#"{"type":"react","emoji":"x"}"#),
            "`id` is required"
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","room":"r","since_seq":0}"#),
            Ok(ClientFrame::Subscribe {
                room: "r".into(),
                since_seq: Some(0)
            })
        );
    }

    #[test]
    fn rejects_bad_frames_with_codes() {
        assert_eq!(parse("{nope").unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_frame");
        assert_eq!(
            parse(r#"{"type":"dance"}"#).unwrap_err().code,
            "unknown_type"
        );
        assert_eq!(
            parse(r#"{"type":"message","content":5}"#).unwrap_err().code,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"message","content":"  "}"#)
                .unwrap_err()
                .code,
            "validation_failed"
        );
        let long = "x".repeat(4001);
        assert_eq!(
            parse(&json!({"type":"message","content": long}).to_string())
                .unwrap_err()
                .code,
            "validation_failed"
        );
        let max = "é".repeat(4000);
        assert!(parse(&json!({"type":"message","content": max}).to_string()).is_ok());
    }
}
