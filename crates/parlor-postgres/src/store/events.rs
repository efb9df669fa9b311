//! [`append_change`]: one change that is not a plain message (an edit, a delete, a
//! reaction, a member, title or role change, or a message that attaches files), stored
//! inside the batch's transaction with its conversation locked. These are rare, so each
//! takes its own two round trips: one to look up (a duplicate, the
//! [`Facts`](parlor_core::rules::Facts), the members a body mentions, the files a message
//! attaches, locked, or the blobs of the files a delete removes), one to store the event
//! and apply it to the conversation's state (attach or remove files, count their blobs).
//!
//! The writes run inside a savepoint: should one of them violate a constraint, that entry
//! alone is `Rejected` and the rest of the batch goes on.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use futures::future::{try_join_all, try_join3, try_join5};
use parlor_core::events::{Change, Event, EventData, ReplyPreview, Role, excerpt};
use parlor_core::files::StoredFile;
use parlor_core::ids::{FileId, MessageId, Seq};
use parlor_core::ports::{Appended, NewEvent, Stored};
use parlor_core::protocol::{Message, User};
use parlor_core::rules::{self, promotes_on_departure};
use parlor_core::storage::{event_columns, mentions_text, nanos, role_text, seq_param};
use parlor_core::validate::mention_names;
use time::UtcOffset;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::append::{
    CLIENT_MSG_ID_CONSTRAINT, LockedConversations, NUL_REJECTED, duplicates, has_nul,
};
use super::facts::{Gathered, Mentioned, gather, no_conversation};
use super::failure::Failure;
use super::files::{self, BlobCounts, Lock};
use super::lexemes;

/// Answers `new` (not a plain message) and, if it is allowed, stores and applies it.
pub(super) async fn append_change(
    tx: &Transaction<'_>,
    new: &NewEvent,
    locked: &mut LockedConversations,
) -> Result<Appended, Failure> {
    let key = (new.sender_id, new.client_msg_id.as_str());
    if new.client_msg_id.contains('\0') {
        // Never stored, so never a duplicate.
        return Ok(Appended::Rejected(NUL_REJECTED.to_owned()));
    }
    // A conversation that was not locked does not exist (or was created after the lock
    // was taken, and is not this transaction's to change): nobody is a member.
    let lookable = locked.contains_key(&new.conversation_id) && !has_nul(new);
    let names = match &new.change {
        Change::Edit { body, .. } | Change::Message { body, .. } if lookable => mention_names(body)
            .into_iter()
            .map(|name| (new.conversation_id, name))
            .collect(),
        _ => Vec::new(),
    };
    let file_ids = match &new.change {
        Change::Message { files, .. } if lookable => files.as_slice(),
        _ => &[],
    };
    let deleted_seq = match &new.change {
        Change::Delete { target_seq } if lookable => Some(*target_seq),
        _ => None,
    };
    // Sent together: the facts are read whether or not this is a duplicate, to save a
    // round trip on the common case. The files a message attaches are locked until the
    // batch commits (see `files`): no other append attaches them, and no expiry removes
    // them, between the rules' look and the attach.
    let (mut first, gathered, mentioned, attachable, released) = try_join5(
        duplicates(tx, &[key]),
        async {
            if lookable {
                gather(tx, new).await.map(Some)
            } else {
                Ok(None)
            }
        },
        Mentioned::lookup(tx, &names),
        files::attachable(tx, file_ids, Lock::ForUpdate),
        files::blobs_of_message(tx, new.conversation_id, deleted_seq),
    )
    .await?;
    if let Some(first) = first.remove(&(new.sender_id, new.client_msg_id.clone())) {
        return Ok(Appended::Duplicate(first));
    }
    let Some(mut gathered) = gathered else {
        if has_nul(new) {
            return Ok(Appended::Rejected(NUL_REJECTED.to_owned()));
        }
        return Ok(
            match rules::check(new.sender_id, &new.change, &no_conversation()) {
                Err(refused) => Appended::Refused(refused),
                // The rules let nobody change a conversation they are not a member of; were
                // that to change, there would still be no conversation to store it in.
                Ok(()) => Appended::Rejected(format!(
                    "conversation {} does not exist",
                    new.conversation_id
                )),
            },
        );
    };
    gathered.facts.files = files::facts(file_ids, &attachable);
    if let Err(refused) = rules::check(new.sender_id, &new.change, &gathered.facts) {
        return Ok(Appended::Refused(refused));
    }
    if attachable.len() < file_ids.len() {
        // Every file was found (the rules say so), one of them twice: validation keeps
        // such a message out, and it could never be stored.
        return Ok(Appended::Rejected(
            "cannot store message: it lists a file twice".to_owned(),
        ));
    }
    let created_at_ns = match nanos(new.accepted_at) {
        Ok(created_at_ns) => created_at_ns,
        Err(out_of_range) => return Ok(Appended::Rejected(out_of_range.to_string())),
    };
    let conversation = locked
        .get_mut(&new.conversation_id)
        .expect("looked up only in a locked conversation");
    let seq = conversation.last_seq + 1;
    let members_seq = if new.change.changes_members() {
        seq
    } else {
        conversation.members_seq
    };
    // What reading the row back yields: the same instant, in UTC.
    let created_at = new.accepted_at.to_offset(UtcOffset::UTC);
    let data = event_data(new, seq, &gathered, &mentioned, &attachable);
    let event = Event {
        conversation_id: new.conversation_id,
        seq,
        sender_id: new.sender_id,
        client_msg_id: new.client_msg_id.clone(),
        created_at,
        data,
    };
    match apply(tx, &event, created_at_ns, members_seq, &released).await {
        Ok(()) => {}
        Err(Failure::Db(error)) if is_input_violation(&error) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT change; RELEASE SAVEPOINT change")
                .await?;
            let reason = match error.as_db_error() {
                Some(db) => format!("cannot store {} event: {db}", event.data.kind()),
                None => format!("cannot store {} event: {error}", event.data.kind()),
            };
            return Ok(Appended::Rejected(reason));
        }
        Err(failure) => return Err(failure),
    }
    conversation.last_seq = seq;
    conversation.members_seq = members_seq;
    Ok(Appended::New(Stored { event, members_seq }))
}

/// What the event records: the change with what the store resolved (a body's mentions, a
/// reply's excerpt, a message's files, the added user's name, who was promoted).
fn event_data(
    new: &NewEvent,
    seq: Seq,
    gathered: &Gathered,
    mentioned: &Mentioned,
    attachable: &HashMap<FileId, StoredFile>,
) -> EventData {
    let promoted = || {
        let facts = &gathered.facts;
        // The one who goes is the subject (for `member_left`, the sender).
        promotes_on_departure(facts.subject_role, facts.admins, facts.members)
            .then_some(gathered.successor)
            .flatten()
    };
    match &new.change {
        Change::Message {
            body,
            reply_to_seq,
            files,
        } => {
            // The rules let a reply through only to a message that exists (the target).
            let reply_to = reply_to_seq
                .zip(gathered.facts.target.as_ref())
                .map(|(seq, target)| ReplyPreview {
                    seq,
                    sender_id: target.sender,
                    excerpt: excerpt(gathered.target_body.as_deref().unwrap_or_default()),
                    deleted: target.deleted,
                });
            let message = Message {
                reply_to,
                mentions: mentioned.resolve(new.conversation_id, &mention_names(body)),
                files: files
                    .iter()
                    .filter_map(|id| attachable.get(id).map(|file| file.info.clone()))
                    .collect(),
                ..Message::new(
                    MessageId::new(),
                    new.conversation_id,
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
            mentions: mentioned.resolve(new.conversation_id, &mention_names(body)),
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
        Change::MemberAdded { user_id } => EventData::MemberAdded {
            user: User {
                id: *user_id,
                username: gathered.subject_name.clone().unwrap_or_default(),
            },
            role: Role::Member,
        },
        Change::MemberRemoved { user_id } => EventData::MemberRemoved {
            user_id: *user_id,
            promoted_user_id: promoted(),
        },
        Change::MemberLeft {} => EventData::MemberLeft {
            user_id: new.sender_id,
            promoted_user_id: promoted(),
        },
        Change::TitleChanged { title } => EventData::TitleChanged {
            title: title.clone(),
        },
        Change::RoleChanged { user_id, role } => EventData::RoleChanged {
            user_id: *user_id,
            role: *role,
        },
    }
}

/// A statement and its parameters, to send with the others of one event.
type Write<'a> = (&'a str, Vec<&'a (dyn ToSql + Sync)>);

/// Stores `event` (seq = the conversation's last seq + 1) and applies it, in one round
/// trip inside the savepoint `change`.
async fn apply(
    tx: &Transaction<'_>,
    event: &Event,
    created_at_ns: i64,
    members_seq: Seq,
    released: &BlobCounts,
) -> Result<(), Failure> {
    // `None` for a message, which has columns of its own.
    let columns = event_columns(&event.data);
    let conversation = &event.conversation_id.0;
    let sender = &event.sender_id.0;
    let seq = seq_param(event.seq);
    // Every event row has an id of its own, as every message had.
    let id = match &event.data {
        EventData::Message { message } => message.id.0,
        _ => MessageId::new().0,
    };
    let members_seq = seq_param(members_seq);
    let target_seq = match (&event.data, &columns) {
        (EventData::Message { message }, _) => message.reply_to.as_ref().map(|to| to.seq),
        (_, Some(columns)) => columns.target_seq,
        (_, None) => None,
    }
    .map(seq_param);
    let title = match &event.data {
        EventData::TitleChanged { title } => Some(title.as_str()),
        _ => None,
    };
    let is_message = matches!(event.data, EventData::Message { .. });
    // The chat list shows a conversation one is added to, or with a new message, as its
    // newest activity.
    let activity_ns = matches!(
        event.data,
        EventData::MemberAdded { .. } | EventData::Message { .. }
    )
    .then_some(created_at_ns);
    let message_mentions;
    let message_search;
    let insert: Write<'_> = match (&event.data, &columns) {
        (EventData::Message { message }, _) => {
            message_mentions = mentions_text(&message.mentions);
            message_search = lexemes::tsvector(&message.body);
            (
                "INSERT INTO events (conversation_id, seq, id, sender_id, client_msg_id, body,
                                     created_at_ns, target_seq, mentions, search)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::tsvector)",
                vec![
                    conversation,
                    &seq,
                    &id,
                    sender,
                    &event.client_msg_id,
                    &message.body,
                    &created_at_ns,
                    &target_seq,
                    &message_mentions,
                    &message_search,
                ],
            )
        }
        (_, Some(columns)) => (
            "INSERT INTO events (conversation_id, seq, id, sender_id, client_msg_id, body,
                                 created_at_ns, kind, target_seq, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            vec![
                conversation,
                &seq,
                &id,
                sender,
                &event.client_msg_id,
                &columns.body,
                &created_at_ns,
                &columns.kind,
                &target_seq,
                &columns.data,
            ],
        ),
        (_, None) => unreachable!("every event but a message has event columns"),
    };
    let mut writes: Vec<Write<'_>> = vec![
        insert,
        // The guarded advance: the row is locked, checked below.
        (
            "UPDATE conversations
             SET last_seq = $2, members_seq = $3, title = coalesce($4, title),
                 last_activity_at_ns = greatest(last_activity_at_ns, $5),
                 last_message_seq = CASE WHEN $6 THEN $2 ELSE last_message_seq END
             WHERE id = $1 AND last_seq = $2::int8 - 1",
            vec![
                conversation,
                &seq,
                &members_seq,
                &title,
                &activity_ns,
                &is_message,
            ],
        ),
    ];
    // Where the attach of a message's files is among the writes, and how many it attaches.
    let mut attach = None;
    let file_ids: Vec<Uuid>;
    let positions: Vec<i32>;
    let mentions;
    let edited_search;
    let role;
    match &event.data {
        EventData::Message { message } => {
            // Reading moves the delivered marker too: the sender's own device has it.
            writes.push((
                "UPDATE members
                 SET last_read_seq = greatest(last_read_seq, $3),
                     last_delivered_seq = greatest(last_delivered_seq, $3)
                 WHERE conversation_id = $1 AND user_id = $2",
                vec![conversation, sender, &seq],
            ));
            file_ids = message.files.iter().map(|file| file.id.0).collect();
            positions = (0..).take(file_ids.len()).collect();
            if !file_ids.is_empty() {
                attach = Some((writes.len(), file_ids.len() as u64));
                writes.push((
                    files::ATTACH,
                    vec![conversation, &seq, &file_ids, &positions, sender],
                ));
            }
        }
        EventData::Edit {
            body,
            mentions: mentioned,
            ..
        } => {
            mentions = mentions_text(mentioned);
            edited_search = lexemes::tsvector(body);
            writes.push((
                "UPDATE events SET body = $3, mentions = $4, edited_at_ns = $5,
                                   search = $6::text::tsvector
                 WHERE conversation_id = $1 AND seq = $2",
                vec![
                    conversation,
                    &target_seq,
                    body,
                    &mentions,
                    &created_at_ns,
                    &edited_search,
                ],
            ));
        }
        EventData::Delete { .. } => {
            writes.push((
                "UPDATE events SET body = '', mentions = '', deleted = true, search = NULL
                 WHERE conversation_id = $1 AND seq = $2",
                vec![conversation, &target_seq],
            ));
            // The store forgets what the message said, in every version: the edits'
            // bodies and who they mentioned.
            writes.push((
                "UPDATE events SET body = '', data = (data::jsonb - 'mentions')::text
                 WHERE conversation_id = $1 AND target_seq = $2 AND kind = 'edit'",
                vec![conversation, &target_seq],
            ));
            writes.push((
                "DELETE FROM reactions WHERE conversation_id = $1 AND seq = $2",
                vec![conversation, &target_seq],
            ));
            // Its files go, and their blobs count one user less each (locked in key order
            // first, as every writer of several blobs does).
            if !released.is_empty() {
                writes.push((files::REMOVE_OF_MESSAGE, vec![conversation, &target_seq]));
                writes.push((files::LOCK_BLOBS, vec![&released.keys]));
                writes.push((
                    files::RELEASE_BLOBS,
                    vec![&released.keys, &released.counts, &created_at_ns],
                ));
            }
        }
        EventData::ReactionAdded { emoji, .. } => {
            writes.push((
                "INSERT INTO reactions (conversation_id, seq, emoji, user_id, created_at_ns)
                 VALUES ($1, $2, $3, $4, $5)",
                vec![conversation, &target_seq, emoji, sender, &created_at_ns],
            ));
        }
        EventData::ReactionRemoved { emoji, .. } => {
            writes.push((
                "DELETE FROM reactions
                 WHERE conversation_id = $1 AND seq = $2 AND emoji = $3 AND user_id = $4",
                vec![conversation, &target_seq, emoji, sender],
            ));
        }
        EventData::MemberAdded { user, .. } => {
            // History before joining counts as read (and delivered).
            writes.push((
                "INSERT INTO members (conversation_id, user_id, role, joined_at_ns,
                                      last_read_seq, last_delivered_seq)
                 VALUES ($1, $2, 'member', $3, $4, $4)",
                vec![conversation, &user.id.0, &created_at_ns, &seq],
            ));
        }
        EventData::MemberRemoved {
            user_id,
            promoted_user_id,
        }
        | EventData::MemberLeft {
            user_id,
            promoted_user_id,
        } => {
            // Their markers go with the row; their messages and reactions stay.
            writes.push((
                "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
                vec![conversation, &user_id.0],
            ));
            if let Some(promoted) = promoted_user_id {
                writes.push((
                    "UPDATE members SET role = 'admin' WHERE conversation_id = $1 AND user_id = $2",
                    vec![conversation, &promoted.0],
                ));
            }
        }
        EventData::TitleChanged { .. } => {}
        EventData::RoleChanged {
            user_id,
            role: new_role,
        } => {
            role = role_text(*new_role);
            writes.push((
                "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
                vec![conversation, &user_id.0, &role],
            ));
        }
    }
    let statements = try_join_all(writes.iter().map(|(sql, _)| tx.prepare_cached(sql))).await?;
    // Sent together and run in this order, the savepoint first.
    let savepoint = tx.batch_execute("SAVEPOINT change");
    let executions = writes
        .iter()
        .zip(&statements)
        .map(|((_, params), statement)| tx.execute(statement, params));
    let release = tx.batch_execute("RELEASE SAVEPOINT change");
    let (_, counts, _) = try_join3(savepoint, try_join_all(executions), release).await?;
    assert_eq!(counts[1], 1, "the locked conversation advanced");
    if let Some((at, files)) = attach {
        assert_eq!(counts[at], files, "the locked files attached");
    }
    Ok(())
}

/// A violation the event's own values caused (class 22: a value out of range, class 23: a
/// constraint), which no retry mends; not the clash of two appends on one client message,
/// which a retry of the batch answers as a duplicate.
fn is_input_violation(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let class = &db.code().code()[..2];
    let retried = *db.code() == SqlState::UNIQUE_VIOLATION
        && db.constraint() == Some(CLIENT_MSG_ID_CONSTRAINT);
    matches!(class, "22" | "23") && !retried
}
