//! Reading a conversation's log: [`messages`], a page of its messages in their current
//! state, and [`events`], its events after a seq. Each is one statement (see
//! [`event_fields`](super::codec::event_fields)), so a page is one snapshot.

use parlor_core::events::Event;
use parlor_core::ids::{ConversationId, Seq};
use parlor_core::ports::{HISTORY_PAGE_MAX, Page};
use parlor_core::protocol::Message;
use parlor_core::storage::seq_param;

use super::PgStore;
use super::codec::{event_fields, event_row, from_events, message_row};
use super::failure::Failure;

/// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
/// just below it; else the newest `limit`. Always ascending; other events are skipped and
/// not counted.
pub(super) async fn messages(
    store: &PgStore,
    conversation: ConversationId,
    page: Page,
) -> Result<Vec<Message>, Failure> {
    let limit = i64::from(page.limit_clamped());
    let client = store.client().await?;
    let messages = match (page.after_seq, page.before_seq) {
        (Some(after), _) => {
            let statement = client
                .prepare_cached(concat!(
                    "SELECT ",
                    event_fields!(),
                    from_events!(),
                    " WHERE e.conversation_id = $1 AND e.seq > $2 AND e.kind = 'message'
                      ORDER BY e.seq ASC LIMIT $3"
                ))
                .await?;
            let rows = client
                .query(&statement, &[&conversation.0, &seq_param(after), &limit])
                .await?;
            rows.iter()
                .map(message_row)
                .collect::<Result<Vec<_>, _>>()?
        }
        (None, before) => {
            // Newest first to take the `limit` just below the bound, then turned
            // around.
            let statement = client
                .prepare_cached(concat!(
                    "SELECT ",
                    event_fields!(),
                    from_events!(),
                    " WHERE e.conversation_id = $1 AND e.seq < $2 AND e.kind = 'message'
                      ORDER BY e.seq DESC LIMIT $3"
                ))
                .await?;
            let below = before.map_or(i64::MAX, seq_param);
            let rows = client
                .query(&statement, &[&conversation.0, &below, &limit])
                .await?;
            let mut newest_first = rows
                .iter()
                .map(message_row)
                .collect::<Result<Vec<_>, _>>()?;
            newest_first.reverse();
            newest_first
        }
    };
    Ok(messages)
}

/// Every kind of event after `after_seq`, ascending, at most `limit` (clamped to
/// `1..=HISTORY_PAGE_MAX`); messages in their current state.
pub(super) async fn events(
    store: &PgStore,
    conversation: ConversationId,
    after_seq: Seq,
    limit: u16,
) -> Result<Vec<Event>, Failure> {
    let limit = i64::from(limit.clamp(1, HISTORY_PAGE_MAX));
    let client = store.client().await?;
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            event_fields!(),
            from_events!(),
            " WHERE e.conversation_id = $1 AND e.seq > $2 ORDER BY e.seq ASC LIMIT $3"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[&conversation.0, &seq_param(after_seq), &limit],
        )
        .await?;
    rows.iter().map(event_row).collect()
}
