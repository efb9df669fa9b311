//! [`append`]: one batch of messages stored inside the writer's transaction, each with the
//! next gap-free seq of its conversation and idempotent on `(sender, client_msg_id)`.

use parlor_core::ids::MessageId;
use parlor_core::ports::{Appended, NewMessage};
use parlor_core::protocol::Message;
use parlor_core::storage::{nanos, seq_param};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use time::UtcOffset;

use super::codec::{Id, SeqColumn, message_row};
use super::failure::Failure;

/// Per entry: a known (sender, client_msg_id) → `Duplicate` of the first message; a sender
/// who is not a member (or a conversation that does not exist) → `Rejected`; otherwise
/// `New` with the next seq, and the sender's read marker moves to it. Runs inside the
/// caller's `BEGIN IMMEDIATE` transaction, so `last_seq` cannot move under it.
pub(super) fn append(tx: &Connection, batch: &[NewMessage]) -> Result<Vec<Appended>, Failure> {
    let mut stored = tx.prepare_cached(
        "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
         FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2",
    )?;
    let mut last_seq = tx.prepare_cached(
        "SELECT c.last_seq FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.conversation_id = ?1 AND m.user_id = ?2",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages
             (conversation_id, seq, id, sender_id, client_msg_id, body, created_at_ns)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut advance = tx.prepare_cached(
        "UPDATE conversations
         SET last_seq = ?2, last_activity_at_ns = max(last_activity_at_ns, ?3)
         WHERE id = ?1 AND last_seq = ?2 - 1",
    )?;
    let mut read_own = tx.prepare_cached(
        "UPDATE members SET last_read_seq = max(last_read_seq, ?3)
         WHERE conversation_id = ?1 AND user_id = ?2",
    )?;

    let mut results = Vec::with_capacity(batch.len());
    for new in batch {
        let conversation = Id(new.conversation_id.0);
        let sender = Id(new.sender_id.0);
        // Looked up inside the transaction, so a repeat within this batch finds the
        // message inserted a few rows earlier.
        if let Some(first) = stored
            .query_row(params![sender, new.client_msg_id], message_row)
            .optional()?
        {
            results.push(Appended::Duplicate(first));
            continue;
        }
        let Some(SeqColumn(previous)) = last_seq
            .query_row(params![conversation, sender], |row| row.get(0))
            .optional()?
        else {
            results.push(Appended::Rejected(format!(
                "user {} is not a member of conversation {} (or it does not exist)",
                new.sender_id, new.conversation_id
            )));
            continue;
        };
        let created_at_ns = match nanos(new.accepted_at) {
            Ok(created_at_ns) => created_at_ns,
            Err(out_of_range) => {
                results.push(Appended::Rejected(out_of_range.to_string()));
                continue;
            }
        };
        let message = Message {
            id: MessageId::new(),
            conversation_id: new.conversation_id,
            seq: previous + 1,
            sender_id: new.sender_id,
            client_msg_id: new.client_msg_id.clone(),
            body: new.body.clone(),
            // What reading the row back yields: the same instant, in UTC.
            created_at: new.accepted_at.to_offset(UtcOffset::UTC),
        };
        let seq = seq_param(message.seq);
        let inserted = insert.execute(params![
            conversation,
            seq,
            Id(message.id.0),
            sender,
            message.client_msg_id,
            message.body,
            created_at_ns,
        ]);
        match inserted {
            Ok(_) => {}
            // A failed statement is undone on its own; the rest of the batch goes on.
            Err(error) if error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                results.push(Appended::Rejected(format!("cannot store message: {error}")));
                continue;
            }
            Err(error) => return Err(error.into()),
        }
        let advanced = advance.execute(params![conversation, seq, created_at_ns])?;
        assert_eq!(advanced, 1, "last_seq moved under the writer lock");
        read_own.execute(params![conversation, sender, seq])?;
        results.push(Appended::New(message));
    }
    Ok(results)
}
