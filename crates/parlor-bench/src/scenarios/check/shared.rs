//! What every channel of a run shares with the kill loop: where the server is now, what
//! phase the run is in, and when each restart took its first send.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::record::{Event, kind_name};
use super::world::World;

/// How long a channel waits for a restart before it tries the same address again.
pub const RETRY: Duration = Duration::from_millis(50);

/// The server's address, and how many restarts it took to get there.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub epoch: usize,
    pub address: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Sending new changes (and resending, and receiving).
    Run,
    /// No new changes: waiting for an answer to every one sent.
    Drain,
    /// Everything is stored: catch up once more and hand the record in.
    Finish,
}

/// When each server (by epoch, the first is 0) answered its first send with `accepted`.
#[derive(Default)]
pub struct Recovery {
    first_accepted: Mutex<Vec<Option<Instant>>>,
}

impl Recovery {
    pub fn accepted(&self, epoch: usize) {
        let mut first = self
            .first_accepted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.len() <= epoch {
            first.resize(epoch + 1, None);
        }
        first[epoch].get_or_insert_with(Instant::now);
    }

    pub fn first_accepted(&self, epoch: usize) -> Option<Instant> {
        let first = self
            .first_accepted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        first.get(epoch).copied().flatten()
    }
}

/// What a channel is given.
#[derive(Clone)]
pub struct Context {
    pub world: Arc<World>,
    pub endpoint: watch::Receiver<Endpoint>,
    pub phase: watch::Receiver<Phase>,
    pub recovery: Arc<Recovery>,
    /// Each channel sends one `()` once everything it sent is answered, in `Drain`.
    pub drained: mpsc::Sender<()>,
    /// Sends in flight per WebSocket.
    pub window: usize,
    /// Between one channel's sends, on average.
    pub pause: Duration,
    /// Sends per channel at most.
    pub sends_max: usize,
}

impl Context {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// The newest endpoint, marked seen, so that `changed` waits for the next restart.
    pub fn endpoint(&mut self) -> Endpoint {
        self.endpoint.borrow_and_update().clone()
    }

    /// Waits for a restart, at most `RETRY`.
    pub async fn wait_for_restart(&mut self) {
        let _ = tokio::time::timeout(RETRY, self.endpoint.changed()).await;
    }
}

/// The fields of an event that a channel acts on, beyond what identifies it.
#[derive(Debug, Default)]
pub struct Detail {
    pub target_seq: Option<u64>,
    /// Whom a member or role change is about.
    pub user: Option<String>,
    pub role: Option<String>,
}

/// An event as the events API and `event` frames carry it.
pub fn event_of(world: &World, value: &Value) -> Option<(Event, Detail)> {
    let event = Event {
        conversation: world.conversation_index(value["conversation_id"].as_str()?)?,
        seq: value["seq"].as_u64()?,
        sender: world.user_index(value["sender_id"].as_str()?)?,
        client_msg_id: value["client_msg_id"].as_str()?.to_string(),
        kind: kind_name(value["kind"].as_str()?),
    };
    let user = value["user"]["id"]
        .as_str()
        .or_else(|| value["user_id"].as_str());
    let detail = Detail {
        target_seq: value["target_seq"].as_u64(),
        user: user.map(str::to_string),
        role: value["role"].as_str().map(str::to_string),
    };
    Some((event, detail))
}

/// A message as a `message` frame carries it.
pub fn message_of(world: &World, value: &Value) -> Option<(Event, Detail)> {
    let event = Event {
        conversation: world.conversation_index(value["conversation_id"].as_str()?)?,
        seq: value["seq"].as_u64()?,
        sender: world.user_index(value["sender_id"].as_str()?)?,
        client_msg_id: value["client_msg_id"].as_str()?.to_string(),
        kind: "message",
    };
    Some((event, Detail::default()))
}

/// Error codes that a resend may overcome; every other one is final.
pub fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "unavailable" | "internal" | "rate_limited" | "storage_full"
    )
}
