//! The scenarios. Each is bounded in count and time, prints a table and writes JSON.

pub mod catchup;
pub mod check;
pub mod connections;
pub mod fanout;
pub mod hold;
pub mod latency;
pub mod restart;
pub mod search;
pub mod throughput;

use serde::Deserialize;

use crate::client::{self, Http, Socket};

/// One sender and one receiver in their direct conversation, both connected.
pub struct Pair {
    pub conversation: String,
    pub sender: Socket,
    pub receiver: Socket,
}

pub async fn pairs(address: &str, prefix: &str, count: usize) -> anyhow::Result<Vec<Pair>> {
    let accounts = client::register_many(address, prefix, 2 * count, 8).await?;
    let mut http = Http::connect(address).await?;
    let mut pairs = Vec::with_capacity(count);
    for two in accounts.chunks(2) {
        let conversation = client::direct(&mut http, &two[0], &two[1]).await?;
        pairs.push(Pair {
            conversation,
            sender: client::connect(address, &two[0].token, None).await?,
            receiver: client::connect(address, &two[1].token, None).await?,
        });
    }
    Ok(pairs)
}

/// The parts of a server frame the generator looks at, borrowed: parsing every frame in
/// full would make the generator, not the server, the bottleneck.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    message: Option<FrameMessage<'a>>,
    #[serde(borrow)]
    client_msg_id: Option<&'a str>,
}

#[derive(Deserialize)]
struct FrameMessage<'a> {
    seq: u64,
    #[serde(borrow)]
    client_msg_id: &'a str,
}

/// What a frame means to a scenario.
pub enum Seen<'a> {
    Accepted { client_msg_id: &'a str },
    Message { seq: u64, client_msg_id: &'a str },
    Error(&'a str),
    Other,
}

pub fn classify(text: &str) -> Seen<'_> {
    let Ok(frame) = serde_json::from_str::<Frame>(text) else {
        return Seen::Other;
    };
    match (frame.kind, frame.message, frame.client_msg_id) {
        ("accepted", _, Some(client_msg_id)) => Seen::Accepted { client_msg_id },
        ("message", Some(message), _) => Seen::Message {
            seq: message.seq,
            client_msg_id: message.client_msg_id,
        },
        ("error", _, _) => Seen::Error(text),
        _ => Seen::Other,
    }
}

/// `m{index}` → index.
pub fn index_of(client_msg_id: &str) -> Option<usize> {
    client_msg_id.strip_prefix('m')?.parse().ok()
}

/// A body of about sixty bytes, typical of a chat line.
pub const BODY: &str = "a message of about sixty bytes, typical of a line of chat....";
