//! [`store`]: one allowed change stored as the next event of its conversation and applied
//! to the conversation's state: a message's mentions resolved against the members, an edit
//! replacing the body, a delete erasing it with its edits and reactions, members coming
//! and going (with the promotion of a new admin when the last one goes), the title, roles.

use parlor_core::events::{Change, Event, EventData, ReplyPreview, Role, excerpt};
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::{NewEvent, Stored};
use parlor_core::protocol::Message;
use parlor_core::rules::promotes_on_departure;
use parlor_core::storage::{event_columns, mentions_text, role_text, seq_param};
use parlor_core::validate::mention_names;
use rusqlite::{Connection, OptionalExtension, params};
use time::UtcOffset;

use super::codec::Id;
use super::facts::Gathered;
use super::failure::Failure;

/// Stores `new` with seq `gathered.last_seq + 1` and applies it. The caller checked the
/// rules against `gathered` in the same transaction, and undoes everything this did if it
/// fails.
pub(super) fn store(
    tx: &Connection,
    new: &NewEvent,
    gathered: &Gathered,
    created_at_ns: i64,
) -> Result<Stored, Failure> {
    let seq = gathered.last_seq + 1;
    let event = Event {
        conversation_id: new.conversation_id,
        seq,
        sender_id: new.sender_id,
        client_msg_id: new.client_msg_id.clone(),
        // What reading the row back yields: the same instant, in UTC.
        created_at: new.accepted_at.to_offset(UtcOffset::UTC),
        data: event_data(tx, new, gathered, seq)?,
    };
    insert(tx, &event, created_at_ns)?;
    advance(tx, new, seq, created_at_ns)?;
    apply(tx, &event, created_at_ns)?;
    let members_seq = if new.change.changes_members() {
        seq
    } else {
        gathered.members_seq
    };
    Ok(Stored { event, members_seq })
}

/// What the event records, resolved now: mentions, the reply's preview, the user added,
/// who becomes admin.
fn event_data(
    tx: &Connection,
    new: &NewEvent,
    gathered: &Gathered,
    seq: Seq,
) -> Result<EventData, Failure> {
    let conversation = new.conversation_id;
    let data = match &new.change {
        Change::Message {
            body,
            reply_to_seq,
            files,
        } => {
            let reply_to = match reply_to_seq {
                Some(replied) => reply_preview(tx, conversation, *replied)?,
                None => None,
            };
            let files = if files.is_empty() {
                Vec::new()
            } else {
                super::files::attach(tx, conversation, seq, files)?
            };
            let message = Message {
                reply_to,
                mentions: resolve_mentions(tx, conversation, body)?,
                files,
                ..Message::new(
                    MessageId::new(),
                    conversation,
                    seq,
                    new.sender_id,
                    new.client_msg_id.clone(),
                    body.clone(),
                    new.accepted_at.to_offset(UtcOffset::UTC),
                )
            };
            EventData::Message { message }
        }
        Change::Edit { target_seq, body } => EventData::Edit {
            target_seq: *target_seq,
            body: body.clone(),
            mentions: resolve_mentions(tx, conversation, body)?,
        },
        Change::Delete { target_seq } => EventData::Delete {
            target_seq: *target_seq,
        },
        Change::ReactionAdded { target_seq, emoji } => EventData::ReactionAdded {
            target_seq: *target_seq,
            emoji: emoji.clone(),
        },
        Change::ReactionRemoved { target_seq, emoji } => EventData::ReactionRemoved {
            target_seq: *target_seq,
            emoji: emoji.clone(),
        },
        Change::MemberAdded { user_id } => {
            let user = gathered
                .subject
                .clone()
                .ok_or_else(|| Failure::Rejected(format!("no user {user_id}")))?;
            EventData::MemberAdded {
                user,
                role: Role::Member,
            }
        }
        Change::MemberRemoved { user_id } => EventData::MemberRemoved {
            user_id: *user_id,
            promoted_user_id: promoted(tx, conversation, *user_id, gathered)?,
        },
        Change::MemberLeft {} => EventData::MemberLeft {
            user_id: new.sender_id,
            promoted_user_id: promoted(tx, conversation, new.sender_id, gathered)?,
        },
        Change::TitleChanged { title } => EventData::TitleChanged {
            title: title.clone(),
        },
        Change::RoleChanged { user_id, role } => EventData::RoleChanged {
            user_id: *user_id,
            role: *role,
        },
    };
    Ok(data)
}

/// The `@name`s of `body` that are members now (ignoring case: usernames are COLLATE
/// NOCASE), in the order they appear; at most `MENTIONS_MAX` lookups by the unique name.
fn resolve_mentions(
    tx: &Connection,
    conversation: ConversationId,
    body: &str,
) -> Result<Vec<UserId>, Failure> {
    let names = mention_names(body);
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut member = tx.prepare_cached(
        "SELECT u.id FROM users u
         JOIN members m ON m.conversation_id = ?1 AND m.user_id = u.id
         WHERE u.username = ?2",
    )?;
    let mut mentions = Vec::with_capacity(names.len());
    for name in names {
        if let Some(Id(id)) = member
            .query_row(params![Id(conversation.0), name], |row| row.get(0))
            .optional()?
        {
            mentions.push(UserId(id));
        }
    }
    Ok(mentions)
}

/// The replied-to message as a reply shows it now.
fn reply_preview(
    tx: &Connection,
    conversation: ConversationId,
    seq: Seq,
) -> Result<Option<ReplyPreview>, Failure> {
    let preview = tx
        .prepare_cached(
            "SELECT sender_id, body, deleted FROM events
             WHERE conversation_id = ?1 AND seq = ?2",
        )?
        .query_row(params![Id(conversation.0), seq_param(seq)], |row| {
            Ok(ReplyPreview {
                seq,
                sender_id: UserId(row.get::<_, Id>(0)?.0),
                excerpt: excerpt(&row.get::<_, String>(1)?),
                deleted: row.get::<_, i64>(2)? != 0,
            })
        })
        .optional()?;
    Ok(preview)
}

/// Who becomes admin when `departing` goes: the longest-standing other member, if
/// `departing` is the last admin and anyone stays.
fn promoted(
    tx: &Connection,
    conversation: ConversationId,
    departing: UserId,
    gathered: &Gathered,
) -> Result<Option<UserId>, Failure> {
    let facts = &gathered.facts;
    if !promotes_on_departure(facts.subject_role, facts.admins, facts.members) {
        return Ok(None);
    }
    let promoted = tx
        .prepare_cached(
            "SELECT user_id FROM members WHERE conversation_id = ?1 AND user_id <> ?2
             ORDER BY joined_at_ns, user_id LIMIT 1",
        )?
        .query_row(params![Id(conversation.0), Id(departing.0)], |row| {
            row.get::<_, Id>(0)
        })
        .optional()?;
    Ok(promoted.map(|Id(id)| UserId(id)))
}

/// The event's row. Every row gets its own id; a message's is the message's.
fn insert(tx: &Connection, event: &Event, created_at_ns: i64) -> Result<(), Failure> {
    let (id, kind, target_seq, body, data, mentions) = match &event.data {
        EventData::Message { message } => (
            message.id,
            "message",
            message.reply_to.as_ref().map(|reply| reply.seq),
            message.body.clone(),
            None,
            mentions_text(&message.mentions),
        ),
        other => {
            let columns = event_columns(other).expect("only a message has no event columns");
            (
                MessageId::new(),
                columns.kind,
                columns.target_seq,
                columns.body,
                Some(columns.data),
                String::new(),
            )
        }
    };
    tx.prepare_cached(
        "INSERT INTO events (conversation_id, seq, id, sender_id, client_msg_id, body,
                             created_at_ns, kind, target_seq, data, mentions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        Id(event.conversation_id.0),
        seq_param(event.seq),
        Id(id.0),
        Id(event.sender_id.0),
        event.client_msg_id,
        body,
        created_at_ns,
        kind,
        target_seq.map(seq_param),
        data,
        mentions,
    ])?;
    Ok(())
}

/// Moves the conversation to `seq`: its newest event; its newest message and activity for
/// a message; its members seq for a member or role change; its activity for a new member
/// too (the chat list shows it to them).
fn advance(tx: &Connection, new: &NewEvent, seq: Seq, created_at_ns: i64) -> Result<(), Failure> {
    let is_message = matches!(new.change, Change::Message { .. });
    let is_activity = is_message || matches!(new.change, Change::MemberAdded { .. });
    let advanced = tx
        .prepare_cached(
            "UPDATE conversations
             SET last_seq = ?2,
                 last_message_seq = CASE WHEN ?4 THEN ?2 ELSE last_message_seq END,
                 members_seq = CASE WHEN ?5 THEN ?2 ELSE members_seq END,
                 last_activity_at_ns = CASE WHEN ?6 THEN max(last_activity_at_ns, ?3)
                                            ELSE last_activity_at_ns END
             WHERE id = ?1 AND last_seq = ?2 - 1",
        )?
        .execute(params![
            Id(new.conversation_id.0),
            seq_param(seq),
            created_at_ns,
            is_message,
            new.change.changes_members(),
            is_activity,
        ])?;
    assert_eq!(advanced, 1, "last_seq moved under the writer lock");
    if is_message {
        // The sender has read (and received) their own message.
        tx.prepare_cached(
            "UPDATE members SET last_read_seq = max(last_read_seq, ?3),
                                last_delivered_seq = max(last_delivered_seq, ?3)
             WHERE conversation_id = ?1 AND user_id = ?2",
        )?
        .execute(params![
            Id(new.conversation_id.0),
            Id(new.sender_id.0),
            seq_param(seq)
        ])?;
    }
    Ok(())
}

/// What the event changes besides the log.
fn apply(tx: &Connection, event: &Event, created_at_ns: i64) -> Result<(), Failure> {
    let conversation = Id(event.conversation_id.0);
    let sender = Id(event.sender_id.0);
    match &event.data {
        EventData::Message { .. } => {}
        EventData::Edit {
            target_seq,
            body,
            mentions,
        } => {
            tx.prepare_cached(
                "UPDATE events SET body = ?3, mentions = ?4, edited_at_ns = ?5
                 WHERE conversation_id = ?1 AND seq = ?2",
            )?
            .execute(params![
                conversation,
                seq_param(*target_seq),
                body,
                mentions_text(mentions),
                created_at_ns
            ])?;
        }
        EventData::Delete { target_seq } => {
            let target = seq_param(*target_seq);
            tx.prepare_cached(
                "UPDATE events SET body = '', mentions = '', deleted = 1
                 WHERE conversation_id = ?1 AND seq = ?2",
            )?
            .execute(params![conversation, target])?;
            // The edits' bodies go too (the store erases them, not just the view), and so do
            // their mentions: an erased edit reads as an edit of nothing.
            let erased = event_columns(&EventData::Edit {
                target_seq: *target_seq,
                body: String::new(),
                mentions: Vec::new(),
            })
            .expect("an edit has event columns");
            tx.prepare_cached(
                "UPDATE events SET body = '', data = ?3
                 WHERE conversation_id = ?1 AND target_seq = ?2 AND kind = 'edit'",
            )?
            .execute(params![conversation, target, erased.data])?;
            tx.prepare_cached("DELETE FROM reactions WHERE conversation_id = ?1 AND seq = ?2")?
                .execute(params![conversation, target])?;
            super::files::remove_of_message(tx, event.conversation_id, *target_seq, created_at_ns)?;
        }
        EventData::ReactionAdded { target_seq, emoji } => {
            tx.prepare_cached(
                "INSERT INTO reactions (conversation_id, seq, emoji, user_id, created_at_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                conversation,
                seq_param(*target_seq),
                emoji,
                sender,
                created_at_ns
            ])?;
        }
        EventData::ReactionRemoved { target_seq, emoji } => {
            tx.prepare_cached(
                "DELETE FROM reactions
                 WHERE conversation_id = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4",
            )?
            .execute(params![conversation, seq_param(*target_seq), emoji, sender])?;
        }
        EventData::MemberAdded { user, role } => {
            // History before joining counts as read (and received).
            tx.prepare_cached(
                "INSERT INTO members (conversation_id, user_id, role, joined_at_ns,
                                      last_read_seq, last_delivered_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![
                conversation,
                Id(user.id.0),
                role_text(*role),
                created_at_ns,
                seq_param(event.seq)
            ])?;
        }
        EventData::MemberRemoved {
            user_id,
            promoted_user_id,
        }
        | EventData::MemberLeft {
            user_id,
            promoted_user_id,
        } => {
            // Their markers and mute go with the row; their messages and reactions stay.
            tx.prepare_cached("DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
                .execute(params![conversation, Id(user_id.0)])?;
            if let Some(promoted) = promoted_user_id {
                set_role(tx, event.conversation_id, *promoted, Role::Admin)?;
            }
        }
        EventData::TitleChanged { title } => {
            tx.prepare_cached("UPDATE conversations SET title = ?2 WHERE id = ?1")?
                .execute(params![conversation, title])?;
        }
        EventData::RoleChanged { user_id, role } => {
            set_role(tx, event.conversation_id, *user_id, *role)?;
        }
    }
    Ok(())
}

fn set_role(
    tx: &Connection,
    conversation: ConversationId,
    user: UserId,
    role: Role,
) -> Result<(), Failure> {
    tx.prepare_cached("UPDATE members SET role = ?3 WHERE conversation_id = ?1 AND user_id = ?2")?
        .execute(params![Id(conversation.0), Id(user.0), role_text(role)])?;
    Ok(())
}
