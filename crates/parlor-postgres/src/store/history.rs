//! [`messages`]: a page of one conversation's history.

use parlor_core::ids::ConversationId;
use parlor_core::ports::Page;
use parlor_core::protocol::Message;
use parlor_core::storage::seq_param;

use super::PgStore;
use super::codec::message_row;
use super::failure::Failure;

/// `after_seq` → the `limit` messages after it; else `before_seq` → the `limit` messages
/// just below it; else the newest `limit`. Always ascending.
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
                .prepare_cached(
                    "SELECT id, conversation_id, seq, sender_id, client_msg_id, body,
                            created_at_ns
                     FROM messages WHERE conversation_id = $1 AND seq > $2
                     ORDER BY seq ASC LIMIT $3",
                )
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
                .prepare_cached(
                    "SELECT id, conversation_id, seq, sender_id, client_msg_id, body,
                            created_at_ns
                     FROM messages WHERE conversation_id = $1 AND seq < $2
                     ORDER BY seq DESC LIMIT $3",
                )
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
