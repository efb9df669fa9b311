//! How values cross into and out of PostgreSQL: seqs and times (unix nanoseconds, UTC) as
//! bigints, a conversation's kind and a member's role as text, and the row mappers for
//! users and events (a message in its current state: its edit, deletion, mentions, the
//! message it replies to, its reactions and its files, all read by one statement). Ids are
//! `uuid` columns, bound as [`Uuid`](uuid::Uuid) directly.

use parlor_core::events::{Event, EventData, ReplyPreview, Role, excerpt};
use parlor_core::files::{FileInfo, ImageSize};
use parlor_core::ids::{ConversationId, FileId, MessageId, Seq, UserId};
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{
    event_of_columns, group_reactions, kind_of_text, mentions_of_text, nanos,
};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Type};
use uuid::Uuid;

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

/// A stored member role.
pub(super) struct RoleColumn(pub(super) Role);

impl<'a> FromSql<'a> for RoleColumn {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Role::parse(text)
            .map(RoleColumn)
            .ok_or_else(|| format!("unknown member role {text:?}").into())
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

/// The columns [`event_row`] reads, of an event `e` (with `FROM`, [`from_events`]): the
/// event's own, then for a message the one it replies to (`r`), then its reactions as two
/// arrays in the order they were made (emoji and user, element by element), then its files
/// (`fs`, [`files_of_events`]) as arrays in their order on the message. One statement, so
/// a message, its reactions and its files come from the same snapshot.
macro_rules! event_fields {
    () => {
        "e.id, e.conversation_id, e.seq, e.sender_id, e.client_msg_id, e.body,
         e.created_at_ns, e.kind, e.data, e.target_seq, e.mentions, e.edited_at_ns,
         e.deleted, r.sender_id, r.body, r.deleted,
         ARRAY(SELECT x.emoji FROM reactions x
               WHERE x.conversation_id = e.conversation_id AND x.seq = e.seq
               ORDER BY x.created_at_ns, x.id),
         ARRAY(SELECT x.user_id FROM reactions x
               WHERE x.conversation_id = e.conversation_id AND x.seq = e.seq
               ORDER BY x.created_at_ns, x.id),
         fs.ids, fs.names, fs.content_types, fs.sizes, fs.widths, fs.heights"
    };
}
pub(super) use event_fields;

/// The files `fs` of a message `e`, for [`event_fields`]: one probe of `files_by_message`
/// per message (none for other kinds), each column an array in the files' order, all NULL
/// for a message without files.
macro_rules! files_of_events {
    () => {
        " LEFT JOIN LATERAL (
              SELECT array_agg(f.id ORDER BY f.position) AS ids,
                     array_agg(f.name ORDER BY f.position) AS names,
                     array_agg(f.content_type ORDER BY f.position) AS content_types,
                     array_agg(f.size ORDER BY f.position) AS sizes,
                     array_agg(f.width ORDER BY f.position) AS widths,
                     array_agg(f.height ORDER BY f.position) AS heights
              FROM files f
              WHERE e.kind = 'message'
                AND f.conversation_id = e.conversation_id AND f.seq = e.seq
          ) fs ON true"
    };
}
pub(super) use files_of_events;

/// The `FROM` of [`event_fields`]: the events `e`, with the message a message replies to
/// and the files it carries.
macro_rules! from_events {
    () => {
        concat!(
            " FROM events e
              LEFT JOIN events r ON e.kind = 'message'
                  AND r.conversation_id = e.conversation_id AND r.seq = e.target_seq",
            $crate::store::codec::files_of_events!()
        )
    };
}
pub(super) use from_events;

/// How many columns [`event_fields`] has: a statement may select more after them.
pub(super) const EVENT_FIELDS: usize = 24;

/// An event of [`event_fields`], a message in its current state.
pub(super) fn event_row(row: &Row) -> Result<Event, Failure> {
    let conversation_id = ConversationId(row.try_get(1)?);
    let seq = row.try_get::<_, SeqColumn>(2)?.0;
    let sender_id = UserId(row.try_get(3)?);
    let client_msg_id: String = row.try_get(4)?;
    let body: String = row.try_get(5)?;
    let created_at = row.try_get::<_, Nanos>(6)?.0;
    let kind: &str = row.try_get(7)?;
    let data = if kind == "message" {
        EventData::Message {
            message: message_fields(row, conversation_id, seq, sender_id, &client_msg_id)?,
        }
    } else {
        let data: Option<&str> = row.try_get(8)?;
        let data =
            data.ok_or_else(|| Failure::Unreadable(format!("{kind} event {seq} has no data")))?;
        event_of_columns(data, body).map_err(|error| {
            Failure::Unreadable(format!("{kind} event {seq} of {conversation_id}: {error}"))
        })?
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

/// A message row of [`event_fields`] in its current state; `Unreadable` for another kind.
pub(super) fn message_row(row: &Row) -> Result<Message, Failure> {
    match event_row(row)?.data {
        EventData::Message { message } => Ok(message),
        other => Err(Failure::Unreadable(format!(
            "expected a message, read a {} event",
            other.kind()
        ))),
    }
}

fn message_fields(
    row: &Row,
    conversation_id: ConversationId,
    seq: Seq,
    sender_id: UserId,
    client_msg_id: &str,
) -> Result<Message, Failure> {
    let reply_to = match row.try_get::<_, Option<SeqColumn>>(9)? {
        Some(SeqColumn(target_seq)) => match row.try_get::<_, Option<Uuid>>(13)? {
            Some(target_sender) => Some(ReplyPreview {
                seq: target_seq,
                sender_id: UserId(target_sender),
                excerpt: excerpt(row.try_get(14)?),
                deleted: row.try_get(15)?,
            }),
            // Not stored: a reply is only ever stored to a message that exists.
            None => None,
        },
        None => None,
    };
    let emoji: Vec<String> = row.try_get(16)?;
    let users: Vec<Uuid> = row.try_get(17)?;
    Ok(Message {
        id: MessageId(row.try_get(0)?),
        conversation_id,
        seq,
        sender_id,
        client_msg_id: client_msg_id.to_owned(),
        body: row.try_get(5)?,
        created_at: row.try_get::<_, Nanos>(6)?.0,
        reply_to,
        mentions: mentions_of_text(row.try_get(10)?),
        reactions: group_reactions(emoji.into_iter().zip(users.into_iter().map(UserId))),
        edited_at: row.try_get::<_, Option<Nanos>>(11)?.map(|at| at.0),
        deleted: row.try_get(12)?,
        files: message_files(row)?,
    })
}

/// The files of a message row of [`event_fields`], in order.
fn message_files(row: &Row) -> Result<Vec<FileInfo>, Failure> {
    let Some(ids) = row.try_get::<_, Option<Vec<Uuid>>>(18)? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = row.try_get(19)?;
    let content_types: Vec<String> = row.try_get(20)?;
    let sizes: Vec<i64> = row.try_get(21)?;
    let widths: Vec<Option<i64>> = row.try_get(22)?;
    let heights: Vec<Option<i64>> = row.try_get(23)?;
    let mut files = Vec::with_capacity(ids.len());
    for (index, ((id, name), content_type)) in
        ids.into_iter().zip(names).zip(content_types).enumerate()
    {
        let image = match (
            widths.get(index).copied().flatten(),
            heights.get(index).copied().flatten(),
        ) {
            (Some(width), Some(height)) => Some(ImageSize {
                width: pixels(width)?,
                height: pixels(height)?,
            }),
            _ => None,
        };
        files.push(FileInfo {
            id: FileId(id),
            name,
            content_type,
            size: stored_size(sizes.get(index).copied().unwrap_or(-1))?,
            image,
        });
    }
    Ok(files)
}

/// A stored size in bytes (never negative: a CHECK keeps it so).
pub(super) fn stored_size(size: i64) -> Result<u64, Failure> {
    u64::try_from(size).map_err(|_| Failure::Unreadable(format!("a size of {size} bytes")))
}

/// A stored width or height in pixels.
pub(super) fn pixels(value: i64) -> Result<u32, Failure> {
    u32::try_from(value).map_err(|_| Failure::Unreadable(format!("an image side of {value} px")))
}

/// A size in bytes as stored; one past `i64::MAX` can never be stored.
pub(super) fn size_param(size: u64) -> Result<i64, Failure> {
    i64::try_from(size)
        .map_err(|_| Failure::Rejected(format!("a size of {size} bytes is out of range")))
}
