//! How values cross into and out of SQLite: ids as hyphenated lower-case UUID text, seqs
//! and times (unix nanoseconds, UTC) as integers, a conversation's kind and a member's role
//! as text, and the row mappers for users and events (a message row in its current state,
//! with the message it replies to).

use parlor_core::events::{Event, EventData, ReplyPreview, Role, excerpt};
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{event_of_columns, kind_of_text, mentions_of_text, nanos};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, Value, ValueRef};
use rusqlite::{Row, ToSql};
use time::OffsetDateTime;
use uuid::Uuid;

use super::failure::Failure;

/// A UUID as hyphenated text, in and out of SQL.
pub(super) struct Id(pub(super) Uuid);

impl ToSql for Id {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Owned(Value::Text(
            self.0.hyphenated().to_string(),
        )))
    }
}

impl FromSql for Id {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Uuid::try_parse(value.as_str()?)
            .map(Id)
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

/// A stored seq: a non-negative integer.
pub(super) struct SeqColumn(pub(super) Seq);

impl FromSql for SeqColumn {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let raw = value.as_i64()?;
        Seq::try_from(raw)
            .map(SeqColumn)
            .map_err(|_| FromSqlError::OutOfRange(raw))
    }
}

/// A stored time: unix nanoseconds, read back in UTC.
pub(super) struct Nanos(pub(super) OffsetDateTime);

impl FromSql for Nanos {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let raw = value.as_i64()?;
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(raw))
            .map(Nanos)
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

/// A stored conversation kind.
pub(super) struct KindColumn(pub(super) ConversationKind);

impl FromSql for KindColumn {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        kind_of_text(text).map(KindColumn).ok_or_else(|| {
            FromSqlError::Other(format!("unknown conversation kind {text:?}").into())
        })
    }
}

/// A stored member role.
pub(super) struct RoleColumn(pub(super) Role);

impl FromSql for RoleColumn {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Role::parse(text)
            .map(RoleColumn)
            .ok_or_else(|| FromSqlError::Other(format!("unknown role {text:?}").into()))
    }
}

/// Now, as stored.
pub(super) fn now_nanos() -> Result<i64, Failure> {
    Ok(nanos(OffsetDateTime::now_utc())?)
}

/// Column order: `id, username`.
pub(super) fn user_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(row.get::<_, Id>(0)?.0),
        username: row.get(1)?,
    })
}

/// The columns [`event_row`] reads: an event `e`, and `r`, the message it replies to when
/// `e` is a message (joined by [`reply_join!`]).
macro_rules! event_columns {
    () => {
        "e.conversation_id, e.seq, e.id, e.sender_id, e.client_msg_id, e.body, e.created_at_ns,
         e.kind, e.target_seq, e.data, e.mentions, e.edited_at_ns, e.deleted,
         r.sender_id, r.body, r.deleted"
    };
}
pub(super) use event_columns;

/// Joins `r`, the message a message row `e` replies to (nothing for other kinds).
macro_rules! reply_join {
    () => {
        "LEFT JOIN events r ON e.kind = 'message'
             AND r.conversation_id = e.conversation_id AND r.seq = e.target_seq"
    };
}
pub(super) use reply_join;

/// One event in its current state, from [`event_columns!`]; a message comes without its
/// reactions (they are another table: see `history::attach_reactions`).
pub(super) fn event_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let conversation_id = ConversationId(row.get::<_, Id>(0)?.0);
    let seq = row.get::<_, SeqColumn>(1)?.0;
    let sender_id = UserId(row.get::<_, Id>(3)?.0);
    let client_msg_id: String = row.get(4)?;
    let body: String = row.get(5)?;
    let created_at = row.get::<_, Nanos>(6)?.0;
    let kind: String = row.get(7)?;
    let data = if kind == "message" {
        let reply_to = match (
            row.get::<_, Option<SeqColumn>>(8)?,
            row.get::<_, Option<Id>>(13)?,
        ) {
            (Some(SeqColumn(seq)), Some(Id(sender))) => Some(ReplyPreview {
                seq,
                sender_id: UserId(sender),
                excerpt: excerpt(&row.get::<_, String>(14)?),
                deleted: row.get::<_, i64>(15)? != 0,
            }),
            _ => None,
        };
        EventData::Message {
            message: Message {
                id: MessageId(row.get::<_, Id>(2)?.0),
                conversation_id,
                seq,
                sender_id,
                client_msg_id: client_msg_id.clone(),
                body,
                created_at,
                reply_to,
                mentions: mentions_of_text(&row.get::<_, String>(10)?),
                reactions: Vec::new(),
                edited_at: row.get::<_, Option<Nanos>>(11)?.map(|Nanos(at)| at),
                deleted: row.get::<_, i64>(12)? != 0,
                files: Vec::new(),
            },
        }
    } else {
        let data: String = row.get(9)?;
        let data = event_of_columns(&data, body).map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(9, Type::Text, error.into())
        })?;
        if data.kind() != kind {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                7,
                Type::Text,
                format!("an event of kind {kind:?} holds {:?} data", data.kind()).into(),
            ));
        }
        data
    };
    Ok(Event {
        conversation_id,
        seq,
        sender_id,
        client_msg_id,
        created_at,
        data,
    })
}
