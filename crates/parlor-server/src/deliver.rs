//! Sending one frame to the live connections of some users: one relay command per node
//! that holds any of them, whatever the number of nodes.

use std::sync::Arc;

use parlor_core::ports::{MessageOrder, NodeCommand};
use parlor_core::{BackendError, UserId};

use crate::Deps;

/// Hands `frame` to every node with a connection of `users`. Returns how many users had one.
pub async fn to_users(
    deps: &Deps,
    users: &[UserId],
    frame: Arc<str>,
    order: Option<MessageOrder>,
) -> Result<usize, BackendError> {
    if users.is_empty() {
        return Ok(0);
    }
    let located = deps.registry.locate(users).await?;
    let mut reached = 0;
    for (node, users) in located {
        reached += users.len();
        deps.relay
            .send(
                node,
                NodeCommand::Deliver {
                    users,
                    frame: Arc::clone(&frame),
                    order,
                },
            )
            .await?;
    }
    Ok(reached)
}
