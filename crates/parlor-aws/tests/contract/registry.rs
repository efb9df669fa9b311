// The registry, presence and relay contracts against DynamoDB Local and ministack's SQS: each
// node gets its own clients, registry and relay, as two gateway processes would; every test
// uses its own prefix (tables and queues), deleted at the end. Then what the suite does not
// cover: reaping a dead node's queue, presence races across nodes, renewed leases, TTLs.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use futures::StreamExt;
use futures::stream::BoxStream;
use parlor_aws::AwsOptions;
use parlor_aws::registry::DynamoRegistry;
use parlor_aws::relay::SqsRelay;
use parlor_core::ports::{ConnectionInfo, NodeCommand, Presence, PresenceChange, Registry, Relay};
use parlor_core::{ConnectionId, NodeId, UserId};
use parlor_testkit::registry::{Node, Nodes};
use tokio::time::Instant;

fn variable(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the AWS emulators with \
             `eval \"$(scripts/services up)\"` (DynamoDB Local and ministack)"
        )
    })
}

fn options() -> AwsOptions {
    AwsOptions {
        endpoint: Some(variable("PARLOR_TEST_SQS_URL")),
        dynamodb_endpoint: Some(variable("PARLOR_TEST_DYNAMODB_URL")),
        ..Default::default()
    }
}

/// Short enough that `{prefix}node-{uuid}.fifo` stays within SQS's 80 characters.
fn prefix() -> String {
    format!("t{}-", &uuid::Uuid::now_v7().simple().to_string()[16..])
}

/// One node's handles, on clients of its own.
struct AwsNode {
    id: NodeId,
    prefix: String,
    registry: Arc<DynamoRegistry>,
    relay: Arc<SqsRelay>,
}

async fn aws_node(prefix: &str) -> AwsNode {
    let options = options();
    let dynamodb = options.dynamodb().await;
    let id = NodeId::new();
    let registry = DynamoRegistry::open(dynamodb.clone(), prefix, id, true)
        .await
        .unwrap_or_else(|error| panic!("cannot open the registry: {error}"));
    let relay = SqsRelay::open(options.sqs().await, dynamodb, prefix)
        .await
        .unwrap_or_else(|error| panic!("cannot open the relay: {error}"));
    AwsNode {
        id,
        prefix: prefix.to_owned(),
        registry: Arc::new(registry),
        relay: Arc::new(relay),
    }
}

impl AwsNode {
    fn node(&self) -> Node {
        Node {
            id: self.id,
            registry: self.registry.clone(),
            presence: self.registry.clone(),
            relay: self.relay.clone(),
        }
    }
}

/// Best effort: leftovers only cost memory in the emulators.
async fn clean_up(nodes: &[&AwsNode]) {
    for node in nodes {
        let _ = node.relay.close(node.id).await;
    }
    if let Some(node) = nodes.first() {
        let _ = node.registry.delete_tables().await;
    }
}

async fn nodes() -> Nodes {
    let prefix = prefix();
    // Opened at once, as processes starting together would: creating the tables must be
    // idempotent.
    let (a, b) = tokio::join!(aws_node(&prefix), aws_node(&prefix));
    let nodes = Nodes::new(a.node(), b.node());
    let (a, b) = (Arc::new(a), Arc::new(b));
    nodes.with_cleanup(move || {
        let (a, b) = (a.clone(), b.clone());
        async move { clean_up(&[&a, &b]).await }
    })
}

parlor_testkit::registry_contract!(nodes);

/// Runs `check` on two fresh nodes, then deletes their tables and queues, passed or failed.
async fn with_nodes<F, Fut>(check: F)
where
    F: FnOnce(Arc<AwsNode>, Arc<AwsNode>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let prefix = prefix();
    let (a, b) = tokio::join!(aws_node(&prefix), aws_node(&prefix));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let result =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(check(a.clone(), b.clone())))
            .await;
    clean_up(&[&a, &b]).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn connection(user: UserId, node: &AwsNode) -> ConnectionInfo {
    ConnectionInfo {
        id: ConnectionId::new(),
        user,
        node: node.id,
    }
}

async fn heartbeat(node: &AwsNode, lease: Duration) {
    node.registry
        .heartbeat(node.id, lease)
        .await
        .expect("heartbeat");
}

/// Every change either node announces, merged.
fn merged(
    a: BoxStream<'static, PresenceChange>,
    b: BoxStream<'static, PresenceChange>,
) -> BoxStream<'static, PresenceChange> {
    Box::pin(futures::stream::select(a, b))
}

async fn changes(a: &AwsNode, b: &AwsNode) -> BoxStream<'static, PresenceChange> {
    merged(
        a.registry.changes().await.expect("changes"),
        b.registry.changes().await.expect("changes"),
    )
}

/// The changes that arrive within `wait`.
async fn collect(
    changes: &mut BoxStream<'static, PresenceChange>,
    wait: Duration,
) -> Vec<(UserId, bool)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + wait;
    while let Ok(Some(change)) = tokio::time::timeout_at(deadline, changes.next()).await {
        got.push((change.user, change.online));
    }
    got
}

async fn queue_exists(relay: &SqsRelay, sqs: &aws_sdk_sqs::Client, node: NodeId) -> bool {
    sqs.get_queue_url()
        .queue_name(relay.queue_name(node))
        .send()
        .await
        .is_ok()
}

#[tokio::test]
async fn a_dead_nodes_queue_is_deleted_by_the_node_that_reaps_it() {
    with_nodes(|live, dying| async move {
        heartbeat(&live, Duration::from_secs(60)).await;
        heartbeat(&dying, Duration::from_secs(2)).await;
        let _live_inbox = live.relay.inbox(live.id).await.expect("inbox");
        let _dying_inbox = dying.relay.inbox(dying.id).await.expect("inbox");
        let sqs = options().sqs().await;
        assert!(queue_exists(&live.relay, &sqs, dying.id).await);
        let user = UserId::new();
        dying
            .registry
            .register(connection(user, &dying))
            .await
            .expect("register");

        let deadline = Instant::now() + Duration::from_secs(15);
        while queue_exists(&live.relay, &sqs, dying.id).await
            || node_item(&live, dying.id).await.contains_key("queue_url")
        {
            assert!(
                Instant::now() < deadline,
                "the dead node's queue is still there"
            );
            heartbeat(&live, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            queue_exists(&live.relay, &sqs, live.id).await,
            "the live node's queue was deleted too"
        );
        // The reaper is named on the tombstone, which no longer holds a queue.
        let item = node_item(&live, dying.id).await;
        assert_eq!(
            item.get("reaper"),
            Some(&AttributeValue::S(live.id.to_string()))
        );
        assert!(item.contains_key("dead_at"), "{item:?}");
        // A command to the dead node is dropped, not an error.
        let command = NodeCommand::Deliver {
            users: vec![user],
            frame: "{}".into(),
            order: None,
        };
        live.relay.send(dying.id, command).await.expect("send");
        // A clean stop deletes the node's own queue and forgets its URL.
        live.relay.close(live.id).await.expect("close");
        assert!(!queue_exists(&live.relay, &sqs, live.id).await);
        assert!(!node_item(&live, live.id).await.contains_key("queue_url"));
    })
    .await;
}

#[tokio::test]
async fn presence_across_two_nodes_is_announced_once_each_way() {
    with_nodes(|a, b| async move {
        heartbeat(&a, Duration::from_secs(60)).await;
        heartbeat(&b, Duration::from_secs(60)).await;
        let mut changes = changes(&a, &b).await;
        for _ in 0..5 {
            let alice = UserId::new();
            let (on_a, on_b) = (connection(alice, &a), connection(alice, &b));
            // Racing first connections: one online.
            let (ra, rb) = tokio::join!(a.registry.register(on_a), b.registry.register(on_b));
            ra.expect("register");
            rb.expect("register");
            assert_eq!(
                collect(&mut changes, Duration::from_millis(500)).await,
                vec![(alice, true)]
            );
            let mut online = a.registry.online(&[alice]).await.expect("online");
            assert_eq!(online, vec![alice]);
            online = b.registry.online(&[alice]).await.expect("online");
            assert_eq!(online, vec![alice]);
            // Racing last disconnects: one offline, after both.
            let (ra, rb) = tokio::join!(a.registry.unregister(on_a), b.registry.unregister(on_b));
            ra.expect("unregister");
            rb.expect("unregister");
            assert_eq!(
                collect(&mut changes, Duration::from_millis(500)).await,
                vec![(alice, false)]
            );
            assert_eq!(a.registry.online(&[alice]).await.expect("online"), vec![]);
        }
        // One of two connections closing is no change; the last one anywhere is.
        let bob = UserId::new();
        let (first, second) = (connection(bob, &a), connection(bob, &b));
        a.registry.register(first).await.expect("register");
        b.registry.register(second).await.expect("register");
        a.registry.unregister(first).await.expect("unregister");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(500)).await,
            vec![(bob, true)]
        );
        b.registry.unregister(second).await.expect("unregister");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(500)).await,
            vec![(bob, false)]
        );
    })
    .await;
}

#[tokio::test]
async fn heartbeats_renew_the_lease() {
    with_nodes(|live, renewing| async move {
        heartbeat(&live, Duration::from_secs(60)).await;
        let lease = Duration::from_secs(2);
        heartbeat(&renewing, lease).await;
        let mut changes = changes(&live, &renewing).await;
        let alice = UserId::new();
        renewing
            .registry
            .register(connection(alice, &renewing))
            .await
            .expect("register");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![(alice, true)]
        );
        // Three leases long, renewed every half lease: never gone.
        let until = Instant::now() + 3 * lease;
        while Instant::now() < until {
            heartbeat(&renewing, lease).await;
            heartbeat(&live, Duration::from_secs(60)).await;
            for node in [&live, &renewing] {
                assert_eq!(
                    node.registry.locate(&[alice]).await.expect("locate"),
                    vec![(renewing.id, vec![alice])]
                );
            }
            assert_eq!(collect(&mut changes, lease / 2).await, vec![]);
        }
        // Then it stops, and its user goes offline.
        let deadline = Instant::now() + lease + Duration::from_secs(5);
        loop {
            heartbeat(&live, Duration::from_secs(60)).await;
            let got = collect(&mut changes, Duration::from_millis(500)).await;
            if !got.is_empty() {
                assert_eq!(got, vec![(alice, false)]);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no offline change after the lease"
            );
        }
        assert_eq!(
            live.registry.locate(&[alice]).await.expect("locate"),
            vec![]
        );
    })
    .await;
}

async fn node_item(
    reader: &AwsNode,
    node: NodeId,
) -> std::collections::HashMap<String, AttributeValue> {
    options()
        .dynamodb()
        .await
        .get_item()
        .table_name(format!("{}nodes", reader.prefix))
        .key("node_id", AttributeValue::S(node.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn connection_and_node_items_carry_a_ttl() {
    with_nodes(|a, _b| async move {
        heartbeat(&a, Duration::from_secs(60)).await;
        let alice = UserId::new();
        let on_a = connection(alice, &a);
        a.registry.register(on_a).await.expect("register");
        let dynamodb = options().dynamodb().await;
        let nodes_table = format!("{}nodes", a.prefix);
        let connections_table = format!("{}connections", a.prefix);
        for table in [&nodes_table, &connections_table] {
            let described = dynamodb
                .describe_time_to_live()
                .table_name(table)
                .send()
                .await
                .expect("describe ttl");
            let ttl = described.time_to_live_description().expect("ttl");
            assert_eq!(ttl.attribute_name(), Some("ttl"), "{table}");
            assert_eq!(
                ttl.time_to_live_status(),
                Some(&TimeToLiveStatus::Enabled),
                "{table}"
            );
        }
        let now_s = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let ttl_of =
            |item: &std::collections::HashMap<String, AttributeValue>| match item.get("ttl") {
                Some(AttributeValue::N(ttl)) => ttl.parse::<u64>().expect("ttl"),
                other => panic!("no ttl: {other:?} in {item:?}"),
            };
        let item = dynamodb
            .get_item()
            .table_name(&connections_table)
            .key("user_id", AttributeValue::S(alice.to_string()))
            .key("sk", AttributeValue::S(format!("{}/{}", a.id, on_a.id)))
            .consistent_read(true)
            .send()
            .await
            .expect("get item")
            .item()
            .cloned()
            .expect("the connection's item");
        let ttl = ttl_of(&item);
        assert!(
            ttl > now_s + 3600 && ttl < now_s + 30 * 24 * 3600,
            "connection ttl {ttl} at {now_s}"
        );
        let ttl = ttl_of(&node_item(&a, a.id).await);
        assert!(
            ttl > now_s + 60 && ttl < now_s + 7 * 24 * 3600,
            "node ttl {ttl} at {now_s}"
        );
        // Unregistered, nothing of the connection is left.
        a.registry.unregister(on_a).await.expect("unregister");
        let left = dynamodb
            .query()
            .table_name(&connections_table)
            .key_condition_expression("user_id = :u")
            .expression_attribute_values(":u", AttributeValue::S(alice.to_string()))
            .consistent_read(true)
            .send()
            .await
            .expect("query");
        assert_eq!(left.items(), &[]);
    })
    .await;
}

#[tokio::test]
async fn a_node_declared_dead_while_alive_comes_back_with_its_users() {
    with_nodes(|live, paused| async move {
        heartbeat(&live, Duration::from_secs(60)).await;
        let lease = Duration::from_secs(2);
        heartbeat(&paused, lease).await;
        let mut inbox = paused.relay.inbox(paused.id).await.expect("inbox");
        // With an inbox of its own, the live node's relay deletes dead nodes' queues.
        let _live_inbox = live.relay.inbox(live.id).await.expect("inbox");
        let mut changes = changes(&live, &paused).await;
        let alice = UserId::new();
        paused
            .registry
            .register(connection(alice, &paused))
            .await
            .expect("register");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![(alice, true)]
        );
        // Paused past its lease: reaped, its user offline.
        let deadline = Instant::now() + lease + Duration::from_secs(5);
        loop {
            heartbeat(&live, Duration::from_secs(60)).await;
            let got = collect(&mut changes, Duration::from_millis(500)).await;
            if !got.is_empty() {
                assert_eq!(got, vec![(alice, false)]);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no offline change after the lease"
            );
        }
        let sqs = options().sqs().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while queue_exists(&paused.relay, &sqs, paused.id).await {
            assert!(
                Instant::now() < deadline,
                "the reaped node's queue is still there"
            );
            heartbeat(&live, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Its next heartbeat writes its connections again: online, located, reachable (its
        // queue made again).
        heartbeat(&paused, Duration::from_secs(60)).await;
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![(alice, true)]
        );
        // The others learn of the revival with their next read of the leases.
        let deadline = Instant::now() + Duration::from_secs(5);
        while live.registry.locate(&[alice]).await.expect("locate")
            != vec![(paused.id, vec![alice])]
        {
            assert!(
                Instant::now() < deadline,
                "the revived node's user is not located"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let command = NodeCommand::Deliver {
            users: vec![alice],
            frame: r#"{"back":true}"#.into(),
            order: None,
        };
        // Its queue may have been deleted as a dead node's and made again: send until one
        // gets through.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            live.relay
                .send(paused.id, command.clone())
                .await
                .expect("send");
            match tokio::time::timeout(Duration::from_secs(1), inbox.next()).await {
                Ok(Some(NodeCommand::Deliver { frame, .. })) => {
                    assert_eq!(&*frame, r#"{"back":true}"#);
                    break;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => assert!(Instant::now() < deadline, "the revived node gets nothing"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_element_the_reaper_missed_is_dropped_at_the_next_write() {
    with_nodes(|live, dying| async move {
        heartbeat(&live, Duration::from_secs(60)).await;
        heartbeat(&dying, Duration::from_secs(2)).await;
        let mut changes = changes(&live, &dying).await;
        // An element without its connection item, as a write in a node's last moment (or
        // an expired connection item) leaves: the reaper cannot find it.
        let alice = UserId::new();
        let stale = format!("{}/{}", dying.id, ConnectionId::new());
        let dynamodb = options().dynamodb().await;
        let connections = format!("{}connections", live.prefix);
        let presence_key = |update: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder| {
            update
                .table_name(&connections)
                .key("user_id", AttributeValue::S(alice.to_string()))
                .key("sk", AttributeValue::S("presence".into()))
        };
        presence_key(dynamodb.update_item())
            .update_expression("ADD conns :e")
            .expression_attribute_values(":e", AttributeValue::Ss(vec![stale.clone()]))
            .send()
            .await
            .expect("add a stale element");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node_item(&live, dying.id).await.contains_key("dead_at") {
            assert!(Instant::now() < deadline, "the dying node was not reaped");
            heartbeat(&live, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(live.registry.online(&[alice]).await.expect("online"), vec![]);

        let on_live = connection(alice, &live);
        live.registry.register(on_live).await.expect("register");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![(alice, true)],
            "the stale element does not count"
        );
        let item = dynamodb
            .get_item()
            .table_name(&connections)
            .key("user_id", AttributeValue::S(alice.to_string()))
            .key("sk", AttributeValue::S("presence".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get item");
        assert_eq!(
            item.item().and_then(|item| item.get("conns")),
            Some(&AttributeValue::Ss(vec![format!("{}/{}", live.id, on_live.id)]))
        );
    })
    .await;
}

#[tokio::test]
async fn connecting_elsewhere_while_a_lease_has_lapsed_is_no_second_online() {
    with_nodes(|other, lapsing| async move {
        // `other` does not heartbeat yet, so nobody reaps `lapsing` until it does.
        heartbeat(&lapsing, Duration::from_secs(1)).await;
        let mut changes = changes(&other, &lapsing).await;
        let carol = UserId::new();
        lapsing
            .registry
            .register(connection(carol, &lapsing))
            .await
            .expect("register");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![(carol, true)]
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            other.registry.online(&[carol]).await.expect("online"),
            vec![]
        );
        // Carol connects elsewhere before her lapsed node is reaped: still the one online.
        let on_other = connection(carol, &other);
        other.registry.register(on_other).await.expect("register");
        heartbeat(&other, Duration::from_secs(60)).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while node_item(&other, lapsing.id).await.get("cleared")
            != Some(&AttributeValue::Bool(true))
        {
            assert!(Instant::now() < deadline, "the lapsed node was not cleared");
            heartbeat(&other, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![]
        );
        assert_eq!(
            other.registry.online(&[carol]).await.expect("online"),
            vec![carol]
        );
        other
            .registry
            .unregister(on_other)
            .await
            .expect("unregister");
        assert_eq!(
            collect(&mut changes, Duration::from_millis(300)).await,
            vec![(carol, false)]
        );
    })
    .await;
}
