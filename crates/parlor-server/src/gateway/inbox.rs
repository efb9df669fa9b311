//! This node's inbox: commands the notifier and other gateways relay here (`Relay::send`),
//! acted on in order. A conversation's messages are passed to the hub in `seq` order: one
//! that arrives before its predecessors waits in [`Reorder`] for them, up to `REORDER_HOLD`
//! (several notifiers may run, and each relay is FIFO only per sender).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use parlor_core::ports::NodeCommand;
use tokio::time::Instant;

use super::Gateway;
use super::reorder::Reorder;

/// How long a message frame that arrived before its predecessors waits for them.
const REORDER_HOLD: Duration = Duration::from_millis(100);

/// Acts on every command of `inbox` until it ends.
pub(super) async fn run(gateway: Arc<Gateway>, mut inbox: BoxStream<'static, NodeCommand>) {
    let mut reorder = Reorder::new(REORDER_HOLD);
    loop {
        let deadline = reorder.deadline();
        tokio::select! {
            command = inbox.next() => match command {
                Some(command) => execute(&gateway, command, &mut reorder),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                for (users, frame) in reorder.expire(Instant::now()) {
                    gateway.hub.deliver(&users, &Utf8Bytes::from(frame.as_ref()));
                }
            }
        }
    }
}

/// Acts on one command relayed to this node.
fn execute(gateway: &Gateway, command: NodeCommand, reorder: &mut Reorder) {
    match command {
        NodeCommand::Deliver {
            users,
            frame,
            order: None,
        } => {
            gateway
                .hub
                .deliver(&users, &Utf8Bytes::from(frame.as_ref()));
        }
        NodeCommand::Deliver {
            users,
            frame,
            order: Some(order),
        } => {
            for (users, frame) in reorder.arrive(order, (users, frame), Instant::now()) {
                gateway
                    .hub
                    .deliver(&users, &Utf8Bytes::from(frame.as_ref()));
            }
        }
        NodeCommand::CloseSession { user, token } => gateway.hub.close_session(user, token),
    }
}
