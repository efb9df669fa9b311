//! The registry's two DynamoDB tables: their names, attributes, creation and deletion.
//! The relay reads and writes the nodes table too (a node's queue URL), so what both need
//! lives here. The CloudFormation template must match `create` (see /tmp/aws-design.md,
//! "Registry tables").

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use parlor_core::{BackendError, NodeId};

/// `{p}connections`: HASH `user_id` S, RANGE `sk` S. Per user, one presence item
/// (`sk` = [`PRESENCE_SK`]) with the string set `conns` of `{node}/{connection}`, and one
/// item per live connection (`sk` = `{node}/{connection}`) with `node_id` and `ttl`.
pub(crate) const USER_ID: &str = "user_id";
pub(crate) const SK: &str = "sk";
pub(crate) const CONNS: &str = "conns";
pub(crate) const NODE_ID: &str = "node_id";
/// The sort key of a user's presence item (a connection's starts with a node's uuid).
pub(crate) const PRESENCE_SK: &str = "presence";
/// The sparse index of connection items by node (presence items have no `node_id`), for
/// the reaper of a dead node. KEYS_ONLY: the table's keys are all it needs.
pub(crate) const BY_NODE: &str = "by_node";
/// Epoch seconds: the TTL attribute of both tables.
pub(crate) const TTL: &str = "ttl";

/// `{p}nodes`: HASH `node_id` S. `lease_until` N (unix ms) while live; once reaped,
/// `dead_at` N (unix ms), `reaper` S, and `cleared` BOOL when its connections are gone;
/// `queue_url` S (the relay's queue) until the queue is deleted; `ttl` N.
pub(crate) const LEASE_UNTIL: &str = "lease_until";
pub(crate) const DEAD_AT: &str = "dead_at";
pub(crate) const REAPER: &str = "reaper";
pub(crate) const CLEARED: &str = "cleared";
pub(crate) const QUEUE_URL: &str = "queue_url";

/// How long a node item outlives its last lease or its death: TTL only removes what no
/// one needs, and lazily (up to days late on AWS, never on DynamoDB Local), so nothing
/// relies on it for correctness.
pub(crate) const NODE_ITEM_KEPT: Duration = Duration::from_secs(24 * 3600);
/// A connection item's TTL after its registration. Not refreshed (a write per connection
/// per heartbeat would cost more than the whole registry): leases decide liveness, and a
/// connection item only matters to reap a dead node, so one that expires under a live,
/// week-old connection leaves at most a stale element, which liveness filters out.
pub(crate) const CONNECTION_ITEM_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// A node that registered its queue but never heartbeated counts as live this long, so a
/// gateway that crashes before its first heartbeat is reaped (and its queue deleted).
pub(crate) const UNLEASED_GRACE: Duration = Duration::from_secs(30);

/// How long `create` waits for a new table to become ACTIVE.
const ACTIVE_WAIT_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub(crate) struct Tables {
    pub connections: String,
    pub nodes: String,
}

impl Tables {
    pub(crate) fn new(prefix: &str) -> Tables {
        Tables {
            connections: format!("{prefix}connections"),
            nodes: format!("{prefix}nodes"),
        }
    }

    /// Creates both tables if missing (from any number of processes at once), waits for
    /// them to be ACTIVE and enables their TTL.
    pub(crate) async fn create(&self, client: &Client) -> Result<(), BackendError> {
        let s = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("attribute definition")
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .expect("key schema element")
        };
        let by_node = GlobalSecondaryIndex::builder()
            .index_name(BY_NODE)
            .key_schema(key(NODE_ID, KeyType::Hash))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )
            .build()
            .expect("index");
        let connections = client
            .create_table()
            .table_name(&self.connections)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(s(USER_ID))
            .attribute_definitions(s(SK))
            .attribute_definitions(s(NODE_ID))
            .key_schema(key(USER_ID, KeyType::Hash))
            .key_schema(key(SK, KeyType::Range))
            .global_secondary_indexes(by_node)
            .send()
            .await;
        created(&self.connections, connections.map(|_| ()))?;
        let nodes = client
            .create_table()
            .table_name(&self.nodes)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(s(NODE_ID))
            .key_schema(key(NODE_ID, KeyType::Hash))
            .send()
            .await;
        created(&self.nodes, nodes.map(|_| ()))?;
        for table in [&self.connections, &self.nodes] {
            wait_active(client, table).await?;
            enable_ttl(client, table).await?;
        }
        Ok(())
    }

    /// Deletes both tables (a missing one is fine).
    pub(crate) async fn delete(&self, client: &Client) -> Result<(), BackendError> {
        for table in [&self.connections, &self.nodes] {
            if let Err(error) = client.delete_table().table_name(table).send().await
                && error.code() != Some("ResourceNotFoundException")
            {
                return Err(unavailable(&format!("cannot delete table {table}"), error));
            }
        }
        Ok(())
    }
}

fn created<E>(table: &str, result: Result<(), E>) -> Result<(), BackendError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(()) => Ok(()),
        // Created by another process (or an earlier run): fine.
        Err(error) if error.code() == Some("ResourceInUseException") => Ok(()),
        Err(error) => Err(unavailable(&format!("cannot create table {table}"), error)),
    }
}

async fn wait_active(client: &Client, table: &str) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + ACTIVE_WAIT_MAX;
    loop {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| unavailable(&format!("cannot describe table {table}"), e))?;
        let status = described.table().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BackendError::unavailable(format!(
                "table {table} is not active after {ACTIVE_WAIT_MAX:?} ({status:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn enable_ttl(client: &Client, table: &str) -> Result<(), BackendError> {
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL)
        .build()
        .expect("ttl specification");
    match client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // "TimeToLive is already enabled" (another process did it first) is a validation
        // error too: what the table says decides.
        Err(error) if error.code() == Some("ValidationException") => {
            let described = client
                .describe_time_to_live()
                .table_name(table)
                .send()
                .await
                .map_err(|e| unavailable(&format!("cannot read the TTL of table {table}"), e))?;
            let ttl = described.time_to_live_description();
            let enabled = ttl.is_some_and(|ttl| {
                ttl.attribute_name() == Some(TTL)
                    && matches!(
                        ttl.time_to_live_status(),
                        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                    )
            });
            if enabled {
                Ok(())
            } else {
                Err(unavailable(
                    &format!("cannot enable the TTL of table {table}"),
                    error,
                ))
            }
        }
        Err(error) => Err(unavailable(
            &format!("cannot enable the TTL of table {table}"),
            error,
        )),
    }
}

/// One item of the nodes table, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeRecord {
    pub node: NodeId,
    pub lease_until_ms: Option<u64>,
    pub dead_at_ms: Option<u64>,
    pub reaper: Option<NodeId>,
    pub cleared: bool,
    pub queue_url: Option<String>,
}

impl NodeRecord {
    pub(crate) fn parse(item: &HashMap<String, AttributeValue>) -> Option<NodeRecord> {
        Some(NodeRecord {
            node: string(item, NODE_ID)?.parse().ok()?,
            lease_until_ms: number(item, LEASE_UNTIL),
            dead_at_ms: number(item, DEAD_AT),
            reaper: string(item, REAPER).and_then(|r| r.parse().ok()),
            cleared: matches!(item.get(CLEARED), Some(AttributeValue::Bool(true))),
            queue_url: string(item, QUEUE_URL).map(str::to_owned),
        })
    }

    /// Live at `now_ms`: not reaped, and its lease not passed.
    pub(crate) fn live(&self, now_ms: u64) -> bool {
        self.dead_at_ms.is_none() && self.lease_until_ms.is_some_and(|until| until > now_ms)
    }
}

/// Every item of the nodes table (one per gateway that lived within a day or so), read
/// consistently.
pub(crate) async fn scan_nodes(
    client: &Client,
    table: &str,
) -> Result<Vec<NodeRecord>, BackendError> {
    let mut records = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| unavailable("cannot read the nodes table", e))?;
        records.extend(page.items().iter().filter_map(NodeRecord::parse));
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(records),
        }
    }
}

/// One node's item, read consistently; `None` if it has none.
pub(crate) async fn read_node(
    client: &Client,
    table: &str,
    node: NodeId,
) -> Result<Option<NodeRecord>, BackendError> {
    let item = client
        .get_item()
        .table_name(table)
        .key(NODE_ID, AttributeValue::S(node.to_string()))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| unavailable("cannot read the nodes table", e))?;
    Ok(item.item().and_then(NodeRecord::parse))
}

pub(crate) fn string<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

pub(crate) fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value.parse().ok(),
        _ => None,
    }
}

pub(crate) fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The TTL attribute's value (epoch seconds) `kept` after `from_ms`.
pub(crate) fn ttl_after(from_ms: u64, kept: Duration) -> AttributeValue {
    n(from_ms / 1000 + kept.as_secs())
}

pub(crate) fn unavailable(
    what: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> BackendError {
    // The SDK's Display is only "service error"; the code and message say what happened.
    let detail = aws_sdk_dynamodb::error::DisplayErrorContext(&error).to_string();
    BackendError::unavailable(format!("{what}: {detail}")).with_source(error)
}
