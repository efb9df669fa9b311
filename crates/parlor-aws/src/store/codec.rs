//! Values in and out of DynamoDB attribute maps, and the items of the tables as documents:
//! [`ConversationDoc`], [`MemberDoc`], [`EventDoc`]. Times are unix nanoseconds and seqs
//! plain numbers, both `N` (exact: DynamoDB numbers hold 38 digits); ids are hyphenated
//! strings. Lists keep order where it matters (mentions, reactions), which sets would not.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use parlor_core::error::BackendError;
use parlor_core::events::{EventData, Role};
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::protocol::{ConversationKind, User};
use parlor_core::storage::{event_columns, event_of_columns, kind_of_text, kind_text};
use time::OffsetDateTime;

use super::error::unreadable;

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn bool_value(value: bool) -> AttributeValue {
    AttributeValue::Bool(value)
}

/// An item (or a key) from `(name, value)` pairs.
pub(super) fn item<const N: usize>(pairs: [(&str, AttributeValue); N]) -> Item {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// The time of stored unix nanoseconds, in UTC.
pub(super) fn time_of_nanos(nanos: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .expect("every i64 of nanoseconds is a valid time")
}

/// Reads attributes of one item of `table`, each failure naming the table and attribute.
pub(super) struct Reader<'a> {
    pub(super) table: &'a str,
    pub(super) item: &'a Item,
}

impl<'a> Reader<'a> {
    pub(super) fn new(table: &'a str, item: &'a Item) -> Reader<'a> {
        Reader { table, item }
    }

    fn missing(&self, name: &str) -> BackendError {
        unreadable(
            self.table,
            format!("attribute {name} missing or of another type"),
        )
    }

    pub(super) fn s(&self, name: &str) -> Result<&'a str, BackendError> {
        match self.item.get(name) {
            Some(AttributeValue::S(value)) => Ok(value),
            _ => Err(self.missing(name)),
        }
    }

    pub(super) fn opt_s(&self, name: &str) -> Result<Option<&'a str>, BackendError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(value)) => Ok(Some(value)),
            _ => Err(self.missing(name)),
        }
    }

    pub(super) fn n<T: FromStr>(&self, name: &str) -> Result<T, BackendError> {
        self.opt_n(name)?.ok_or_else(|| self.missing(name))
    }

    pub(super) fn opt_n<T: FromStr>(&self, name: &str) -> Result<Option<T>, BackendError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(value)) => value
                .parse()
                .map(Some)
                .map_err(|_| unreadable(self.table, format!("{name} is not a number: {value}"))),
            _ => Err(self.missing(name)),
        }
    }

    /// A number that defaults to 0 when absent.
    pub(super) fn n_or_zero<T: FromStr + Default>(&self, name: &str) -> Result<T, BackendError> {
        Ok(self.opt_n(name)?.unwrap_or_default())
    }

    pub(super) fn bool(&self, name: &str) -> Result<bool, BackendError> {
        match self.item.get(name) {
            None => Ok(false),
            Some(AttributeValue::Bool(value)) => Ok(*value),
            _ => Err(self.missing(name)),
        }
    }

    pub(super) fn id<T: FromStr>(&self, name: &str) -> Result<T, BackendError> {
        let text = self.s(name)?;
        text.parse()
            .map_err(|_| unreadable(self.table, format!("{name} is not an id: {text}")))
    }

    pub(super) fn list(&self, name: &str) -> Result<&'a [AttributeValue], BackendError> {
        match self.item.get(name) {
            None => Ok(&[]),
            Some(AttributeValue::L(values)) => Ok(values),
            _ => Err(self.missing(name)),
        }
    }

    pub(super) fn user_ids(&self, name: &str) -> Result<Vec<UserId>, BackendError> {
        self.list(name)?
            .iter()
            .map(|value| match value {
                AttributeValue::S(text) => text
                    .parse()
                    .map_err(|_| unreadable(self.table, format!("{name} holds {text}"))),
                _ => Err(self.missing(name)),
            })
            .collect()
    }
}

fn user_id_list(ids: &[UserId]) -> AttributeValue {
    AttributeValue::L(ids.iter().map(|id| s(id.to_string())).collect())
}

/// A conversation item: what the rules and the views read of it. Every change to it goes
/// through an event, which moves `last_seq`: the guard of every transaction that appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ConversationDoc {
    pub(super) id: ConversationId,
    pub(super) kind: ConversationKind,
    pub(super) title: Option<String>,
    pub(super) last_seq: Seq,
    /// The newest member or role change's seq (0 if none).
    pub(super) members_seq: Seq,
    /// The newest message's seq (0 if none).
    pub(super) last_message_seq: Seq,
    pub(super) last_activity_ns: i64,
    pub(super) created_at_ns: i64,
    /// Kept with every membership change, so that the rules and `contacts` count members
    /// without reading them all.
    pub(super) member_count: u64,
    pub(super) admin_count: u64,
}

impl ConversationDoc {
    pub(super) fn to_item(&self) -> Item {
        let mut item = item([
            ("id", s(self.id.to_string())),
            ("kind", s(kind_text(self.kind))),
            ("last_seq", n(self.last_seq)),
            ("members_seq", n(self.members_seq)),
            ("last_message_seq", n(self.last_message_seq)),
            ("last_activity", n(self.last_activity_ns)),
            ("created_at", n(self.created_at_ns)),
            ("member_count", n(self.member_count)),
            ("admin_count", n(self.admin_count)),
        ]);
        if let Some(title) = &self.title {
            item.insert("title".into(), s(title.clone()));
        }
        item
    }

    pub(super) fn from_item(table: &str, item: &Item) -> Result<ConversationDoc, BackendError> {
        let r = Reader::new(table, item);
        let kind = r.s("kind")?;
        Ok(ConversationDoc {
            id: r.id("id")?,
            kind: kind_of_text(kind).ok_or_else(|| unreadable(table, format!("kind {kind}")))?,
            title: r.opt_s("title")?.map(str::to_owned),
            last_seq: r.n_or_zero("last_seq")?,
            members_seq: r.n_or_zero("members_seq")?,
            last_message_seq: r.n_or_zero("last_message_seq")?,
            last_activity_ns: r.n("last_activity")?,
            created_at_ns: r.n("created_at")?,
            member_count: r.n_or_zero("member_count")?,
            admin_count: r.n_or_zero("admin_count")?,
        })
    }
}

/// A member item. The username is kept beside the id (usernames never change), so a
/// conversation's member list is one query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemberDoc {
    pub(super) conversation_id: ConversationId,
    pub(super) user: User,
    pub(super) role: Role,
    pub(super) joined_at_ns: i64,
    pub(super) joined_seq: Seq,
    pub(super) last_read_seq: Seq,
    pub(super) last_delivered_seq: Seq,
    pub(super) muted: bool,
}

impl MemberDoc {
    pub(super) fn to_item(&self) -> Item {
        item([
            ("conversation_id", s(self.conversation_id.to_string())),
            ("user_id", s(self.user.id.to_string())),
            ("username", s(self.user.username.clone())),
            ("role", s(self.role.as_str())),
            ("joined_at", n(self.joined_at_ns)),
            ("joined_seq", n(self.joined_seq)),
            ("last_read_seq", n(self.last_read_seq)),
            ("last_delivered_seq", n(self.last_delivered_seq)),
            ("muted", bool_value(self.muted)),
        ])
    }

    pub(super) fn from_item(table: &str, item: &Item) -> Result<MemberDoc, BackendError> {
        let r = Reader::new(table, item);
        let role = r.s("role")?;
        Ok(MemberDoc {
            conversation_id: r.id("conversation_id")?,
            user: User {
                id: r.id("user_id")?,
                username: r.s("username")?.to_owned(),
            },
            role: Role::parse(role).ok_or_else(|| unreadable(table, format!("role {role}")))?,
            joined_at_ns: r.n("joined_at")?,
            joined_seq: r.n_or_zero("joined_seq")?,
            last_read_seq: r.n_or_zero("last_read_seq")?,
            last_delivered_seq: r.n_or_zero("last_delivered_seq")?,
            muted: r.bool("muted")?,
        })
    }
}

/// A message's state as its item holds it: the current body and what happened to it since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MessageState {
    pub(super) body: String,
    pub(super) reply_to_seq: Option<Seq>,
    pub(super) mentions: Vec<UserId>,
    pub(super) edited_at_ns: Option<i64>,
    pub(super) deleted: bool,
    /// `(emoji, user)` in the order they were added: `group_reactions` groups them.
    pub(super) reactions: Vec<(String, UserId)>,
    /// The seqs of the edits of this message, so that a delete erases their bodies too.
    pub(super) edit_seqs: Vec<Seq>,
    /// Its files' infos, in order: written with the attachment, in the same transaction,
    /// so history reads them with the message (see `files`); emptied by a delete.
    pub(super) files: Vec<parlor_core::files::FileInfo>,
}

/// What an event item holds besides the common fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Content {
    Message(MessageState),
    /// Every other kind, as `parlor_core::storage::event_columns` lays it out: an edit's
    /// body in `body` (so a delete can erase it), the rest as JSON in `data`.
    Other(EventData),
}

/// An event item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EventDoc {
    pub(super) conversation_id: ConversationId,
    pub(super) seq: Seq,
    /// A message's id; other events have one too, as in the SQL stores.
    pub(super) id: MessageId,
    pub(super) sender: UserId,
    pub(super) client_msg_id: String,
    pub(super) created_at_ns: i64,
    pub(super) content: Content,
}

impl EventDoc {
    pub(super) fn message(&self) -> Option<&MessageState> {
        match &self.content {
            Content::Message(state) => Some(state),
            Content::Other(_) => None,
        }
    }

    pub(super) fn message_mut(&mut self) -> Option<&mut MessageState> {
        match &mut self.content {
            Content::Message(state) => Some(state),
            Content::Other(_) => None,
        }
    }

    pub(super) fn to_item(&self) -> Item {
        let mut item = item([
            ("conversation_id", s(self.conversation_id.to_string())),
            ("seq", n(self.seq)),
            ("id", s(self.id.to_string())),
            ("sender", s(self.sender.to_string())),
            ("client_msg_id", s(self.client_msg_id.clone())),
            ("created_at", n(self.created_at_ns)),
        ]);
        match &self.content {
            Content::Message(message) => {
                item.insert("kind".into(), s("message"));
                item.insert("body".into(), s(message.body.clone()));
                if let Some(reply_to_seq) = message.reply_to_seq {
                    item.insert("reply_to_seq".into(), n(reply_to_seq));
                }
                if !message.mentions.is_empty() {
                    item.insert("mentions".into(), user_id_list(&message.mentions));
                }
                if let Some(edited_at_ns) = message.edited_at_ns {
                    item.insert("edited_at".into(), n(edited_at_ns));
                }
                item.insert("deleted".into(), bool_value(message.deleted));
                if !message.reactions.is_empty() {
                    let reactions = message
                        .reactions
                        .iter()
                        .map(|(emoji, user)| {
                            AttributeValue::M(self::item([
                                ("e", s(emoji.clone())),
                                ("u", s(user.to_string())),
                            ]))
                        })
                        .collect();
                    item.insert("reactions".into(), AttributeValue::L(reactions));
                }
                if !message.edit_seqs.is_empty() {
                    let seqs = message.edit_seqs.iter().map(|seq| n(*seq)).collect();
                    item.insert("edit_seqs".into(), AttributeValue::L(seqs));
                }
                if !message.files.is_empty() {
                    let files = message.files.iter().map(super::files::info_value).collect();
                    item.insert("files".into(), AttributeValue::L(files));
                }
            }
            Content::Other(data) => {
                let columns = event_columns(data).expect("not a message");
                item.insert("kind".into(), s(columns.kind));
                item.insert("body".into(), s(columns.body));
                item.insert("data".into(), s(columns.data));
                if let Some(target_seq) = columns.target_seq {
                    item.insert("target_seq".into(), n(target_seq));
                }
            }
        }
        item
    }

    pub(super) fn from_item(table: &str, item: &Item) -> Result<EventDoc, BackendError> {
        let r = Reader::new(table, item);
        let content = if r.s("kind")? == "message" {
            let reactions = r
                .list("reactions")?
                .iter()
                .map(|value| match value {
                    AttributeValue::M(pair) => {
                        let pair = Reader::new(table, pair);
                        Ok((pair.s("e")?.to_owned(), pair.id("u")?))
                    }
                    _ => Err(unreadable(table, "a reaction is not a map")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let edit_seqs = r
                .list("edit_seqs")?
                .iter()
                .map(|value| match value {
                    AttributeValue::N(seq) => seq
                        .parse()
                        .map_err(|_| unreadable(table, format!("edit seq {seq}"))),
                    _ => Err(unreadable(table, "an edit seq is not a number")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let files = r
                .list("files")?
                .iter()
                .map(|value| super::files::info_of(table, value))
                .collect::<Result<Vec<_>, _>>()?;
            Content::Message(MessageState {
                body: r.s("body")?.to_owned(),
                reply_to_seq: r.opt_n("reply_to_seq")?,
                mentions: r.user_ids("mentions")?,
                edited_at_ns: r.opt_n("edited_at")?,
                deleted: r.bool("deleted")?,
                reactions,
                edit_seqs,
                files,
            })
        } else {
            let body = r.opt_s("body")?.unwrap_or_default().to_owned();
            let data = event_of_columns(r.s("data")?, body)
                .map_err(|error| unreadable(table, format!("event data: {error}")))?;
            Content::Other(data)
        };
        Ok(EventDoc {
            conversation_id: r.id("conversation_id")?,
            seq: r.n("seq")?,
            id: r.id("id")?,
            sender: r.id("sender")?,
            client_msg_id: r.s("client_msg_id")?.to_owned(),
            created_at_ns: r.n("created_at")?,
            content,
        })
    }
}

/// The most an item may hold, a little below DynamoDB's 400 KB, for [`item_bytes`]'s
/// estimate to stay on the safe side.
pub(super) const ITEM_BYTES_MAX: usize = 390 * 1024;

/// An item's size as DynamoDB counts it, rounded up: each attribute's name and value
/// (numbers at their digits, lists and maps with a few bytes per element).
pub(super) fn item_bytes(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_bytes(value))
        .sum()
}

fn value_bytes(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) | AttributeValue::N(text) => text.len() + 1,
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::L(values) => 3 + values.iter().map(|v| 1 + value_bytes(v)).sum::<usize>(),
        AttributeValue::M(map) => 3 + item_bytes(map) + map.len(),
        _ => 8,
    }
}

/// The key of a `requests` item: one per (sender, client_msg_id), whatever the
/// conversation. A client_msg_id holds no `/` (validation), and a UUID none either.
pub(super) fn request_key(sender: UserId, client_msg_id: &str) -> String {
    format!("{sender}/{client_msg_id}")
}

/// A username as the `usernames` table keys it: lowercased, and its first character.
pub(super) fn folded_name(username: &str) -> (String, String) {
    let folded = username.to_lowercase();
    let first = folded.chars().next().map(String::from).unwrap_or_default();
    (first, folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_items_read_back_as_written() {
        let (ann, bob) = (UserId::new(), UserId::new());
        let conversation_id = ConversationId::new();
        let message = EventDoc {
            conversation_id,
            seq: 3,
            id: MessageId::new(),
            sender: ann,
            client_msg_id: "m-1".into(),
            created_at_ns: -1_234_567_890_123_456_789,
            content: Content::Message(MessageState {
                body: "hi @bob ".into(),
                reply_to_seq: Some(1),
                mentions: vec![bob, ann],
                edited_at_ns: Some(i64::MAX),
                deleted: false,
                reactions: vec![("👍".into(), bob), ("🎉".into(), ann), ("👍".into(), ann)],
                edit_seqs: vec![4, 9],
                files: vec![parlor_core::files::FileInfo {
                    id: parlor_core::ids::FileId::new(),
                    name: "photo.jpg".into(),
                    content_type: "image/jpeg".into(),
                    size: 5_000,
                    image: Some(parlor_core::files::ImageSize {
                        width: 1200,
                        height: 800,
                    }),
                }],
            }),
        };
        let edit = EventDoc {
            seq: 4,
            content: Content::Other(EventData::Edit {
                target_seq: 3,
                body: "hi @bob".into(),
                mentions: vec![bob],
            }),
            ..message.clone()
        };
        for doc in [message, edit] {
            let item = doc.to_item();
            assert_eq!(EventDoc::from_item("events", &item).unwrap(), doc);
        }
    }

    #[test]
    fn an_edit_keeps_its_body_beside_its_data() {
        let edit = EventDoc {
            conversation_id: ConversationId::new(),
            seq: 2,
            id: MessageId::new(),
            sender: UserId::new(),
            client_msg_id: "e".into(),
            created_at_ns: 0,
            content: Content::Other(EventData::Edit {
                target_seq: 1,
                body: "secret".into(),
                mentions: Vec::new(),
            }),
        };
        let item = edit.to_item();
        assert_eq!(item.get("body"), Some(&s("secret")));
        let Some(AttributeValue::S(data)) = item.get("data") else {
            panic!("no data: {item:?}")
        };
        assert!(!data.contains("secret"), "a delete erases one attribute");
    }

    #[test]
    fn conversation_and_member_items_read_back_as_written() {
        let conversation = ConversationDoc {
            id: ConversationId::new(),
            kind: ConversationKind::Group,
            title: Some("Team".into()),
            last_seq: 7,
            members_seq: 5,
            last_message_seq: 6,
            last_activity_ns: 2,
            created_at_ns: 1,
            member_count: 3,
            admin_count: 1,
        };
        let read = ConversationDoc::from_item("conversations", &conversation.to_item());
        assert_eq!(read.unwrap(), conversation);
        let member = MemberDoc {
            conversation_id: conversation.id,
            user: User {
                id: UserId::new(),
                username: "Ann".into(),
            },
            role: Role::Admin,
            joined_at_ns: 1,
            joined_seq: 0,
            last_read_seq: 4,
            last_delivered_seq: 6,
            muted: true,
        };
        let read = MemberDoc::from_item("members", &member.to_item());
        assert_eq!(read.unwrap(), member);
    }

    #[test]
    fn an_item_of_another_shape_is_poisoned() {
        let broken = item([("id", n(1))]);
        let error = ConversationDoc::from_item("conversations", &broken).unwrap_err();
        assert_eq!(error.kind, parlor_core::error::BackendErrorKind::Poisoned);
        assert!(error.message.contains("conversations"), "{error}");
    }

    #[test]
    fn names_fold_to_their_partition() {
        assert_eq!(folded_name("Ann_1"), ("a".into(), "ann_1".into()));
        assert_eq!(folded_name(""), (String::new(), String::new()));
        let user = UserId::new();
        assert_eq!(request_key(user, "m-1"), format!("{user}/m-1"));
    }
}
