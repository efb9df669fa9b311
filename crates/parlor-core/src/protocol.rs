//! Protocol v1: the JSON that crosses HTTP and WebSocket. These types are the contract;
//! internal types are converted into them, never serialized onto the wire directly.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{ApiError, ErrorCode};
use crate::events::{Change, Event, Reaction, ReplyPreview, Role};
use crate::files::FileInfo;
use crate::ids::{ConversationId, FileId, MessageId, Seq, UserId};

/// A user as others see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub username: String,
}

/// A member of a conversation, with presence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: UserId,
    pub username: String,
    pub online: bool,
}

/// A member of a conversation as its chat list row shows them: presence, role, and how far
/// they have received and read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationMember {
    pub id: UserId,
    pub username: String,
    pub online: bool,
    /// When they were last connected; `None` while online or if never.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_seen: Option<OffsetDateTime>,
    pub role: Role,
    /// Events up to this seq have reached one of their devices.
    pub last_delivered_seq: Seq,
    /// Events up to this seq they have read.
    pub last_read_seq: Seq,
}

/// A stored message in its current state. `seq` is gap-free per conversation (across every
/// kind of event, so messages alone may skip seqs). The fields after `created_at` are
/// absent when empty, as older clients knew the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub client_msg_id: String,
    /// Empty once deleted.
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyPreview>,
    /// Members the body mentions (`@name`), resolved by the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// By first reaction, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// When the body was last edited.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub edited_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The files it carries, in the order they were attached; none once deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileInfo>,
}

impl Message {
    /// A new message as the persister first stores it: no edits, reactions or deletion yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: MessageId,
        conversation_id: ConversationId,
        seq: Seq,
        sender_id: UserId,
        client_msg_id: String,
        body: String,
        created_at: OffsetDateTime,
    ) -> Message {
        Message {
            id,
            conversation_id,
            seq,
            sender_id,
            client_msg_id,
            body,
            created_at,
            reply_to: None,
            mentions: Vec::new(),
            reactions: Vec::new(),
            edited_at: None,
            deleted: false,
            files: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

/// One row of the chat list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: ConversationId,
    pub kind: ConversationKind,
    /// The group's title; `None` for a direct conversation (clients show the other member).
    pub title: Option<String>,
    /// By username.
    pub members: Vec<ConversationMember>,
    /// The newest message (not the newest event: a reaction is not a last message).
    pub last_message: Option<Message>,
    /// The seq of the newest event.
    pub last_seq: Seq,
    /// Messages from others after the caller's read marker.
    pub unread_count: u64,
    /// Of those, the ones that mention the caller.
    pub unread_mentions: u64,
    /// The caller's read marker.
    pub last_read_seq: Seq,
    /// The caller muted it: no notifications but for mentions.
    pub muted: bool,
}

/// A frame from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Send {
        conversation_id: String,
        client_msg_id: String,
        body: String,
        reply_to_seq: Option<Seq>,
        files: Vec<FileId>,
    },
    /// Any change of a conversation, `send` included: `{"type":"event","conversation_id":…,
    /// "client_msg_id":…,"kind":…}` with the kind's fields beside.
    Event {
        conversation_id: String,
        client_msg_id: String,
        change: Change,
    },
    Delivered {
        conversation_id: String,
        seq: Seq,
    },
    Typing {
        conversation_id: String,
    },
    Read {
        conversation_id: String,
        seq: Seq,
    },
    Ping,
}

/// A frame to a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Hello {
        user_id: UserId,
    },
    Accepted {
        client_msg_id: String,
        conversation_id: ConversationId,
    },
    Message {
        message: Message,
    },
    /// Every event but a message (which keeps its `message` frame).
    Event {
        event: Event,
    },
    /// A conversation the user has just become a member of (created with them in it).
    Conversation {
        conversation: Conversation,
    },
    /// The user muted or unmuted a conversation (on another device, say).
    Muted {
        conversation_id: ConversationId,
        muted: bool,
    },
    Presence {
        user_id: UserId,
        online: bool,
        #[serde(with = "time::serde::rfc3339::option")]
        last_seen: Option<OffsetDateTime>,
    },
    Typing {
        conversation_id: ConversationId,
        user_id: UserId,
    },
    Read {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: Seq,
    },
    /// Events up to `seq` have reached one of the user's devices.
    Delivered {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: Seq,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        client_msg_id: Option<String>,
        /// With `rate_limited`: milliseconds until the same frame can succeed.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        retry_after_ms: Option<u64>,
    },
}

impl ServerFrame {
    /// The frame's JSON text. Serializing these types cannot fail.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    pub fn error(error: ApiError, client_msg_id: Option<String>) -> Self {
        ServerFrame::Error {
            code: error.code,
            message: error.message,
            client_msg_id,
            retry_after_ms: error.retry_after_ms,
        }
    }
}

/// Decodes one client text frame, telling malformed JSON apart from an unknown `type`.
pub fn decode_client_frame(text: &str) -> Result<ClientFrame, ApiError> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: String,
    }
    #[derive(Deserialize)]
    struct Send {
        conversation_id: String,
        client_msg_id: String,
        /// Blank only when there are files (validation says so).
        #[serde(default)]
        body: String,
        #[serde(default)]
        reply_to_seq: Option<Seq>,
        #[serde(default)]
        files: Vec<FileId>,
    }
    #[derive(Deserialize)]
    struct EventFrame {
        conversation_id: String,
        client_msg_id: String,
    }
    #[derive(Deserialize)]
    struct Typing {
        conversation_id: String,
    }
    #[derive(Deserialize)]
    struct Marker {
        conversation_id: String,
        seq: Seq,
    }

    fn fields<T: serde::de::DeserializeOwned>(text: &str, kind: &str) -> Result<T, ApiError> {
        serde_json::from_str(text).map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidInput,
                format!("bad {kind} frame: {error}"),
            )
        })
    }

    let envelope: Envelope = serde_json::from_str(text).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("a frame must be a JSON object with a string \"type\": {error}"),
        )
    })?;
    match envelope.kind.as_str() {
        "send" => {
            let Send {
                conversation_id,
                client_msg_id,
                body,
                reply_to_seq,
                files,
            } = fields(text, "send")?;
            Ok(ClientFrame::Send {
                conversation_id,
                client_msg_id,
                body,
                reply_to_seq,
                files,
            })
        }
        "event" => {
            let EventFrame {
                conversation_id,
                client_msg_id,
            } = fields(text, "event")?;
            let change = serde_json::from_str(text)
                .and_then(Change::from_json)
                .map_err(|error| {
                    ApiError::new(ErrorCode::InvalidInput, format!("bad event frame: {error}"))
                })?;
            Ok(ClientFrame::Event {
                conversation_id,
                client_msg_id,
                change,
            })
        }
        "typing" => {
            let Typing { conversation_id } = fields(text, "typing")?;
            Ok(ClientFrame::Typing { conversation_id })
        }
        "read" => {
            let Marker {
                conversation_id,
                seq,
            } = fields(text, "read")?;
            Ok(ClientFrame::Read {
                conversation_id,
                seq,
            })
        }
        "delivered" => {
            let Marker {
                conversation_id,
                seq,
            } = fields(text, "delivered")?;
            Ok(ClientFrame::Delivered {
                conversation_id,
                seq,
            })
        }
        "ping" => Ok(ClientFrame::Ping),
        other => Err(ApiError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type {:?}", truncate(other, 32)),
        )),
    }
}

fn truncate(s: &str, chars_max: usize) -> &str {
    match s.char_indices().nth(chars_max) {
        Some((index, _)) => &s[..index],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_client_frame() {
        let send = decode_client_frame(
            r#"{"type":"send","conversation_id":"c","client_msg_id":"m1","body":"hi"}"#,
        );
        assert_eq!(
            send,
            Ok(ClientFrame::Send {
                conversation_id: "c".into(),
                client_msg_id: "m1".into(),
                body: "hi".into(),
                reply_to_seq: None,
                files: Vec::new(),
            })
        );
        assert_eq!(
            decode_client_frame(
                r#"{"type":"event","conversation_id":"c","client_msg_id":"e1","kind":"delete","target_seq":3}"#
            ),
            Ok(ClientFrame::Event {
                conversation_id: "c".into(),
                client_msg_id: "e1".into(),
                change: Change::Delete { target_seq: 3 },
            })
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"delivered","conversation_id":"c","seq":9}"#),
            Ok(ClientFrame::Delivered {
                conversation_id: "c".into(),
                seq: 9
            })
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"typing","conversation_id":"c"}"#),
            Ok(ClientFrame::Typing {
                conversation_id: "c".into()
            })
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"read","conversation_id":"c","seq":7}"#),
            Ok(ClientFrame::Read {
                conversation_id: "c".into(),
                seq: 7
            })
        );
        assert_eq!(
            decode_client_frame(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn tells_malformed_json_from_unknown_type_from_bad_fields() {
        let code = |text| decode_client_frame(text).unwrap_err().code;
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"[1,2]"#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":"shout"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"send","body":"x"}"#),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            code(r#"{"type":"read","conversation_id":"c","seq":-1}"#),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            code(r#"{"type":"event","conversation_id":"c","client_msg_id":"e","kind":"shout"}"#),
            ErrorCode::InvalidInput
        );
        assert_eq!(
            code(r#"{"type":"event","conversation_id":"c","client_msg_id":"e","kind":9}"#),
            ErrorCode::InvalidInput
        );
    }

    #[test]
    fn server_frames_have_the_v1_shape() {
        let frame = ServerFrame::Error {
            code: ErrorCode::BodyTooLarge,
            message: "too big".into(),
            client_msg_id: Some("m1".into()),
            retry_after_ms: None,
        };
        assert_eq!(
            frame.to_json(),
            r#"{"type":"error","code":"body_too_large","message":"too big","client_msg_id":"m1"}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
