// The registry, presence and relay contracts against NATS: each node gets its own client
// connection, registry and relay, as two gateway processes would; every test uses its own
// bucket and subject prefix.

use std::sync::Arc;

use parlor_core::NodeId;
use parlor_nats::registry::NatsRegistry;
use parlor_nats::relay::NatsRelay;
use parlor_testkit::registry::{Node, Nodes};

const DEFAULT_URL: &str = "nats://127.0.0.1:4223";

async fn connect() -> async_nats::Client {
    let url = std::env::var("PARLOR_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    match async_nats::ConnectOptions::new()
        .connection_timeout(std::time::Duration::from_secs(2))
        .connect(&url)
        .await
    {
        Ok(client) => client,
        Err(error) => panic!(
            "cannot reach NATS at {url} ({error}); start it with \
             `eval \"$(/work/main/scripts/services up)\"` or set PARLOR_TEST_NATS_URL"
        ),
    }
}

async fn nodes() -> Nodes {
    let prefix = format!("test_{}", uuid::Uuid::now_v7().simple());
    let node = |prefix: String| async move {
        let client = connect().await;
        let id = NodeId::new();
        let registry = NatsRegistry::open(client.clone(), &prefix, id, 1)
            .await
            .unwrap_or_else(|error| panic!("cannot open the registry: {error}"));
        Node {
            id,
            registry: registry.clone(),
            presence: registry,
            relay: Arc::new(NatsRelay::new(client, &prefix)),
        }
    };
    // Opened at once, as processes starting together would: creating the bucket must be
    // idempotent.
    let (a, b) = tokio::join!(node(prefix.clone()), node(prefix.clone()));
    Nodes::new(a, b).with_cleanup(move || {
        let bucket = format!("{prefix}_registry");
        async move {
            // Best effort: a leftover bucket only costs disk on a test server.
            let client = connect().await;
            let _ = async_nats::jetstream::new(client)
                .delete_key_value(&bucket)
                .await;
        }
    })
}

parlor_testkit::registry_contract!(nodes);

/// The gateways whose lease runs, as `parlor partitions --set` asks before it changes
/// anything: none before a heartbeat, the node once it heartbeated (whatever its connections
/// do), none once it retired; as another process (a persister's registry) sees them.
#[tokio::test]
async fn live_gateways_are_those_whose_lease_runs() {
    use parlor_core::ports::{ConnectionInfo, Registry};

    let prefix = format!("test_{}", uuid::Uuid::now_v7().simple());
    let client = connect().await;
    let open = |node| NatsRegistry::open(client.clone(), &prefix, node, 1);
    let node = NodeId::new();
    let gateway = open(node).await.unwrap();
    let onlooker = open(NodeId::new()).await.unwrap();
    let seen = || async {
        // The onlooker learns of changes through its watch: wait a moment for them.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        onlooker.live_gateways()
    };
    assert_eq!(seen().await, []);
    gateway
        .heartbeat(node, std::time::Duration::from_secs(25))
        .await
        .unwrap();
    assert_eq!(seen().await, [node]);
    // Connections come and go (their keys purged, with markers) around the lease.
    for _ in 0..3 {
        let connection = ConnectionInfo {
            id: parlor_core::ids::ConnectionId::new(),
            user: parlor_core::UserId::new(),
            node,
        };
        gateway.register(connection).await.unwrap();
        gateway.unregister(connection).await.unwrap();
    }
    assert_eq!(seen().await, [node]);
    gateway.retire(node).await.unwrap();
    assert_eq!(seen().await, []);
    // A later process sees the same, from the bucket alone.
    assert_eq!(open(NodeId::new()).await.unwrap().live_gateways(), []);
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(format!("{prefix}_registry"))
        .await;
}
