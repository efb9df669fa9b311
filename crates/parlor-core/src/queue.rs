//! What travels through the queues. Backends move bytes; these types give them meaning.

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

impl InboundEntry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("inbound entries always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
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
        serde_json::to_vec(self).expect("notifications always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
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
        assert_eq!(Notification::decode(&bytes).unwrap(), everyone);
        let sender = Notification {
            message,
            sender_only: true,
        };
        assert_eq!(Notification::decode(&sender.encode()).unwrap(), sender);
    }
}
