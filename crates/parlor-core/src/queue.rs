//! What travels through the queues. Backends move bytes; these types give them meaning.
//!
//! These bytes outlive the build that wrote them (in a write-ahead log, a JetStream stream,
//! a dead-letter queue), so they carry a version: the first byte of every payload. The rule:
//! a build reads every version up to its own and writes its own, so an upgrade never strands
//! an entry; a payload of a newer version than the reader's is refused with a reason (in a
//! rolling upgrade, upgrade the readers, persisters and notifiers, before the writers).
//!
//! - version 0: JSON of the version-1 struct, no version byte (builds before payload
//!   versions; it starts with `{`, which no later version byte is);
//! - version 1: the byte `0x01`, then JSON: an entry is a message (`body` beside the other
//!   fields), a notification is a stored message and whether only its sender gets it;
//! - version 2: the byte `0x02`, then JSON: an entry holds any [`Change`], a notification
//!   holds the frame its audience gets, ready to send, and what the notifier needs to
//!   route it (conversation, seq, audience, membership version);
//! - version 3: the byte `0x03`, then the JSON of version 2, where a message change may
//!   carry `files` (a build of version 2 would read it and drop the files without a word,
//!   so it must refuse it instead).
//!
//! The body stays JSON: it was a small part of the 6 % that JSON took of the server's
//! profile (most of it is the protocol's own frames), and the version byte lets a later
//! build move the body to a binary layout without a migration.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::events::Change;
use crate::ids::{ConversationId, Seq, UserId};
use crate::ports::NewEvent;
use crate::protocol::{Message, ServerFrame};

/// An accepted change on its way to the persister.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEntry {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    pub change: Change,
}

/// The payload version this build writes.
pub const PAYLOAD_VERSION: u8 = 3;

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("payload version {0} is newer than this build reads ({PAYLOAD_VERSION})")]
    UnknownVersion(u8),
    #[error("bad payload: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// `value` as a payload of [`PAYLOAD_VERSION`].
pub fn encode_payload<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    bytes.push(PAYLOAD_VERSION);
    serde_json::to_writer(&mut bytes, value).expect("payload types always serialize");
    bytes
}

/// A payload of any version up to [`PAYLOAD_VERSION`], for a type whose JSON has not changed
/// between versions (the dead-letter log's records).
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    Ok(match versioned::<T, T>(bytes)? {
        Ok(value) | Err(value) => value,
    })
}

/// A payload's JSON: either of version 0 or 1 (`Ok(Err)`), read with the old layout, or of
/// the current version (`Ok(Ok)`).
fn versioned<Old: DeserializeOwned, New: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Result<New, Old>, PayloadError> {
    match bytes.first() {
        None => Err(PayloadError::Empty),
        Some(b'{') => Ok(Err(serde_json::from_slice(bytes)?)),
        Some(1) => Ok(Err(serde_json::from_slice(&bytes[1..])?)),
        Some(2 | 3) => Ok(Ok(serde_json::from_slice(&bytes[1..])?)),
        Some(&version) => Err(PayloadError::UnknownVersion(version)),
    }
}

/// An entry of versions 0 and 1: always a message.
#[derive(Deserialize)]
struct MessageEntryV1 {
    conversation_id: ConversationId,
    sender_id: UserId,
    client_msg_id: String,
    body: String,
    #[serde(with = "time::serde::rfc3339")]
    accepted_at: OffsetDateTime,
}

impl InboundEntry {
    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        Ok(match versioned::<MessageEntryV1, InboundEntry>(bytes)? {
            Ok(entry) => entry,
            Err(v1) => InboundEntry {
                conversation_id: v1.conversation_id,
                sender_id: v1.sender_id,
                client_msg_id: v1.client_msg_id,
                accepted_at: v1.accepted_at,
                change: Change::Message {
                    body: v1.body,
                    reply_to_seq: None,
                    files: Vec::new(),
                },
            },
        })
    }

    pub fn into_new_event(self) -> NewEvent {
        NewEvent {
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            client_msg_id: self.client_msg_id,
            accepted_at: self.accepted_at,
            change: self.change,
        }
    }
}

/// Who gets a notification's frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every member of the conversation.
    Members,
    /// Every member, and a user who just stopped being one (to hear of it).
    MembersAnd(UserId),
    /// One user: the sender of a change the store refused, or of a resend of an event
    /// stored and announced before (everyone else has it).
    Sender(UserId),
}

/// A stored event (or a refusal) on its way to the connected members.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Notification {
    pub conversation_id: ConversationId,
    /// The event's seq: members get a conversation's frames in seq order. `None` for a frame
    /// that waits for nothing (a refusal, a resend's answer).
    pub seq: Option<Seq>,
    pub audience: Audience,
    /// The conversation's membership version when the event was stored
    /// ([`crate::ports::Stored::members_seq`]): a notifier's member list read before it is
    /// stale. 0 in notifications of version 1.
    pub members_seq: Seq,
    /// When the event was accepted, for the delivery latency.
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    /// The frame's JSON, as every recipient gets it.
    pub frame: Box<RawValue>,
}

/// A notification of versions 0 and 1: always a stored message.
#[derive(Deserialize)]
struct MessageNotificationV1 {
    message: Message,
    #[serde(default)]
    sender_only: bool,
}

impl Notification {
    /// `frame` for `audience`.
    pub fn new(
        conversation_id: ConversationId,
        seq: Option<Seq>,
        audience: Audience,
        members_seq: Seq,
        accepted_at: OffsetDateTime,
        frame: &ServerFrame,
    ) -> Notification {
        // Serialized straight into its raw form: no second pass to check it is JSON.
        let frame = serde_json::value::to_raw_value(frame).expect("frames always serialize");
        Notification {
            conversation_id,
            seq,
            audience,
            members_seq,
            accepted_at,
            frame,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        Ok(
            match versioned::<MessageNotificationV1, Notification>(bytes)? {
                Ok(notification) => notification,
                Err(v1) => {
                    let message = v1.message;
                    let (seq, audience) = if v1.sender_only {
                        (None, Audience::Sender(message.sender_id))
                    } else {
                        (Some(message.seq), Audience::Members)
                    };
                    Notification::new(
                        message.conversation_id,
                        seq,
                        audience,
                        0,
                        message.created_at,
                        &ServerFrame::Message { message },
                    )
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Role;

    #[test]
    fn inbound_entries_round_trip() {
        for change in [
            Change::Message {
                body: "héllo \"world\"".into(),
                reply_to_seq: Some(3),
                files: Vec::new(),
            },
            Change::ReactionAdded {
                target_seq: 2,
                emoji: "👍".into(),
            },
            Change::RoleChanged {
                user_id: UserId::new(),
                role: Role::Admin,
            },
            Change::MemberLeft {},
        ] {
            let entry = InboundEntry {
                conversation_id: ConversationId::new(),
                sender_id: UserId::new(),
                client_msg_id: "m-1".into(),
                accepted_at: OffsetDateTime::UNIX_EPOCH,
                change,
            };
            assert_eq!(InboundEntry::decode(&entry.encode()).unwrap(), entry);
        }
        assert!(InboundEntry::decode(b"{\"garbage\":1}").is_err());
        assert!(InboundEntry::decode(b"\x03{\"garbage\":1}").is_err());
    }

    fn fixed_message() -> Message {
        Message::new(
            "01a2315a-0000-7000-8000-000000000001".parse().unwrap(),
            "01a2315a-0000-7000-8000-000000000002".parse().unwrap(),
            7,
            "01a2315a-0000-7000-8000-000000000003".parse().unwrap(),
            "m-1".into(),
            "héllo".into(),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    /// The bytes this build writes. A change here is a new payload version: keep reading
    /// these bytes, add the new layout under the next version byte.
    #[test]
    fn version_3_bytes_are_pinned() {
        let message = fixed_message();
        let entry = InboundEntry {
            conversation_id: message.conversation_id,
            sender_id: message.sender_id,
            client_msg_id: "m-1".into(),
            accepted_at: OffsetDateTime::UNIX_EPOCH,
            change: Change::Message {
                body: "héllo".into(),
                reply_to_seq: None,
                files: vec![crate::ids::FileId(uuid::Uuid::from_u128(
                    0x01a2315a_0000_7000_8000_000000000009,
                ))],
            },
        };
        let v3_entry = "\u{3}{\"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\
            \"sender_id\":\"01a2315a-0000-7000-8000-000000000003\",\"client_msg_id\":\"m-1\",\
            \"accepted_at\":\"1970-01-01T00:00:00Z\",\
            \"change\":{\"kind\":\"message\",\"body\":\"héllo\",\
            \"files\":[\"01a2315a-0000-7000-8000-000000000009\"]}}";
        assert_eq!(String::from_utf8(entry.encode()).unwrap(), v3_entry);
        assert_eq!(InboundEntry::decode(v3_entry.as_bytes()).unwrap(), entry);
        let notification = Notification::new(
            message.conversation_id,
            Some(7),
            Audience::MembersAnd(message.sender_id),
            5,
            OffsetDateTime::UNIX_EPOCH,
            &ServerFrame::Pong,
        );
        let v3_notification = "\u{3}{\"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\
            \"seq\":7,\"audience\":{\"members_and\":\"01a2315a-0000-7000-8000-000000000003\"},\
            \"members_seq\":5,\"accepted_at\":\"1970-01-01T00:00:00Z\",\
            \"frame\":{\"type\":\"pong\"}}";
        assert_eq!(
            String::from_utf8(notification.encode()).unwrap(),
            v3_notification
        );
        let decoded = Notification::decode(v3_notification.as_bytes()).unwrap();
        assert_eq!(decoded.frame.get(), r#"{"type":"pong"}"#);
        assert_eq!(
            (decoded.seq, decoded.audience, decoded.members_seq),
            (Some(7), Audience::MembersAnd(message.sender_id), 5)
        );
    }

    /// What version 2 wrote, still in logs and streams after an upgrade.
    #[test]
    fn version_2_payloads_are_still_read() {
        let message = fixed_message();
        let v2_entry = "\u{2}{\"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\
            \"sender_id\":\"01a2315a-0000-7000-8000-000000000003\",\"client_msg_id\":\"m-1\",\
            \"accepted_at\":\"1970-01-01T00:00:00Z\",\
            \"change\":{\"kind\":\"edit\",\"target_seq\":4,\"body\":\"héllo\"}}";
        let entry = InboundEntry::decode(v2_entry.as_bytes()).unwrap();
        assert_eq!(
            entry.change,
            Change::Edit {
                target_seq: 4,
                body: "héllo".into()
            }
        );
        assert_eq!(entry.sender_id, message.sender_id);
        let v2_notification = "\u{2}{\"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\
            \"seq\":7,\"audience\":{\"members_and\":\"01a2315a-0000-7000-8000-000000000003\"},\
            \"members_seq\":5,\"accepted_at\":\"1970-01-01T00:00:00Z\",\
            \"frame\":{\"type\":\"pong\"}}";
        let decoded = Notification::decode(v2_notification.as_bytes()).unwrap();
        assert_eq!((decoded.seq, decoded.members_seq), (Some(7), 5));
    }

    /// What version 1 wrote (and version 0 without the first byte), still in logs and
    /// streams after an upgrade.
    #[test]
    fn version_1_and_0_payloads_are_still_read() {
        let v1_entry = "\u{1}{\"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\
            \"sender_id\":\"01a2315a-0000-7000-8000-000000000003\",\"client_msg_id\":\"m-1\",\
            \"body\":\"héllo\",\"accepted_at\":\"1970-01-01T00:00:00Z\"}";
        for bytes in [v1_entry.as_bytes(), &v1_entry.as_bytes()[1..]] {
            let entry = InboundEntry::decode(bytes).unwrap();
            assert_eq!(entry.client_msg_id, "m-1");
            assert_eq!(
                entry.change,
                Change::Message {
                    body: "héllo".into(),
                    reply_to_seq: None,
                    files: Vec::new(),
                }
            );
        }
        let message = fixed_message();
        let v1_notification = "\u{1}{\"message\":{\"id\":\"01a2315a-0000-7000-8000-000000000001\",\
            \"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\"seq\":7,\
            \"sender_id\":\"01a2315a-0000-7000-8000-000000000003\",\"client_msg_id\":\"m-1\",\
            \"body\":\"héllo\",\"created_at\":\"1970-01-01T00:00:00Z\"},\"sender_only\":true}";
        let sender_only = Notification::decode(v1_notification.as_bytes()).unwrap();
        assert_eq!(sender_only.seq, None);
        assert_eq!(sender_only.audience, Audience::Sender(message.sender_id));
        let frame: ServerFrame = serde_json::from_str(sender_only.frame.get()).unwrap();
        assert_eq!(
            frame,
            ServerFrame::Message {
                message: message.clone()
            }
        );
        let v0_notification = br#"{"message":{"id":"01a2315a-0000-7000-8000-000000000001","conversation_id":"01a2315a-0000-7000-8000-000000000002","seq":7,"sender_id":"01a2315a-0000-7000-8000-000000000003","client_msg_id":"m-1","body":"hi","created_at":"1970-01-01T00:00:00Z"}}"#;
        let everyone = Notification::decode(v0_notification).unwrap();
        assert_eq!(
            (everyone.seq, everyone.audience, everyone.members_seq),
            (Some(7), Audience::Members, 0),
            "a version 0 notification goes to everyone"
        );
    }

    #[test]
    fn newer_and_broken_payloads_are_refused_with_a_reason() {
        let newer = InboundEntry::decode(b"\x04anything").unwrap_err();
        assert!(matches!(newer, PayloadError::UnknownVersion(4)), "{newer}");
        assert!(newer.to_string().contains("newer than this build"));
        assert!(matches!(
            InboundEntry::decode(b"").unwrap_err(),
            PayloadError::Empty
        ));
        assert!(matches!(
            InboundEntry::decode(b"\x01{\"garbage\":1}").unwrap_err(),
            PayloadError::Malformed(_)
        ));
    }
}
