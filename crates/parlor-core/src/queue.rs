//! What travels through the queues. Backends move bytes; these types give them meaning.
//!
//! These bytes outlive the build that wrote them (in a write-ahead log, a JetStream stream,
//! a dead-letter queue), so they carry a version: the first byte of every payload. The rule:
//! a build reads every version up to its own and writes its own, so an upgrade never strands
//! an entry; a payload of a newer version than the reader's is refused with a reason (in a
//! rolling upgrade, upgrade the readers, persisters and notifiers, before the writers).
//!
//! - version 0: JSON of the struct, no version byte (builds before payload versions; it
//!   starts with `{`, which no later version byte is);
//! - version 1: the byte `0x01`, then the same JSON.
//!
//! The body stays JSON: it was a small part of the 6 % that JSON took of the server's
//! profile (most of it is the protocol's own frames), and the version byte lets a later
//! build move the body to a binary layout without a migration.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ConversationId, UserId};
use crate::ports::NewMessage;
use crate::protocol::Message;

/// An accepted message on its way to the persister.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundEntry {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub body: String,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
}

/// The payload version this build writes.
pub const PAYLOAD_VERSION: u8 = 1;

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

/// A payload of any version up to [`PAYLOAD_VERSION`].
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    match bytes.first() {
        None => Err(PayloadError::Empty),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(1) => Ok(serde_json::from_slice(&bytes[1..])?),
        Some(&version) => Err(PayloadError::UnknownVersion(version)),
    }
}

impl InboundEntry {
    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_payload(bytes)
    }

    pub fn into_new_message(self) -> NewMessage {
        NewMessage {
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            client_msg_id: self.client_msg_id,
            body: self.body,
            accepted_at: self.accepted_at,
        }
    }
}

/// A stored message on its way to the connected members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub message: Message,
    /// Only the sender's connections get it: a client resent a message that was stored and
    /// announced before, and only the sender needs to learn its `seq`; everyone else has it.
    /// Absent in notifications written before this field existed (they go to everyone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sender_only: bool,
}

impl Notification {
    pub fn encode(&self) -> Vec<u8> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_payload(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_entries_round_trip() {
        let entry = InboundEntry {
            conversation_id: ConversationId::new(),
            sender_id: UserId::new(),
            client_msg_id: "m-1".into(),
            body: "héllo \"world\"".into(),
            accepted_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(InboundEntry::decode(&entry.encode()).unwrap(), entry);
        assert!(InboundEntry::decode(b"{\"garbage\":1}").is_err());
    }

    #[test]
    fn notifications_without_an_audience_go_to_everyone() {
        let message = Message {
            id: crate::ids::MessageId::new(),
            conversation_id: ConversationId::new(),
            seq: 7,
            sender_id: UserId::new(),
            client_msg_id: "m-1".into(),
            body: "hi".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let everyone = Notification {
            message: message.clone(),
            sender_only: false,
        };
        let bytes = everyone.encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("sender_only"));
        assert_eq!(bytes[0], PAYLOAD_VERSION);
        assert_eq!(Notification::decode(&bytes).unwrap(), everyone);
        let sender = Notification {
            message,
            sender_only: true,
        };
        assert_eq!(Notification::decode(&sender.encode()).unwrap(), sender);
    }

    fn fixed_message() -> Message {
        Message {
            id: "01a2315a-0000-7000-8000-000000000001".parse().unwrap(),
            conversation_id: "01a2315a-0000-7000-8000-000000000002".parse().unwrap(),
            seq: 7,
            sender_id: "01a2315a-0000-7000-8000-000000000003".parse().unwrap(),
            client_msg_id: "m-1".into(),
            body: "héllo".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// The bytes this build writes. A change here is a new payload version: keep reading
    /// these bytes, add the new layout under the next version byte.
    #[test]
    fn version_1_bytes_are_pinned() {
        let message = fixed_message();
        let entry = InboundEntry {
            conversation_id: message.conversation_id,
            sender_id: message.sender_id,
            client_msg_id: "m-1".into(),
            body: "héllo".into(),
            accepted_at: OffsetDateTime::UNIX_EPOCH,
        };
        let v1_entry = "\u{1}{\"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\
            \"sender_id\":\"01a2315a-0000-7000-8000-000000000003\",\"client_msg_id\":\"m-1\",\
            \"body\":\"héllo\",\"accepted_at\":\"1970-01-01T00:00:00Z\"}";
        assert_eq!(String::from_utf8(entry.encode()).unwrap(), v1_entry);
        assert_eq!(InboundEntry::decode(v1_entry.as_bytes()).unwrap(), entry);
        let notification = Notification {
            message,
            sender_only: true,
        };
        let v1_notification = "\u{1}{\"message\":{\"id\":\"01a2315a-0000-7000-8000-000000000001\",\
            \"conversation_id\":\"01a2315a-0000-7000-8000-000000000002\",\"seq\":7,\
            \"sender_id\":\"01a2315a-0000-7000-8000-000000000003\",\"client_msg_id\":\"m-1\",\
            \"body\":\"héllo\",\"created_at\":\"1970-01-01T00:00:00Z\"},\"sender_only\":true}";
        assert_eq!(
            String::from_utf8(notification.encode()).unwrap(),
            v1_notification
        );
        assert_eq!(
            Notification::decode(v1_notification.as_bytes()).unwrap(),
            notification
        );
    }

    /// What builds before payload versions wrote, still in logs and streams after an upgrade.
    #[test]
    fn version_0_payloads_are_still_read() {
        let v0_entry = br#"{"conversation_id":"01a2315a-0000-7000-8000-000000000002","sender_id":"01a2315a-0000-7000-8000-000000000003","client_msg_id":"m-1","body":"hi","accepted_at":"1970-01-01T00:00:00Z"}"#;
        let entry = InboundEntry::decode(v0_entry).unwrap();
        assert_eq!(
            (entry.client_msg_id.as_str(), entry.body.as_str()),
            ("m-1", "hi")
        );
        let v0_notification = br#"{"message":{"id":"01a2315a-0000-7000-8000-000000000001","conversation_id":"01a2315a-0000-7000-8000-000000000002","seq":7,"sender_id":"01a2315a-0000-7000-8000-000000000003","client_msg_id":"m-1","body":"hi","created_at":"1970-01-01T00:00:00Z"}}"#;
        let notification = Notification::decode(v0_notification).unwrap();
        assert!(
            !notification.sender_only,
            "a version 0 notification goes to everyone"
        );
        assert_eq!(notification.message.seq, 7);
    }

    #[test]
    fn newer_and_broken_payloads_are_refused_with_a_reason() {
        let newer = InboundEntry::decode(b"\x02anything").unwrap_err();
        assert!(matches!(newer, PayloadError::UnknownVersion(2)), "{newer}");
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
