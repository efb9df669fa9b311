//! The checks, on every channel's record and the store as members read it at the end. Pure,
//! so that each check is tested on records made by hand.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::record::{ChannelRecord, ConversationIndex, Event, Names, Outcome, UserIndex};

/// How many violations are described (printed, and kept in the JSON); every one is counted.
const NOTES_MAX: usize = 200;

/// What the checks found. Every field from `lost` to `unanswered` counts violations.
#[derive(Debug, Default)]
pub struct Findings {
    /// Distinct sends (client ids), however often each was written.
    pub events_sent: u64,
    /// Sends answered `accepted` (some of them refused by the store afterwards).
    pub accepted: u64,
    /// Sends found in the store.
    pub stored: u64,
    /// Sends that ended with a final error, before or after `accepted`.
    pub refused: u64,
    /// Stored events by kind: that the run asked for every kind.
    pub stored_kinds: BTreeMap<&'static str, u64>,
    /// Events received again, or out of order, on a new socket or after a resend of the
    /// same user: what a reconnect explains, not a violation.
    pub reconnect_explained: u64,

    /// Accepted, never refused, and not in the store.
    pub lost: u64,
    /// Extra copies of one (sender, client id) in the store.
    pub duplicated: u64,
    /// Places where a conversation's seqs are not 1, 2, 3…
    pub seq_gaps: u64,
    /// A channel's send stored before one it sent earlier (same conversation).
    pub reordered: u64,
    /// Stored under a (sender, client id, conversation) that no channel sent.
    pub never_sent_but_stored: u64,
    /// Answered with a final error, and stored all the same.
    pub refused_but_stored: u64,
    /// The same seq twice on one socket with no resend to explain it.
    pub live_duplicates: u64,
    /// A seq below one already received on the same socket, with no resend to explain it.
    pub live_reorders: u64,
    /// An event a device received that the store holds otherwise or not at all, or a
    /// member's device missing stored events after catching up.
    pub view_mismatches: u64,
    /// Sends that got no answer by the end.
    pub unanswered: u64,

    /// The first violations, described with their ids.
    pub notes: Vec<String>,
}

impl Findings {
    pub fn violations(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.seq_gaps
            + self.reordered
            + self.never_sent_but_stored
            + self.refused_but_stored
            + self.live_duplicates
            + self.live_reorders
            + self.view_mismatches
            + self.unanswered
    }

    fn note(&mut self, text: String) {
        if self.notes.len() < NOTES_MAX {
            self.notes.push(text);
        }
    }
}

/// Runs every check. `store[c]` is conversation `c`'s events as its history reads, by seq;
/// `restarts[e][c]` is conversation `c`'s newest seq when server `e` started (the first, 0,
/// started empty): a bound of what the previous one had stored when it was killed.
pub fn check(
    channels: &[ChannelRecord],
    store: &[Vec<Event>],
    restarts: &[Vec<u64>],
    names: &Names,
) -> Findings {
    let mut findings = Findings::default();
    let stored_at = index_store(store);
    for event in store.iter().flatten() {
        *findings.stored_kinds.entry(event.kind).or_default() += 1;
    }
    seqs_are_gap_free(store, names, &mut findings);
    stored_once(&stored_at, names, &mut findings);
    sends_are_stored_in_order(channels, &stored_at, names, &mut findings);
    nothing_stored_unsent(channels, store, names, &mut findings);
    live_streams_are_ordered(channels, restarts, names, &mut findings);
    views_equal_the_store(channels, store, names, &mut findings);
    findings
}

type Key<'a> = (UserIndex, &'a str);

/// Every stored event by (sender, client id).
fn index_store(store: &[Vec<Event>]) -> HashMap<Key<'_>, Vec<&Event>> {
    let mut stored_at: HashMap<Key, Vec<&Event>> = HashMap::new();
    for event in store.iter().flatten() {
        stored_at
            .entry((event.sender, event.client_msg_id.as_str()))
            .or_default()
            .push(event);
    }
    stored_at
}

fn describe(event: &Event, names: &Names) -> String {
    format!(
        "conversation {} seq {} client id {} ({} by {})",
        names.conversations[usize::from(event.conversation)],
        event.seq,
        event.client_msg_id,
        event.kind,
        names.users[usize::from(event.sender)],
    )
}

/// Check 2: each conversation's seqs are 1..n with nothing missing or repeated.
fn seqs_are_gap_free(store: &[Vec<Event>], names: &Names, findings: &mut Findings) {
    for (conversation, events) in store.iter().enumerate() {
        let mut previous = 0;
        for event in events {
            if event.seq != previous + 1 {
                findings.seq_gaps += 1;
                findings.note(format!(
                    "seq gap: conversation {} goes from seq {previous} to {}",
                    names.conversations[conversation], event.seq
                ));
            }
            previous = event.seq;
        }
    }
}

/// Check 1, its "once": no (sender, client id) is stored twice.
fn stored_once(stored_at: &HashMap<Key, Vec<&Event>>, names: &Names, findings: &mut Findings) {
    let mut copies: Vec<&Vec<&Event>> = stored_at.values().filter(|all| all.len() > 1).collect();
    copies.sort_by_key(|all| (all[0].conversation, all[0].seq));
    for all in copies {
        findings.duplicated += all.len() as u64 - 1;
        let seqs: Vec<u64> = all.iter().map(|event| event.seq).collect();
        findings.note(format!(
            "duplicated: {} is stored {} times, at seqs {seqs:?}",
            describe(all[0], names),
            all.len()
        ));
    }
}

/// Check 1 (every accepted send is stored) and check 3 (in the order the channel sent
/// them, per conversation); a refused send must not be stored, and every send is answered.
fn sends_are_stored_in_order(
    channels: &[ChannelRecord],
    stored_at: &HashMap<Key, Vec<&Event>>,
    names: &Names,
    findings: &mut Findings,
) {
    for channel in channels {
        // Per conversation: the highest seq of this channel's sends so far, and its send.
        let mut highest: HashMap<ConversationIndex, (u64, &str)> = HashMap::new();
        for send in &channel.sends {
            findings.events_sent += 1;
            let conversation = &names.conversations[usize::from(send.conversation)];
            let stored = stored_at
                .get(&(channel.user, send.client_msg_id.as_str()))
                .and_then(|all| {
                    all.iter()
                        .find(|event| event.conversation == send.conversation)
                });
            match &send.outcome {
                Outcome::Accepted => findings.accepted += 1,
                Outcome::Refused { after_accepted, .. } => {
                    findings.accepted += u64::from(*after_accepted);
                    findings.refused += 1;
                }
                Outcome::Pending => {
                    findings.unanswered += 1;
                    findings.note(format!(
                        "unanswered: {} sent {} {} in conversation {conversation} ({} times) and got no answer",
                        channel.name, send.kind, send.client_msg_id, send.attempts
                    ));
                }
            }
            let Some(stored) = stored else {
                if send.outcome == Outcome::Accepted {
                    findings.lost += 1;
                    findings.note(format!(
                        "lost: {} {} of {} in conversation {conversation} was accepted and is not stored",
                        send.kind, send.client_msg_id, channel.name
                    ));
                }
                continue;
            };
            findings.stored += 1;
            if let Outcome::Refused {
                code,
                after_accepted,
            } = &send.outcome
            {
                findings.refused_but_stored += 1;
                let when = if *after_accepted {
                    "after accepted"
                } else {
                    "instead of accepted"
                };
                findings.note(format!(
                    "refused but stored: {} got {code} {when} (sent {} times), and the store has {}",
                    channel.name,
                    send.attempts,
                    describe(stored, names)
                ));
            }
            let earlier = highest.entry(send.conversation).or_insert((0, ""));
            if stored.seq < earlier.0 {
                findings.reordered += 1;
                findings.note(format!(
                    "reordered: {} sent {} before {}, and they are stored at seqs {} and {} of conversation {conversation}",
                    channel.name, earlier.1, send.client_msg_id, earlier.0, stored.seq
                ));
            } else {
                *earlier = (stored.seq, send.client_msg_id.as_str());
            }
        }
    }
}

/// Check 4: every stored event is one some channel sent, in that conversation.
fn nothing_stored_unsent(
    channels: &[ChannelRecord],
    store: &[Vec<Event>],
    names: &Names,
    findings: &mut Findings,
) {
    let sent: HashSet<(UserIndex, &str, ConversationIndex)> = channels
        .iter()
        .flat_map(|channel| {
            channel
                .sends
                .iter()
                .map(|send| (channel.user, send.client_msg_id.as_str(), send.conversation))
        })
        .collect();
    for event in store.iter().flatten() {
        if !sent.contains(&(
            event.sender,
            event.client_msg_id.as_str(),
            event.conversation,
        )) {
            findings.never_sent_but_stored += 1;
            findings.note(format!("never sent but stored: {}", describe(event, names)));
        }
    }
}

/// Check 5: on each socket, a conversation's events arrive once and in seq order. A repeat
/// or an older seq is explained when the socket's server restarted after a kill and the
/// event was stored before it (what was stored and not yet acknowledged as delivered is
/// delivered again, and a redelivered inbound entry is announced to its sender again), or
/// when its sender is this channel's user and resent it (the store's answer to a resend goes
/// to the sender's devices again).
fn live_streams_are_ordered(
    channels: &[ChannelRecord],
    restarts: &[Vec<u64>],
    names: &Names,
    findings: &mut Findings,
) {
    let resent: HashSet<Key> = channels
        .iter()
        .flat_map(|channel| {
            channel
                .sends
                .iter()
                .filter(|send| send.attempts > 1)
                .map(|send| (channel.user, send.client_msg_id.as_str()))
        })
        .collect();
    #[derive(Default)]
    struct Stream {
        first_socket: HashMap<u64, u32>,
        socket: u32,
        highest_on_socket: u64,
        highest: u64,
    }
    for channel in channels {
        let mut streams: HashMap<ConversationIndex, Stream> = HashMap::new();
        for delivery in &channel.live {
            let event = &delivery.event;
            let stream = streams.entry(event.conversation).or_default();
            if delivery.socket != stream.socket {
                stream.socket = delivery.socket;
                stream.highest_on_socket = 0;
            }
            let by_resend = event.sender == channel.user
                && resent.contains(&(event.sender, event.client_msg_id.as_str()));
            let epoch = channel
                .socket_epochs
                .get(delivery.socket as usize - 1)
                .copied()
                .unwrap_or_default();
            let by_restart = epoch > 0
                && restarts
                    .get(epoch)
                    .and_then(|newest| newest.get(usize::from(event.conversation)))
                    .is_some_and(|newest| event.seq <= *newest);
            let explained = by_resend || by_restart;
            match stream.first_socket.get(&event.seq) {
                Some(_) if explained => findings.reconnect_explained += 1,
                Some(_) => {
                    findings.live_duplicates += 1;
                    findings.note(format!(
                        "live duplicate: {} received {} twice on socket {}",
                        channel.name,
                        describe(event, names),
                        delivery.socket
                    ));
                }
                None if event.seq < stream.highest_on_socket && !explained => {
                    findings.live_reorders += 1;
                    findings.note(format!(
                        "live reorder: {} received {} after seq {} on socket {}",
                        channel.name,
                        describe(event, names),
                        stream.highest_on_socket,
                        delivery.socket
                    ));
                }
                None => {
                    if event.seq < stream.highest {
                        findings.reconnect_explained += 1;
                    }
                }
            }
            stream
                .first_socket
                .entry(event.seq)
                .or_insert(delivery.socket);
            stream.highest_on_socket = stream.highest_on_socket.max(event.seq);
            stream.highest = stream.highest.max(event.seq);
        }
    }
}

/// Check 6: everything a device received (live or caught up) is what the store holds at that
/// seq, and a member's device, once caught up, holds every stored event.
fn views_equal_the_store(
    channels: &[ChannelRecord],
    store: &[Vec<Event>],
    names: &Names,
    findings: &mut Findings,
) {
    let stored = |conversation: ConversationIndex, seq: u64| -> Option<&Event> {
        let events = store.get(usize::from(conversation))?;
        let at = events.binary_search_by_key(&seq, |event| event.seq).ok()?;
        events.get(at)
    };
    for channel in channels {
        let received = channel
            .live
            .iter()
            .map(|delivery| &delivery.event)
            .chain(&channel.caught_up);
        let mut held: HashMap<ConversationIndex, HashSet<u64>> = HashMap::new();
        for event in received {
            held.entry(event.conversation)
                .or_default()
                .insert(event.seq);
            match stored(event.conversation, event.seq) {
                Some(truth) if truth == event => {}
                truth => {
                    findings.view_mismatches += 1;
                    let truth = truth.map_or("nothing".to_string(), |truth| describe(truth, names));
                    findings.note(format!(
                        "view: {} received {}, the store holds {truth}",
                        channel.name,
                        describe(event, names)
                    ));
                }
            }
        }
        for &conversation in &channel.member_at_end {
            let empty = HashSet::new();
            let seqs = held.get(&conversation).unwrap_or(&empty);
            let missing: Vec<u64> = store[usize::from(conversation)]
                .iter()
                .map(|event| event.seq)
                .filter(|seq| !seqs.contains(seq))
                .collect();
            if !missing.is_empty() {
                findings.view_mismatches += 1;
                findings.note(format!(
                    "view: {} is a member of conversation {} and, caught up, misses {} stored events (seqs {:?}…)",
                    channel.name,
                    names.conversations[usize::from(conversation)],
                    missing.len(),
                    &missing[..missing.len().min(10)]
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Delivery, Send};
    use super::*;

    fn names() -> Names {
        Names {
            users: vec!["ann".into(), "ben".into()],
            conversations: vec!["c0".into(), "c1".into()],
        }
    }

    fn event(conversation: ConversationIndex, seq: u64, sender: UserIndex, id: &str) -> Event {
        Event {
            conversation,
            seq,
            sender,
            client_msg_id: id.into(),
            kind: "message",
        }
    }

    fn send(id: &str, outcome: Outcome) -> Send {
        Send {
            client_msg_id: id.into(),
            conversation: 0,
            kind: "message",
            attempts: 1,
            outcome,
        }
    }

    fn channel(user: UserIndex, sends: Vec<Send>) -> ChannelRecord {
        ChannelRecord {
            name: format!("u{user}d0"),
            user,
            sends,
            ..ChannelRecord::default()
        }
    }

    fn live(channel: &mut ChannelRecord, socket: u32, events: &[Event]) {
        channel.live.extend(events.iter().map(|event| Delivery {
            event: event.clone(),
            socket,
        }));
    }

    #[test]
    fn a_clean_run_has_no_violations() {
        let store = vec![vec![event(0, 1, 0, "a"), event(0, 2, 0, "b")], vec![]];
        let mut ann = channel(
            0,
            vec![send("a", Outcome::Accepted), send("b", Outcome::Accepted)],
        );
        ann.socket_epochs = vec![0];
        live(&mut ann, 1, &store[0]);
        ann.member_at_end = vec![0];
        let findings = check(&[ann], &store, &[], &names());
        assert_eq!(findings.violations(), 0, "{:?}", findings.notes);
        assert_eq!(
            (findings.events_sent, findings.accepted, findings.stored),
            (2, 2, 2)
        );
    }

    #[test]
    fn lost_duplicated_unsent_and_gaps_are_counted() {
        let store = vec![
            vec![
                event(0, 1, 0, "a"),
                event(0, 2, 0, "a"),
                event(0, 4, 1, "ghost"),
            ],
            vec![],
        ];
        let ann = channel(
            0,
            vec![
                send("a", Outcome::Accepted),
                send("lost", Outcome::Accepted),
            ],
        );
        let findings = check(&[ann], &store, &[], &names());
        assert_eq!(findings.lost, 1);
        assert_eq!(findings.duplicated, 1);
        assert_eq!(findings.never_sent_but_stored, 1);
        assert_eq!(findings.seq_gaps, 1);
        assert!(findings.notes.iter().any(|note| note.contains("lost")));
    }

    #[test]
    fn a_send_stored_before_an_earlier_one_is_reordered() {
        let store = vec![vec![event(0, 1, 0, "b"), event(0, 2, 0, "a")], vec![]];
        let ann = channel(
            0,
            vec![send("a", Outcome::Accepted), send("b", Outcome::Accepted)],
        );
        assert_eq!(check(&[ann], &store, &[], &names()).reordered, 1);
    }

    #[test]
    fn a_refused_send_that_is_stored_is_a_violation() {
        let store = vec![vec![event(0, 1, 0, "a")], vec![]];
        let refused = Outcome::Refused {
            code: "conflict".into(),
            after_accepted: false,
        };
        let ann = channel(0, vec![send("a", refused)]);
        let findings = check(&[ann], &store, &[], &names());
        assert_eq!(findings.refused_but_stored, 1);
        assert_eq!(findings.refused, 1);
    }

    #[test]
    fn a_repeat_of_what_was_stored_before_a_restart_is_explained() {
        let store = vec![
            vec![
                event(0, 1, 1, "x"),
                event(0, 2, 1, "y"),
                event(0, 3, 1, "z"),
            ],
            vec![],
        ];
        let sends = ["x", "y", "z"].map(|id| send(id, Outcome::Accepted));
        let ben = channel(1, sends.to_vec());
        // Seqs 1 and 2 were stored when server 1 started; 3 came after.
        let restarts = vec![vec![0, 0], vec![2, 0]];
        let mut ann = channel(0, Vec::new());
        ann.socket_epochs = vec![0, 1];
        live(&mut ann, 1, &store[0][..2]);
        live(&mut ann, 2, &store[0]);
        live(&mut ann, 2, &store[0][..1]);
        let findings = check(&[ann, ben.clone()], &store, &restarts, &names());
        assert_eq!(findings.violations(), 0, "{:?}", findings.notes);
        assert_eq!(findings.reconnect_explained, 3);

        let mut ann = channel(0, Vec::new());
        ann.socket_epochs = vec![1];
        live(&mut ann, 1, &[store[0][2].clone(), store[0][1].clone()]);
        live(&mut ann, 1, &store[0][2..]);
        let findings = check(&[ann, ben], &store, &restarts, &names());
        assert_eq!(findings.reconnect_explained, 1, "{:?}", findings.notes);
        assert_eq!(findings.live_duplicates, 1, "{:?}", findings.notes);

        let ben = channel(1, vec![send("x", Outcome::Accepted)]);
        let mut ann = channel(0, Vec::new());
        ann.socket_epochs = vec![0, 0];
        live(&mut ann, 1, &[store[0][1].clone(), store[0][0].clone()]);
        live(&mut ann, 2, &store[0][..1]);
        let findings = check(&[ann, ben], &store, &restarts, &names());
        assert_eq!((findings.live_reorders, findings.live_duplicates), (1, 1));
    }

    #[test]
    fn a_repeat_after_the_users_own_resend_is_explained() {
        let store = vec![vec![event(0, 1, 0, "a")], vec![]];
        let mut resent = send("a", Outcome::Accepted);
        resent.attempts = 2;
        let mut ann = channel(0, vec![resent]);
        ann.socket_epochs = vec![0];
        live(&mut ann, 1, &[store[0][0].clone(), store[0][0].clone()]);
        let findings = check(&[ann], &store, &[], &names());
        assert_eq!(findings.violations(), 0, "{:?}", findings.notes);
        assert_eq!(findings.reconnect_explained, 1);
    }

    #[test]
    fn a_member_missing_events_or_seeing_other_ones_is_a_view_mismatch() {
        let store = vec![vec![event(0, 1, 0, "a"), event(0, 2, 0, "b")], vec![]];
        let sends = vec![send("a", Outcome::Accepted), send("b", Outcome::Accepted)];
        let mut ann = channel(0, sends);
        ann.caught_up = vec![event(0, 1, 0, "a"), event(0, 3, 0, "phantom")];
        ann.member_at_end = vec![0];
        let findings = check(&[ann], &store, &[], &names());
        assert_eq!(findings.view_mismatches, 2, "{:?}", findings.notes);
    }
}
