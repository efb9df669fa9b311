//! Commands to gateway nodes over SQS: one FIFO queue per node, `{prefix}node-{node}.fifo`,
//! so a notification costs one SendMessage per node that holds a recipient.
//!
//! `inbox(node)` creates the node's queue (if missing), registers its URL in the registry's
//! nodes table (`queue_url`), long-polls it and deletes what it handed out. `send` finds a
//! node's URL there (cached) and sends. A conversation's frames (`Deliver` with an order) are
//! one message group: the gateways' notifiers take turns on a conversation (the notification
//! queue's group hands its next entry out only once the last one was relayed), so its frames
//! reach a node in `seq` order whichever notifier sent them. Every other command goes in its
//! sending handle's group, so one sender's commands reach a node in the order they were sent
//! (like core NATS's per-publisher order); groups do not block one another.
//!
//! Delivery is best effort, as on the other deployments: a command to a node whose queue is
//! gone is dropped (the node is dead; its users reconnect elsewhere and catch up from the
//! store, which is the truth), and one that a stopping node received but had not passed on
//! is lost with it.
//!
//! Queues of dead nodes are deleted by the node that reaped their lease: the registry turns
//! the lease into a tombstone naming its reaper, and the relay of the reaper's node deletes
//! the queue it finds there (any live node's relay does, once the tombstone is older than
//! `ORPHAN_AFTER`: the reaper may have died too). A clean stop deletes its own queue
//! (`close`).

mod codec;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, QueueAttributeName};
use futures::stream::{self, BoxStream};
use parlor_core::ports::{NodeCommand, Relay};
use parlor_core::{BackendError, NodeId};
use tokio::task::AbortHandle;

use crate::registry::tables::{
    self, LEASE_UNTIL, NODE_ID, NODE_ITEM_KEPT, QUEUE_URL, TTL, Tables, UNLEASED_GRACE,
};

/// The long poll of `inbox`: SQS's longest, so an idle node costs three receives a minute.
const RECEIVE_WAIT_SECONDS: i32 = 20;
/// Messages per receive (SQS's limit).
const RECEIVE_MAX: i32 = 10;
/// A command nobody received within this is stale: its node is dead or far behind.
const RETENTION_SECONDS: &str = "60";
/// A received command is deleted as soon as the next receive begins; this only matters if
/// the node stops between the two.
const VISIBILITY_TIMEOUT_SECONDS: &str = "30";
/// How often tombstones are read for queues to delete.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// A tombstone's queue is deleted by any live node once it is this old.
const ORPHAN_AFTER: Duration = Duration::from_secs(30);
/// SQS refuses larger bodies.
const BODY_BYTES_MAX: usize = 256 * 1024;

pub struct SqsRelay {
    shared: Arc<Shared>,
    tasks: Vec<AbortHandle>,
}

struct Shared {
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    prefix: String,
    tables: Tables,
    /// This handle's message group: one sender's commands stay in order.
    group: String,
    /// Queue URLs of nodes sent to.
    urls: Mutex<HashMap<NodeId, String>>,
    /// Nodes whose inbox this handle serves (and whose queue it keeps alive).
    inboxes: Mutex<HashSet<NodeId>>,
}

impl SqsRelay {
    /// A relay on queues `{prefix}node-{node}.fifo`, with their URLs in the registry's
    /// `{prefix}nodes` table (which must exist: `DynamoRegistry::open` creates it).
    pub async fn open(
        sqs: aws_sdk_sqs::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        prefix: &str,
    ) -> Result<SqsRelay, BackendError> {
        let shared = Arc::new(Shared {
            sqs,
            dynamodb,
            prefix: prefix.to_owned(),
            tables: Tables::new(prefix),
            group: uuid::Uuid::now_v7().simple().to_string(),
            urls: Mutex::new(HashMap::new()),
            inboxes: Mutex::new(HashSet::new()),
        });
        let sweep = tokio::spawn(Arc::clone(&shared).sweep());
        Ok(SqsRelay {
            shared,
            tasks: vec![sweep.abort_handle()],
        })
    }

    /// Deletes `node`'s queue (a clean stop: nothing more is received there) and forgets
    /// its URL. An inbox of `node` on this handle ends.
    pub async fn close(&self, node: NodeId) -> Result<(), BackendError> {
        let shared = &self.shared;
        shared.inboxes().remove(&node);
        shared.urls().remove(&node);
        match shared
            .sqs
            .get_queue_url()
            .queue_name(shared.queue_name(node))
            .send()
            .await
        {
            Ok(found) => {
                if let Some(url) = found.queue_url() {
                    shared.delete_queue(url).await?;
                }
            }
            Err(error) if queue_missing(&error) => {}
            Err(error) => return Err(sqs_unavailable("cannot find a node's queue", error)),
        }
        shared.forget_url(node, None).await
    }

    /// The name of `node`'s queue.
    pub fn queue_name(&self, node: NodeId) -> String {
        self.shared.queue_name(node)
    }
}

impl Drop for SqsRelay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn queue_missing<E: ProvideErrorMetadata>(error: &E) -> bool {
    matches!(
        error.code(),
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

fn sqs_unavailable(
    what: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> BackendError {
    let detail = aws_sdk_sqs::error::DisplayErrorContext(&error).to_string();
    BackendError::unavailable(format!("{what}: {detail}")).with_source(error)
}

impl Shared {
    fn queue_name(&self, node: NodeId) -> String {
        format!("{}node-{node}.fifo", self.prefix)
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, String>> {
        self.urls.lock().expect("relay urls lock")
    }

    fn inboxes(&self) -> std::sync::MutexGuard<'_, HashSet<NodeId>> {
        self.inboxes.lock().expect("relay inboxes lock")
    }

    /// Creates `node`'s queue if missing and registers its URL with the node's lease.
    async fn create_queue(&self, node: NodeId) -> Result<String, BackendError> {
        let created = self
            .sqs
            .create_queue()
            .queue_name(self.queue_name(node))
            .attributes(QueueAttributeName::FifoQueue, "true")
            // High-throughput FIFO: the limits apply per message group (per sender), not
            // to the whole queue.
            .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
            .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                RETENTION_SECONDS,
            )
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_TIMEOUT_SECONDS,
            )
            .send()
            .await
            .map_err(|e| sqs_unavailable("cannot create a node's queue", e))?;
        let url = created
            .queue_url()
            .ok_or_else(|| BackendError::unavailable("CreateQueue answered no URL"))?
            .to_owned();
        let now = tables::now_ms();
        // A node that never heartbeats gets a short lease, so that it is reaped (and this
        // queue deleted) if it crashes before its first heartbeat.
        self.dynamodb
            .update_item()
            .table_name(&self.tables.nodes)
            .key(NODE_ID, AttributeValue::S(node.to_string()))
            .update_expression(
                "SET #url = :url, #lease = if_not_exists(#lease, :grace), \
                 #ttl = if_not_exists(#ttl, :ttl)",
            )
            .expression_attribute_names("#url", QUEUE_URL)
            .expression_attribute_names("#lease", LEASE_UNTIL)
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":url", AttributeValue::S(url.clone()))
            .expression_attribute_values(
                ":grace",
                tables::n(now + UNLEASED_GRACE.as_millis() as u64),
            )
            .expression_attribute_values(":ttl", tables::ttl_after(now, NODE_ITEM_KEPT))
            .send()
            .await
            .map_err(|e| tables::unavailable("cannot register a node's queue", e))?;
        Ok(url)
    }

    async fn delete_queue(&self, url: &str) -> Result<(), BackendError> {
        match self.sqs.delete_queue().queue_url(url).send().await {
            Ok(_) => Ok(()),
            Err(error) if queue_missing(&error) => Ok(()),
            Err(error) => Err(sqs_unavailable("cannot delete a node's queue", error)),
        }
    }

    /// Removes `node`'s `queue_url` (only if it is still `url`, when given).
    async fn forget_url(&self, node: NodeId, url: Option<&str>) -> Result<(), BackendError> {
        let mut update = self
            .dynamodb
            .update_item()
            .table_name(&self.tables.nodes)
            .key(NODE_ID, AttributeValue::S(node.to_string()))
            .update_expression("REMOVE #url")
            .expression_attribute_names("#url", QUEUE_URL);
        update = match url {
            Some(url) => update
                .condition_expression("#url = :url")
                .expression_attribute_values(":url", AttributeValue::S(url.to_owned())),
            // Never create an item for a node that has none.
            None => update
                .condition_expression("attribute_exists(#node)")
                .expression_attribute_names("#node", NODE_ID),
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(error)
                if aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&error)
                    == Some("ConditionalCheckFailedException") =>
            {
                Ok(())
            }
            Err(error) => Err(tables::unavailable("cannot forget a node's queue", error)),
        }
    }

    /// `node`'s queue URL, from the cache or the nodes table; `None` if it has none.
    async fn url_of(&self, node: NodeId) -> Result<Option<String>, BackendError> {
        if let Some(url) = self.urls().get(&node) {
            return Ok(Some(url.clone()));
        }
        let record = tables::read_node(&self.dynamodb, &self.tables.nodes, node).await?;
        let url = record
            .filter(|r| r.dead_at_ms.is_none())
            .and_then(|r| r.queue_url);
        if let Some(url) = &url {
            self.urls().insert(node, url.clone());
        }
        Ok(url)
    }

    /// One receive from `url`; the commands it held, and their receipt handles.
    async fn receive(
        &self,
        url: &str,
    ) -> Result<
        (Vec<NodeCommand>, Vec<String>),
        aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::receive_message::ReceiveMessageError>,
    > {
        let received = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(RECEIVE_MAX)
            .wait_time_seconds(RECEIVE_WAIT_SECONDS)
            .send()
            .await?;
        let mut commands = Vec::new();
        let mut receipts = Vec::new();
        for message in received.messages() {
            if let Some(receipt) = message.receipt_handle() {
                receipts.push(receipt.to_owned());
            }
            match message.body().and_then(codec::decode) {
                Some(command) => commands.push(command),
                None => tracing::warn!(
                    bytes = message.body().map_or(0, str::len),
                    "relay: ignoring an undecodable command"
                ),
            }
        }
        Ok((commands, receipts))
    }

    async fn delete_received(&self, url: &str, receipts: Vec<String>) {
        let entries: Vec<DeleteMessageBatchRequestEntry> = receipts
            .into_iter()
            .enumerate()
            .map(|(index, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .expect("delete entry")
            })
            .collect();
        // Not deleted, they come back after the visibility timeout: delivered twice, which
        // a reordering inbox and idempotent frames tolerate.
        match self
            .sqs
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(deleted) if deleted.failed().is_empty() => {}
            Ok(deleted) => tracing::warn!(
                failed = deleted.failed().len(),
                "relay: cannot delete some received commands"
            ),
            Err(error) => {
                tracing::warn!(error = %DisplayErrorContext(&error), "relay: cannot delete received commands")
            }
        }
    }

    /// Every `SWEEP_INTERVAL`: deletes the queues of reaped nodes (see the module doc).
    async fn sweep(self: Arc<Self>) {
        let mut interval = tokio::time::interval(SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let inboxes = self.inboxes().clone();
            if inboxes.is_empty() {
                continue;
            }
            let records = match tables::scan_nodes(&self.dynamodb, &self.tables.nodes).await {
                Ok(records) => records,
                Err(error) => {
                    tracing::debug!(%error, "relay: cannot read the nodes table");
                    continue;
                }
            };
            let now = tables::now_ms();
            // Only a live node deletes queues of others.
            if !records
                .iter()
                .any(|r| inboxes.contains(&r.node) && r.live(now))
            {
                continue;
            }
            for record in records {
                let (Some(dead_at), Some(url)) = (record.dead_at_ms, &record.queue_url) else {
                    continue;
                };
                let reaped_here = record.reaper.is_some_and(|r| inboxes.contains(&r));
                let orphaned = dead_at + ORPHAN_AFTER.as_millis() as u64 <= now;
                if inboxes.contains(&record.node) || !(reaped_here || orphaned) {
                    continue;
                }
                self.urls().remove(&record.node);
                let deleted = match self.delete_queue(url).await {
                    Ok(()) => self.forget_url(record.node, Some(url)).await,
                    Err(error) => Err(error),
                };
                match deleted {
                    Ok(()) => {
                        tracing::info!(node = %record.node, "relay: deleted a dead node's queue")
                    }
                    Err(error) => {
                        tracing::warn!(%error, node = %record.node, "relay: cannot delete a dead node's queue")
                    }
                }
            }
        }
    }
}

/// The state of one inbox stream.
struct Inbox {
    shared: Arc<Shared>,
    node: NodeId,
    url: String,
    pending: VecDeque<NodeCommand>,
    /// Received and handed out (or being handed out): deleted before the next receive,
    /// since a FIFO group holds back what follows until they are.
    received: Vec<String>,
}

impl Inbox {
    async fn next(&mut self) -> Option<NodeCommand> {
        loop {
            if let Some(command) = self.pending.pop_front() {
                return Some(command);
            }
            if !self.received.is_empty() {
                let receipts = std::mem::take(&mut self.received);
                self.shared.delete_received(&self.url, receipts).await;
            }
            match self.shared.receive(&self.url).await {
                Ok((commands, receipts)) => {
                    self.pending.extend(commands);
                    self.received = receipts;
                }
                Err(error) if queue_missing(&error) => {
                    if !self.shared.inboxes().contains(&self.node) {
                        return None; // closed
                    }
                    // Deleted as a dead node's while we lived (a pause): made again once a
                    // heartbeat has brought the node back (until then it is dead to the
                    // others, and a new queue would only be deleted again).
                    let shared = &self.shared;
                    match tables::read_node(&shared.dynamodb, &shared.tables.nodes, self.node).await
                    {
                        Ok(record) if record.as_ref().is_none_or(|r| r.dead_at_ms.is_none()) => {}
                        Ok(_) => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "relay: cannot read this node's lease");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                    tracing::warn!(node = %self.node, "relay: this node's queue was deleted; creating it again");
                    match self.shared.create_queue(self.node).await {
                        Ok(url) => self.url = url,
                        Err(error) => {
                            tracing::warn!(%error, "relay: cannot create this node's queue");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %DisplayErrorContext(&error), "relay: cannot receive commands");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[async_trait]
impl Relay for SqsRelay {
    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), BackendError> {
        let shared = &self.shared;
        let Some(url) = shared.url_of(node).await? else {
            tracing::debug!(%node, "relay: dropping a command to a node without a queue");
            return Ok(());
        };
        let body = codec::encode(&command);
        if body.len() > BODY_BYTES_MAX {
            return Err(BackendError::rejected(format!(
                "a command of {} bytes is over SQS's limit",
                body.len()
            )));
        }
        let sent = shared
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(body)
            .message_group_id(match &command {
                NodeCommand::Deliver {
                    order: Some(order), ..
                } => order.conversation.to_string(),
                _ => shared.group.clone(),
            })
            // Fresh per command: two equal commands are two commands.
            .message_deduplication_id(uuid::Uuid::now_v7().simple().to_string())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(error) if queue_missing(&error) => {
                shared.urls().remove(&node);
                tracing::debug!(%node, "relay: dropping a command to a node whose queue is gone");
                Ok(())
            }
            Err(error) => Err(sqs_unavailable(
                &format!("cannot relay to node {node}"),
                error,
            )),
        }
    }

    async fn inbox(&self, node: NodeId) -> Result<BoxStream<'static, NodeCommand>, BackendError> {
        let shared = &self.shared;
        shared.inboxes().insert(node);
        let url = shared.create_queue(node).await?;
        let inbox = Inbox {
            shared: Arc::clone(shared),
            node,
            url,
            pending: VecDeque::new(),
            received: Vec::new(),
        };
        Ok(Box::pin(stream::unfold(inbox, |mut inbox| async move {
            let command = inbox.next().await?;
            Some((command, inbox))
        })))
    }
}
