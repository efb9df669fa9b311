//! [`append_events`]: a batch, split by conversation (the conversations run concurrently;
//! they are independent), each conversation's part stored in order by transactions of at
//! most 100 items.
//!
//! Per conversation: read what the entries need ([`State`], strongly consistent), judge
//! each entry by the rules on the state the ones before it left, apply it, and commit the
//! whole as one transaction guarded by the conversation's `last_seq`; when the next entry
//! would not fit, commit what is pending and go on from there. A cancelled transaction
//! (another persister appended, or stored one of these requests first) is thrown away:
//! read again, judge again, retry, with a jittered backoff.
//!
//! Cost, for a batch of `k` plain messages from one sender to one conversation (items of
//! 1 KB or less; a transaction costs twice a plain write): reads, all strongly consistent,
//! of the conversation, the sender's member item and the `k` request items, about `k + 2`
//! read units in 2 round trips; writes of `k` events, `k` requests, the conversation and
//! the sender's markers in one transaction, `4k + 4` write units in 1 round trip. A
//! cancelled transaction costs its reads and its writes again.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::{BoxFuture, try_join_all};
use parlor_core::error::BackendError;
use parlor_core::events::{Change, EventData, Role};
use parlor_core::files::FILES_PER_MESSAGE_MAX;
use parlor_core::ids::{ConversationId, MessageId, Seq};
use parlor_core::ports::{Appended, NewEvent, Stored};
use parlor_core::protocol::User;
use parlor_core::rules::{self, promotes_on_departure};
use parlor_core::storage::nanos;
use parlor_core::validate::mention_names;

use super::DynamoStore;
use super::calls::{TRANSACT_ITEMS_MAX, Transacted};
use super::codec::{
    Content, EventDoc, ITEM_BYTES_MAX, MemberDoc, MessageState, item_bytes, request_key,
};
use super::facts::{departing, facts, needs, successor};
use super::history::{event_of, preview, stored_now};
use super::state::State;

/// Cancelled transactions one part of a batch may meet in a row before the append gives
/// up with `Unavailable` (the persister retries the batch later).
const CONFLICT_ROUNDS_MAX: u32 = 64;
/// The longest backoff after a cancelled transaction.
const CONFLICT_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Entries whose reads are made together, ahead of judging them.
const PREFETCH_ENTRIES: usize = 100;

/// An entry's answer, or where the event it repeats is (to be read as it is now).
enum Answer {
    Now(Box<Appended>),
    StoredAt(ConversationId, Seq),
}

fn now(appended: Appended) -> Answer {
    Answer::Now(Box::new(appended))
}

/// Answers every entry of `batch`, in input order. A repeat whose (sender, client_msg_id)
/// came first in another conversation of the batch waits for that one: the same event
/// back, or, if that one was not stored, a judgement of its own afterwards (so it may take
/// a seq after entries that came later in the batch).
pub(super) fn append_events<'a>(
    store: &'a DynamoStore,
    batch: &'a [NewEvent],
) -> BoxFuture<'a, Result<Vec<Appended>, BackendError>> {
    Box::pin(async move {
        let key = |new: &NewEvent| request_key(new.sender_id, &new.client_msg_id);
        let mut first_of: HashMap<String, usize> = HashMap::new();
        let mut parts: Vec<(ConversationId, Vec<usize>)> = Vec::new();
        let mut deferred = Vec::new();
        for (index, new) in batch.iter().enumerate() {
            match first_of.get(&key(new)) {
                Some(&first) if batch[first].conversation_id != new.conversation_id => {
                    deferred.push(index);
                    continue;
                }
                Some(_) => {}
                None => {
                    first_of.insert(key(new), index);
                }
            }
            match parts.iter_mut().find(|(id, _)| *id == new.conversation_id) {
                Some((_, indexes)) => indexes.push(index),
                None => parts.push((new.conversation_id, vec![index])),
            }
        }
        let answered = try_join_all(
            parts
                .iter()
                .map(|(conversation, indexes)| append_to(store, *conversation, batch, indexes)),
        )
        .await?;
        let mut answers: Vec<Option<Appended>> = vec![None; batch.len()];
        for (index, answer) in answered.into_iter().flatten() {
            answers[index] = Some(match answer {
                Answer::Now(appended) => *appended,
                Answer::StoredAt(conversation, seq) => {
                    let stored = stored_now(store, conversation, seq).await?.ok_or_else(|| {
                        BackendError::unavailable(format!(
                            "request stored at {conversation}#{seq}, which is not there"
                        ))
                    })?;
                    Appended::Duplicate(stored)
                }
            });
        }
        let mut again = Vec::new();
        for index in deferred {
            match &answers[first_of[&key(&batch[index])]] {
                Some(Appended::New(stored) | Appended::Duplicate(stored)) => {
                    answers[index] = Some(Appended::Duplicate(stored.clone()));
                }
                _ => again.push(index),
            }
        }
        if !again.is_empty() {
            let entries: Vec<NewEvent> = again.iter().map(|&index| batch[index].clone()).collect();
            let answered = append_events(store, &entries).await?;
            for (index, answer) in again.into_iter().zip(answered) {
                answers[index] = Some(answer);
            }
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.expect("every entry is answered"))
            .collect())
    })
}

/// Stores the entries of `batch` at `indexes` (all of `conversation`), in order.
async fn append_to(
    store: &DynamoStore,
    conversation: ConversationId,
    batch: &[NewEvent],
    indexes: &[usize],
) -> Result<Vec<(usize, Answer)>, BackendError> {
    let mut answered = Vec::with_capacity(indexes.len());
    // What this call stored, by request key: a repeat gets it back as it was stored.
    let mut stored: HashMap<String, Stored> = HashMap::new();
    let mut state = State::read(store, conversation).await?;
    let mut next = 0;
    let mut conflicts = 0;
    while next < indexes.len() {
        prefetch(store, &mut state, batch, &indexes[next..]).await?;
        let mut chunk = Vec::new();
        let mut chunk_stored = HashMap::new();
        let mut at = next;
        while at < indexes.len() {
            let new = &batch[indexes[at]];
            state.load_needs(store, new).await?;
            let pending = state.pending_items();
            if pending > 0 && pending + items_bound(&state, new) > TRANSACT_ITEMS_MAX {
                break;
            }
            chunk.push((
                indexes[at],
                apply(&mut state, new, &stored, &mut chunk_stored),
            ));
            at += 1;
        }
        if state.pending_items() > 0
            && let Transacted::Cancelled(reasons) = state.commit(store).await?
        {
            conflicts += 1;
            if conflicts >= CONFLICT_ROUNDS_MAX {
                return Err(BackendError::unavailable(format!(
                    "conversation {conversation}: {conflicts} transactions in a row \
                         cancelled by concurrent writes (last: {reasons:?})"
                )));
            }
            tracing::debug!(%conversation, ?reasons, conflicts, "append cancelled, retrying");
            tokio::time::sleep(backoff(conflicts)).await;
            state = State::read(store, conversation).await?;
            continue;
        }
        conflicts = 0;
        answered.extend(chunk);
        stored.extend(chunk_stored);
        next = at;
    }
    Ok(answered)
}

/// A random wait below an exponential bound: persisters that clashed do not clash again.
fn backoff(conflicts: u32) -> Duration {
    let bound = Duration::from_millis(2 << conflicts.min(10)).min(CONFLICT_BACKOFF_MAX);
    // The low bits of a v7 UUID are random.
    let random = uuid::Uuid::now_v7().as_u128() as u64;
    Duration::from_micros(random % (bound.as_micros() as u64).max(1))
}

/// Reads what the next entries need, together (one batch get per table).
async fn prefetch(
    store: &DynamoStore,
    state: &mut State,
    batch: &[NewEvent],
    indexes: &[usize],
) -> Result<(), BackendError> {
    let mut wanted = Vec::new();
    for &index in indexes.iter().take(PREFETCH_ENTRIES) {
        for need in needs(state, &batch[index]) {
            if !wanted.contains(&need) {
                wanted.push(need);
            }
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    state.load(store, wanted).await
}

/// The most transaction items `new` can add (the conversation item aside).
fn items_bound(state: &State, new: &NewEvent) -> usize {
    match &new.change {
        Change::TitleChanged { .. } => 2,
        Change::MemberRemoved { .. } | Change::MemberLeft {} => 4,
        // One update per file it attaches (≤ 10).
        Change::Message { files, .. } => 3 + files.len(),
        Change::Delete { target_seq } => {
            let message = state.event(*target_seq).and_then(EventDoc::message);
            3 + message.map_or(0, |message| message.edit_seqs.len())
                + message.map_or(0, |message| removal_items(message.files.len()))
        }
        _ => 3,
    }
}

/// The most items removing `files` files of one message takes: a delete of each, an
/// update of each of their blobs (≤ 2 a file), one of the owner's bytes.
fn removal_items(files: usize) -> usize {
    if files == 0 { 0 } else { 3 * files + 1 }
}

/// The members `body` mentions (by `@name`, ignoring case), in order, once each.
fn mentions(state: &State, body: &str) -> Vec<parlor_core::ids::UserId> {
    mention_names(body)
        .iter()
        .filter_map(|name| state.names.get(name).copied().flatten())
        .filter(|user| state.member(*user).is_some())
        .collect()
}

/// Answers `new` and, if it is stored, applies it to `state`.
fn apply(
    state: &mut State,
    new: &NewEvent,
    stored: &HashMap<String, Stored>,
    chunk_stored: &mut HashMap<String, Stored>,
) -> Answer {
    let key = request_key(new.sender_id, &new.client_msg_id);
    if let Some(first) = chunk_stored.get(&key).or_else(|| stored.get(&key)) {
        return now(Appended::Duplicate(first.clone()));
    }
    if let Some((conversation, seq)) = state.requests.get(&key).and_then(|slot| slot.committed) {
        return Answer::StoredAt(conversation, seq);
    }
    let facts = facts(state, new);
    if let Err(refused) = rules::check(new.sender_id, &new.change, &facts) {
        return now(Appended::Refused(refused));
    }
    let Some(conversation) = &state.conversation else {
        // The rules let nobody change a conversation that does not exist.
        return now(Appended::Rejected(format!(
            "conversation {} does not exist",
            new.conversation_id
        )));
    };
    let created_at_ns = match nanos(new.accepted_at) {
        Ok(created_at_ns) => created_at_ns,
        Err(out_of_range) => return now(Appended::Rejected(out_of_range.to_string())),
    };
    if let Some(reason) = outgrows_its_item(state, new).or_else(|| unattachable(new)) {
        return now(Appended::Rejected(reason));
    }
    let seq = conversation.last_seq + 1;
    let members_seq = if new.change.changes_members() {
        seq
    } else {
        conversation.members_seq
    };
    let used = state.pending_items().max(1);
    // A delete's file removals come first; the edits it erases take what is left.
    let removals = match &new.change {
        Change::Delete { target_seq } => state
            .event(*target_seq)
            .and_then(EventDoc::message)
            .map_or(0, |message| removal_items(message.files.len())),
        _ => 0,
    };
    let edits_budget = TRANSACT_ITEMS_MAX.saturating_sub(used + 3 + removals);
    let (content, previews) = apply_change(state, new, seq, created_at_ns, edits_budget);
    let doc = EventDoc {
        conversation_id: state.conversation_id,
        seq,
        id: MessageId::new(),
        sender: new.sender_id,
        client_msg_id: new.client_msg_id.clone(),
        created_at_ns,
        content,
    };
    let event = event_of(&doc, &previews);
    state.insert_event(doc);
    let conversation = state
        .conversation
        .as_mut()
        .expect("checked above that it exists");
    conversation.last_seq = seq;
    conversation.members_seq = members_seq;
    if let Some(slot) = state.requests.get_mut(&key) {
        slot.pending = Some(seq);
    }
    let stored = Stored { event, members_seq };
    chunk_stored.insert(key, stored.clone());
    now(Appended::New(stored))
}

/// Why `new` can never be stored, if it would grow the message it changes past what an
/// item holds (400 KB): a reaction on a message that holds thousands, or an edit of one
/// edited tens of thousands of times. Bodies are bounded by validation, far below.
fn outgrows_its_item(state: &State, new: &NewEvent) -> Option<String> {
    // What the change adds to the message item, at most.
    let (target, growth) = match &new.change {
        Change::ReactionAdded { target_seq, emoji } => (*target_seq, emoji.len() + 64),
        Change::Edit { target_seq, body } => (*target_seq, body.len() + 32),
        _ => return None,
    };
    let doc = state.event(target)?;
    let bytes = item_bytes(&doc.to_item()) + growth;
    (bytes > ITEM_BYTES_MAX).then(|| {
        format!(
            "message {target} holds as much as one DynamoDB item can ({bytes} bytes with this {})",
            new.change.kind()
        )
    })
}

/// Why the files of `new` can never be attached, if they cannot: more than a message
/// carries (validation keeps them below; the transaction's 100 items are counted on it), or
/// one of them twice.
fn unattachable(new: &NewEvent) -> Option<String> {
    let Change::Message { files, .. } = &new.change else {
        return None;
    };
    if files.len() > FILES_PER_MESSAGE_MAX {
        return Some(format!(
            "{} files in one message, more than {FILES_PER_MESSAGE_MAX}",
            files.len()
        ));
    }
    files
        .iter()
        .enumerate()
        .find(|(index, id)| files[..*index].contains(id))
        .map(|(_, id)| format!("file {id} is attached twice to one message"))
}

/// Applies an allowed change, stored at `seq`, to the conversation's members and messages;
/// what its event item holds, and the preview of the message it replies to.
fn apply_change(
    state: &mut State,
    new: &NewEvent,
    seq: Seq,
    created_at_ns: i64,
    edits_budget: usize,
) -> (Content, HashMap<Seq, parlor_core::events::ReplyPreview>) {
    let mut previews = HashMap::new();
    let sender = new.sender_id;
    let conversation_id = state.conversation_id;
    let content = match &new.change {
        Change::Message {
            body,
            reply_to_seq,
            files,
        } => {
            let mentions = mentions(state, body);
            // Each the sender's and unattached (the rules said so): attached here, in
            // this transaction, its infos on the message item.
            let files = files
                .iter()
                .enumerate()
                .filter_map(|(position, id)| state.attach_file(*id, seq, position as u32))
                .collect();
            if let Some(found) = reply_to_seq
                .and_then(|target| state.event(target))
                .and_then(preview)
            {
                previews.insert(found.seq, found);
            }
            // The sender's own device has it: their markers move to it.
            let slot = state.member_slot(sender);
            slot.read_to = Some(seq);
            if let Some(member) = &mut slot.current {
                member.last_read_seq = seq;
                member.last_delivered_seq = seq;
            }
            let conversation = state.conversation.as_mut().expect("exists");
            conversation.last_message_seq = seq;
            conversation.last_activity_ns = conversation.last_activity_ns.max(created_at_ns);
            Content::Message(MessageState {
                body: body.clone(),
                reply_to_seq: *reply_to_seq,
                mentions,
                edited_at_ns: None,
                deleted: false,
                reactions: Vec::new(),
                edit_seqs: Vec::new(),
                files,
            })
        }
        Change::Edit { target_seq, body } => {
            let mentions = mentions(state, body);
            if let Some(message) = state.event_mut(*target_seq).and_then(EventDoc::message_mut) {
                message.body = body.clone();
                message.mentions = mentions.clone();
                message.edited_at_ns = Some(created_at_ns);
                message.edit_seqs.push(seq);
            }
            Content::Other(EventData::Edit {
                target_seq: *target_seq,
                body: body.clone(),
                mentions,
            })
        }
        Change::Delete { target_seq } => {
            let mut edits = Vec::new();
            let mut files = Vec::new();
            if let Some(message) = state.event_mut(*target_seq).and_then(EventDoc::message_mut) {
                message.body.clear();
                message.mentions.clear();
                message.reactions.clear();
                message.deleted = true;
                edits = message.edit_seqs.clone();
                files = std::mem::take(&mut message.files);
            }
            // Its files go with it, in this transaction: their items, one user less of
            // each blob, their bytes off the owner's total.
            for file in files {
                state.remove_file(file.id, created_at_ns);
            }
            // The store forgets what the message said, in every version.
            for (index, edit) in edits.into_iter().enumerate() {
                if index >= edits_budget {
                    state.erase_after_commit.push(edit);
                    continue;
                }
                if let Some(doc) = state.event_mut(edit)
                    && let Content::Other(EventData::Edit { body, mentions, .. }) = &mut doc.content
                {
                    body.clear();
                    mentions.clear();
                }
            }
            Content::Other(EventData::Delete {
                target_seq: *target_seq,
            })
        }
        Change::ReactionAdded { target_seq, emoji } => {
            if let Some(message) = state.event_mut(*target_seq).and_then(EventDoc::message_mut) {
                message.reactions.push((emoji.clone(), sender));
            }
            Content::Other(EventData::ReactionAdded {
                target_seq: *target_seq,
                emoji: emoji.clone(),
            })
        }
        Change::ReactionRemoved { target_seq, emoji } => {
            if let Some(message) = state.event_mut(*target_seq).and_then(EventDoc::message_mut) {
                message
                    .reactions
                    .retain(|(each, user)| !(each == emoji && *user == sender));
            }
            Content::Other(EventData::ReactionRemoved {
                target_seq: *target_seq,
                emoji: emoji.clone(),
            })
        }
        Change::MemberAdded { user_id } => {
            let user = User {
                id: *user_id,
                username: state
                    .users
                    .get(user_id)
                    .cloned()
                    .flatten()
                    .unwrap_or_default(),
            };
            let slot = state.member_slot(*user_id);
            slot.replaced = slot.replaced || slot.is_stored();
            slot.read_to = None;
            // History before joining counts as read (and delivered).
            slot.current = Some(MemberDoc {
                conversation_id,
                user: user.clone(),
                role: Role::Member,
                joined_at_ns: created_at_ns,
                joined_seq: seq,
                last_read_seq: seq,
                last_delivered_seq: seq,
                muted: false,
            });
            let conversation = state.conversation.as_mut().expect("exists");
            conversation.member_count += 1;
            // The chat list shows a conversation one is added to as its newest activity.
            conversation.last_activity_ns = conversation.last_activity_ns.max(created_at_ns);
            Content::Other(EventData::MemberAdded {
                user,
                role: Role::Member,
            })
        }
        Change::MemberRemoved { .. } | Change::MemberLeft {} => {
            let gone = departing(sender, &new.change).expect("a departure");
            let role = state.member(gone).map(|member| member.role);
            let (admins, members) = state.conversation.as_ref().map_or((0, 0), |c| {
                (c.admin_count as usize, c.member_count as usize)
            });
            let promoted = promotes_on_departure(role, admins, members)
                .then(|| successor(state, gone))
                .flatten();
            let slot = state.member_slot(gone);
            slot.current = None;
            slot.read_to = None;
            let conversation = state.conversation.as_mut().expect("exists");
            conversation.member_count = conversation.member_count.saturating_sub(1);
            if role == Some(Role::Admin) {
                conversation.admin_count = conversation.admin_count.saturating_sub(1);
            }
            if let Some(promoted) = promoted {
                conversation.admin_count += 1;
                if let Some(member) = &mut state.member_slot(promoted).current {
                    member.role = Role::Admin;
                }
            }
            match new.change {
                Change::MemberLeft {} => Content::Other(EventData::MemberLeft {
                    user_id: gone,
                    promoted_user_id: promoted,
                }),
                _ => Content::Other(EventData::MemberRemoved {
                    user_id: gone,
                    promoted_user_id: promoted,
                }),
            }
        }
        Change::TitleChanged { title } => {
            state.conversation.as_mut().expect("exists").title = Some(title.clone());
            Content::Other(EventData::TitleChanged {
                title: title.clone(),
            })
        }
        Change::RoleChanged { user_id, role } => {
            let mut before = None;
            if let Some(member) = &mut state.member_slot(*user_id).current {
                before = Some(member.role);
                member.role = *role;
            }
            let conversation = state.conversation.as_mut().expect("exists");
            match (before, role) {
                (Some(Role::Member), Role::Admin) => conversation.admin_count += 1,
                (Some(Role::Admin), Role::Member) => {
                    conversation.admin_count = conversation.admin_count.saturating_sub(1)
                }
                _ => {}
            }
            Content::Other(EventData::RoleChanged {
                user_id: *user_id,
                role: *role,
            })
        }
    };
    (content, previews)
}
