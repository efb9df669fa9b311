//! One device: a WebSocket of a user that asks for every kind of change with a window in
//! flight, resends what was not answered after every reconnect (same client id), catches up
//! over HTTP after reconnecting and at the end, and records all of it.
//!
//! It asks only for changes the rules allow whatever the other devices do meanwhile, so that
//! every refusal is news: it reacts to and replies to messages nobody deletes, edits and
//! deletes only its own, adds a reaction (its own emoji) only once the previous change of it
//! is stored, and each group's membership and roles are changed by one device at a time,
//! each change waiting until the previous one is stored.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::record::{ChannelRecord, ConversationIndex, Event, Outcome, Send, UserIndex};
use super::shared::{Context, Detail, Endpoint, Phase, event_of, is_transient, message_of};
use super::world::Role;
use crate::client::{self, Http, Socket};
use crate::rng::Rng;

/// Recent messages a device may reply or react to, per conversation.
const TARGETS_MAX: usize = 64;
/// Recent own messages a device may edit or delete, per conversation.
const OWN_MAX: usize = 32;
/// Messages a device has a reaction on (or a change of one in flight), per conversation.
const REACTIONS_MAX: usize = 16;
/// A device's emoji: one per device of a user, since a user reacts once with each.
const EMOJI: [&str; 3] = ["👍", "🎉", "😂"];
/// Events per page of a catch-up: a shorter page is the last.
const PAGE_EVENTS: usize = 200;
/// In `Finish`, how long the stream must have been quiet before the last catch-up.
const QUIET: Duration = Duration::from_millis(300);
/// In `Finish`, how long a device tries to reach the server before it gives up.
const FINISH_ATTEMPTS_MAX: u32 = 200;

pub async fn run(context: Context, user: usize, device: usize, rng: Rng) -> ChannelRecord {
    let conversations = context
        .world
        .conversations_of(user)
        .into_iter()
        .map(|(conversation, role)| Knowledge::new(conversation, role))
        .collect();
    let mut device = Device {
        user,
        device,
        rng,
        record: ChannelRecord {
            name: format!("u{user}d{device}"),
            user: user as UserIndex,
            ..ChannelRecord::default()
        },
        by_id: HashMap::new(),
        pending: VecDeque::new(),
        conversations,
        drained: false,
        context,
    };
    device.run().await;
    device.record
}

/// A send not answered yet, and its frame for a resend.
struct Pending {
    index: usize,
    frame: String,
}

enum Ended {
    /// The socket (or the server) went away: reconnect.
    Broken,
    Finished,
}

/// What a device knows of one conversation from the events it received.
struct Knowledge {
    conversation: ConversationIndex,
    role: Role,
    /// Every seq up to here was received.
    contiguous: u64,
    /// Seqs received above `contiguous`.
    above: BTreeSet<u64>,
    targets: VecDeque<u64>,
    /// (seq, may be deleted) of this device's stored messages, not deleted nor being deleted.
    own: VecDeque<(u64, bool)>,
    reactions: HashMap<u64, Reaction>,
    /// The client id of this device's member or role change that is not seen stored yet.
    awaiting: Option<String>,
    /// The admin: each floater; a floater: itself.
    memberships: Vec<Membership>,
    /// The admin: (seq of the latest role change of the deputy, whether it made them admin).
    deputy: (u64, bool),
}

enum Reaction {
    Adding(String),
    Present,
    Removing(String),
}

/// A floater's membership, as the newest event about them says.
struct Membership {
    user: usize,
    seq: u64,
    present: bool,
    /// Whether they leave by themselves this time (else the admin removes them).
    leaves: bool,
}

impl Knowledge {
    fn new(conversation: ConversationIndex, role: Role) -> Knowledge {
        Knowledge {
            conversation,
            role,
            contiguous: 0,
            above: BTreeSet::new(),
            targets: VecDeque::new(),
            own: VecDeque::new(),
            reactions: HashMap::new(),
            awaiting: None,
            memberships: Vec::new(),
            deputy: (0, false),
        }
    }

    /// Marks `seq` received; false if it was already.
    fn receive(&mut self, seq: u64) -> bool {
        if seq <= self.contiguous || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, max: usize) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(item);
}

struct Device {
    user: usize,
    device: usize,
    rng: Rng,
    record: ChannelRecord,
    /// Client id → index in `record.sends`.
    by_id: HashMap<String, usize>,
    /// In the order first sent; at most `window`.
    pending: VecDeque<Pending>,
    conversations: Vec<Knowledge>,
    drained: bool,
    context: Context,
}

impl Device {
    async fn run(&mut self) {
        let world = std::sync::Arc::clone(&self.context.world);
        for knowledge in &mut self.conversations {
            let Some(group) = &world.conversations[usize::from(knowledge.conversation)].group
            else {
                continue;
            };
            knowledge.memberships = match knowledge.role {
                Role::Admin => group.floaters.clone(),
                Role::Floater => vec![self.user],
                Role::Member | Role::Direct => Vec::new(),
            }
            .into_iter()
            .map(|user| Membership {
                user,
                seq: 0,
                present: false,
                leaves: false,
            })
            .collect();
        }
        let mut failures = 0;
        loop {
            let endpoint = self.context.endpoint();
            match self.session(&endpoint).await {
                Ok(Ended::Finished) => return,
                Ok(Ended::Broken) | Err(_) => {
                    failures += 1;
                    if self.context.phase() == Phase::Finish && failures > FINISH_ATTEMPTS_MAX {
                        return;
                    }
                    self.context.wait_for_restart().await;
                }
            }
        }
    }

    async fn session(&mut self, endpoint: &Endpoint) -> anyhow::Result<Ended> {
        let token = self.context.world.users[self.user].token.clone();
        let mut ws = client::connect(&endpoint.address, &token, None).await?;
        self.record.sockets += 1;
        self.record.socket_epochs.push(endpoint.epoch);
        let socket = self.record.sockets;
        for pending in &self.pending {
            ws.send(Message::Text(pending.frame.clone().into())).await?;
            self.record.sends[pending.index].attempts += 1;
        }
        self.catch_up(&endpoint.address, false).await?;
        self.serve(&mut ws, endpoint, socket).await
    }

    async fn serve(
        &mut self,
        ws: &mut Socket,
        endpoint: &Endpoint,
        socket: u32,
    ) -> anyhow::Result<Ended> {
        let mut next_send = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut last_frame = Instant::now();
        loop {
            let phase = self.context.phase();
            let may_send = phase == Phase::Run
                && self.pending.len() < self.context.window
                && self.record.sends.len() < self.context.sends_max;
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        last_frame = Instant::now();
                        if !self.handle(&text, socket, endpoint.epoch) {
                            return Ok(Ended::Broken);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ok(Ended::Broken),
                    Some(Ok(_)) => {}
                },
                _ = tokio::time::sleep_until(next_send), if may_send => {
                    if let Some(frame) = self.next_frame() {
                        ws.send(Message::Text(frame.into())).await?;
                    }
                    let pause = self.context.pause.as_micros() as u64;
                    next_send = Instant::now()
                        + Duration::from_micros(self.rng.between(pause / 2, pause * 3 / 2));
                }
                _ = tick.tick() => match phase {
                    Phase::Run => {
                        if let Some(frame) = self.read_marker() {
                            ws.send(Message::Text(frame.into())).await?;
                        }
                    }
                    Phase::Drain => {
                        if self.pending.is_empty() && !self.drained {
                            self.drained = true;
                            let _ = self.context.drained.try_send(());
                        }
                    }
                    Phase::Finish => {
                        if last_frame.elapsed() >= QUIET {
                            self.catch_up(&endpoint.address, true).await?;
                            let _ = ws.close(None).await;
                            return Ok(Ended::Finished);
                        }
                    }
                },
            }
        }
    }

    /// Handles one frame; false when the socket should be given up (a send met an error
    /// that a resend may overcome: resending it alone would reorder it behind later ones).
    fn handle(&mut self, text: &str, socket: u32, epoch: usize) -> bool {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            self.record.stray_errors += 1;
            return true;
        };
        let world = std::sync::Arc::clone(&self.context.world);
        match frame["type"].as_str() {
            Some("accepted") => {
                let Some(index) = frame["client_msg_id"]
                    .as_str()
                    .and_then(|id| self.by_id.get(id).copied())
                else {
                    self.record.stray_errors += 1;
                    return true;
                };
                if self.record.sends[index].outcome == Outcome::Pending {
                    self.record.sends[index].outcome = Outcome::Accepted;
                }
                self.pending.retain(|pending| pending.index != index);
                self.context.recovery.accepted(epoch);
            }
            Some("error") => {
                let index = frame["client_msg_id"]
                    .as_str()
                    .and_then(|id| self.by_id.get(id).copied());
                let Some(index) = index else {
                    self.record.stray_errors += 1;
                    return true;
                };
                let code = frame["code"].as_str().unwrap_or("unknown").to_string();
                if is_transient(&code) {
                    return !self.pending.iter().any(|pending| pending.index == index);
                }
                let send = &mut self.record.sends[index];
                send.outcome = Outcome::Refused {
                    code,
                    after_accepted: send.outcome == Outcome::Accepted,
                };
                let id = send.client_msg_id.clone();
                let conversation = send.conversation;
                self.pending.retain(|pending| pending.index != index);
                self.forget_change(conversation, &id);
            }
            Some("message") => {
                if let Some((event, detail)) = message_of(&world, &frame["message"]) {
                    self.deliver(event, detail, Some(socket));
                }
            }
            Some("event") => {
                if let Some((event, detail)) = event_of(&world, &frame["event"]) {
                    self.deliver(event, detail, Some(socket));
                }
            }
            _ => {}
        }
        true
    }

    /// A refused change: what waited for it stops waiting.
    fn forget_change(&mut self, conversation: ConversationIndex, id: &str) {
        let Some(knowledge) = self
            .conversations
            .iter_mut()
            .find(|knowledge| knowledge.conversation == conversation)
        else {
            return;
        };
        if knowledge.awaiting.as_deref() == Some(id) {
            knowledge.awaiting = None;
        }
        knowledge.reactions.retain(|_, reaction| match reaction {
            Reaction::Adding(pending) | Reaction::Removing(pending) => pending != id,
            Reaction::Present => true,
        });
    }

    /// Records an event received live (`socket`) or caught up, and learns from it.
    fn deliver(&mut self, event: Event, detail: Detail, socket: Option<u32>) {
        let own_user = self.user as UserIndex;
        let mine = event.sender == own_user && self.by_id.contains_key(&event.client_msg_id);
        let world = std::sync::Arc::clone(&self.context.world);
        if let Some(knowledge) = self
            .conversations
            .iter_mut()
            .find(|knowledge| knowledge.conversation == event.conversation)
            && knowledge.receive(event.seq)
        {
            learn(knowledge, &event, &detail, mine, |id| world.user_index(id));
        }
        match socket {
            Some(socket) => self
                .record
                .live
                .push(super::record::Delivery { event, socket }),
            None => self.record.caught_up.push(event),
        }
    }

    /// Reads every conversation's events after what this device holds. At the end (`last`),
    /// notes which conversations it could read.
    async fn catch_up(&mut self, address: &str, last: bool) -> anyhow::Result<()> {
        // A connection of its own each time: an idle one is closed by the server.
        let mut http = Http::connect(address).await?;
        let world = std::sync::Arc::clone(&self.context.world);
        let token = world.users[self.user].token.clone();
        for index in 0..self.conversations.len() {
            let conversation = self.conversations[index].conversation;
            let id = &world.conversations[usize::from(conversation)].id;
            let mut after = self.conversations[index].contiguous;
            let mut first_page = true;
            loop {
                let path = format!(
                    "/api/v1/conversations/{id}/events?after_seq={after}&limit={PAGE_EVENTS}"
                );
                let (status, page) = http.request("GET", &path, Some(&token), None).await?;
                match status {
                    200 => {}
                    404 => break,
                    _ => anyhow::bail!("GET {path}: {status} {page}"),
                }
                if last && first_page {
                    self.record.member_at_end.push(conversation);
                }
                first_page = false;
                let events = page["events"].as_array().cloned().unwrap_or_default();
                for value in &events {
                    if let Some((event, detail)) = event_of(&world, value) {
                        self.deliver(event, detail, None);
                    }
                }
                match events.last().and_then(|event| event["seq"].as_u64()) {
                    Some(newest) if events.len() == PAGE_EVENTS => after = newest,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// Now and then, a read marker at what this device holds of a conversation: not an event,
    /// but part of what a device does.
    fn read_marker(&mut self) -> Option<String> {
        if !self.rng.percent(5) {
            return None;
        }
        let knowledge =
            &self.conversations[self.rng.below(self.conversations.len() as u64) as usize];
        if knowledge.role == Role::Floater || knowledge.contiguous == 0 {
            return None;
        }
        let id = &self.context.world.conversations[usize::from(knowledge.conversation)].id;
        Some(
            json!({"type": "read", "conversation_id": id, "seq": knowledge.contiguous}).to_string(),
        )
    }

    /// The next change to ask for, recorded as sent, as a frame.
    fn next_frame(&mut self) -> Option<String> {
        let index = self.rng.below(self.conversations.len() as u64) as usize;
        let (kind, fields) = self.choose(index)?;
        let conversation = self.conversations[index].conversation;
        let world = std::sync::Arc::clone(&self.context.world);
        let conversation_id = &world.conversations[usize::from(conversation)].id;
        // What others must know of the change from its id alone: that its message may be
        // deleted (nobody else replies or reacts to it), that a floater leaves by themselves.
        let suffix = match kind {
            "message" if self.rng.percent(15) => "x",
            "member_added" if self.rng.percent(50) => "-leave",
            "member_added" => "-remove",
            _ => "",
        };
        let client_msg_id = format!("{}-{}{suffix}", self.record.name, self.record.sends.len());
        let knowledge = &mut self.conversations[index];
        match kind {
            "member_added" | "member_removed" | "member_left" | "role_changed" => {
                knowledge.awaiting = Some(client_msg_id.clone());
            }
            "reaction_added" | "reaction_removed" => {
                let target = fields["target_seq"].as_u64().unwrap_or_default();
                let reaction = if kind == "reaction_added" {
                    Reaction::Adding(client_msg_id.clone())
                } else {
                    Reaction::Removing(client_msg_id.clone())
                };
                knowledge.reactions.insert(target, reaction);
            }
            _ => {}
        }
        let mut frame = fields;
        frame["conversation_id"] = json!(conversation_id);
        frame["client_msg_id"] = json!(client_msg_id);
        if kind == "message" {
            frame["body"] = json!(format!("{client_msg_id} from {}", self.record.name));
        }
        // Messages go as `send` frames too, as clients written before events send them.
        let plain = kind == "message" && self.rng.percent(50);
        if plain {
            frame["type"] = json!("send");
        } else {
            frame["type"] = json!("event");
            frame["kind"] = json!(kind);
        }
        let frame = frame.to_string();
        let index = self.record.sends.len();
        self.record.sends.push(Send {
            client_msg_id: client_msg_id.clone(),
            conversation,
            kind,
            attempts: 1,
            outcome: Outcome::Pending,
        });
        self.by_id.insert(client_msg_id, index);
        self.pending.push_back(Pending {
            index,
            frame: frame.clone(),
        });
        Some(frame)
    }

    /// A change the rules allow in conversation `index` now, whatever others do meanwhile:
    /// its kind and fields.
    fn choose(&mut self, index: usize) -> Option<(&'static str, Value)> {
        let user_id = |world: &super::world::World, user: usize| world.users[user].id.clone();
        let world = std::sync::Arc::clone(&self.context.world);
        let rng = &mut self.rng;
        let device = self.device;
        let knowledge = &mut self.conversations[index];
        let message = || Some(("message", json!({})));
        if knowledge.role == Role::Floater {
            let me = knowledge.memberships.first()?;
            let leave = device == 0
                && knowledge.awaiting.is_none()
                && me.present
                && me.leaves
                && rng.percent(30);
            return leave.then(|| ("member_left", json!({})));
        }
        let roll = rng.below(100);
        let change = match roll {
            0..40 => message(),
            40..50 => {
                let target = *rng.pick(knowledge.targets.make_contiguous())?;
                Some(("message", json!({"reply_to_seq": target})))
            }
            50..60 => {
                let (target, _) = *rng.pick(knowledge.own.make_contiguous())?;
                Some((
                    "edit",
                    json!({"target_seq": target, "body": format!("edited by {}", device)}),
                ))
            }
            60..65 => {
                let deletable: Vec<u64> = knowledge
                    .own
                    .iter()
                    .filter(|(_, deletable)| *deletable)
                    .map(|(seq, _)| *seq)
                    .collect();
                let target = *rng.pick(&deletable)?;
                knowledge.own.retain(|(seq, _)| *seq != target);
                Some(("delete", json!({"target_seq": target})))
            }
            65..75 if knowledge.reactions.len() < REACTIONS_MAX => {
                let free: Vec<u64> = knowledge
                    .targets
                    .iter()
                    .filter(|seq| !knowledge.reactions.contains_key(seq))
                    .copied()
                    .collect();
                let target = *rng.pick(&free)?;
                let emoji = EMOJI[device % EMOJI.len()];
                Some((
                    "reaction_added",
                    json!({"target_seq": target, "emoji": emoji}),
                ))
            }
            75..80 => {
                let present: Vec<u64> = knowledge
                    .reactions
                    .iter()
                    .filter(|(_, reaction)| matches!(reaction, Reaction::Present))
                    .map(|(seq, _)| *seq)
                    .collect();
                let target = *rng.pick(&present)?;
                let emoji = EMOJI[device % EMOJI.len()];
                Some((
                    "reaction_removed",
                    json!({"target_seq": target, "emoji": emoji}),
                ))
            }
            80..97 if knowledge.role == Role::Admin && device == 0 => {
                let group = world.conversations[usize::from(knowledge.conversation)]
                    .group
                    .as_ref()?;
                match roll {
                    80..90 if knowledge.awaiting.is_none() => {
                        let floater = rng.pick(&knowledge.memberships)?;
                        if !floater.present {
                            Some((
                                "member_added",
                                json!({"user_id": user_id(&world, floater.user)}),
                            ))
                        } else if !floater.leaves {
                            Some((
                                "member_removed",
                                json!({"user_id": user_id(&world, floater.user)}),
                            ))
                        } else {
                            None
                        }
                    }
                    90..94 if knowledge.awaiting.is_none() => {
                        let role = if knowledge.deputy.1 {
                            "member"
                        } else {
                            "admin"
                        };
                        Some((
                            "role_changed",
                            json!({"user_id": user_id(&world, group.deputy), "role": role}),
                        ))
                    }
                    94..97 => Some((
                        "title_changed",
                        json!({"title": format!("group retitled by {}", device)}),
                    )),
                    _ => None,
                }
            }
            _ => message(),
        };
        change.or_else(message)
    }
}

/// What a newly received event teaches a device about its conversation.
fn learn(
    knowledge: &mut Knowledge,
    event: &Event,
    detail: &Detail,
    mine: bool,
    user_index: impl Fn(&str) -> Option<UserIndex>,
) {
    if knowledge.awaiting.as_deref() == Some(event.client_msg_id.as_str()) && mine {
        knowledge.awaiting = None;
    }
    let target = detail.target_seq.unwrap_or_default();
    match event.kind {
        "message" => {
            let deletable = event.client_msg_id.ends_with('x');
            if !deletable {
                push_bounded(&mut knowledge.targets, event.seq, TARGETS_MAX);
            }
            if mine {
                push_bounded(&mut knowledge.own, (event.seq, deletable), OWN_MAX);
            }
        }
        "delete" => {
            knowledge.targets.retain(|seq| *seq != target);
            knowledge.own.retain(|(seq, _)| *seq != target);
        }
        "reaction_added" | "reaction_removed" if mine => {
            let added = event.kind == "reaction_added";
            match knowledge.reactions.get(&target) {
                Some(Reaction::Adding(id)) if added && *id == event.client_msg_id => {
                    knowledge.reactions.insert(target, Reaction::Present);
                }
                Some(Reaction::Removing(id)) if !added && *id == event.client_msg_id => {
                    knowledge.reactions.remove(&target);
                }
                _ => {}
            }
        }
        "member_added" | "member_removed" | "member_left" => {
            let Some(user) = detail.user.as_deref().and_then(&user_index) else {
                return;
            };
            let added = event.kind == "member_added";
            for membership in &mut knowledge.memberships {
                if usize::from(user) == membership.user && event.seq > membership.seq {
                    membership.seq = event.seq;
                    membership.present = added;
                    membership.leaves = added && event.client_msg_id.ends_with("-leave");
                }
            }
        }
        "role_changed" if knowledge.role == Role::Admin && event.seq > knowledge.deputy.0 => {
            knowledge.deputy = (event.seq, detail.role.as_deref() == Some("admin"));
        }
        _ => {}
    }
}
