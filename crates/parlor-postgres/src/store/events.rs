//! [`append_change`]: one change that is not a message (an edit, a delete, a reaction, a
//! member, title or role change), stored inside the batch's transaction with its
//! conversation locked. These are rare, so each takes its own two round trips: one to look
//! up (a duplicate, the [`Facts`](parlor_core::rules::Facts), the members an edit
//! mentions), one to store the event and apply it to the conversation's state.
//!
//! The writes run inside a savepoint: should one of them violate a constraint, that entry
//! alone is `Rejected` and the rest of the batch goes on.

use deadpool_postgres::Transaction;
use futures::future::{try_join_all, try_join3};
use parlor_core::events::{Change, Event, EventData, Role};
use parlor_core::ids::{MessageId, Seq};
use parlor_core::ports::{Appended, NewEvent, Stored};
use parlor_core::protocol::User;
use parlor_core::rules::{self, promotes_on_departure};
use parlor_core::storage::{event_columns, mentions_text, nanos, role_text, seq_param};
use parlor_core::validate::mention_names;
use time::UtcOffset;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::append::{
    CLIENT_MSG_ID_CONSTRAINT, LockedConversations, NUL_REJECTED, duplicates, has_nul,
};
use super::facts::{Gathered, Mentioned, gather, no_conversation};
use super::failure::Failure;

/// Answers `new` (not a message) and, if it is allowed, stores and applies it.
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
    let edit_names = match &new.change {
        Change::Edit { body, .. } if lookable => mention_names(body)
            .into_iter()
            .map(|name| (new.conversation_id, name))
            .collect(),
        _ => Vec::new(),
    };
    // Sent together: the facts are read whether or not this is a duplicate, to save a
    // round trip on the common case.
    let (mut first, gathered, mentioned) = try_join3(
        duplicates(tx, &[key]),
        async {
            if lookable {
                gather(tx, new).await.map(Some)
            } else {
                Ok(None)
            }
        },
        Mentioned::lookup(tx, &edit_names),
    )
    .await?;
    if let Some(first) = first.remove(&(new.sender_id, new.client_msg_id.clone())) {
        return Ok(Appended::Duplicate(first));
    }
    let Some(gathered) = gathered else {
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
    if let Err(refused) = rules::check(new.sender_id, &new.change, &gathered.facts) {
        return Ok(Appended::Refused(refused));
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
    let data = event_data(new, &gathered, &mentioned);
    let event = Event {
        conversation_id: new.conversation_id,
        seq,
        sender_id: new.sender_id,
        client_msg_id: new.client_msg_id.clone(),
        // What reading the row back yields: the same instant, in UTC.
        created_at: new.accepted_at.to_offset(UtcOffset::UTC),
        data,
    };
    match apply(tx, &event, created_at_ns, members_seq).await {
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

/// What the event records: the change with what the store resolved (an edit's mentions,
/// the added user's name, who was promoted).
fn event_data(new: &NewEvent, gathered: &Gathered, mentioned: &Mentioned) -> EventData {
    let promoted = || {
        let facts = &gathered.facts;
        // The one who goes is the subject (for `member_left`, the sender).
        promotes_on_departure(facts.subject_role, facts.admins, facts.members)
            .then_some(gathered.successor)
            .flatten()
    };
    match &new.change {
        Change::Message { .. } => unreachable!("messages are stored by their run"),
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
) -> Result<(), Failure> {
    let columns = event_columns(&event.data).expect("not a message");
    let conversation = &event.conversation_id.0;
    let sender = &event.sender_id.0;
    let seq = seq_param(event.seq);
    // Every event row has an id of its own, as every message had.
    let id = MessageId::new().0;
    let members_seq = seq_param(members_seq);
    let target_seq = columns.target_seq.map(seq_param);
    let title = match &event.data {
        EventData::TitleChanged { title } => Some(title.as_str()),
        _ => None,
    };
    // The chat list shows a conversation one is added to as its newest activity.
    let activity_ns = matches!(event.data, EventData::MemberAdded { .. }).then_some(created_at_ns);
    let mut writes: Vec<Write<'_>> = vec![
        (
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
        // The guarded advance: the row is locked, checked below.
        (
            "UPDATE conversations
             SET last_seq = $2, members_seq = $3, title = coalesce($4, title),
                 last_activity_at_ns = greatest(last_activity_at_ns, $5)
             WHERE id = $1 AND last_seq = $2::int8 - 1",
            vec![conversation, &seq, &members_seq, &title, &activity_ns],
        ),
    ];
    let mentions;
    let role;
    match &event.data {
        EventData::Message { .. } => unreachable!("messages are stored by their run"),
        EventData::Edit {
            body,
            mentions: mentioned,
            ..
        } => {
            mentions = mentions_text(mentioned);
            writes.push((
                "UPDATE events SET body = $3, mentions = $4, edited_at_ns = $5
                 WHERE conversation_id = $1 AND seq = $2",
                vec![conversation, &target_seq, body, &mentions, &created_at_ns],
            ));
        }
        EventData::Delete { .. } => {
            writes.push((
                "UPDATE events SET body = '', mentions = '', deleted = true
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
