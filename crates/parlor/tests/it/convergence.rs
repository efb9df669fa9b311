//! Convergence: several clients make random changes to one conversation (messages, replies,
//! edits, deletes, reactions), reconnect at random, and the server is killed with `kill -9`
//! half-way and restarted on the same data. Each client keeps its own view the way a real
//! client does: it applies the frames it receives in `seq` order, once each, and catches up
//! from the store whenever it sees a gap or reconnects. In the end every client's view equals
//! the store's state, and every change the server accepted is in the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Http, Server, Ws};

const STEPS: usize = 240;
const EMOJI: [&str; 3] = ["👍", "🎉", "❤️"];

/// A small deterministic generator (xorshift64*): the run is the same for a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// A message as a client holds it, and as the store answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    sender: String,
    body: String,
    deleted: bool,
    edited: bool,
    reply_to: Option<u64>,
    mentions: Vec<String>,
    reactions: BTreeMap<String, BTreeSet<String>>,
}

impl Shown {
    fn of(message: &Value) -> Shown {
        let mut reactions = BTreeMap::new();
        for reaction in message["reactions"].as_array().into_iter().flatten() {
            let users = reaction["user_ids"].as_array().unwrap();
            let users = users
                .iter()
                .map(|u| u.as_str().unwrap().to_owned())
                .collect();
            reactions.insert(reaction["emoji"].as_str().unwrap().to_owned(), users);
        }
        let deleted = message["deleted"].as_bool().unwrap_or(false);
        Shown {
            sender: message["sender_id"].as_str().unwrap().to_owned(),
            body: message["body"].as_str().unwrap().to_owned(),
            deleted,
            // Whether a deleted message had been edited is nobody's business.
            edited: message["edited_at"].is_string() && !deleted,
            reply_to: message["reply_to"]["seq"].as_u64(),
            mentions: strings(&message["mentions"]),
            reactions,
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// One client: its socket, its view, and what the server told it.
struct Client {
    id: String,
    token: String,
    ws: Option<Ws>,
    /// The highest seq applied: every event up to it, once, in order.
    applied: u64,
    messages: BTreeMap<u64, Shown>,
    accepted: HashSet<String>,
    refused: HashSet<String>,
    /// Every frame sent, by client_msg_id, to ask again about an answer missed.
    sent: HashMap<String, Value>,
    next_id: usize,
}

impl Client {
    /// Applies one event (a `message` frame's message is wrapped as an event).
    fn apply(&mut self, event: &Value) {
        let seq = event["seq"].as_u64().unwrap();
        assert_eq!(
            seq,
            self.applied + 1,
            "events are applied once each, in order"
        );
        self.applied = seq;
        let target = event["target_seq"].as_u64();
        let sender = event["sender_id"].as_str().unwrap().to_owned();
        match event["kind"].as_str().unwrap() {
            "message" => {
                self.messages.insert(seq, Shown::of(&event["message"]));
            }
            "edit" => {
                if let Some(shown) = target.and_then(|t| self.messages.get_mut(&t)) {
                    shown.body = event["body"].as_str().unwrap().to_owned();
                    shown.mentions = strings(&event["mentions"]);
                    shown.edited = true;
                }
            }
            "delete" => {
                if let Some(shown) = target.and_then(|t| self.messages.get_mut(&t)) {
                    shown.body.clear();
                    shown.mentions.clear();
                    shown.reactions.clear();
                    shown.deleted = true;
                    shown.edited = false;
                }
            }
            kind @ ("reaction_added" | "reaction_removed") => {
                if let Some(shown) = target.and_then(|t| self.messages.get_mut(&t)) {
                    let emoji = event["emoji"].as_str().unwrap().to_owned();
                    let users = shown.reactions.entry(emoji.clone()).or_default();
                    if kind == "reaction_added" {
                        users.insert(sender);
                    } else {
                        users.remove(&sender);
                        if users.is_empty() {
                            shown.reactions.remove(&emoji);
                        }
                    }
                }
            }
            other => panic!("no {other} events in this test"),
        }
    }

    /// Takes one frame: an event in order is applied; one after a gap first catches up.
    async fn receive(&mut self, http: &Http, chat: &str, frame: Value) {
        let event = match frame["type"].as_str() {
            Some("message") => {
                let mut event = frame["message"].clone();
                event["kind"] = json!("message");
                event["message"] = frame["message"].clone();
                event
            }
            Some("event") => frame["event"].clone(),
            Some("accepted") => {
                self.accepted
                    .insert(frame["client_msg_id"].as_str().unwrap().to_owned());
                return;
            }
            Some("error") => {
                if let Some(id) = frame["client_msg_id"].as_str() {
                    self.refused.insert(id.to_owned());
                }
                return;
            }
            _ => return,
        };
        let seq = event["seq"].as_u64().unwrap();
        if seq <= self.applied {
            return;
        }
        if seq > self.applied + 1 {
            self.catch_up(http, chat).await;
            if seq <= self.applied {
                return;
            }
        }
        self.apply(&event);
    }

    /// Applies every stored event after the view's last one.
    async fn catch_up(&mut self, http: &Http, chat: &str) {
        loop {
            let path = format!(
                "/api/v1/conversations/{chat}/events?after_seq={}&limit=50",
                self.applied
            );
            let response = http.get(&path, &self.token).await;
            assert_eq!(response.status, 200, "{response:?}");
            let page = response.json()["events"].as_array().unwrap().clone();
            if page.is_empty() {
                return;
            }
            for event in &page {
                self.apply(event);
            }
        }
    }

    /// Reads what has arrived, for up to `wait`.
    async fn drain(&mut self, http: &Http, chat: &str, wait: Duration) {
        while let Some(ws) = self.ws.as_mut() {
            let Some(frame) = ws.try_next(wait).await else {
                // Closed (the server died) or quiet.
                return;
            };
            self.receive(http, chat, frame).await;
        }
    }

    async fn reconnect(&mut self, http: &Http, address: &str, chat: &str) {
        self.ws = None;
        self.ws = Some(Ws::connect(address, &self.token).await);
        self.catch_up(http, chat).await;
    }

    /// A random change this client may well be allowed to make, by what it knows.
    fn random_change(&mut self, rng: &mut Rng, names: &[String], chat: &str) -> Value {
        self.next_id += 1;
        let client_msg_id = format!("{}-{}", &self.id[24..], self.next_id);
        let live: Vec<u64> = self
            .messages
            .iter()
            .filter(|(_, shown)| !shown.deleted)
            .map(|(seq, _)| *seq)
            .collect();
        let own: Vec<u64> = live
            .iter()
            .copied()
            .filter(|seq| self.messages[seq].sender == self.id)
            .collect();
        // (message, emoji) this client reacted with.
        let reacted: Vec<(u64, String)> = live
            .iter()
            .flat_map(|seq| {
                self.messages[seq]
                    .reactions
                    .iter()
                    .filter(|(_, users)| users.contains(&self.id))
                    .map(|(emoji, _)| (*seq, emoji.clone()))
            })
            .collect();
        let pick = |rng: &mut Rng, seqs: &[u64]| seqs[rng.below(seqs.len())];
        let mut change = match rng.below(10) {
            0..=3 => {
                let name = &names[rng.below(names.len())];
                json!({"kind": "message", "body": format!("hi @{name} #{}", self.next_id)})
            }
            4 if !live.is_empty() => {
                json!({"kind": "message", "body": "re", "reply_to_seq": pick(rng, &live)})
            }
            5 if !own.is_empty() => {
                let name = &names[rng.below(names.len())];
                json!({"kind": "edit", "target_seq": pick(rng, &own), "body": format!("edited for @{name}")})
            }
            6 if !own.is_empty() => json!({"kind": "delete", "target_seq": pick(rng, &own)}),
            7 if !reacted.is_empty() => {
                let (target, emoji) = &reacted[rng.below(reacted.len())];
                json!({"kind": "reaction_removed", "target_seq": target, "emoji": emoji})
            }
            7 | 8 if !live.is_empty() => {
                let target = pick(rng, &live);
                let emoji = EMOJI[rng.below(EMOJI.len())];
                let mine = self.messages[&target]
                    .reactions
                    .get(emoji)
                    .is_some_and(|users| users.contains(&self.id));
                let kind = if mine {
                    "reaction_removed"
                } else {
                    "reaction_added"
                };
                json!({"kind": kind, "target_seq": target, "emoji": emoji})
            }
            _ => json!({"kind": "message", "body": format!("note {}", self.next_id)}),
        };
        change["type"] = json!("event");
        change["conversation_id"] = json!(chat);
        change["client_msg_id"] = json!(client_msg_id);
        self.sent.insert(client_msg_id, change.clone());
        change
    }

    /// Sends the change `id` again, as a real client's outbox does after a reconnect, and
    /// waits for its answer: `true` if refused now. A change the store refused after it was
    /// accepted is announced to its sender only, once: a client that was reconnecting then
    /// learns of it this way (and a change that was lost would be accepted again).
    async fn refused_on_resend(&mut self, id: &str) -> bool {
        let frame = self.sent[id].clone();
        let ws = self.ws.as_mut().expect("connected");
        ws.send(frame).await;
        loop {
            let Some(answer) = ws.try_next(Duration::from_secs(10)).await else {
                panic!("no answer to the resend of {id}");
            };
            if answer["client_msg_id"] != id {
                continue;
            }
            match answer["type"].as_str() {
                Some("error") => return true,
                Some("accepted") => return false,
                _ => {}
            }
        }
    }
}

/// The store's state: every message in its current state, by seq.
async fn stored(http: &Http, token: &str, chat: &str) -> BTreeMap<u64, Shown> {
    http.history(token, chat)
        .await
        .iter()
        .map(|message| (message["seq"].as_u64().unwrap(), Shown::of(message)))
        .collect()
}

/// Every stored event's client_msg_id and kind, and the newest seq.
async fn stored_ids(
    http: &Http,
    token: &str,
    chat: &str,
) -> (HashSet<String>, BTreeSet<String>, u64) {
    let mut ids = HashSet::new();
    let mut kinds = BTreeSet::new();
    let mut after = 0;
    loop {
        let path = format!("/api/v1/conversations/{chat}/events?after_seq={after}&limit=200");
        let page = http.get(&path, token).await.json()["events"]
            .as_array()
            .unwrap()
            .clone();
        let Some(last) = page.last() else {
            return (ids, kinds, after);
        };
        after = last["seq"].as_u64().unwrap();
        for event in &page {
            ids.insert(event["client_msg_id"].as_str().unwrap().to_owned());
            kinds.insert(event["kind"].as_str().unwrap().to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_ends_at_the_stores_state_through_reconnects_and_kill_9() {
    let seed = 0x5eed_0000_0000_0001 ^ u64::from(std::process::id());
    println!("seed {seed:#x}");
    let mut rng = Rng(seed);
    let data = TempDir::new().unwrap();
    let mut server = Server::start(data.path(), &[], &[]);
    let mut http = server.http();
    let names: Vec<String> = ["ann", "ben", "cat"].map(String::from).to_vec();
    let mut clients = Vec::new();
    for name in &names {
        let (id, token) = http.register(name).await;
        clients.push(Client {
            id,
            token,
            ws: None,
            applied: 0,
            messages: BTreeMap::new(),
            accepted: HashSet::new(),
            refused: HashSet::new(),
            sent: HashMap::new(),
            next_id: 0,
        });
    }
    let others: Vec<&String> = clients[1..].iter().map(|c| &c.id).collect();
    let created = http
        .post(
            "/api/v1/conversations",
            &clients[0].token,
            json!({"kind": "group", "title": "chaos", "members": others}),
        )
        .await;
    let chat = created.json()["id"].as_str().unwrap().to_owned();
    for client in &mut clients {
        client.reconnect(&http, &server.address, &chat).await;
    }

    for step in 0..STEPS {
        if step == STEPS / 2 {
            // Whatever was accepted must survive; what was in flight may be lost.
            server.kill();
            server = Server::start(data.path(), &[], &[]);
            http = server.http();
            for client in &mut clients {
                client.drain(&http, &chat, Duration::from_millis(50)).await;
                client.reconnect(&http, &server.address, &chat).await;
            }
        }
        let index = rng.below(clients.len());
        if rng.below(20) == 0 {
            clients[index]
                .reconnect(&http, &server.address, &chat)
                .await;
        }
        let change = clients[index].random_change(&mut rng, &names, &chat);
        if let Some(ws) = clients[index].ws.as_mut() {
            ws.send(change).await;
        }
        for client in &mut clients {
            client.drain(&http, &chat, Duration::from_millis(2)).await;
        }
    }

    // Quiet: the store stops growing, every client reads the rest.
    let token = clients[0].token.clone();
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, _, newest) = stored_ids(&http, &token, &chat).await;
        if newest == last {
            break;
        }
        last = newest;
    }
    let truth = stored(&http, &token, &chat).await;
    let (ids, kinds, newest) = stored_ids(&http, &token, &chat).await;
    println!("{newest} events stored, of kinds {kinds:?}");
    assert!(
        newest > STEPS as u64 / 2,
        "most changes were stored: {newest}"
    );
    let every_kind: BTreeSet<String> = [
        "message",
        "edit",
        "delete",
        "reaction_added",
        "reaction_removed",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, every_kind, "the run made every kind of change");
    for client in &mut clients {
        client.drain(&http, &chat, Duration::from_millis(200)).await;
        client.catch_up(&http, &chat).await;
        assert_eq!(client.applied, newest, "{} saw every event", client.id);
        assert_eq!(
            client.messages, truth,
            "{}'s view is the store's",
            client.id
        );
        let unexplained: Vec<String> = client
            .accepted
            .iter()
            .filter(|id| !ids.contains(*id) && !client.refused.contains(*id))
            .cloned()
            .collect();
        let mut lost = Vec::new();
        for id in unexplained {
            if client.refused_on_resend(&id).await {
                client.refused.insert(id);
            } else {
                lost.push(id);
            }
        }
        assert!(lost.is_empty(), "accepted and never stored: {lost:?}");
        println!(
            "{}: {} accepted, {} refused",
            &client.id[24..],
            client.accepted.len(),
            client.refused.len()
        );
    }
}
