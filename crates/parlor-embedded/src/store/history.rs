//! [`messages_page`]: a page of one conversation's history, read on a reader connection.

use parlor_core::ids::ConversationId;
use parlor_core::ports::Page;
use parlor_core::protocol::Message;
use parlor_core::storage::seq_param;
use rusqlite::{Connection, params};

use super::codec::{Id, message_row};
use super::failure::Failure;

/// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
/// just below it; else the newest `limit`. Always ascending.
pub(super) fn messages_page(
    tx: &Connection,
    conversation: ConversationId,
    page: Page,
) -> Result<Vec<Message>, Failure> {
    let limit = i64::from(page.limit_clamped());
    let conversation = Id(conversation.0);
    let messages = match (page.after_seq, page.before_seq) {
        (Some(after), _) => {
            let mut statement = tx.prepare_cached(
                "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
                 FROM messages WHERE conversation_id = ?1 AND seq > ?2
                 ORDER BY seq ASC LIMIT ?3",
            )?;
            statement
                .query_map(params![conversation, seq_param(after), limit], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?
        }
        (None, before) => {
            // Newest first to take the `limit` just below the bound, then turned around.
            let mut statement = tx.prepare_cached(
                "SELECT id, conversation_id, seq, sender_id, client_msg_id, body, created_at_ns
                 FROM messages WHERE conversation_id = ?1 AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let below = before.map_or(i64::MAX, seq_param);
            let mut newest_first = statement
                .query_map(params![conversation, below, limit], message_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            newest_first.reverse();
            newest_first
        }
    };
    Ok(messages)
}
