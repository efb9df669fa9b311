//! How values cross into and out of SQLite: ids as hyphenated lower-case UUID text, seqs
//! and times (unix nanoseconds, UTC) as integers, a conversation's kind as text, and the
//! row mappers for users and messages.

use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{kind_of_text, nanos};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
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

/// Column order: `id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns`.
pub(super) fn message_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: MessageId(row.get::<_, Id>(0)?.0),
        conversation_id: ConversationId(row.get::<_, Id>(1)?.0),
        seq: row.get::<_, SeqColumn>(2)?.0,
        sender_id: UserId(row.get::<_, Id>(3)?.0),
        client_msg_id: row.get(4)?,
        body: row.get(5)?,
        created_at: row.get::<_, Nanos>(6)?.0,
    })
}
