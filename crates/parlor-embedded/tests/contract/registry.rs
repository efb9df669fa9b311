// The registry, presence and relay contracts against the embedded backend: both nodes
// share one MemoryRegistry and one LocalRelay, as they would in one process.

use std::sync::Arc;

use parlor_core::NodeId;
use parlor_embedded::{LocalRelay, MemoryRegistry};
use parlor_testkit::registry::{Node, Nodes};

async fn nodes() -> Nodes {
    let registry = Arc::new(MemoryRegistry::new());
    let relay = Arc::new(LocalRelay::new());
    let node = |id| Node {
        id,
        registry: registry.clone(),
        presence: registry.clone(),
        relay: relay.clone(),
    };
    Nodes::new(node(NodeId::new()), node(NodeId::new()))
}

parlor_testkit::registry_contract!(nodes);
