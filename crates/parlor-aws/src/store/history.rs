//! Reading a conversation's log: [`messages`], a page of its messages in their current
//! state, and [`events`], its events after a seq; both one Query of `events` (strongly
//! consistent: a client catching up after a notification must find the event), plus one
//! batch get of the messages replied to outside the page, for their previews as they are
//! now. And how an event item becomes an [`Event`] or a [`Message`].

use std::collections::HashMap;

use parlor_core::error::BackendError;
use parlor_core::events::{Event, EventData, ReplyPreview, excerpt};
use parlor_core::ids::{ConversationId, Seq};
use parlor_core::ports::{HISTORY_PAGE_MAX, Page, Stored};
use parlor_core::protocol::Message;
use parlor_core::storage::group_reactions;

use super::DynamoStore;
use super::calls::{self, Query};
use super::codec::{Content, EventDoc, Item, item, n, s, time_of_nanos};

/// The preview a reply shows of `target`, if it is a message.
pub(super) fn preview(target: &EventDoc) -> Option<ReplyPreview> {
    let state = target.message()?;
    Some(ReplyPreview {
        seq: target.seq,
        sender_id: target.sender,
        excerpt: excerpt(&state.body),
        deleted: state.deleted,
    })
}

/// The message of a message item, with the preview of what it replies to.
pub(super) fn message_of(doc: &EventDoc, reply_to: Option<ReplyPreview>) -> Option<Message> {
    let state = doc.message()?;
    Some(Message {
        id: doc.id,
        conversation_id: doc.conversation_id,
        seq: doc.seq,
        sender_id: doc.sender,
        client_msg_id: doc.client_msg_id.clone(),
        body: state.body.clone(),
        created_at: time_of_nanos(doc.created_at_ns),
        reply_to,
        mentions: state.mentions.clone(),
        reactions: group_reactions(state.reactions.iter().cloned()),
        edited_at: state.edited_at_ns.map(time_of_nanos),
        deleted: state.deleted,
        files: state.files.clone(),
    })
}

/// The event of an item; a message's reply preview from `previews` (by the replied seq).
pub(super) fn event_of(doc: &EventDoc, previews: &HashMap<Seq, ReplyPreview>) -> Event {
    let data = match &doc.content {
        Content::Message(state) => EventData::Message {
            message: message_of(
                doc,
                state
                    .reply_to_seq
                    .and_then(|seq| previews.get(&seq).cloned()),
            )
            .expect("a message item"),
        },
        Content::Other(data) => data.clone(),
    };
    Event {
        conversation_id: doc.conversation_id,
        seq: doc.seq,
        sender_id: doc.sender,
        client_msg_id: doc.client_msg_id.clone(),
        created_at: time_of_nanos(doc.created_at_ns),
        data,
    }
}

fn docs_of(store: &DynamoStore, items: &[Item]) -> Result<Vec<EventDoc>, BackendError> {
    items
        .iter()
        .map(|found| EventDoc::from_item(&store.tables.events, found))
        .collect()
}

/// The event items at `seqs` of `conversation` that exist, by seq.
pub(super) async fn event_docs(
    store: &DynamoStore,
    conversation: ConversationId,
    seqs: impl IntoIterator<Item = Seq>,
) -> Result<HashMap<Seq, EventDoc>, BackendError> {
    let keys: Vec<Item> = seqs
        .into_iter()
        .map(|seq| {
            item([
                ("conversation_id", s(conversation.to_string())),
                ("seq", n(seq)),
            ])
        })
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let found = calls::batch_get(&store.client, &store.tables.events, keys).await?;
    Ok(docs_of(store, &found)?
        .into_iter()
        .map(|doc| (doc.seq, doc))
        .collect())
}

/// The previews of the messages `docs` reply to: from `docs` where they are, else read.
pub(super) async fn previews(
    store: &DynamoStore,
    conversation: ConversationId,
    docs: &[EventDoc],
) -> Result<HashMap<Seq, ReplyPreview>, BackendError> {
    let by_seq: HashMap<Seq, &EventDoc> = docs.iter().map(|doc| (doc.seq, doc)).collect();
    let mut found = HashMap::new();
    let mut missing = Vec::new();
    for state in docs.iter().filter_map(EventDoc::message) {
        let Some(target) = state.reply_to_seq else {
            continue;
        };
        match by_seq.get(&target) {
            Some(doc) => {
                if let Some(preview) = preview(doc) {
                    found.insert(target, preview);
                }
            }
            None if !missing.contains(&target) => missing.push(target),
            None => {}
        }
    }
    for doc in event_docs(store, conversation, missing).await?.values() {
        if let Some(preview) = preview(doc) {
            found.insert(doc.seq, preview);
        }
    }
    Ok(found)
}

/// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
/// just below it; else the newest `limit`. Always ascending; other events are skipped and
/// not counted (the filter runs after the read: they cost read units all the same).
pub(super) async fn messages(
    store: &DynamoStore,
    conversation: ConversationId,
    page: Page,
) -> Result<Vec<Message>, BackendError> {
    let limit = usize::from(page.limit_clamped());
    let (key_condition, bound, forward) = match (page.after_seq, page.before_seq) {
        (Some(after), _) => ("conversation_id = :c AND seq > :bound", after, true),
        (None, Some(before)) => ("conversation_id = :c AND seq < :bound", before, false),
        (None, None) => ("conversation_id = :c AND seq < :bound", Seq::MAX, false),
    };
    let query = Query {
        table: &store.tables.events,
        index: None,
        key_condition,
        filter: Some("#kind = :message"),
        projection: None,
        names: &[("#kind", "kind")],
        values: vec![
            (":c", s(conversation.to_string())),
            (":bound", n(bound)),
            (":message", s("message")),
        ],
        forward,
        page_items: Some(i32::from(page.limit_clamped())),
    };
    let items = query
        .run(&store.client, |items| items.len() >= limit)
        .await?;
    let mut docs = docs_of(store, &items)?;
    docs.truncate(limit);
    if !forward {
        docs.reverse();
    }
    let previews = previews(store, conversation, &docs).await?;
    Ok(docs
        .iter()
        .filter_map(|doc| {
            let reply_to = doc
                .message()
                .and_then(|state| state.reply_to_seq)
                .and_then(|seq| previews.get(&seq).cloned());
            message_of(doc, reply_to)
        })
        .collect())
}

/// Every kind of event after `after_seq`, ascending, at most `limit` (clamped to
/// `1..=HISTORY_PAGE_MAX`); messages in their current state.
pub(super) async fn events(
    store: &DynamoStore,
    conversation: ConversationId,
    after_seq: Seq,
    limit: u16,
) -> Result<Vec<Event>, BackendError> {
    let limit = limit.clamp(1, HISTORY_PAGE_MAX);
    let query = Query {
        table: &store.tables.events,
        index: None,
        key_condition: "conversation_id = :c AND seq > :after",
        filter: None,
        projection: None,
        names: &[],
        values: vec![
            (":c", s(conversation.to_string())),
            (":after", n(after_seq)),
        ],
        forward: true,
        page_items: Some(i32::from(limit)),
    };
    let wanted = usize::from(limit);
    let items = query
        .run(&store.client, |items| items.len() >= wanted)
        .await?;
    let mut docs = docs_of(store, &items)?;
    docs.truncate(wanted);
    let previews = previews(store, conversation, &docs).await?;
    Ok(docs.iter().map(|doc| event_of(doc, &previews)).collect())
}

/// The event at `seq` as it is now, with its conversation's `members_seq` of now: the
/// answer to a repeat of the change that stored it. `None` if it is not there.
pub(super) async fn stored_now(
    store: &DynamoStore,
    conversation: ConversationId,
    seq: Seq,
) -> Result<Option<Stored>, BackendError> {
    let (docs, found) = futures::future::try_join(
        event_docs(store, conversation, [seq]),
        calls::get(
            &store.client,
            &store.tables.conversations,
            item([("id", s(conversation.to_string()))]),
        ),
    )
    .await?;
    let (Some(doc), Some(found)) = (docs.get(&seq), found) else {
        return Ok(None);
    };
    let members_seq =
        super::codec::ConversationDoc::from_item(&store.tables.conversations, &found)?.members_seq;
    let previews = previews(store, conversation, std::slice::from_ref(doc)).await?;
    Ok(Some(Stored {
        event: event_of(doc, &previews),
        members_seq,
    }))
}
