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
}
