//! The WebSocket protocol (SPEC §8): client frames in, server frames out.
//!
//! Client frames are parsed by hand from a `serde_json::Value` so that every bad frame gets a
//! precise `error` frame (`invalid_json`, `invalid_frame`, `unknown_type`, `validation_failed`)
//! and the socket stays usable. Broadcast frames are serialised once per event into an
//! [`Envelope`]; per-socket frames (`ready`, `ack`, `pong`, `error`) are small.

use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::{
    bus::{Envelope, Kind},
    model::{Message, Room, UserRef},
};

/// Content limits of SPEC §7.
pub const MAX_CONTENT_CHARS: usize = 4000;
pub const MAX_CLIENT_ID_CHARS: usize = 64;

#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    Message {
        room: Option<String>,
        content: String,
        client_id: Option<String>,
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
}

/// A frame the server could not accept: becomes an `error` frame.
#[derive(Debug, PartialEq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> FrameError {
    FrameError {
        code,
        message: message.into(),
    }
}

fn opt_string(
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, FrameError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad("invalid_frame", format!("`{key}` must be a string"))),
    }
}

fn req_string(obj: &serde_json::Map<String, Value>, key: &str) -> Result<String, FrameError> {
    opt_string(obj, key)?.ok_or_else(|| bad("invalid_frame", format!("`{key}` is required")))
}

/// Check message content: 1–4000 characters, not blank.
///
/// # Errors
/// A human-readable reason.
pub fn validate_content(content: &str) -> Result<(), String> {
    if content.trim().is_empty() {
        return Err("content must not be blank".into());
    }
    if content.chars().count() > MAX_CONTENT_CHARS {
        return Err(format!(
            "content must be at most {MAX_CONTENT_CHARS} characters"
        ));
    }
    Ok(())
}

/// Check an idempotency key: 1–64 characters.
///
/// # Errors
/// A human-readable reason.
pub fn validate_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_CLIENT_ID_CHARS {
        return Err(format!(
            "client_id must be 1–{MAX_CLIENT_ID_CHARS} characters"
        ));
    }
    Ok(())
}

/// Parse one text frame.
///
/// # Errors
/// A [`FrameError`] for the `error` frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
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
                    validate_content(&content).map_err(|m| bad("validation_failed", m))?;
                    return Ok(ClientFrame::Message {
                        room: opt_string(&obj, "room")?,
                        content,
                        client_id: None,
                    });
                }
            }
            return Err(bad("invalid_frame", "`type` is required"));
        }
    };
    match kind {
        "message" => {
            let content = req_string(&obj, "content")?;
            validate_content(&content).map_err(|m| bad("validation_failed", m))?;
            let client_id = opt_string(&obj, "client_id")?;
            if let Some(id) = &client_id {
                validate_client_id(id).map_err(|m| bad("validation_failed", m))?;
            }
            Ok(ClientFrame::Message {
                room: opt_string(&obj, "room")?,
                content,
                client_id,
            })
        }
        "typing" => Ok(ClientFrame::Typing {
            room: opt_string(&obj, "room")?,
        }),
        "ping" => Ok(ClientFrame::Ping),
        "auth" => Ok(ClientFrame::Auth {
            token: req_string(&obj, "token")?,
        }),
        "subscribe" => {
            let room = req_string(&obj, "room")?;
            let since_seq = match obj.get("since_seq") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                    bad(
                        "invalid_frame",
                        "`since_seq` must be a non-negative integer",
                    )
                })?),
            };
            Ok(ClientFrame::Subscribe { room, since_seq })
        }
        "unsubscribe" => Ok(ClientFrame::Unsubscribe {
            room: req_string(&obj, "room")?,
        }),
        other => Err(bad("unknown_type", format!("unknown frame type `{other}`"))),
    }
}

fn text(value: &impl Serialize) -> Utf8Bytes {
    // Serialising our own plain structs cannot fail.
    serde_json::to_string(value).unwrap_or_default().into()
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// `{"type":"message", …message}` as an envelope, ready to publish.
pub fn message_envelope(room_id: i64, msg: &Message) -> Envelope {
    let mut env = Envelope::new(
        room_id,
        Kind::Message,
        text(&Tagged {
            kind: "message",
            body: msg,
        }),
    );
    env.header.seq = msg.seq;
    env
}

pub fn message_edited(room_id: i64, msg: &Message) -> Envelope {
    Envelope::new(
        room_id,
        Kind::Event,
        text(&Tagged {
            kind: "message_edited",
            body: msg,
        }),
    )
}

pub fn message_deleted(room_id: i64, room: &str, id: i64, seq: i64) -> Envelope {
    Envelope::new(
        room_id,
        Kind::Event,
        text(&json!({"type": "message_deleted", "room": room, "id": id, "seq": seq})),
    )
}

/// `typing` goes to everyone in the room but the typist.
pub fn typing(room_id: i64, room: &str, user: &UserRef) -> Envelope {
    let mut env = Envelope::new(
        room_id,
        Kind::Event,
        text(&json!({"type": "typing", "room": room, "user": user})),
    );
    env.header.user = user.id;
    env
}

/// `presence` goes to everyone in the room but the user concerned.
pub fn presence(room_id: i64, room: &str, event: &str, user: &UserRef) -> Envelope {
    let mut env = Envelope::new(
        room_id,
        Kind::Event,
        text(&json!({"type": "presence", "room": room, "event": event, "user": user})),
    );
    env.header.user = user.id;
    env
}

pub fn room_updated(room: &Room) -> Envelope {
    Envelope::new(
        room.id,
        Kind::Event,
        text(&json!({"type": "room_updated", "room": room})),
    )
}

pub fn room_deleted(room_id: i64, room: &str) -> Envelope {
    Envelope::new(
        room_id,
        Kind::RoomDeleted,
        text(&json!({"type": "room_deleted", "room": room})),
    )
}

/// `user` was removed from the room: their sockets there get `removed`, then close 4003.
pub fn kicked(room_id: i64, room: &str, user: i64) -> Envelope {
    let mut env = Envelope::new(
        room_id,
        Kind::Kick,
        text(&json!({"type": "removed", "room": room})),
    );
    env.header.user = user;
    env
}

/// Close `user`'s sockets of session `sid` (or all of them) with 4001.
pub fn revoke(user: i64, sid: Option<String>, all: bool) -> Envelope {
    let mut env = Envelope::new(0, Kind::Revoke, "");
    env.header.user = user;
    env.header.sid = sid;
    env.header.all = all;
    env
}

pub fn ready(room: &Room, user: &UserRef, online: &[UserRef], last_seq: i64) -> Utf8Bytes {
    text(
        &json!({"type": "ready", "room": room, "user": user, "online": online, "last_seq": last_seq}),
    )
}

pub fn ready_mux(user: &UserRef) -> Utf8Bytes {
    text(&json!({"type": "ready", "user": user}))
}

pub fn subscribed(room: &Room, online: &[UserRef], last_seq: i64) -> Utf8Bytes {
    text(
        &json!({"type": "subscribed", "room": room.name, "room_info": room, "online": online, "last_seq": last_seq}),
    )
}

pub fn unsubscribed(room: &str) -> Utf8Bytes {
    text(&json!({"type": "unsubscribed", "room": room}))
}

pub fn ack(room: &str, msg: &Message) -> Utf8Bytes {
    text(
        &json!({"type": "ack", "room": room, "client_id": msg.client_id, "id": msg.id, "seq": msg.seq}),
    )
}

pub fn pong() -> Utf8Bytes {
    Utf8Bytes::from_static(r#"{"type":"pong"}"#)
}

pub fn error(code: &str, message: &str, room: Option<&str>) -> Utf8Bytes {
    match room {
        Some(room) => {
            text(&json!({"type": "error", "code": code, "message": message, "room": room}))
        }
        None => text(&json!({"type": "error", "code": code, "message": message})),
    }
}

/// Replayed history: the same frame as live.
pub fn message_frame(msg: &Message) -> Utf8Bytes {
    text(&Tagged {
        kind: "message",
        body: msg,
    })
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
                client_id: Some("a1".into())
            })
        );
        assert_eq!(
            parse(r#"{"message":"hi"}"#),
            Ok(ClientFrame::Message {
                room: None,
                content: "hi".into(),
                client_id: None
            })
        );
        assert_eq!(
            parse(r#"{"text":"hi"}"#),
            Ok(ClientFrame::Message {
                room: None,
                content: "hi".into(),
                client_id: None
            })
        );
        assert_eq!(
            parse(r#"{"type":"typing"}"#),
            Ok(ClientFrame::Typing { room: None })
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
        assert_eq!(
            parse(r#"{"type":"auth","token":"t"}"#),
            Ok(ClientFrame::Auth { token: "t".into() })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","room":"r","since_seq":3}"#),
            Ok(ClientFrame::Subscribe {
                room: "r".into(),
                since_seq: Some(3)
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
