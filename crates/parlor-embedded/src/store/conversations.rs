//! Conversations: creating direct and group ones, the views of a member's conversations,
//! membership, contacts and read markers; the transaction bodies of those
//! [`Store`](parlor_core::ports::Store) methods.

use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::ConversationView;
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{attach_members, direct_key, kind_text, seq_param};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{Id, KindColumn, Nanos, SeqColumn, now_nanos};
use super::failure::Failure;

/// The direct conversation of `a` and `b` (two different users), and whether this call
/// created it.
pub(super) fn create_direct(
    tx: &Connection,
    a: UserId,
    b: UserId,
) -> Result<(ConversationId, bool), Failure> {
    let key = direct_key(a, b);
    let existing = tx
        .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")?
        .query_row(params![key], |row| row.get::<_, Id>(0))
        .optional()?;
    if let Some(Id(id)) = existing {
        return Ok((ConversationId(id), false));
    }
    let known: i64 = tx
        .prepare_cached("SELECT count(*) FROM users WHERE id IN (?1, ?2)")?
        .query_row(params![Id(a.0), Id(b.0)], |row| row.get(0))?;
    if known != 2 {
        return Err(Failure::Rejected(format!("no user {a} or no user {b}")));
    }
    let id = ConversationId::new();
    insert_conversation(tx, id, ConversationKind::Direct, None, Some(&key), &[a, b])?;
    Ok((id, true))
}

/// A new group of `members` (distinct, at least one), all of whom must exist.
pub(super) fn create_group(
    tx: &Connection,
    title: &str,
    members: &[UserId],
) -> Result<ConversationId, Failure> {
    let mut exists = tx.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
    for member in members {
        if !exists.exists(params![Id(member.0)])? {
            return Err(Failure::Rejected(format!("no user {member}")));
        }
    }
    let id = ConversationId::new();
    insert_conversation(tx, id, ConversationKind::Group, Some(title), None, members)?;
    Ok(id)
}

fn insert_conversation(
    tx: &Connection,
    id: ConversationId,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    members: &[UserId],
) -> Result<(), Failure> {
    let now = now_nanos()?;
    tx.prepare_cached(
        "INSERT INTO conversations (id, kind, title, direct_key, last_activity_at_ns, created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![Id(id.0), kind_text(kind), title, direct_key, now])?;
    let mut member =
        tx.prepare_cached("INSERT INTO members (conversation_id, user_id) VALUES (?1, ?2)")?;
    for user in members {
        member.execute(params![Id(id.0), Id(user.0)])?;
    }
    Ok(())
}

/// The views of `user`'s conversations (or of just `only`), most recent activity first, in
/// two queries whatever their number: one for the conversations with their last message,
/// one for all their members.
pub(super) fn conversation_views(
    tx: &Connection,
    user: UserId,
    only: Option<ConversationId>,
) -> Result<Vec<ConversationView>, Failure> {
    let view_row = |row: &Row<'_>| -> rusqlite::Result<ConversationView> {
        let id = ConversationId(row.get::<_, Id>(0)?.0);
        let last_seq = row.get::<_, SeqColumn>(3)?.0;
        let last_message = match row.get::<_, Option<Id>>(5)? {
            None => None,
            Some(message_id) => Some(Message {
                id: MessageId(message_id.0),
                conversation_id: id,
                seq: last_seq,
                sender_id: UserId(row.get::<_, Id>(6)?.0),
                client_msg_id: row.get(7)?,
                body: row.get(8)?,
                created_at: row.get::<_, Nanos>(9)?.0,
            }),
        };
        Ok(ConversationView {
            id,
            kind: row.get::<_, KindColumn>(1)?.0,
            title: row.get(2)?,
            members: Vec::new(),
            last_message,
            last_seq,
            last_read_seq: row.get::<_, SeqColumn>(4)?.0,
        })
    };
    let member_row = |row: &Row<'_>| -> rusqlite::Result<(ConversationId, User)> {
        Ok((
            ConversationId(row.get::<_, Id>(0)?.0),
            User {
                id: UserId(row.get::<_, Id>(1)?.0),
                username: row.get(2)?,
            },
        ))
    };

    macro_rules! select_views {
        () => {
            "SELECT c.id, c.kind, c.title, c.last_seq, m.last_read_seq,
                    msg.id, msg.sender_id, msg.client_msg_id, msg.body, msg.created_at_ns
             FROM members m
             JOIN conversations c ON c.id = m.conversation_id
             LEFT JOIN messages msg ON msg.conversation_id = c.id AND msg.seq = c.last_seq"
        };
    }
    let (mut views, members) = match only {
        None => {
            let mut statement = tx.prepare_cached(concat!(
                select_views!(),
                " WHERE m.user_id = ?1
                 ORDER BY c.last_activity_at_ns DESC, c.created_at_ns DESC, c.id DESC"
            ))?;
            let views = statement
                .query_map(params![Id(user.0)], view_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut statement = tx.prepare_cached(
                "SELECT other.conversation_id, u.id, u.username
                 FROM members m
                 JOIN members other ON other.conversation_id = m.conversation_id
                 JOIN users u ON u.id = other.user_id
                 WHERE m.user_id = ?1
                 ORDER BY u.username",
            )?;
            let members = statement
                .query_map(params![Id(user.0)], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (views, members)
        }
        Some(conversation) => {
            let mut statement = tx.prepare_cached(concat!(
                select_views!(),
                " WHERE m.user_id = ?1 AND m.conversation_id = ?2"
            ))?;
            let views = statement
                .query_map(params![Id(user.0), Id(conversation.0)], view_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if views.is_empty() {
                return Ok(views);
            }
            let mut statement = tx.prepare_cached(
                "SELECT m.conversation_id, u.id, u.username
                 FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.conversation_id = ?1
                 ORDER BY u.username",
            )?;
            let members = statement
                .query_map(params![Id(conversation.0)], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (views, members)
        }
    };

    attach_members(&mut views, members);
    Ok(views)
}

pub(super) fn is_member(
    tx: &Connection,
    conversation: ConversationId,
    user: UserId,
) -> Result<bool, Failure> {
    let member = tx
        .prepare_cached("SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
        .exists(params![Id(conversation.0), Id(user.0)])?;
    Ok(member)
}

/// By id.
pub(super) fn members(
    tx: &Connection,
    conversation: ConversationId,
) -> Result<Vec<UserId>, Failure> {
    let members = tx
        .prepare_cached("SELECT user_id FROM members WHERE conversation_id = ?1 ORDER BY user_id")?
        .query_map(params![Id(conversation.0)], |row| {
            Ok(UserId(row.get::<_, Id>(0)?.0))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(members)
}

/// Everyone sharing a conversation of at most `members_max` members with `user`, by id.
pub(super) fn contacts(
    tx: &Connection,
    user: UserId,
    members_max: i64,
) -> Result<Vec<UserId>, Failure> {
    let contacts = tx
        .prepare_cached(
            "SELECT DISTINCT other.user_id
             FROM members m
             JOIN members other ON other.conversation_id = m.conversation_id
             WHERE m.user_id = ?1 AND other.user_id <> ?1
               AND (SELECT count(*) FROM members c
                    WHERE c.conversation_id = m.conversation_id) <= ?2
             ORDER BY other.user_id",
        )?
        .query_map(params![Id(user.0), members_max], |row| {
            Ok(UserId(row.get::<_, Id>(0)?.0))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(contacts)
}

/// Moves `user`'s read marker forward to `seq`, clamped to the last seq; the new marker if
/// it moved. `Rejected` if `user` is not a member of `conversation`.
pub(super) fn mark_read(
    tx: &Connection,
    conversation: ConversationId,
    user: UserId,
    seq: Seq,
) -> Result<Option<Seq>, Failure> {
    let markers = tx
        .prepare_cached(
            "SELECT c.last_seq, m.last_read_seq
             FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ?1 AND m.user_id = ?2",
        )?
        .query_row(params![Id(conversation.0), Id(user.0)], |row| {
            Ok((row.get::<_, SeqColumn>(0)?.0, row.get::<_, SeqColumn>(1)?.0))
        })
        .optional()?;
    let Some((last_seq, last_read_seq)) = markers else {
        return Err(Failure::Rejected(format!(
            "user {user} is not a member of conversation {conversation}"
        )));
    };
    let marker = seq.min(last_seq).max(last_read_seq);
    if marker == last_read_seq {
        return Ok(None);
    }
    tx.prepare_cached(
        "UPDATE members SET last_read_seq = ?3
         WHERE conversation_id = ?1 AND user_id = ?2",
    )?
    .execute(params![Id(conversation.0), Id(user.0), seq_param(marker)])?;
    Ok(Some(marker))
}
