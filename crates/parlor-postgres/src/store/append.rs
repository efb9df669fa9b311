//! [`append_messages`]: one batch of messages in one transaction that locks the batch's
//! conversation rows in id order, so concurrent persisters keep each conversation's seqs
//! gap-free and `(sender, client_msg_id)` unique; a conflict with a concurrent transaction
//! is retried a few times.

use std::collections::{HashMap, HashSet};

use futures::future::try_join3;
use parlor_core::error::BackendError;
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::{Appended, NewMessage};
use parlor_core::protocol::Message;
use parlor_core::storage::{nanos, seq_param};
use time::UtcOffset;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::PgStore;
use super::codec::{SeqColumn, message_row};
use super::failure::Failure;

/// How many times one batch of appends is tried when it conflicts with a concurrent
/// transaction (a deadlock, the same client message stored for another conversation). Each
/// conflict means another transaction made progress, so a few attempts are plenty.
const APPEND_ATTEMPTS: u32 = 5;
/// Names the unique constraint on `(sender_id, client_msg_id)`.
const CLIENT_MSG_ID_CONSTRAINT: &str = "messages_sender_client_msg_id_key";

/// Stores `batch` (not empty), trying again while it conflicts with a concurrent
/// transaction, at most `APPEND_ATTEMPTS` times.
pub(super) async fn append_messages(
    store: &PgStore,
    batch: &[NewMessage],
) -> Result<Vec<Appended>, BackendError> {
    let mut attempt = 1;
    loop {
        match append_once(store, batch).await {
            Ok(results) => return Ok(results),
            Err(failure) if attempt < APPEND_ATTEMPTS && is_conflict(&failure) => {
                tracing::debug!(attempt, ?failure, "append conflicted, trying again");
                attempt += 1;
            }
            Err(failure) => return Err(failure.into_backend("append messages")),
        }
    }
}

/// One attempt at the batch, in one transaction.
async fn append_once(store: &PgStore, batch: &[NewMessage]) -> Result<Vec<Appended>, Failure> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let (lock, stored, membership) = try_join3(
        // ORDER BY: rows are locked in id order, so two transactions that share
        // conversations wait for each other instead of deadlocking.
        tx.prepare_cached(
            "SELECT id, last_seq FROM conversations WHERE id = ANY($1::uuid[])
             ORDER BY id FOR UPDATE",
        ),
        tx.prepare_cached(
            "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
             FROM messages WHERE (sender_id, client_msg_id) IN
                 (SELECT * FROM unnest($1::uuid[], $2::text[]))",
        ),
        tx.prepare_cached(
            "SELECT conversation_id, user_id FROM members WHERE (conversation_id, user_id) IN
                 (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
        ),
    )
    .await?;

    let mut conversation_ids: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
    conversation_ids.sort_unstable();
    conversation_ids.dedup();
    let sender_ids: Vec<Uuid> = batch.iter().map(|m| m.sender_id.0).collect();
    let batch_conversation_ids: Vec<Uuid> = batch.iter().map(|m| m.conversation_id.0).collect();
    // A client_msg_id with NUL would fail the whole lookup; it cannot have been stored,
    // and is rejected below.
    let (lookup_senders, lookup_client_msg_ids): (Vec<Uuid>, Vec<&str>) = batch
        .iter()
        .filter(|m| !m.client_msg_id.contains('\0'))
        .map(|m| (m.sender_id.0, m.client_msg_id.as_str()))
        .unzip();
    // Sent together and run in this order: the lookups run once the locks are held, so
    // they see every message committed before. Should a concurrent append still store
    // one of these client messages first (for another conversation, whose lock this
    // transaction does not take), the unique constraint fails this attempt and the next
    // one finds it.
    let (locked, stored, membership) = try_join3(
        tx.query(&lock, &[&conversation_ids]),
        tx.query(&stored, &[&lookup_senders, &lookup_client_msg_ids]),
        tx.query(&membership, &[&batch_conversation_ids, &sender_ids]),
    )
    .await?;

    let mut last_seqs: HashMap<ConversationId, Seq> = HashMap::with_capacity(locked.len());
    for row in &locked {
        last_seqs.insert(
            ConversationId(row.try_get(0)?),
            row.try_get::<_, SeqColumn>(1)?.0,
        );
    }
    let mut known: HashMap<(UserId, String), Message> = HashMap::with_capacity(batch.len());
    for row in &stored {
        let message = message_row(row)?;
        known.insert((message.sender_id, message.client_msg_id.clone()), message);
    }
    let mut members: HashSet<(ConversationId, UserId)> = HashSet::with_capacity(batch.len());
    for row in &membership {
        members.insert((ConversationId(row.try_get(0)?), UserId(row.try_get(1)?)));
    }

    let mut rows = NewRows::default();
    let mut results = Vec::with_capacity(batch.len());
    for new in batch {
        // `known` also holds the messages stored earlier in this batch, so a repeat
        // within the batch finds the first one.
        let key = (new.sender_id, new.client_msg_id.clone());
        if let Some(first) = known.get(&key) {
            results.push(Appended::Duplicate(first.clone()));
            continue;
        }
        let last_seq = match last_seqs.get_mut(&new.conversation_id) {
            Some(last_seq) if members.contains(&(new.conversation_id, new.sender_id)) => last_seq,
            _ => {
                results.push(Appended::Rejected(format!(
                    "user {} is not a member of conversation {} (or it does not exist)",
                    new.sender_id, new.conversation_id
                )));
                continue;
            }
        };
        let created_at_ns = match nanos(new.accepted_at) {
            Ok(created_at_ns) => created_at_ns,
            Err(out_of_range) => {
                results.push(Appended::Rejected(out_of_range.to_string()));
                continue;
            }
        };
        // PostgreSQL text cannot hold NUL; validation keeps it out, this keeps one such
        // message from failing the whole batch.
        if new.body.contains('\0') || new.client_msg_id.contains('\0') {
            results.push(Appended::Rejected(
                "cannot store message: text must not contain NUL".to_owned(),
            ));
            continue;
        }
        *last_seq += 1;
        let message = Message {
            id: MessageId::new(),
            conversation_id: new.conversation_id,
            seq: *last_seq,
            sender_id: new.sender_id,
            client_msg_id: new.client_msg_id.clone(),
            body: new.body.clone(),
            // What reading the row back yields: the same instant, in UTC.
            created_at: new.accepted_at.to_offset(UtcOffset::UTC),
        };
        rows.push(&message, created_at_ns);
        known.insert(key, message.clone());
        results.push(Appended::New(message));
    }

    if !rows.ids.is_empty() {
        let (insert, advance, read_own) = try_join3(
            tx.prepare_cached(
                "INSERT INTO messages
                     (conversation_id, seq, id, sender_id, client_msg_id, body, created_at_ns)
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[],
                                      $5::text[], $6::text[], $7::int8[])"
            ),
            tx.prepare_cached(
                "UPDATE conversations c
                 SET last_seq = v.last_seq,
                     last_activity_at_ns = greatest(c.last_activity_at_ns, v.activity_ns)
                 FROM unnest($1::uuid[], $2::int8[], $3::int8[]) AS v (id, last_seq, activity_ns)
                 WHERE c.id = v.id"
            ),
            tx.prepare_cached(
                "UPDATE members m SET last_read_seq = greatest(m.last_read_seq, v.seq)
                 FROM unnest($1::uuid[], $2::uuid[], $3::int8[]) AS v (conversation_id, user_id, seq)
                 WHERE m.conversation_id = v.conversation_id AND m.user_id = v.user_id"
            ),
        ).await?;
        let advanced = rows.advanced_columns();
        let read = rows.read_own_columns();
        let (inserted, updated, _) = try_join3(
            tx.execute(
                &insert,
                &[
                    &rows.conversation_ids,
                    &rows.seqs,
                    &rows.ids,
                    &rows.sender_ids,
                    &rows.client_msg_ids,
                    &rows.bodies,
                    &rows.created_at_ns,
                ],
            ),
            tx.execute(&advance, &[&advanced.0, &advanced.1, &advanced.2]),
            tx.execute(&read_own, &[&read.0, &read.1, &read.2]),
        )
        .await?;
        assert_eq!(
            inserted,
            rows.ids.len() as u64,
            "every new message inserted"
        );
        assert_eq!(
            updated,
            advanced.0.len() as u64,
            "locked conversations advanced"
        );
    }
    tx.commit().await?;
    Ok(results)
}

/// The messages a batch stores, as column arrays for one multi-row INSERT, and what they
/// move: each conversation's last seq and activity, each sender's read marker.
#[derive(Default)]
struct NewRows {
    conversation_ids: Vec<Uuid>,
    seqs: Vec<i64>,
    ids: Vec<Uuid>,
    sender_ids: Vec<Uuid>,
    client_msg_ids: Vec<String>,
    bodies: Vec<String>,
    created_at_ns: Vec<i64>,
    /// Per conversation: the last seq and the newest `created_at_ns` of the batch.
    advanced: HashMap<ConversationId, (Seq, i64)>,
    /// Per (conversation, sender): the sender's newest seq in the batch.
    read_own: HashMap<(ConversationId, UserId), Seq>,
}

impl NewRows {
    fn push(&mut self, message: &Message, created_at_ns: i64) {
        self.conversation_ids.push(message.conversation_id.0);
        self.seqs.push(seq_param(message.seq));
        self.ids.push(message.id.0);
        self.sender_ids.push(message.sender_id.0);
        self.client_msg_ids.push(message.client_msg_id.clone());
        self.bodies.push(message.body.clone());
        self.created_at_ns.push(created_at_ns);
        // Seqs only grow within a batch, so the latest is the largest.
        let advanced = self
            .advanced
            .entry(message.conversation_id)
            .or_insert((message.seq, created_at_ns));
        *advanced = (message.seq, advanced.1.max(created_at_ns));
        self.read_own
            .insert((message.conversation_id, message.sender_id), message.seq);
    }

    /// `(conversation ids, last seqs, activity times)` for the UPDATE of `conversations`.
    fn advanced_columns(&self) -> (Vec<Uuid>, Vec<i64>, Vec<i64>) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for (conversation, (last_seq, activity_ns)) in &self.advanced {
            columns.0.push(conversation.0);
            columns.1.push(seq_param(*last_seq));
            columns.2.push(*activity_ns);
        }
        columns
    }

    /// `(conversation ids, user ids, seqs)` for the UPDATE of `members`.
    fn read_own_columns(&self) -> (Vec<Uuid>, Vec<Uuid>, Vec<i64>) {
        let mut columns = (Vec::new(), Vec::new(), Vec::new());
        for ((conversation, user), seq) in &self.read_own {
            columns.0.push(conversation.0);
            columns.1.push(user.0);
            columns.2.push(seq_param(*seq));
        }
        columns
    }
}

/// A conflict with a concurrent transaction that a new attempt resolves: a serialization
/// failure, a deadlock, or another append that stored the same (sender, client_msg_id)
/// first (the new attempt finds that message and answers `Duplicate`).
fn is_conflict(failure: &Failure) -> bool {
    let Failure::Db(error) = failure else {
        return false;
    };
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code();
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || (*code == SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some(CLIENT_MSG_ID_CONSTRAINT))
}
