//! Presence: pushes each online/offline change to the users who share a conversation with
//! the user, and keeps `last_seen`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parlor_core::ports::PresenceChange;
use parlor_core::protocol::ServerFrame;

use crate::{Deps, Shutdown, deliver};

/// Presence goes to co-members of conversations up to this size. Beyond it, one user coming
/// online would cost a frame to every member, and a group of N members connecting costs N²
/// (measured: 10,000 members connecting flooded every connection's queue). Large groups
/// show who is online when asked (`GET /users`, the chat list), not live.
pub const PRESENCE_GROUP_MEMBERS_MAX: usize = 100;

/// Runs until `shutdown`. Backend failures are logged and retried: presence is best effort,
/// `last_seen` is the only thing it writes.
pub async fn run(deps: Deps, shutdown: Shutdown) {
    loop {
        let mut changes = match deps.presence.changes().await {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%error, "presence: cannot subscribe, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.clone().wait() => return,
                }
            }
        };
        loop {
            let change = tokio::select! {
                change = changes.next() => change,
                _ = shutdown.clone().wait() => return,
            };
            // The stream ends when we fell behind: resubscribe.
            let Some(change) = change else { break };
            if let Err(error) = announce(&deps, change).await {
                tracing::warn!(%error, user = %change.user, "presence: cannot announce a change");
            }
        }
    }
}

async fn announce(deps: &Deps, change: PresenceChange) -> Result<(), parlor_core::BackendError> {
    let last_seen = if change.online {
        None
    } else {
        deps.store.set_last_seen(change.user, change.at).await?;
        Some(change.at)
    };
    let contacts = deps
        .store
        .contacts(change.user, PRESENCE_GROUP_MEMBERS_MAX)
        .await?;
    let frame: Arc<str> = ServerFrame::Presence {
        user_id: change.user,
        online: change.online,
        last_seen,
    }
    .to_json()
    .into();
    deliver::to_users(deps, &contacts, frame, None).await?;
    Ok(())
}
