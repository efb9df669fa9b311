//! Conversations: creating direct and group ones, the views of a member's conversations
//! (members with their roles and markers, the last message, unread counts, mute),
//! membership, contacts, and the read and delivered markers; the transaction bodies of
//! those [`Store`](parlor_core::ports::Store) methods.

use std::collections::HashMap;

use parlor_core::events::{EventData, Role};
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{ConversationView, MemberView};
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{attach_members, direct_key, kind_text, role_text, seq_param};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::codec::{
    Id, KindColumn, RoleColumn, SeqColumn, event_columns, event_row, now_nanos, reply_join,
};
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
    let members = [(a, Role::Member), (b, Role::Member)];
    insert_conversation(tx, id, ConversationKind::Direct, None, Some(&key), &members)?;
    Ok((id, true))
}

/// A new group of `members` (distinct, the creator first), all of whom must exist: the
/// creator is its admin, everyone else a member.
pub(super) fn create_group(
    tx: &Connection,
    creator: UserId,
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
    let members: Vec<(UserId, Role)> = members
        .iter()
        .map(|&member| {
            let role = if member == creator {
                Role::Admin
            } else {
                Role::Member
            };
            (member, role)
        })
        .collect();
    insert_conversation(tx, id, ConversationKind::Group, Some(title), None, &members)?;
    Ok(id)
}

fn insert_conversation(
    tx: &Connection,
    id: ConversationId,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    members: &[(UserId, Role)],
) -> Result<(), Failure> {
    let now = now_nanos()?;
    tx.prepare_cached(
        "INSERT INTO conversations (id, kind, title, direct_key, last_activity_at_ns, created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![Id(id.0), kind_text(kind), title, direct_key, now])?;
    // Everyone joins at the same instant: among them, the longest-standing is the smallest
    // id, and the creator is the admin anyway.
    let mut member = tx.prepare_cached(
        "INSERT INTO members (conversation_id, user_id, role, joined_at_ns) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (user, role) in members {
        member.execute(params![Id(id.0), Id(user.0), role_text(*role), now])?;
    }
    Ok(())
}

/// The views of `user`'s conversations (or of just `only`), most recent activity first, in
/// three queries whatever their number: the conversations with this member's marker, mute
/// and unread counts; all their members; their last messages.
pub(super) fn conversation_views(
    tx: &Connection,
    user: UserId,
    only: Option<ConversationId>,
) -> Result<Vec<ConversationView>, Failure> {
    let view_row = |row: &Row<'_>| -> rusqlite::Result<ConversationView> {
        Ok(ConversationView {
            id: ConversationId(row.get::<_, Id>(0)?.0),
            kind: row.get::<_, KindColumn>(1)?.0,
            title: row.get(2)?,
            members: Vec::new(),
            last_message: None,
            last_seq: row.get::<_, SeqColumn>(3)?.0,
            last_read_seq: row.get::<_, SeqColumn>(4)?.0,
            unread_count: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
            unread_mentions: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
            muted: row.get::<_, i64>(5)? != 0,
        })
    };
    let member_row = |row: &Row<'_>| -> rusqlite::Result<(ConversationId, MemberView)> {
        Ok((
            ConversationId(row.get::<_, Id>(0)?.0),
            MemberView {
                user: User {
                    id: UserId(row.get::<_, Id>(1)?.0),
                    username: row.get(2)?,
                },
                role: row.get::<_, RoleColumn>(3)?.0,
                last_delivered_seq: row.get::<_, SeqColumn>(4)?.0,
                last_read_seq: row.get::<_, SeqColumn>(5)?.0,
            },
        ))
    };

    // Unread: others' messages after this member's marker that are not deleted (a range of
    // the primary key); mentions: those naming them.
    macro_rules! select_views {
        () => {
            "SELECT c.id, c.kind, c.title, c.last_seq, m.last_read_seq, m.muted,
                    (SELECT count(*) FROM events e
                     WHERE e.conversation_id = c.id AND e.kind = 'message'
                       AND e.seq > m.last_read_seq AND e.deleted = 0
                       AND e.sender_id <> m.user_id),
                    (SELECT count(*) FROM events e
                     WHERE e.conversation_id = c.id AND e.kind = 'message'
                       AND e.seq > m.last_read_seq AND e.deleted = 0
                       AND e.sender_id <> m.user_id AND instr(e.mentions, m.user_id) > 0)
             FROM members m
             JOIN conversations c ON c.id = m.conversation_id"
        };
    }
    // The last message in its current state; the chat list shows no reactions, so they are
    // left out.
    macro_rules! select_last_messages {
        () => {
            concat!(
                "SELECT ",
                event_columns!(),
                " FROM members m
                 JOIN conversations c ON c.id = m.conversation_id
                 JOIN events e ON e.conversation_id = c.id AND e.seq = c.last_message_seq ",
                reply_join!()
            )
        };
    }
    let (mut views, members, last_messages) = match only {
        None => {
            let views = tx
                .prepare_cached(concat!(
                    select_views!(),
                    " WHERE m.user_id = ?1
                     ORDER BY c.last_activity_at_ns DESC, c.created_at_ns DESC, c.id DESC"
                ))?
                .query_map(params![Id(user.0)], view_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let members = tx
                .prepare_cached(
                    "SELECT other.conversation_id, u.id, u.username, other.role,
                            other.last_delivered_seq, other.last_read_seq
                     FROM members m
                     JOIN members other ON other.conversation_id = m.conversation_id
                     JOIN users u ON u.id = other.user_id
                     WHERE m.user_id = ?1
                     ORDER BY u.username",
                )?
                .query_map(params![Id(user.0)], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let last_messages = tx
                .prepare_cached(concat!(select_last_messages!(), " WHERE m.user_id = ?1"))?
                .query_map(params![Id(user.0)], event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (views, members, last_messages)
        }
        Some(conversation) => {
            let views = tx
                .prepare_cached(concat!(
                    select_views!(),
                    " WHERE m.user_id = ?1 AND m.conversation_id = ?2"
                ))?
                .query_map(params![Id(user.0), Id(conversation.0)], view_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            if views.is_empty() {
                return Ok(views);
            }
            let members = tx
                .prepare_cached(
                    "SELECT m.conversation_id, u.id, u.username, m.role,
                            m.last_delivered_seq, m.last_read_seq
                     FROM members m JOIN users u ON u.id = m.user_id
                     WHERE m.conversation_id = ?1
                     ORDER BY u.username",
                )?
                .query_map(params![Id(conversation.0)], member_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let last_messages = tx
                .prepare_cached(concat!(
                    select_last_messages!(),
                    " WHERE m.user_id = ?1 AND m.conversation_id = ?2"
                ))?
                .query_map(params![Id(user.0), Id(conversation.0)], event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            (views, members, last_messages)
        }
    };

    attach_members(&mut views, members);
    let mut last_messages: HashMap<ConversationId, Message> = last_messages
        .into_iter()
        .filter_map(|event| match event.data {
            EventData::Message { message } => Some((message.conversation_id, message)),
            _ => None,
        })
        .collect();
    for view in &mut views {
        view.last_message = last_messages.remove(&view.id);
        if let Some(message) = &mut view.last_message {
            super::files::attach_to_message(tx, message)?;
        }
    }
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

/// A marker a member moves forward: how far they have read, or received.
#[derive(Clone, Copy)]
pub(super) enum Marker {
    Read,
    Delivered,
}

/// Moves `user`'s `marker` forward to `seq`, clamped to the last seq; the new marker if it
/// moved. Reading moves the delivered marker with it (what was read was received).
/// `Rejected` if `user` is not a member of `conversation`.
pub(super) fn mark(
    tx: &Connection,
    conversation: ConversationId,
    user: UserId,
    marker: Marker,
    seq: Seq,
) -> Result<Option<Seq>, Failure> {
    let markers = tx
        .prepare_cached(
            "SELECT c.last_seq, m.last_read_seq, m.last_delivered_seq
             FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = ?1 AND m.user_id = ?2",
        )?
        .query_row(params![Id(conversation.0), Id(user.0)], |row| {
            Ok((
                row.get::<_, SeqColumn>(0)?.0,
                row.get::<_, SeqColumn>(1)?.0,
                row.get::<_, SeqColumn>(2)?.0,
            ))
        })
        .optional()?;
    let Some((last_seq, last_read_seq, last_delivered_seq)) = markers else {
        return Err(Failure::Rejected(format!(
            "user {user} is not a member of conversation {conversation}"
        )));
    };
    let current = match marker {
        Marker::Read => last_read_seq,
        Marker::Delivered => last_delivered_seq,
    };
    let moved = seq.min(last_seq).max(current);
    if moved == current {
        return Ok(None);
    }
    let update = match marker {
        Marker::Read => {
            "UPDATE members SET last_read_seq = ?3, last_delivered_seq = max(last_delivered_seq, ?3)
             WHERE conversation_id = ?1 AND user_id = ?2"
        }
        Marker::Delivered => {
            "UPDATE members SET last_delivered_seq = ?3
             WHERE conversation_id = ?1 AND user_id = ?2"
        }
    };
    tx.prepare_cached(update)?.execute(params![
        Id(conversation.0),
        Id(user.0),
        seq_param(moved)
    ])?;
    Ok(Some(moved))
}

/// Mutes or unmutes `conversation` for `user`; `false` if they are not a member.
pub(super) fn set_muted(
    tx: &Connection,
    conversation: ConversationId,
    user: UserId,
    muted: bool,
) -> Result<bool, Failure> {
    let updated = tx
        .prepare_cached(
            "UPDATE members SET muted = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
        )?
        .execute(params![Id(conversation.0), Id(user.0), muted])?;
    Ok(updated == 1)
}
