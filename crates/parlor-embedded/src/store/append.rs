//! [`append`]: one batch of events stored inside the writer's transaction. Per entry, in
//! order: a repeat of (sender, client_msg_id) answers the event stored the first time, a
//! change the rules refuse now stores nothing, anything else is stored with the next
//! gap-free seq of its conversation and applied ([`apply`](super::apply)).

use std::collections::HashMap;

use parlor_core::events::{Change, Role};
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{Appended, NewEvent, Stored};
use parlor_core::protocol::ConversationKind;
use parlor_core::rules::{self, Facts};
use parlor_core::storage::nanos;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::apply;
use super::codec::{Id, SeqColumn};
use super::facts::{Gathered, gather};
use super::failure::Failure;
use super::history::event_at;

/// Runs inside the caller's `BEGIN IMMEDIATE` transaction, so nothing moves under it, and
/// every entry sees what the entries before it stored: a change can be refused because an
/// earlier one of the same batch removed its sender.
pub(super) fn append(tx: &Connection, batch: &[NewEvent]) -> Result<Vec<Appended>, Failure> {
    let mut known = PlainMessageFacts::default();
    batch
        .iter()
        .map(|new| append_one(tx, new, &mut known))
        .collect()
}

/// What a plain message (no reply) depends on, remembered through a batch: a batch holds
/// many messages of the same senders to the same conversations, and each lookup is a
/// statement of the single writer, whose speed is the store's throughput. Only plain
/// messages are stored while it is trusted: any other change may alter what it holds
/// (members, roles), so it is forgotten then.
#[derive(Default)]
struct PlainMessageFacts {
    /// A conversation's kind, newest seq and members seq, as this batch left them.
    conversations: HashMap<ConversationId, (ConversationKind, Seq, Seq)>,
    /// A sender's role in a conversation (`None`: not a member).
    roles: HashMap<(ConversationId, UserId), Option<Role>>,
}

impl PlainMessageFacts {
    fn applies_to(new: &NewEvent) -> bool {
        matches!(
            &new.change,
            Change::Message {
                reply_to_seq: None,
                files,
                ..
            } if files.is_empty()
        )
    }

    fn get(&self, new: &NewEvent) -> Option<Gathered> {
        let &(kind, last_seq, members_seq) = self.conversations.get(&new.conversation_id)?;
        let &sender_role = self.roles.get(&(new.conversation_id, new.sender_id))?;
        Some(Gathered {
            facts: Facts {
                kind,
                sender_role,
                target: None,
                subject_role: None,
                subject_exists: false,
                admins: 0,
                members: 0,
                files: Vec::new(),
            },
            last_seq,
            members_seq,
            subject: None,
        })
    }

    fn remember(&mut self, new: &NewEvent, gathered: &Gathered) {
        let facts = &gathered.facts;
        self.conversations.insert(
            new.conversation_id,
            (facts.kind, gathered.last_seq, gathered.members_seq),
        );
        self.roles
            .insert((new.conversation_id, new.sender_id), facts.sender_role);
    }

    fn stored(&mut self, new: &NewEvent, seq: Seq) {
        if let Some(conversation) = self.conversations.get_mut(&new.conversation_id) {
            conversation.1 = seq;
        }
    }

    fn forget(&mut self) {
        self.conversations.clear();
        self.roles.clear();
    }
}

fn append_one(
    tx: &Connection,
    new: &NewEvent,
    known: &mut PlainMessageFacts,
) -> Result<Appended, Failure> {
    if let Some(first) = duplicate(tx, new)? {
        return Ok(Appended::Duplicate(first));
    }
    let plain = PlainMessageFacts::applies_to(new);
    let gathered = match known.get(new).filter(|_| plain) {
        Some(gathered) => gathered,
        None => {
            let gathered = gather(tx, new)?;
            if plain {
                // A conversation that does not exist reads as a group with no members:
                // remembered as such, it is refused the same way again.
                known.remember(new, &gathered);
            }
            gathered
        }
    };
    let appended = store_checked(tx, new, &gathered)?;
    match &appended {
        Appended::New(stored) if plain => known.stored(new, stored.event.seq),
        Appended::New(_) => known.forget(),
        _ => {}
    }
    Ok(appended)
}

/// Stores `new` if the rules allow it on `gathered`.
fn store_checked(
    tx: &Connection,
    new: &NewEvent,
    gathered: &Gathered,
) -> Result<Appended, Failure> {
    if let Err(error) = rules::check(new.sender_id, &new.change, &gathered.facts) {
        return Ok(Appended::Refused(error));
    }
    let created_at_ns = match nanos(new.accepted_at) {
        Ok(created_at_ns) => created_at_ns,
        Err(out_of_range) => return Ok(Appended::Rejected(out_of_range.to_string())),
    };
    // Storing an event is several statements (its row, the conversation, the change it
    // makes); a savepoint undoes all of them if one violates a constraint, so that entry is
    // rejected alone and the rest of the batch goes on. A message needs none: its row is its
    // first write, and a statement that fails is undone on its own. (A savepoint copies each
    // page it first touches to a sub-journal: on every message, it cut the store's
    // throughput to a quarter.) A message with files is several writes, and takes one.
    let savepoint = !matches!(&new.change, Change::Message { files, .. } if files.is_empty());
    if savepoint {
        tx.execute_batch("SAVEPOINT entry")?;
    }
    match apply::store(tx, new, gathered, created_at_ns) {
        Ok(stored) => {
            if savepoint {
                tx.execute_batch("RELEASE entry")?;
            }
            Ok(Appended::New(stored))
        }
        Err(Failure::Db(error))
            if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) =>
        {
            if savepoint {
                tx.execute_batch("ROLLBACK TO entry; RELEASE entry")?;
            }
            Ok(Appended::Rejected(format!(
                "cannot store {}: {error}",
                new.change.kind()
            )))
        }
        // Any other failure ends the whole transaction, which rolls back with it.
        Err(failure) => Err(failure),
    }
}

/// Whether (sender, client_msg_id) is stored already.
pub(super) fn is_stored(tx: &Connection, new: &NewEvent) -> Result<bool, Failure> {
    let found = tx
        .prepare_cached("SELECT 1 FROM events WHERE sender_id = ?1 AND client_msg_id = ?2")?
        .query_row(params![Id(new.sender_id.0), new.client_msg_id], |_| Ok(()))
        .optional()?;
    Ok(found.is_some())
}

/// The event stored the first time (sender, client_msg_id) was seen, as it reads now, with
/// its conversation's members seq of now. Looked up inside the transaction, so a repeat
/// within the batch finds the event stored a few entries earlier.
fn duplicate(tx: &Connection, new: &NewEvent) -> Result<Option<Stored>, Failure> {
    // Two plain lookups, not a join: this runs for every entry, and SQLite re-prepared the
    // joined form on every call (its parser was a tenth of the append's time).
    let found = tx
        .prepare_cached(
            "SELECT conversation_id, seq FROM events WHERE sender_id = ?1 AND client_msg_id = ?2",
        )?
        .query_row(params![Id(new.sender_id.0), new.client_msg_id], |row| {
            Ok((row.get::<_, Id>(0)?, row.get::<_, SeqColumn>(1)?.0))
        })
        .optional()?;
    let Some((Id(conversation), seq)) = found else {
        return Ok(None);
    };
    let members_seq = tx
        .prepare_cached("SELECT members_seq FROM conversations WHERE id = ?1")?
        .query_row(params![Id(conversation)], |row| row.get::<_, SeqColumn>(0))?
        .0;
    let event = event_at(tx, ConversationId(conversation), seq)?
        .ok_or_else(|| Failure::Rejected(format!("event {seq} vanished while being read")))?;
    Ok(Some(Stored { event, members_seq }))
}
