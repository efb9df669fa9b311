//! Message frames of a conversation leave this node in `seq` order.
//!
//! With several notifiers (the cluster's persisters), a conversation's notifications can
//! reach a node out of order: each persister appends its own batch's notifications. A frame
//! that arrives early is held until the ones before it come, for at most `hold`; after that
//! it goes out anyway and the client fills the gap from the store, as it does after any gap.
//! A frame older than what already went out (a redelivered notification) goes out at once:
//! clients drop what they have.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parlor_core::ports::MessageOrder;
use parlor_core::{ConversationId, Seq, UserId};
use tokio::time::Instant;

/// Frames held per conversation, at most; beyond it the gap is given up at once.
const HELD_PER_CONVERSATION_MAX: usize = 1024;
/// Conversations remembered, at most, before idle ones are forgotten.
const CONVERSATIONS_MAX: usize = 100_000;

/// A frame and who gets it.
pub type Frame = (Vec<UserId>, Arc<str>);

pub struct Reorder {
    hold: Duration,
    conversations: HashMap<ConversationId, Line>,
}

struct Line {
    /// The seq this node passes on next.
    next: Seq,
    held: BTreeMap<Seq, (Frame, Instant)>,
    touched: Instant,
}

impl Reorder {
    pub fn new(hold: Duration) -> Reorder {
        Reorder {
            hold,
            conversations: HashMap::new(),
        }
    }

    /// A frame arrived; returns the frames to pass on now, in order.
    pub fn arrive(&mut self, order: MessageOrder, frame: Frame, now: Instant) -> Vec<Frame> {
        if self.conversations.len() >= CONVERSATIONS_MAX {
            self.forget_idle(now);
        }
        let line = self
            .conversations
            .entry(order.conversation)
            .or_insert(Line {
                next: order.seq,
                held: BTreeMap::new(),
                touched: now,
            });
        line.touched = now;
        if order.seq < line.next {
            return vec![frame];
        }
        if order.seq > line.next {
            line.held.insert(order.seq, (frame, now));
            if line.held.len() > HELD_PER_CONVERSATION_MAX {
                return line.release_all();
            }
            return Vec::new();
        }
        let mut out = vec![frame];
        line.next += 1;
        while let Some(entry) = line.held.first_entry() {
            if *entry.key() != line.next {
                break;
            }
            out.push(entry.remove().0);
            line.next += 1;
        }
        out
    }

    /// Frames whose wait is over, with everything held behind them, in order.
    pub fn expire(&mut self, now: Instant) -> Vec<Frame> {
        let mut out = Vec::new();
        for line in self.conversations.values_mut() {
            let waited_enough = line
                .held
                .values()
                .any(|(_, since)| now.duration_since(*since) >= self.hold);
            if waited_enough {
                out.extend(line.release_all());
            }
        }
        out
    }

    /// When the earliest held frame's wait ends, if any is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.conversations
            .values()
            .flat_map(|line| line.held.values().map(|(_, since)| *since + self.hold))
            .min()
    }

    fn forget_idle(&mut self, now: Instant) {
        let idle = Duration::from_secs(60);
        self.conversations
            .retain(|_, line| !line.held.is_empty() || now.duration_since(line.touched) < idle);
    }
}

impl Line {
    /// Gives up on the gap: everything held goes, in order, and the line moves past it.
    fn release_all(&mut self) -> Vec<Frame> {
        let held = std::mem::take(&mut self.held);
        if let Some(last) = held.keys().next_back() {
            self.next = last + 1;
        }
        held.into_values().map(|(frame, _)| frame).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        (vec![], text.into())
    }

    fn texts(frames: Vec<Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|(_, text)| text.to_string())
            .collect()
    }

    #[test]
    fn early_frames_wait_for_the_ones_before_them() {
        let mut reorder = Reorder::new(Duration::from_millis(100));
        let conversation = ConversationId::new();
        let at = |seq| MessageOrder { conversation, seq };
        let now = Instant::now();
        assert_eq!(texts(reorder.arrive(at(1), frame("1"), now)), ["1"]);
        assert!(reorder.arrive(at(3), frame("3"), now).is_empty());
        assert!(reorder.arrive(at(4), frame("4"), now).is_empty());
        assert_eq!(reorder.deadline(), Some(now + Duration::from_millis(100)));
        assert_eq!(
            texts(reorder.arrive(at(2), frame("2"), now)),
            ["2", "3", "4"]
        );
        assert_eq!(reorder.deadline(), None);
        // A repeat of something already passed on goes at once.
        assert_eq!(
            texts(reorder.arrive(at(2), frame("2 again"), now)),
            ["2 again"]
        );
    }

    #[test]
    fn a_gap_that_is_not_filled_in_time_is_given_up() {
        let mut reorder = Reorder::new(Duration::from_millis(100));
        let conversation = ConversationId::new();
        let at = |seq| MessageOrder { conversation, seq };
        let now = Instant::now();
        reorder.arrive(at(1), frame("1"), now);
        assert!(reorder.arrive(at(3), frame("3"), now).is_empty());
        assert!(reorder.expire(now + Duration::from_millis(99)).is_empty());
        assert_eq!(
            texts(reorder.expire(now + Duration::from_millis(100))),
            ["3"]
        );
        // The line moved past the gap: 4 goes at once, and a late 2 too.
        let later = now + Duration::from_millis(200);
        assert_eq!(texts(reorder.arrive(at(4), frame("4"), later)), ["4"]);
        assert_eq!(texts(reorder.arrive(at(2), frame("2"), later)), ["2"]);
    }

    #[test]
    fn conversations_are_independent() {
        let mut reorder = Reorder::new(Duration::from_millis(100));
        let (a, b) = (ConversationId::new(), ConversationId::new());
        let now = Instant::now();
        reorder.arrive(
            MessageOrder {
                conversation: a,
                seq: 1,
            },
            frame("a1"),
            now,
        );
        assert!(
            reorder
                .arrive(
                    MessageOrder {
                        conversation: a,
                        seq: 3
                    },
                    frame("a3"),
                    now
                )
                .is_empty()
        );
        assert_eq!(
            texts(reorder.arrive(
                MessageOrder {
                    conversation: b,
                    seq: 7
                },
                frame("b7"),
                now
            )),
            ["b7"]
        );
    }
}
