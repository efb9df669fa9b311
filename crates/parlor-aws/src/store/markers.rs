//! Read and delivered markers, and muting: updates of one member item, outside any
//! append's transaction. A marker moves by a conditional update on the value it was read
//! at (so two devices marking at once never move it backwards; the loser reads again),
//! clamped to the conversation's last seq.

use parlor_core::error::BackendError;
use parlor_core::ids::{ConversationId, Seq, UserId};

use super::DynamoStore;
use super::codec::{bool_value, n};
use super::conversations::{conversation, member, member_key};
use super::error::sdk;

/// Rounds of read-and-update before a marker gives up on a member item that keeps moving.
const MARKER_ROUNDS_MAX: u32 = 20;

/// Which marker moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Marker {
    /// The read marker, and the delivered marker with it (reading delivers).
    Read,
    Delivered,
}

/// Moves `user`'s marker forward to `seq` (clamped to the last seq); the new marker if it
/// moved. `Rejected` if `user` is not a member. Two strongly consistent reads (member,
/// conversation) and at most one conditional update, per round.
pub(super) async fn mark(
    store: &DynamoStore,
    conversation_id: ConversationId,
    user: UserId,
    seq: Seq,
    marker: Marker,
) -> Result<Option<Seq>, BackendError> {
    for _ in 0..MARKER_ROUNDS_MAX {
        let (found, last_seq) =
            futures::future::try_join(member(store, conversation_id, user), async {
                Ok(conversation(store, conversation_id)
                    .await?
                    .map_or(0, |doc| doc.last_seq))
            })
            .await?;
        let Some(found) = found else {
            return Err(BackendError::rejected(format!(
                "user {user} is not a member of conversation {conversation_id}"
            )));
        };
        let target = seq.min(last_seq);
        let (read, delivered) = match marker {
            Marker::Read => (
                found.last_read_seq.max(target),
                found.last_delivered_seq.max(target),
            ),
            Marker::Delivered => (found.last_read_seq, found.last_delivered_seq.max(target)),
        };
        let moved = match marker {
            Marker::Read => read != found.last_read_seq,
            Marker::Delivered => delivered != found.last_delivered_seq,
        };
        if !moved {
            return Ok(None);
        }
        let result = store
            .client
            .update_item()
            .table_name(&store.tables.members)
            .set_key(Some(member_key(conversation_id, user)))
            .update_expression("SET last_read_seq = :read, last_delivered_seq = :delivered")
            .condition_expression(
                "last_read_seq = :old_read AND last_delivered_seq = :old_delivered \
                 AND joined_seq = :joined",
            )
            .expression_attribute_values(":read", n(read))
            .expression_attribute_values(":delivered", n(delivered))
            .expression_attribute_values(":old_read", n(found.last_read_seq))
            .expression_attribute_values(":old_delivered", n(found.last_delivered_seq))
            .expression_attribute_values(":joined", n(found.joined_seq))
            .send()
            .await;
        match result {
            Ok(_) => {
                return Ok(Some(match marker {
                    Marker::Read => read,
                    Marker::Delivered => delivered,
                }));
            }
            // Moved by someone else (another device, an append of theirs), or the member
            // left: read again.
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(error) => return Err(sdk("update marker", error)),
        }
    }
    Err(BackendError::unavailable(format!(
        "the marker of {user} in {conversation_id} kept moving"
    )))
}

/// `false` if `user` is not a member.
pub(super) async fn set_muted(
    store: &DynamoStore,
    conversation_id: ConversationId,
    user: UserId,
    muted: bool,
) -> Result<bool, BackendError> {
    let result = store
        .client
        .update_item()
        .table_name(&store.tables.members)
        .set_key(Some(member_key(conversation_id, user)))
        .update_expression("SET muted = :muted")
        .condition_expression("attribute_exists(user_id)")
        .expression_attribute_values(":muted", bool_value(muted))
        .send()
        .await;
    match result {
        Ok(_) => Ok(true),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(error) => Err(sdk("update member", error)),
    }
}
