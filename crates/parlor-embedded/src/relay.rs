//! Commands to gateway nodes in this process: a bounded channel per node.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::stream::{self, BoxStream};
use parlor_core::ports::{NodeCommand, Relay};
use parlor_core::{BackendError, NodeId};
use tokio::sync::mpsc;

/// Commands one node may have waiting; a full inbox slows the sender (backpressure on the
/// notifier) rather than growing memory.
const INBOX_COMMANDS_MAX: usize = 16 * 1024;

#[derive(Default)]
pub struct LocalRelay {
    inboxes: Mutex<HashMap<NodeId, mpsc::Sender<NodeCommand>>>,
}

impl LocalRelay {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Relay for LocalRelay {
    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), BackendError> {
        let inbox = self.inboxes.lock().expect("relay lock").get(&node).cloned();
        match inbox {
            Some(inbox) => inbox
                .send(command)
                .await
                .map_err(|_| BackendError::unavailable(format!("node {node} stopped"))),
            // A node that is gone has no connections left to deliver to.
            None => Ok(()),
        }
    }

    async fn inbox(&self, node: NodeId) -> Result<BoxStream<'static, NodeCommand>, BackendError> {
        let (sender, receiver) = mpsc::channel(INBOX_COMMANDS_MAX);
        self.inboxes
            .lock()
            .expect("relay lock")
            .insert(node, sender);
        Ok(Box::pin(stream::unfold(
            receiver,
            |mut receiver| async move {
                let command = receiver.recv().await?;
                Some((command, receiver))
            },
        )))
    }
}
