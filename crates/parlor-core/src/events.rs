//! A conversation is an ordered log of events: every change to it (a message, an edit, a
//! reaction, a member leaving…) is one [`Event`] with the next gap-free `seq`. A client asks
//! for a change with a [`Change`]; the store decides whether it may happen (the [`rules`]),
//! and if so, stores it as an event, which every member then receives in `seq` order.
//!
//! Protocol v1 grows additively: `message` frames are unchanged for older clients (with new,
//! optional fields), every other kind travels in an `event` frame.
//!
//! [`rules`]: crate::rules

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ConversationId, FileId, Seq, UserId};
use crate::protocol::{Message, User};

/// A member's role in a group. A direct conversation's two members are both `member`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// The role [`Role::as_str`] named; `None` for anything else.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// What a reply shows of the message it answers, as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyPreview {
    pub seq: Seq,
    pub sender_id: UserId,
    /// The start of the original's body ([`EXCERPT_CHARS_MAX`] characters at most); empty
    /// once it is deleted.
    pub excerpt: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// How much of a replied-to message a reply shows.
pub const EXCERPT_CHARS_MAX: usize = 120;

/// The start of `body` for a [`ReplyPreview`].
pub fn excerpt(body: &str) -> String {
    match body.char_indices().nth(EXCERPT_CHARS_MAX) {
        Some((index, _)) => body[..index].to_owned(),
        None => body.to_owned(),
    }
}

/// One emoji on a message and who reacted with it, in the order they did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub emoji: String,
    pub user_ids: Vec<UserId>,
}

/// A change a member asks for: the event without what the server assigns (`seq`, time,
/// sender). On the wire, the `kind` field names the variant and the other fields sit beside
/// it: `{"kind":"edit","target_seq":4,"body":"fixed"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A new message, optionally replying to the message at `reply_to_seq`, with the
    /// sender's uploads `files` attached (the body may then be empty).
    Message {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to_seq: Option<Seq>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<FileId>,
    },
    /// The author replaces the body of their message at `target_seq`.
    Edit {
        target_seq: Seq,
        body: String,
    },
    /// The author or a group admin deletes the message at `target_seq`: its body is erased.
    Delete {
        target_seq: Seq,
    },
    ReactionAdded {
        target_seq: Seq,
        emoji: String,
    },
    ReactionRemoved {
        target_seq: Seq,
        emoji: String,
    },
    /// A group admin adds a user as a member.
    MemberAdded {
        user_id: UserId,
    },
    /// A group admin removes a member.
    MemberRemoved {
        user_id: UserId,
    },
    /// The sender leaves the group.
    MemberLeft {},
    /// A group admin renames the group.
    TitleChanged {
        title: String,
    },
    /// A group admin gives a member a role.
    RoleChanged {
        user_id: UserId,
        role: Role,
    },
}

impl Change {
    /// A change from a JSON object with a string `kind` and the kind's fields (other fields
    /// are ignored). Serde alone would also take a number as the kind (the variant's index).
    pub fn from_json(value: serde_json::Value) -> Result<Change, serde_json::Error> {
        if !value.get("kind").is_some_and(serde_json::Value::is_string) {
            return Err(serde::de::Error::custom(
                "a change needs a string `kind` (message, edit, delete, …)",
            ));
        }
        serde_json::from_value(value)
    }

    /// The kind's wire name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Message { .. } => "message",
            Change::Edit { .. } => "edit",
            Change::Delete { .. } => "delete",
            Change::ReactionAdded { .. } => "reaction_added",
            Change::ReactionRemoved { .. } => "reaction_removed",
            Change::MemberAdded { .. } => "member_added",
            Change::MemberRemoved { .. } => "member_removed",
            Change::MemberLeft {} => "member_left",
            Change::TitleChanged { .. } => "title_changed",
            Change::RoleChanged { .. } => "role_changed",
        }
    }

    /// Whether this change alters who is a member (or their role): a cached member list
    /// older than such an event is stale.
    pub fn changes_members(&self) -> bool {
        matches!(
            self,
            Change::MemberAdded { .. }
                | Change::MemberRemoved { .. }
                | Change::MemberLeft {}
                | Change::RoleChanged { .. }
        )
    }
}

/// One stored event of a conversation's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub conversation_id: ConversationId,
    pub seq: Seq,
    /// Who caused it (for `member_left`, who left).
    pub sender_id: UserId,
    pub client_msg_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(flatten)]
    pub data: EventData,
}

/// What an event did, by kind; serialized beside the event's common fields, tagged `kind`.
// Most events are messages: boxing the large variant would cost an allocation on the
// common path to save memory on the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventData {
    /// The message as it is now (edited, deleted or reacted to since, when read back).
    Message {
        message: Message,
    },
    /// The new body (erased if the message was deleted since) and who it mentions.
    Edit {
        target_seq: Seq,
        body: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
    },
    Delete {
        target_seq: Seq,
    },
    ReactionAdded {
        target_seq: Seq,
        emoji: String,
    },
    ReactionRemoved {
        target_seq: Seq,
        emoji: String,
    },
    MemberAdded {
        user: User,
        role: Role,
    },
    /// `promoted_user_id`: the member who became admin because the last admin went.
    MemberRemoved {
        user_id: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        promoted_user_id: Option<UserId>,
    },
    MemberLeft {
        user_id: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        promoted_user_id: Option<UserId>,
    },
    TitleChanged {
        title: String,
    },
    RoleChanged {
        user_id: UserId,
        role: Role,
    },
}

impl EventData {
    /// The kind's wire name.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::Message { .. } => "message",
            EventData::Edit { .. } => "edit",
            EventData::Delete { .. } => "delete",
            EventData::ReactionAdded { .. } => "reaction_added",
            EventData::ReactionRemoved { .. } => "reaction_removed",
            EventData::MemberAdded { .. } => "member_added",
            EventData::MemberRemoved { .. } => "member_removed",
            EventData::MemberLeft { .. } => "member_left",
            EventData::TitleChanged { .. } => "title_changed",
            EventData::RoleChanged { .. } => "role_changed",
        }
    }

    /// A user who is no longer a member after this event, and must still hear of it (to
    /// drop the conversation from their list).
    pub fn departed(&self) -> Option<UserId> {
        match self {
            EventData::MemberRemoved { user_id, .. } | EventData::MemberLeft { user_id, .. } => {
                Some(*user_id)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MessageId;

    #[test]
    fn changes_have_the_wire_shape() {
        let edit: Change =
            serde_json::from_str(r#"{"kind":"edit","target_seq":4,"body":"fixed"}"#).unwrap();
        assert_eq!(
            edit,
            Change::Edit {
                target_seq: 4,
                body: "fixed".into()
            }
        );
        let left: Change = serde_json::from_str(r#"{"kind":"member_left"}"#).unwrap();
        assert_eq!(left, Change::MemberLeft {});
        assert_eq!(
            serde_json::to_string(&Change::Message {
                body: "hi".into(),
                reply_to_seq: None,
                files: Vec::new(),
            })
            .unwrap(),
            r#"{"kind":"message","body":"hi"}"#
        );
        assert!(serde_json::from_str::<Change>(r#"{"kind":"shout"}"#).is_err());
        let numbered = serde_json::json!({"kind": 1, "target_seq": 1, "body": "x"});
        assert!(Change::from_json(numbered).is_err(), "a kind is a name");
        let named = serde_json::json!({"kind": "delete", "target_seq": 1, "client_msg_id": "e"});
        assert_eq!(
            Change::from_json(named).unwrap(),
            Change::Delete { target_seq: 1 }
        );
    }

    #[test]
    fn events_carry_their_kind_beside_the_common_fields() {
        let conversation_id = ConversationId::new();
        let sender_id = UserId::new();
        let event = Event {
            conversation_id,
            seq: 7,
            sender_id,
            client_msg_id: "e-1".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            data: EventData::ReactionAdded {
                target_seq: 3,
                emoji: "👍".into(),
            },
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "reaction_added");
        assert_eq!(json["target_seq"], 3);
        assert_eq!(json["seq"], 7);
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);

        let message = Message {
            id: MessageId::new(),
            conversation_id,
            seq: 8,
            sender_id,
            client_msg_id: "m-1".into(),
            body: "hi".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            reply_to: None,
            mentions: Vec::new(),
            reactions: Vec::new(),
            edited_at: None,
            deleted: false,
            files: Vec::new(),
        };
        let event = Event {
            seq: 8,
            data: EventData::Message { message },
            ..event
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["kind"], "message");
        assert_eq!(json["message"]["body"], "hi");
    }

    #[test]
    fn excerpts_cut_at_a_character_boundary() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(EXCERPT_CHARS_MAX + 5);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS_MAX);
    }
}
