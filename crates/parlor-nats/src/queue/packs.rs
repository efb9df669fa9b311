//! Packs: several entries in one JetStream message, so that the server's work per message
//! (a write, an index entry, an ack to track) is paid once per append instead of once per
//! entry. Here: the format, and what a handle remembers of the packs it holds, which is
//! what lets each entry inside be acknowledged, retried and dead-lettered on its own.
//!
//! The format, which outlives the build that wrote it (a stream keeps it): a message with
//! the header `Parlor-Pack: 1` holds entries as (4-byte big-endian length, bytes), one after
//! another; a message without it is one entry, as every message was before packs (and as an
//! append of one entry still is). A build that meets another `Parlor-Pack` value refuses the
//! message to the dead letters, whole, with the reason: it never guesses.
//!
//! JetStream settles a message, not a part of it, so a pack is acknowledged once every
//! entry in it is settled, and the handle keeps the visibility timeout of each entry itself.
//! An entry that times out beside settled ones is handed out again by the same handle,
//! first in line, as the server would redeliver it; one retried beside settled ones is
//! published again as a new pack that remembers its attempts and when it is due, and the
//! old message is acknowledged. So an acknowledged entry is never delivered again while its
//! handle lives. A handle that dies loses what it knew, and the
//! server redelivers its packs whole: the entries acknowledged in them come back as
//! duplicates, which the port allows after a crash.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Subject};
use bytes::{Buf, Bytes, BytesMut};
use parlor_core::ports::{Delivery, DeliveryId};

/// The header that marks a pack, and the one format this build writes and reads.
pub(super) const PACK: &str = "Parlor-Pack";
const PACK_VERSION: &str = "1";
/// Attempts a re-published entry made before it was re-published.
pub(super) const ATTEMPTS_BEFORE: &str = "Parlor-Attempts-Before";
/// A re-published entry that waits out a `retry_later` is not handed out before this time
/// (milliseconds since the Unix epoch).
pub(super) const NOT_BEFORE: &str = "Parlor-Not-Before";
/// Entries in one pack, at most: a bound on what one delivery of a message hands a handle.
const PACK_ENTRIES_MAX: usize = 1024;
/// What a pack adds to each entry.
const LENGTH_BYTES: usize = 4;

/// `entries` as messages of at most `max_bytes` each, in order: one pack when they fit, an
/// entry alone (no header) when it is the only one in its message.
pub(super) fn pack(entries: Vec<Bytes>, max_bytes: usize) -> Vec<(Bytes, Option<HeaderMap>)> {
    let mut messages = Vec::new();
    let mut current: Vec<Bytes> = Vec::new();
    let mut current_bytes = 0;
    let mut flush = |current: &mut Vec<Bytes>| {
        if current.len() == 1 {
            messages.push((current.pop().expect("one entry"), None));
        } else if !current.is_empty() {
            let size = current.iter().map(|e| e.len() + LENGTH_BYTES).sum();
            let mut payload = BytesMut::with_capacity(size);
            for entry in current.drain(..) {
                let length = u32::try_from(entry.len()).expect("entries fit a NATS message");
                payload.extend_from_slice(&length.to_be_bytes());
                payload.extend_from_slice(&entry);
            }
            let mut headers = HeaderMap::new();
            headers.insert(PACK, PACK_VERSION);
            messages.push((payload.freeze(), Some(headers)));
        }
    };
    for entry in entries {
        let size = entry.len() + LENGTH_BYTES;
        if !current.is_empty()
            && (current_bytes + size > max_bytes || current.len() == PACK_ENTRIES_MAX)
        {
            flush(&mut current);
            current_bytes = 0;
        }
        current_bytes += size;
        current.push(entry);
    }
    flush(&mut current);
    messages
}

/// The entries of a message: itself, or those of a pack; `Err` with the reason when it
/// cannot be read (it goes to the dead letters whole).
pub(super) fn unpack(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Vec<Bytes>, String> {
    let Some(version) = headers.and_then(|headers| headers.get(PACK)) else {
        return Ok(vec![payload]);
    };
    if version.as_str() != PACK_VERSION {
        return Err(format!(
            "a pack of version {:?}, which this build does not read (it reads {PACK_VERSION})",
            version.as_str()
        ));
    }
    let mut rest = payload;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        if rest.len() < LENGTH_BYTES {
            return Err("a pack cut inside an entry's length".into());
        }
        let length = rest.get_u32() as usize;
        if rest.len() < length {
            return Err(format!(
                "a pack cut inside an entry: {length} bytes announced, {} left",
                rest.len()
            ));
        }
        entries.push(rest.split_to(length));
    }
    if entries.is_empty() {
        return Err("an empty pack".into());
    }
    Ok(entries)
}

/// Where an entry of a held pack stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Pulled, not handed out yet: the next `receive` of this handle hands it out first.
    Waiting,
    Out(DeliveryId),
    Acked,
    Dead,
    /// Given back by `retry_later`, due at that time.
    Retry(Instant),
    /// Timed out too often, on its way to the dead letters.
    Exhausted,
}

/// What [`Packs::expire`] found.
#[derive(Default)]
pub(super) struct Expired {
    pub(super) resolutions: Vec<Resolution>,
    /// Messages whose server clock must restart: their entries are handed out again here.
    pub(super) restart: Vec<Subject>,
    pub(super) exhausted: Vec<Exhausted>,
}

/// An entry that timed out `attempts_max` times.
pub(super) struct Exhausted {
    pub(super) pack: u64,
    pub(super) index: usize,
    pub(super) payload: Bytes,
    pub(super) attempts: u32,
}

/// A message this handle pulled and has not settled with the server yet.
struct Pack {
    /// The `$JS.ACK…` subject that settles the message (of its latest delivery).
    reply: Subject,
    /// The message's sequence in its stream.
    sequence: u64,
    entries: Vec<Bytes>,
    slots: Vec<Slot>,
    /// Each entry's attempts: the message's delivery, and one more each time the handle
    /// handed it out again after a timeout.
    attempts: Vec<u32>,
    /// Since when the visibility timeout runs: the pull, or the last hand-out.
    clock: Instant,
    /// Whether some entry was handed out already: handing out another one later restarts
    /// the server's clock too.
    handed_out: bool,
}

/// How a settled entry was settled.
#[derive(Clone, Copy, Debug)]
pub(super) enum Settle {
    Ack,
    Dead,
    RetryAt(Instant),
}

/// What the server must be told about a message once its entries are all settled.
#[derive(Debug)]
pub(super) enum Resolution {
    /// Every entry is acknowledged or dead-lettered.
    Ack(Subject),
    /// Every entry is retried and none settled otherwise: the whole message comes back
    /// after `delay`, with one more attempt.
    Nak(Subject, Duration),
    /// Some entries settled and the others are retried: these are published again, then
    /// the message is acknowledged.
    Republish {
        reply: Subject,
        entries: Vec<Bytes>,
        attempts: u32,
        due: Instant,
    },
}

/// The packs one handle holds.
#[derive(Default)]
pub(super) struct Packs {
    next_pack: u64,
    packs: HashMap<u64, Pack>,
    /// The pack of each held message, by stream sequence.
    sequences: HashMap<u64, u64>,
    deliveries: HashMap<DeliveryId, (u64, usize)>,
    waiting: VecDeque<(u64, usize)>,
}

impl Packs {
    /// Holds a pulled message's entries, to be handed out in order.
    pub(super) fn add(
        &mut self,
        reply: Subject,
        sequence: u64,
        entries: Vec<Bytes>,
        attempts: u32,
        now: Instant,
    ) {
        let id = self.next_pack;
        self.next_pack += 1;
        self.sequences.insert(sequence, id);
        self.waiting
            .extend((0..entries.len()).map(|index| (id, index)));
        let pack = Pack {
            reply,
            sequence,
            slots: vec![Slot::Waiting; entries.len()],
            attempts: vec![attempts; entries.len()],
            entries,
            clock: now,
            handed_out: false,
        };
        self.packs.insert(id, pack);
    }

    /// The server delivered a message again that this handle still holds (its visibility
    /// clock ran out on the server while this handle kept it: see `restart_clocks`): it is
    /// the same pack, settled from now on with this delivery's `reply`. True if so.
    pub(super) fn redelivered(&mut self, sequence: u64, reply: &Subject) -> bool {
        let Some(pack) = self
            .sequences
            .get(&sequence)
            .and_then(|id| self.packs.get_mut(id))
        else {
            return false;
        };
        pack.reply = reply.clone();
        true
    }

    pub(super) fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Hands out up to `max` waiting entries, oldest first. Also returns the messages whose
    /// server clock must be restarted (an in-progress ack): those of which an entry had been
    /// handed out before, so the server would count their visibility timeout from then.
    pub(super) fn take(
        &mut self,
        max: usize,
        mut next_id: impl FnMut() -> DeliveryId,
        now: Instant,
    ) -> (Vec<Delivery>, Vec<Subject>) {
        let mut deliveries = Vec::new();
        let mut restart = Vec::new();
        while deliveries.len() < max {
            let Some((pack_id, index)) = self.waiting.pop_front() else {
                break;
            };
            let Some(pack) = self.packs.get_mut(&pack_id) else {
                continue;
            };
            if pack.slots[index] != Slot::Waiting {
                continue;
            }
            let id = next_id();
            pack.slots[index] = Slot::Out(id);
            if pack.handed_out && pack.clock != now {
                restart.push(pack.reply.clone());
            }
            pack.handed_out = true;
            pack.clock = now;
            self.deliveries.insert(id, (pack_id, index));
            deliveries.push(Delivery {
                id,
                payload: pack.entries[index].to_vec(),
                attempts: pack.attempts[index],
            });
        }
        (deliveries, restart)
    }

    /// The payload and attempts of a delivery this handle holds.
    pub(super) fn get(&self, id: DeliveryId) -> Option<(Bytes, u32)> {
        let (pack_id, index) = self.deliveries.get(&id)?;
        let pack = self.packs.get(pack_id)?;
        Some((pack.entries[*index].clone(), pack.attempts[*index]))
    }

    /// Settles a delivery; what to tell the server if that settled its message. Unknown
    /// deliveries (settled before, or expired) change nothing.
    pub(super) fn settle(&mut self, id: DeliveryId, how: Settle) -> Option<Resolution> {
        let (pack_id, index) = self.deliveries.remove(&id)?;
        let pack = self.packs.get_mut(&pack_id)?;
        pack.slots[index] = match how {
            Settle::Ack => Slot::Acked,
            Settle::Dead => Slot::Dead,
            Settle::RetryAt(due) => Slot::Retry(due),
        };
        self.resolve(pack_id)
    }

    /// Deals with the packs whose visibility timeout ran out at `now`, as the server would
    /// with a message, but without the entries settled in them: in a pack partly settled,
    /// or in any pack when `in_line` (an exclusive queue, whose order matters), the
    /// unsettled entries are handed out again by this handle, before anything newer, with
    /// one more attempt (the restarted packs' server clocks are returned, and the entries
    /// that used up `attempts_max`, to be dead-lettered); otherwise a pack of which nothing
    /// is settled goes back to the server whole.
    ///
    /// Why `in_line`: a pack given back comes back from the server behind the newer packs
    /// this handle holds, and they would be handed out first. A persister slowed down long
    /// enough for a pack to wait past the timeout in this handle stored 5 of a sender's
    /// messages behind 190 later ones so.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        visibility: Duration,
        attempts_max: u32,
        in_line: bool,
    ) -> Expired {
        let mut expired = Expired::default();
        let mut due: Vec<u64> = self
            .packs
            .iter()
            .filter(|(_, pack)| {
                now.duration_since(pack.clock) >= visibility
                    && pack
                        .slots
                        .iter()
                        .any(|slot| matches!(slot, Slot::Waiting | Slot::Out(_)))
            })
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        let mut again = Vec::new();
        for pack_id in due {
            let pack = self.packs.get_mut(&pack_id).expect("listed above");
            let settled = pack
                .slots
                .iter()
                .any(|slot| matches!(slot, Slot::Acked | Slot::Dead));
            if !settled && !in_line {
                expired
                    .resolutions
                    .extend(self.give_back(vec![pack_id], now));
                continue;
            }
            for (index, slot) in pack.slots.iter_mut().enumerate() {
                match *slot {
                    Slot::Out(id) => {
                        self.deliveries.remove(&id);
                        pack.attempts[index] += 1;
                        if pack.attempts[index] > attempts_max {
                            *slot = Slot::Exhausted;
                            expired.exhausted.push(Exhausted {
                                pack: pack_id,
                                index,
                                payload: pack.entries[index].clone(),
                                attempts: pack.attempts[index] - 1,
                            });
                            continue;
                        }
                        *slot = Slot::Waiting;
                        again.push((pack_id, index));
                    }
                    Slot::Waiting => again.push((pack_id, index)),
                    Slot::Acked | Slot::Dead | Slot::Retry(_) | Slot::Exhausted => {}
                }
            }
            pack.clock = now;
            expired.restart.push(pack.reply.clone());
            self.waiting.retain(|place| place.0 != pack_id);
        }
        if !again.is_empty() {
            // In line again in the order they were pulled, before anything pulled after them
            // (a pack pulled earlier may have timed out later: its clock restarted when part
            // of it was handed out).
            self.waiting.extend(again);
            self.waiting.make_contiguous().sort_unstable();
            let mut seen = std::collections::HashSet::new();
            self.waiting.retain(|place| seen.insert(*place));
        }
        expired
    }

    /// An exhausted entry is in the dead letters now.
    pub(super) fn exhausted_dead(&mut self, pack_id: u64, index: usize) -> Option<Resolution> {
        let pack = self.packs.get_mut(&pack_id)?;
        pack.slots[index] = Slot::Dead;
        self.resolve(pack_id)
    }

    /// An exhausted entry could not be dead-lettered: it waits in line, to be tried again
    /// at its next timeout.
    pub(super) fn exhausted_kept(&mut self, pack_id: u64, index: usize) {
        if let Some(pack) = self.packs.get_mut(&pack_id) {
            pack.slots[index] = Slot::Waiting;
            self.waiting.push_front((pack_id, index));
        }
    }

    /// Gives back every entry still held, for a handle that closes. With `in_line` (an
    /// exclusive queue, whose order matters), a pack partly settled goes back whole, settled
    /// entries too (they come again, as after a crash): published again, its unsettled
    /// entries would come after everything appended since.
    pub(super) fn give_back_all(&mut self, now: Instant, in_line: bool) -> Vec<Resolution> {
        let mut all: Vec<u64> = self.packs.keys().copied().collect();
        // In the order they were pulled: the server redelivers in the order it is told.
        all.sort_unstable();
        if !in_line {
            return self.give_back(all, now);
        }
        let mut resolutions = Vec::new();
        for pack_id in all {
            let settled = self.packs[&pack_id]
                .slots
                .iter()
                .any(|slot| matches!(slot, Slot::Acked | Slot::Dead));
            if !settled {
                resolutions.extend(self.give_back(vec![pack_id], now));
                continue;
            }
            let pack = self.remove(pack_id);
            for slot in &pack.slots {
                if let Slot::Out(id) = slot {
                    self.deliveries.remove(id);
                }
            }
            resolutions.push(Resolution::Nak(pack.reply, Duration::ZERO));
        }
        resolutions
    }

    fn give_back(&mut self, packs: Vec<u64>, now: Instant) -> Vec<Resolution> {
        let mut resolutions = Vec::new();
        for pack_id in packs {
            let Some(pack) = self.packs.get_mut(&pack_id) else {
                continue;
            };
            for slot in &mut pack.slots {
                match *slot {
                    Slot::Out(id) => {
                        self.deliveries.remove(&id);
                        *slot = Slot::Retry(now);
                    }
                    Slot::Waiting | Slot::Exhausted => *slot = Slot::Retry(now),
                    Slot::Acked | Slot::Dead | Slot::Retry(_) => {}
                }
            }
            resolutions.extend(self.resolve(pack_id));
        }
        resolutions
    }

    /// Takes a held pack out, with its place in the index by sequence.
    fn remove(&mut self, pack_id: u64) -> Pack {
        let pack = self.packs.remove(&pack_id).expect("a held pack");
        self.sequences.remove(&pack.sequence);
        pack
    }

    /// What to tell the server about a pack whose entries may all be settled now.
    fn resolve(&mut self, pack_id: u64) -> Option<Resolution> {
        let pack = self.packs.get(&pack_id)?;
        if pack
            .slots
            .iter()
            .any(|slot| matches!(slot, Slot::Waiting | Slot::Out(_) | Slot::Exhausted))
        {
            return None;
        }
        let pack = self.remove(pack_id);
        // A retried entry is due no sooner than asked: all of them at the latest time.
        let due = pack
            .slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Retry(due) => Some(*due),
                _ => None,
            })
            .max();
        let Some(due) = due else {
            return Some(Resolution::Ack(pack.reply));
        };
        let settled = pack
            .slots
            .iter()
            .any(|slot| matches!(slot, Slot::Acked | Slot::Dead));
        if !settled {
            let delay = due.saturating_duration_since(Instant::now());
            return Some(Resolution::Nak(pack.reply, delay));
        }
        let entries = pack
            .entries
            .into_iter()
            .zip(&pack.slots)
            .filter(|(_, slot)| matches!(slot, Slot::Retry(_)))
            .map(|(entry, _)| entry)
            .collect();
        // Re-published together, with the most attempts any of them made.
        let attempts = pack
            .attempts
            .iter()
            .zip(&pack.slots)
            .filter(|(_, slot)| matches!(slot, Slot::Retry(_)))
            .map(|(attempts, _)| *attempts)
            .max()
            .unwrap_or(1);
        Some(Resolution::Republish {
            reply: pack.reply,
            entries,
            attempts,
            due,
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.packs.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.packs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<Bytes> {
        names
            .iter()
            .map(|name| Bytes::copy_from_slice(name.as_bytes()))
            .collect()
    }

    #[test]
    fn packs_round_trip_and_one_entry_stays_plain() {
        let messages = pack(entries(&["a", "", "ccc"]), 1 << 20);
        assert_eq!(messages.len(), 1);
        let (payload, headers) = messages.into_iter().next().unwrap();
        assert_eq!(
            unpack(headers.as_ref(), payload).unwrap(),
            entries(&["a", "", "ccc"])
        );

        let single = pack(entries(&["only"]), 1 << 20);
        assert!(single[0].1.is_none(), "one entry is a plain message");
        assert_eq!(
            unpack(None, single[0].0.clone()).unwrap(),
            entries(&["only"])
        );
    }

    /// Pinned bytes: a pack written by this build must be read by every later one.
    #[test]
    fn the_pack_format_is_pinned() {
        let (payload, headers) = pack(entries(&["ab", "c"]), 1 << 20).remove(0);
        assert_eq!(&payload[..], b"\0\0\0\x02ab\0\0\0\x01c");
        assert_eq!(headers.unwrap().get(PACK).unwrap().as_str(), "1");
    }

    #[test]
    fn packs_are_cut_at_the_size_and_count_bounds() {
        let messages = pack(entries(&["aaaa", "bbbb", "cccc"]), 16);
        let sizes: Vec<usize> = messages
            .iter()
            .map(|(payload, headers)| unpack(headers.as_ref(), payload.clone()).unwrap().len())
            .collect();
        assert_eq!(sizes, [2, 1]);

        let many: Vec<Bytes> = (0..PACK_ENTRIES_MAX + 1).map(|_| Bytes::new()).collect();
        assert_eq!(pack(many, 1 << 20).len(), 2);
    }

    #[test]
    fn unreadable_packs_are_refused_with_a_reason() {
        let mut headers = HeaderMap::new();
        headers.insert(PACK, "1");
        for payload in [&b"\0\0"[..], b"\0\0\0\x05ab", b""] {
            let error = unpack(Some(&headers), Bytes::copy_from_slice(payload)).unwrap_err();
            assert!(!error.is_empty());
        }
        let mut newer = HeaderMap::new();
        newer.insert(PACK, "2");
        let error = unpack(Some(&newer), Bytes::from_static(b"\0\0\0\0")).unwrap_err();
        assert!(error.contains("version"), "{error}");
    }

    fn held(names: &[&str]) -> (Packs, Vec<Delivery>) {
        let mut packs = Packs::default();
        let now = Instant::now();
        packs.add(Subject::from("reply"), 1, entries(names), 1, now);
        let mut next = 0;
        let (deliveries, _) = packs.take(
            names.len(),
            || {
                next += 1;
                DeliveryId(next)
            },
            now,
        );
        (packs, deliveries)
    }

    #[test]
    fn a_pack_is_acknowledged_once_every_entry_is_settled() {
        let (mut packs, got) = held(&["a", "b"]);
        assert!(packs.settle(got[0].id, Settle::Ack).is_none());
        assert!(matches!(
            packs.settle(got[1].id, Settle::Dead),
            Some(Resolution::Ack(_))
        ));
        assert_eq!(packs.len(), 0);
        assert!(
            packs.settle(got[1].id, Settle::Ack).is_none(),
            "settled once"
        );
    }

    #[test]
    fn retried_entries_next_to_settled_ones_are_republished_alone() {
        let (mut packs, got) = held(&["a", "b", "c"]);
        let due = Instant::now() + Duration::from_secs(1);
        packs.settle(got[0].id, Settle::RetryAt(due));
        packs.settle(got[1].id, Settle::Ack);
        match packs.settle(got[2].id, Settle::RetryAt(Instant::now())) {
            Some(Resolution::Republish {
                entries: retried,
                due: at,
                attempts,
                ..
            }) => {
                assert_eq!(retried, entries(&["a", "c"]));
                assert_eq!(at, due, "no sooner than the latest retry");
                assert_eq!(attempts, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pack_retried_whole_comes_back_whole() {
        let (mut packs, got) = held(&["a", "b"]);
        let due = Instant::now() + Duration::from_secs(2);
        packs.settle(got[0].id, Settle::RetryAt(due));
        match packs.settle(got[1].id, Settle::RetryAt(Instant::now())) {
            Some(Resolution::Nak(_, delay)) => assert!(delay > Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_pack_hands_out_only_its_unsettled_entries_again() {
        let mut packs = Packs::default();
        let start = Instant::now();
        packs.add(
            Subject::from("reply"),
            1,
            entries(&["a", "b", "c"]),
            1,
            start,
        );
        let mut next = 0;
        let mut id = || {
            next += 1;
            DeliveryId(next)
        };
        let (got, restart) = packs.take(1, &mut id, start);
        assert!(restart.is_empty());
        packs.settle(got[0].id, Settle::Ack);
        // "b" is handed out later: the visibility timeout runs from then.
        let later = start + Duration::from_millis(300);
        let (b, restart) = packs.take(1, &mut id, later);
        assert_eq!(b[0].payload, b"b");
        assert_eq!(restart.len(), 1, "the server's clock restarts too");
        let visibility = Duration::from_millis(400);
        assert!(
            packs
                .expire(start + visibility, visibility, 5, false)
                .restart
                .is_empty()
        );
        let expired = packs.expire(later + visibility, visibility, 5, false);
        assert!(expired.resolutions.is_empty() && expired.exhausted.is_empty());
        assert_eq!(expired.restart.len(), 1);
        assert!(packs.settle(b[0].id, Settle::Ack).is_none(), "timed out");
        let (again, _) = packs.take(5, &mut id, later + visibility);
        let got: Vec<(&[u8], u32)> = again.iter().map(|d| (&d.payload[..], d.attempts)).collect();
        assert_eq!(got, [(&b"b"[..], 2), (&b"c"[..], 1)]);
    }

    #[test]
    fn a_partly_settled_pack_goes_back_whole_only_in_line() {
        let (mut packs, got) = held(&["a", "b"]);
        packs.settle(got[0].id, Settle::Ack);
        let shared = packs.give_back_all(Instant::now(), false);
        assert!(
            matches!(&shared[..], [Resolution::Republish { entries, .. }] if entries.len() == 1),
            "{shared:?}"
        );

        let (mut packs, got) = held(&["a", "b"]);
        packs.settle(got[0].id, Settle::Ack);
        let in_line = packs.give_back_all(Instant::now(), true);
        assert!(matches!(&in_line[..], [Resolution::Nak(_, delay)] if delay.is_zero()));
        assert!(packs.is_empty());
        assert!(packs.settle(got[1].id, Settle::Ack).is_none(), "given back");
    }

    #[test]
    fn a_message_delivered_again_while_held_is_the_same_pack() {
        let (mut packs, got) = held(&["a", "b"]);
        assert!(packs.redelivered(1, &Subject::from("again")));
        assert!(!packs.redelivered(2, &Subject::from("other")));
        packs.settle(got[0].id, Settle::Ack);
        let resolution = packs.settle(got[1].id, Settle::Ack);
        assert!(
            matches!(&resolution, Some(Resolution::Ack(reply)) if reply.as_str() == "again"),
            "settled with the latest delivery: {resolution:?}"
        );
        assert!(!packs.redelivered(1, &Subject::from("late")), "settled");
    }

    #[test]
    fn an_expired_pack_with_nothing_settled_goes_back_whole() {
        let (mut packs, got) = held(&["a", "b"]);
        let visibility = Duration::from_millis(1);
        std::thread::sleep(visibility);
        let expired = packs.expire(Instant::now(), visibility, 5, false);
        assert!(matches!(&expired.resolutions[..], [Resolution::Nak(_, _)]));
        assert!(packs.settle(got[0].id, Settle::Ack).is_none());
    }

    #[test]
    fn in_line_expired_packs_are_handed_out_again_before_newer_ones_in_pull_order() {
        let mut packs = Packs::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut next = 0;
        let mut id = || {
            next += 1;
            DeliveryId(next)
        };
        let visibility = Duration::from_millis(400);
        packs.add(
            Subject::from("first"),
            1,
            entries(&["a", "b", "x"]),
            1,
            start,
        );
        let (a, _) = packs.take(1, &mut id, start);
        packs.add(Subject::from("second"), 2, entries(&["c"]), 1, at(100));
        // Handing "b" out restarts the first pack's clock: the second times out first.
        let (b, _) = packs.take(1, &mut id, at(300));
        assert_eq!(b[0].payload, b"b");
        let expired = packs.expire(at(500), visibility, 5, true);
        assert!(
            expired.resolutions.is_empty(),
            "nothing goes back to the server"
        );
        assert_eq!(expired.restart, [Subject::from("second")]);
        let (waited, _) = packs.take(10, &mut id, at(500));
        let got: Vec<&[u8]> = waited.iter().map(|d| &d.payload[..]).collect();
        assert_eq!(got, [&b"x"[..], &b"c"[..]], "the older pack's entry first");
        // Both handed out at 500 ms, both time out together.
        let expired = packs.expire(at(900), visibility, 5, true);
        assert!(
            expired.resolutions.is_empty(),
            "nothing goes back to the server"
        );
        assert_eq!(expired.restart.len(), 2);
        assert!(packs.settle(a[0].id, Settle::Ack).is_none(), "timed out");
        let (again, _) = packs.take(10, &mut id, at(900));
        let got: Vec<(&[u8], u32)> = again.iter().map(|d| (&d.payload[..], d.attempts)).collect();
        assert_eq!(
            got,
            [
                (&b"a"[..], 2),
                (&b"b"[..], 2),
                (&b"x"[..], 2),
                (&b"c"[..], 2)
            ],
            "in the order pulled, each once"
        );
    }

    #[test]
    fn an_entry_timing_out_too_often_is_exhausted() {
        let (mut packs, got) = held(&["a", "b"]);
        packs.settle(got[1].id, Settle::Ack);
        let visibility = Duration::from_millis(1);
        std::thread::sleep(visibility);
        let expired = packs.expire(Instant::now(), visibility, 1, false);
        assert_eq!(expired.exhausted.len(), 1);
        let exhausted = &expired.exhausted[0];
        assert_eq!((&exhausted.payload[..], exhausted.attempts), (&b"a"[..], 1));
        assert!(matches!(
            packs.exhausted_dead(exhausted.pack, exhausted.index),
            Some(Resolution::Ack(_))
        ));
    }
}
