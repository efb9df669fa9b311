//! How values cross into and out of PostgreSQL: seqs and times (unix nanoseconds, UTC) as
//! bigints, a conversation's kind as text, and the row mappers for users and messages. Ids
//! are `uuid` columns, bound as [`Uuid`](uuid::Uuid) directly.

use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{kind_of_text, nanos};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};

use super::failure::Failure;

/// A stored seq: a non-negative bigint.
pub(super) struct SeqColumn(pub(super) Seq);

impl<'a> FromSql<'a> for SeqColumn {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(SeqColumn(Seq::try_from(i64::from_sql(ty, raw)?)?))
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as FromSql>::accepts(ty)
    }
}

/// A stored time: unix nanoseconds, read back in UTC.
pub(super) struct Nanos(pub(super) OffsetDateTime);

impl<'a> FromSql<'a> for Nanos {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let raw = i64::from_sql(ty, raw)?;
        Ok(Nanos(OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(raw),
        )?))
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as FromSql>::accepts(ty)
    }
}

/// A stored conversation kind.
pub(super) struct KindColumn(pub(super) ConversationKind);

impl<'a> FromSql<'a> for KindColumn {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        kind_of_text(text)
            .map(KindColumn)
            .ok_or_else(|| format!("unknown conversation kind {text:?}").into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// Now, as stored.
pub(super) fn now_nanos() -> Result<i64, Failure> {
    Ok(nanos(OffsetDateTime::now_utc())?)
}

/// Column order: `id, username`.
pub(super) fn user_row(row: &Row) -> Result<User, tokio_postgres::Error> {
    Ok(User {
        id: UserId(row.try_get(0)?),
        username: row.try_get(1)?,
    })
}

/// Column order: `id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns`.
pub(super) fn message_row(row: &Row) -> Result<Message, tokio_postgres::Error> {
    Ok(Message {
        id: MessageId(row.try_get(0)?),
        conversation_id: ConversationId(row.try_get(1)?),
        seq: row.try_get::<_, SeqColumn>(2)?.0,
        sender_id: UserId(row.try_get(3)?),
        client_msg_id: row.try_get(4)?,
        body: row.try_get(5)?,
        created_at: row.try_get::<_, Nanos>(6)?.0,
    })
}
