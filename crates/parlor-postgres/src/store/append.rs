//! [`append_events`]: one batch of changes in one transaction that locks the batch's
//! conversation rows in id order, so concurrent persisters keep each conversation's seqs
//! gap-free, `(sender, client_msg_id)` unique and every rule checked against the state the
//! change is stored on; a conflict with a concurrent transaction is retried a few times.
//!
//! Messages are the hot path: a run of consecutive plain messages (no files: usually the
//! whole batch) is looked up in one round trip (the first run together with the locks) and
//! stored in one more, whatever its length. Every other change (another kind, or a message
//! that attaches files, which locks them and writes them too) is stored alone, in two round
//! trips, by [`super::events`].

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use futures::future::{try_join, try_join3, try_join4};
use parlor_core::error::BackendError;
use parlor_core::events::{Change, Event, EventData, ReplyPreview, Role, excerpt};
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::{Appended, Lease, NewEvent, Stored};
use parlor_core::protocol::{ConversationKind, Message};
use parlor_core::rules::{self, Facts, Target};
use parlor_core::storage::{mentions_text, nanos, seq_param};
use parlor_core::validate::mention_names;
use time::UtcOffset;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::PgStore;
use super::codec::{
    EVENT_FIELDS, KindColumn, RoleColumn, SeqColumn, event_fields, event_row, from_events,
};
use super::events::append_change;
use super::facts::{Mentioned, no_conversation};
use super::failure::Failure;
use super::lexemes;

/// How many times one batch of appends is tried when it conflicts with a concurrent
/// transaction (a deadlock, the same client message stored for another conversation). Each
/// conflict means another transaction made progress, so a few attempts are plenty.
const APPEND_ATTEMPTS: u32 = 5;
/// Names the unique constraint on `(sender_id, client_msg_id)`.
pub(super) const CLIENT_MSG_ID_CONSTRAINT: &str = "events_sender_client_msg_id_key";

/// A conversation of the batch, locked by this transaction, as its row stands with the
/// events stored so far.
pub(super) struct Locked {
    pub(super) kind: ConversationKind,
    pub(super) last_seq: Seq,
    pub(super) members_seq: Seq,
}

/// The batch's conversations that exist, locked.
pub(super) type LockedConversations = HashMap<ConversationId, Locked>;

/// Stores `batch` (not empty), trying again while it conflicts with a concurrent
/// transaction, at most `APPEND_ATTEMPTS` times.
pub(super) async fn append_events(
    store: &PgStore,
    batch: &[NewEvent],
    lease: Option<&Lease>,
) -> Result<Vec<Appended>, BackendError> {
    let mut attempt = 1;
    loop {
        match append_once(store, batch, lease).await {
            Ok(results) => return Ok(results),
            Err(failure) if attempt < APPEND_ATTEMPTS && is_conflict(&failure) => {
                tracing::debug!(attempt, ?failure, "append conflicted, trying again");
                attempt += 1;
            }
            Err(failure) => return Err(failure.into_backend("append events")),
        }
    }
}

/// A message that attaches no files: one row, stored with the others of its run.
fn is_plain_message(new: &NewEvent) -> bool {
    matches!(&new.change, Change::Message { files, .. } if files.is_empty())
}

/// How many entries at the start of `batch` are plain messages.
fn message_run(batch: &[NewEvent]) -> usize {
    batch.iter().take_while(|new| is_plain_message(new)).count()
}

/// One attempt at the batch, in one transaction.
async fn append_once(
    store: &PgStore,
    batch: &[NewEvent],
    lease: Option<&Lease>,
) -> Result<Vec<Appended>, Failure> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    // First, so that a fenced batch holds its lease before it locks anything else.
    if let Some(lease) = lease {
        super::leases::hold(&tx, lease).await?;
    }
    // ORDER BY: rows are locked in id order, so two transactions that share conversations
    // wait for each other instead of deadlocking. Every event of a conversation takes this
    // lock, so its events (and the member and role changes among them) are applied one at
    // a time, each on the state the one before left.
    let lock = tx
        .prepare_cached(
            "SELECT id, kind, last_seq, members_seq FROM conversations
             WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
        )
        .await?;
    let mut conversation_ids: Vec<Uuid> = batch.iter().map(|e| e.conversation_id.0).collect();
    conversation_ids.sort_unstable();
    conversation_ids.dedup();
    // Sent together and run in this order: the first run's lookups run once the locks are
    // held, so they see every event committed before.
    let first_run = &batch[..message_run(batch)];
    let (locked_rows, mut first_lookup) = if first_run.is_empty() {
        (tx.query(&lock, &[&conversation_ids]).await?, None)
    } else {
        let (rows, lookup) = try_join(
            async { Ok(tx.query(&lock, &[&conversation_ids]).await?) },
            RunLookup::fetch(&tx, first_run),
        )
        .await?;
        (rows, Some(lookup))
    };
    let mut locked = LockedConversations::with_capacity(locked_rows.len());
    for row in &locked_rows {
        locked.insert(
            ConversationId(row.try_get(0)?),
            Locked {
                kind: row.try_get::<_, KindColumn>(1)?.0,
                last_seq: row.try_get::<_, SeqColumn>(2)?.0,
                members_seq: row.try_get::<_, SeqColumn>(3)?.0,
            },
        );
    }

    let mut results = Vec::with_capacity(batch.len());
    let mut start = 0;
    while start < batch.len() {
        let run = &batch[start..start + message_run(&batch[start..])];
        if run.is_empty() {
            results.push(append_change(&tx, &batch[start], &mut locked).await?);
            start += 1;
            continue;
        }
        // A later run looks up after the changes before it are stored: it sees them.
        let lookup = match first_lookup.take() {
            Some(lookup) => lookup,
            None => RunLookup::fetch(&tx, run).await?,
        };
        store_run(&tx, run, lookup, &mut locked, &mut results).await?;
        start += run.len();
    }
    tx.commit().await?;
    Ok(results)
}

/// The message a reply points at, as a reply's preview and its rules need it.
#[derive(Clone)]
struct ReplyTarget {
    is_message: bool,
    sender: UserId,
    deleted: bool,
    body: String,
}

/// What a run of messages depends on, read in one round trip: the events stored before
/// with the same (sender, client_msg_id), the senders' roles, the messages replied to and
/// the members the bodies mention.
struct RunLookup {
    duplicates: HashMap<(UserId, String), Stored>,
    roles: HashMap<(ConversationId, UserId), Role>,
    targets: HashMap<(ConversationId, Seq), ReplyTarget>,
    mentioned: Mentioned,
}

impl RunLookup {
    async fn fetch(tx: &Transaction<'_>, run: &[NewEvent]) -> Result<RunLookup, Failure> {
        let keys: Vec<(UserId, &str)> = run
            .iter()
            .map(|new| (new.sender_id, new.client_msg_id.as_str()))
            .collect();
        let members: Vec<(ConversationId, UserId)> = run
            .iter()
            .map(|new| (new.conversation_id, new.sender_id))
            .collect();
        let replies: Vec<(ConversationId, Seq)> = run
            .iter()
            .filter_map(|new| match new.change {
                Change::Message {
                    reply_to_seq: Some(seq),
                    ..
                } => Some((new.conversation_id, seq)),
                _ => None,
            })
            .collect();
        // A body with NUL is rejected before it is used, and must not fail the lookup.
        let names: Vec<(ConversationId, String)> = run
            .iter()
            .filter(|new| !has_nul(new))
            .flat_map(|new| {
                let Change::Message { body, .. } = &new.change else {
                    return Vec::new();
                };
                mention_names(body)
                    .into_iter()
                    .map(|name| (new.conversation_id, name))
                    .collect()
            })
            .collect();
        let (duplicates, roles, targets, mentioned) = try_join4(
            duplicates(tx, &keys),
            roles(tx, &members),
            reply_targets(tx, &replies),
            Mentioned::lookup(tx, &names),
        )
        .await?;
        Ok(RunLookup {
            duplicates,
            roles,
            targets,
            mentioned,
        })
    }
}

/// The events stored with these (sender, client_msg_id), as `events()` reads them now (a
/// message in its current state), each with its conversation's `members_seq`.
///
/// Asked first which of the keys are stored at all: almost never any (a resend after a
/// reconnect), and the reading of whole events, with its joins, took PostgreSQL 0.45 ms to
/// plan, for every batch (planned for its parameters: see `PgStore::connect`).
pub(super) async fn duplicates(
    tx: &Transaction<'_>,
    keys: &[(UserId, &str)],
) -> Result<HashMap<(UserId, String), Stored>, Failure> {
    // A client_msg_id with NUL would fail the whole lookup; it cannot have been stored,
    // and is rejected later.
    let (senders, client_msg_ids): (Vec<Uuid>, Vec<&str>) = keys
        .iter()
        .filter(|(_, client_msg_id)| !client_msg_id.contains('\0'))
        .map(|(sender, client_msg_id)| (sender.0, *client_msg_id))
        .unzip();
    let probe = tx
        .prepare_cached(
            "SELECT e.sender_id, e.client_msg_id FROM events e
             WHERE (e.sender_id, e.client_msg_id) IN
                 (SELECT * FROM unnest($1::uuid[], $2::text[]))",
        )
        .await?;
    let stored = tx.query(&probe, &[&senders, &client_msg_ids]).await?;
    if stored.is_empty() {
        return Ok(HashMap::new());
    }
    let mut senders: Vec<Uuid> = Vec::with_capacity(stored.len());
    let mut client_msg_ids: Vec<String> = Vec::with_capacity(stored.len());
    for row in &stored {
        senders.push(row.try_get(0)?);
        client_msg_ids.push(row.try_get(1)?);
    }
    let statement = tx
        .prepare_cached(concat!(
            "SELECT ",
            event_fields!(),
            ", (SELECT members_seq FROM conversations c WHERE c.id = e.conversation_id)",
            from_events!(),
            " WHERE (e.sender_id, e.client_msg_id) IN
                  (SELECT * FROM unnest($1::uuid[], $2::text[]))"
        ))
        .await?;
    let rows = tx.query(&statement, &[&senders, &client_msg_ids]).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let event = event_row(row)?;
        let members_seq = row.try_get::<_, SeqColumn>(EVENT_FIELDS)?.0;
        found.insert(
            (event.sender_id, event.client_msg_id.clone()),
            Stored { event, members_seq },
        );
    }
    Ok(found)
}

/// The roles of these (conversation, user) pairs that are members.
async fn roles(
    tx: &Transaction<'_>,
    members: &[(ConversationId, UserId)],
) -> Result<HashMap<(ConversationId, UserId), Role>, Failure> {
    let statement = tx
        .prepare_cached(
            "SELECT conversation_id, user_id, role FROM members
             WHERE (conversation_id, user_id) IN
                 (SELECT * FROM unnest($1::uuid[], $2::uuid[]))",
        )
        .await?;
    let (conversations, users): (Vec<Uuid>, Vec<Uuid>) = members
        .iter()
        .map(|(conversation, user)| (conversation.0, user.0))
        .unzip();
    let rows = tx.query(&statement, &[&conversations, &users]).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(
            (ConversationId(row.try_get(0)?), UserId(row.try_get(1)?)),
            row.try_get::<_, RoleColumn>(2)?.0,
        );
    }
    Ok(found)
}

/// The events at these (conversation, seq), for replies.
async fn reply_targets(
    tx: &Transaction<'_>,
    replies: &[(ConversationId, Seq)],
) -> Result<HashMap<(ConversationId, Seq), ReplyTarget>, Failure> {
    if replies.is_empty() {
        return Ok(HashMap::new());
    }
    let statement = tx
        .prepare_cached(
            "SELECT conversation_id, seq, kind, sender_id, deleted, body FROM events
             WHERE (conversation_id, seq) IN (SELECT * FROM unnest($1::uuid[], $2::int8[]))",
        )
        .await?;
    let (conversations, seqs): (Vec<Uuid>, Vec<i64>) = replies
        .iter()
        .map(|(conversation, seq)| (conversation.0, seq_param(*seq)))
        .unzip();
    let rows = tx.query(&statement, &[&conversations, &seqs]).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        found.insert(
            (
                ConversationId(row.try_get(0)?),
                row.try_get::<_, SeqColumn>(1)?.0,
            ),
            reply_target(row)?,
        );
    }
    Ok(found)
}

/// Columns 2..: `kind, sender_id, deleted, body`.
fn reply_target(row: &Row) -> Result<ReplyTarget, tokio_postgres::Error> {
    Ok(ReplyTarget {
        is_message: row.try_get::<_, &str>(2)? == "message",
        sender: UserId(row.try_get(3)?),
        deleted: row.try_get(4)?,
        body: row.try_get(5)?,
    })
}

/// Whether `new` holds text PostgreSQL cannot store (NUL); validation keeps it out, this
/// keeps one such entry from failing the whole batch.
pub(super) fn has_nul(new: &NewEvent) -> bool {
    let text = match &new.change {
        Change::Message { body, .. } | Change::Edit { body, .. } => Some(body.as_str()),
        Change::ReactionAdded { emoji, .. } | Change::ReactionRemoved { emoji, .. } => {
            Some(emoji.as_str())
        }
        Change::TitleChanged { title } => Some(title.as_str()),
        _ => None,
    };
    new.client_msg_id.contains('\0') || text.is_some_and(|text| text.contains('\0'))
}

/// Why a change with NUL in its text is rejected.
pub(super) const NUL_REJECTED: &str = "cannot store event: text must not contain NUL";

/// Answers each message of `run` and stores the new ones: one multi-row INSERT and the
/// updates they imply, sent together.
async fn store_run(
    tx: &Transaction<'_>,
    run: &[NewEvent],
    lookup: RunLookup,
    locked: &mut LockedConversations,
    results: &mut Vec<Appended>,
) -> Result<(), Failure> {
    let mut rows = NewRows::default();
    // The messages stored by this run so far: a repeat within the run finds the first one,
    // a reply to one of them finds it, as it is (nothing but messages came since).
    let mut stored_now: HashMap<(UserId, String), Stored> = HashMap::new();
    let mut targets_now: HashMap<(ConversationId, Seq), ReplyTarget> = HashMap::new();
    for new in run {
        let Change::Message {
            body,
            reply_to_seq,
            files,
        } = &new.change
        else {
            unreachable!("a run holds messages only");
        };
        assert!(files.is_empty(), "a run holds messages without files only");
        let key = (new.sender_id, new.client_msg_id.clone());
        if let Some(first) = lookup.duplicates.get(&key).or(stored_now.get(&key)) {
            results.push(Appended::Duplicate(first.clone()));
            continue;
        }
        let reply_target = reply_to_seq.and_then(|seq| {
            let at = (new.conversation_id, seq);
            targets_now.get(&at).or(lookup.targets.get(&at)).cloned()
        });
        // The facts a message's rules look at: the sender's role and the message it
        // replies to (see `facts::gather` for the counts that only member changes read).
        let facts = match locked.get(&new.conversation_id) {
            None => no_conversation(),
            Some(conversation) => Facts {
                kind: conversation.kind,
                sender_role: lookup
                    .roles
                    .get(&(new.conversation_id, new.sender_id))
                    .copied(),
                target: reply_target.as_ref().map(|target| Target {
                    is_message: target.is_message,
                    sender: target.sender,
                    deleted: target.deleted,
                    emoji_distinct: 0,
                    emoji_reacted: false,
                    sender_reacted: false,
                }),
                subject_role: None,
                subject_exists: false,
                admins: 0,
                members: 0,
                files: Vec::new(),
            },
        };
        if let Err(refused) = rules::check(new.sender_id, &new.change, &facts) {
            results.push(Appended::Refused(refused));
            continue;
        }
        let created_at_ns = match nanos(new.accepted_at) {
            Ok(created_at_ns) => created_at_ns,
            Err(out_of_range) => {
                results.push(Appended::Rejected(out_of_range.to_string()));
                continue;
            }
        };
        if has_nul(new) {
            results.push(Appended::Rejected(NUL_REJECTED.to_owned()));
            continue;
        }
        let conversation = locked
            .get_mut(&new.conversation_id)
            .expect("a sender with a role is a member of a locked conversation");
        conversation.last_seq += 1;
        let seq = conversation.last_seq;
        let mentions = lookup
            .mentioned
            .resolve(new.conversation_id, &mention_names(body));
        // What reading the row back yields: the same instant, in UTC.
        let created_at = new.accepted_at.to_offset(UtcOffset::UTC);
        let message = Message {
            reply_to: reply_to_seq
                .zip(reply_target)
                .map(|(seq, target)| ReplyPreview {
                    seq,
                    sender_id: target.sender,
                    excerpt: excerpt(&target.body),
                    deleted: target.deleted,
                }),
            mentions,
            ..Message::new(
                MessageId::new(),
                new.conversation_id,
                seq,
                new.sender_id,
                new.client_msg_id.clone(),
                body.clone(),
                created_at,
            )
        };
        rows.push(&message, *reply_to_seq, created_at_ns);
        targets_now.insert(
            (new.conversation_id, seq),
            ReplyTarget {
                is_message: true,
                sender: new.sender_id,
                deleted: false,
                body: body.clone(),
            },
        );
        let stored = Stored {
            event: Event {
                conversation_id: new.conversation_id,
                seq,
                sender_id: new.sender_id,
                client_msg_id: new.client_msg_id.clone(),
                created_at,
                data: EventData::Message { message },
            },
            members_seq: conversation.members_seq,
        };
        stored_now.insert(key, stored.clone());
        results.push(Appended::New(stored));
    }
    if rows.ids.is_empty() {
        return Ok(());
    }

    let (insert, advance, read_own) = try_join3(
        tx.prepare_cached(
            "INSERT INTO events (conversation_id, seq, id, sender_id, client_msg_id, body,
                                 created_at_ns, target_seq, mentions, search)
             SELECT conversation_id, seq, id, sender_id, client_msg_id, body, created_at_ns,
                    target_seq, mentions, search::tsvector
             FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $5::text[],
                         $6::text[], $7::int8[], $8::int8[], $9::text[], $10::text[])
                  AS rows (conversation_id, seq, id, sender_id, client_msg_id, body,
                           created_at_ns, target_seq, mentions, search)",
        ),
        // The guarded advance: every locked conversation that got messages moves, checked
        // below.
        tx.prepare_cached(
            "UPDATE conversations c
             SET last_seq = v.last_seq, last_message_seq = v.last_seq,
                 last_activity_at_ns = greatest(c.last_activity_at_ns, v.activity_ns)
             FROM unnest($1::uuid[], $2::int8[], $3::int8[]) AS v (id, last_seq, activity_ns)
             WHERE c.id = v.id",
        ),
        // Reading moves the delivered marker too: the sender's own device has it.
        tx.prepare_cached(
            "UPDATE members m
             SET last_read_seq = greatest(m.last_read_seq, v.seq),
                 last_delivered_seq = greatest(m.last_delivered_seq, v.seq)
             FROM unnest($1::uuid[], $2::uuid[], $3::int8[]) AS v (conversation_id, user_id, seq)
             WHERE m.conversation_id = v.conversation_id AND m.user_id = v.user_id",
        ),
    )
    .await?;
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
                &rows.reply_to_seqs,
                &rows.mentions,
                &rows.searches,
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
    Ok(())
}

/// The messages a run stores, as column arrays for one multi-row INSERT, and what they
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
    reply_to_seqs: Vec<Option<i64>>,
    mentions: Vec<String>,
    /// The bodies' search terms, `tsvector` text (lexemes.rs).
    searches: Vec<String>,
    /// Per conversation: the last seq and the newest `created_at_ns` of the run.
    advanced: HashMap<ConversationId, (Seq, i64)>,
    /// Per (conversation, sender): the sender's newest seq in the run.
    read_own: HashMap<(ConversationId, UserId), Seq>,
}

impl NewRows {
    fn push(&mut self, message: &Message, reply_to_seq: Option<Seq>, created_at_ns: i64) {
        self.conversation_ids.push(message.conversation_id.0);
        self.seqs.push(seq_param(message.seq));
        self.ids.push(message.id.0);
        self.sender_ids.push(message.sender_id.0);
        self.client_msg_ids.push(message.client_msg_id.clone());
        self.bodies.push(message.body.clone());
        self.created_at_ns.push(created_at_ns);
        self.reply_to_seqs.push(reply_to_seq.map(seq_param));
        self.mentions.push(mentions_text(&message.mentions));
        self.searches.push(lexemes::tsvector(&message.body));
        // Seqs only grow within a run, so the latest is the largest.
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
/// first (the new attempt finds that event and answers `Duplicate`).
pub(super) fn is_conflict(failure: &Failure) -> bool {
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
