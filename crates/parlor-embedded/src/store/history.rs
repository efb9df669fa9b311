//! Reading a conversation's history on a reader connection: [`messages_page`] (messages in
//! their current state, as a page counts them), [`events_after`] (the log) and
//! [`event_at`] (one event, as a repeated append answers it), each message with its
//! reactions from one query per page.

use std::collections::HashMap;

use parlor_core::events::{Event, EventData, Reaction};
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{HISTORY_PAGE_MAX, Page};
use parlor_core::protocol::Message;
use parlor_core::storage::{group_reactions, seq_param};
use rusqlite::{Connection, params};

use super::codec::{Id, SeqColumn, event_columns, event_row, reply_join};
use super::failure::Failure;

/// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
/// just below it; else the newest `limit`. Always ascending; other kinds of events neither
/// appear nor count.
pub(super) fn messages_page(
    tx: &Connection,
    conversation: ConversationId,
    page: Page,
) -> Result<Vec<Message>, Failure> {
    let limit = i64::from(page.limit_clamped());
    let id = Id(conversation.0);
    let events = match (page.after_seq, page.before_seq) {
        (Some(after), _) => {
            let mut statement = tx.prepare_cached(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events e ",
                reply_join!(),
                " WHERE e.conversation_id = ?1 AND e.kind = 'message' AND e.seq > ?2
                 ORDER BY e.seq ASC LIMIT ?3"
            ))?;
            statement
                .query_map(params![id, seq_param(after), limit], event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
        (None, before) => {
            // Newest first to take the `limit` just below the bound, then turned around.
            let mut statement = tx.prepare_cached(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events e ",
                reply_join!(),
                " WHERE e.conversation_id = ?1 AND e.kind = 'message' AND e.seq < ?2
                 ORDER BY e.seq DESC LIMIT ?3"
            ))?;
            let below = before.map_or(i64::MAX, seq_param);
            let mut newest_first = statement
                .query_map(params![id, below, limit], event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            newest_first.reverse();
            newest_first
        }
    };
    let mut messages: Vec<Message> = events
        .into_iter()
        .filter_map(|event| match event.data {
            EventData::Message { message } => Some(message),
            _ => None,
        })
        .collect();
    attach_reactions(tx, conversation, messages.iter_mut())?;
    super::files::attach_to_messages(
        tx,
        conversation,
        &mut messages.iter_mut().collect::<Vec<_>>(),
    )?;
    Ok(messages)
}

/// The events after `after_seq`, ascending, at most `limit` (clamped to
/// `1..=HISTORY_PAGE_MAX`); messages in their current state.
pub(super) fn events_after(
    tx: &Connection,
    conversation: ConversationId,
    after_seq: Seq,
    limit: u16,
) -> Result<Vec<Event>, Failure> {
    let limit = i64::from(limit.clamp(1, HISTORY_PAGE_MAX));
    let mut statement = tx.prepare_cached(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events e ",
        reply_join!(),
        " WHERE e.conversation_id = ?1 AND e.seq > ?2 ORDER BY e.seq ASC LIMIT ?3"
    ))?;
    let mut events = statement
        .query_map(
            params![Id(conversation.0), seq_param(after_seq), limit],
            event_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut messages: Vec<&mut Message> = events
        .iter_mut()
        .filter_map(|event| match &mut event.data {
            EventData::Message { message } => Some(message),
            _ => None,
        })
        .collect();
    attach_reactions(
        tx,
        conversation,
        messages.iter_mut().map(|message| &mut **message),
    )?;
    super::files::attach_to_messages(tx, conversation, &mut messages)?;
    Ok(events)
}

/// The event at `seq`, as [`events_after`] reads it.
pub(super) fn event_at(
    tx: &Connection,
    conversation: ConversationId,
    seq: Seq,
) -> Result<Option<Event>, Failure> {
    let mut events = events_after(tx, conversation, seq.saturating_sub(1), 1)?;
    Ok(events.pop().filter(|event| event.seq == seq))
}

/// Fills the reactions of `messages` (ascending, of one conversation) in one query over the
/// seqs they span: only messages hold reactions, so every row in that range is theirs.
fn attach_reactions<'a>(
    tx: &Connection,
    conversation: ConversationId,
    messages: impl Iterator<Item = &'a mut Message>,
) -> Result<(), Failure> {
    let mut messages: Vec<&mut Message> = messages.collect();
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
        return Ok(());
    };
    let (low, high) = (seq_param(first.seq), seq_param(last.seq));
    // In the order they were made; the rowid orders reactions of the same nanosecond.
    let mut statement = tx.prepare_cached(
        "SELECT seq, emoji, user_id FROM reactions
         WHERE conversation_id = ?1 AND seq BETWEEN ?2 AND ?3
         ORDER BY seq, created_at_ns, rowid",
    )?;
    let mut rows_by_seq: HashMap<Seq, Vec<(String, UserId)>> = HashMap::new();
    let rows = statement.query_map(params![Id(conversation.0), low, high], |row| {
        Ok((
            row.get::<_, SeqColumn>(0)?.0,
            row.get::<_, String>(1)?,
            UserId(row.get::<_, Id>(2)?.0),
        ))
    })?;
    for row in rows {
        let (seq, emoji, user) = row?;
        rows_by_seq.entry(seq).or_default().push((emoji, user));
    }
    for message in &mut messages {
        let reactions: Vec<Reaction> = rows_by_seq
            .remove(&message.seq)
            .map(group_reactions)
            .unwrap_or_default();
        message.reactions = reactions;
    }
    Ok(())
}
