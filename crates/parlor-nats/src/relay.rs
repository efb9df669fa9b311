//! Commands to gateway nodes over core NATS: one subject per node, `<prefix>.node.<node>`,
//! so a notification costs one publish per node that holds a recipient.
//!
//! Core NATS is at most once: a command published while a node reconnects, or dropped
//! because the node fell behind, is lost. That is acceptable here because clients detect
//! the `seq` gap and catch up from the store, which is the truth. (A lost `CloseSession`
//! leaves that socket open until it reconnects; its session is already deleted.) Commands from one publisher reach a
//! node in the order they were sent.

use std::time::Duration;

use async_nats::Client;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use parlor_core::ports::{NodeCommand, Relay};
use parlor_core::relay_codec;
use parlor_core::{BackendError, NodeId};

/// How long `inbox` waits for the server to confirm the subscription.
const SUBSCRIBE_WAIT_MAX: Duration = Duration::from_secs(5);

pub struct NatsRelay {
    client: Client,
    prefix: String,
}

impl NatsRelay {
    /// A relay on subjects `<prefix>.node.<node>`.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
        }
    }

    fn subject(&self, node: NodeId) -> String {
        format!("{}.node.{node}", self.prefix)
    }
}

#[async_trait]
impl Relay for NatsRelay {
    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), BackendError> {
        // No flush per command: the client flushes on its own, and batching the writes is
        // what keeps a burst of notifications cheap.
        self.client
            .publish(self.subject(node), encode(&command))
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("cannot relay to node {node}: {error}"))
                    .with_source(error)
            })
    }

    async fn inbox(&self, node: NodeId) -> Result<BoxStream<'static, NodeCommand>, BackendError> {
        let subscriber = self
            .client
            .subscribe(self.subject(node))
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("cannot subscribe to node {node}'s inbox"))
                    .with_source(error)
            })?;
        // A message to ourselves comes back only after the server has processed the
        // subscription before it: from then on, commands sent to this node arrive.
        tokio::time::timeout(SUBSCRIBE_WAIT_MAX, self.round_trip())
            .await
            .map_err(|_| {
                BackendError::unavailable("the NATS server did not confirm a subscription")
            })??;
        Ok(Box::pin(subscriber.filter_map(|message| async move {
            let command = relay_codec::decode(&message.payload);
            if command.is_none() {
                tracing::warn!(
                    subject = %message.subject,
                    bytes = message.payload.len(),
                    "relay: ignoring an undecodable command"
                );
            }
            command
        })))
    }
}

impl NatsRelay {
    async fn round_trip(&self) -> Result<(), BackendError> {
        let failed = |error: &dyn std::fmt::Display| {
            BackendError::unavailable(format!("cannot reach the NATS server: {error}"))
        };
        let subject = self.client.new_inbox();
        let mut echo = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| failed(&e))?;
        self.client
            .publish(subject, Bytes::new())
            .await
            .map_err(|e| failed(&e))?;
        self.client.flush().await.map_err(|e| failed(&e))?;
        echo.next()
            .await
            .ok_or_else(|| failed(&"connection closed"))?;
        Ok(())
    }
}

fn encode(command: &NodeCommand) -> Bytes {
    Bytes::from(relay_codec::encode(command))
}
