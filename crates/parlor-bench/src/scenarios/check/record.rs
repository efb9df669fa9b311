//! What each channel (one device's WebSocket, or one user's HTTP sender) did and saw, and
//! what the store holds at the end: the material of the checks.

/// An index into the run's users; ids are UUID strings, and indexes keep a record of
/// hundreds of thousands of events small.
pub type UserIndex = u16;
/// An index into the run's conversations.
pub type ConversationIndex = u16;

/// One event as a channel received it or as the store holds it: what identifies it, not its
/// body (a message's body changes with its edits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub conversation: ConversationIndex,
    pub seq: u64,
    pub sender: UserIndex,
    pub client_msg_id: String,
    pub kind: &'static str,
}

/// How a send ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Neither accepted nor refused when the run ended.
    Pending,
    Accepted,
    /// A final error (`not_found`, `conflict`, …): sending it again would not change it.
    /// `after_accepted` when the store refused it after the gateway had accepted it.
    Refused {
        code: String,
        after_accepted: bool,
    },
}

/// One change a channel asked for, under one client id however often it was written.
#[derive(Clone, Debug)]
pub struct Send {
    pub client_msg_id: String,
    pub conversation: ConversationIndex,
    pub kind: &'static str,
    /// 1, plus one for each resend after a reconnect or a failed request.
    pub attempts: u32,
    pub outcome: Outcome,
}

/// An event that arrived on the live stream, and on which of the channel's sockets (the
/// first is 1, a new one after each reconnect).
#[derive(Clone, Debug)]
pub struct Delivery {
    pub event: Event,
    pub socket: u32,
}

/// Everything one channel did and saw.
#[derive(Clone, Debug, Default)]
pub struct ChannelRecord {
    pub name: String,
    pub user: UserIndex,
    /// In the order first sent.
    pub sends: Vec<Send>,
    /// In the order received; empty for an HTTP sender.
    pub live: Vec<Delivery>,
    /// Events read with `GET …/events?after_seq=` after reconnecting and at the end.
    pub caught_up: Vec<Event>,
    /// The conversations whose history it could read at the end (it was a member).
    pub member_at_end: Vec<ConversationIndex>,
    pub sockets: u32,
    /// The server (0 the first, then one more per restart) each socket was opened to.
    pub socket_epochs: Vec<usize>,
    /// `error` frames that named no send (a read marker refused, say).
    pub stray_errors: u64,
}

/// What the ids are, to print violations with them.
pub struct Names {
    pub users: Vec<String>,
    pub conversations: Vec<String>,
}

/// The known event kinds, as `&'static str` so that records do not hold a string per event.
pub fn kind_name(kind: &str) -> &'static str {
    const KINDS: &[&str] = &[
        "message",
        "edit",
        "delete",
        "reaction_added",
        "reaction_removed",
        "member_added",
        "member_removed",
        "member_left",
        "title_changed",
        "role_changed",
    ];
    KINDS
        .iter()
        .find(|known| **known == kind)
        .copied()
        .unwrap_or("unknown")
}
