//! [`WalQueue`]: a durable queue with a dead-letter side, on two write-ahead logs.
//!
//! The main log holds the entries; its cursor is the lowest entry not yet acknowledged,
//! committed to disk in the background, so after a crash everything from that cursor on is
//! delivered again (at least once; consumers are idempotent). The dead-letter log holds
//! `Dead` records and `Removed` tombstones; it is replayed at open (`dead`).
//!
//! The behaviour every queue shares is checked by the contract suite (`tests/contract`);
//! the tests here are the WAL-specific ones.

mod dead;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parlor_core::BackendError;
use parlor_core::ports::{
    DeadLetter, DeadLetterSelection, Delivery, DeliveryId, Queue, QueueDepth,
};
use parlor_wal::{Reader, Wal, WalError, WalOptions};

use dead::{DeadLogRecord, DeadRecord, replay_dead};
use time::OffsetDateTime;
use tokio::sync::{Notify, oneshot};

const CURSOR: &str = "consumer";

/// Tuning of one queue.
#[derive(Clone, Debug)]
pub struct WalQueueOptions {
    /// How long a consumer may hold an entry before it is delivered again.
    pub visibility_timeout: Duration,
    /// Deliveries after which an entry that keeps timing out goes to the dead-letter queue.
    pub attempts_max: u32,
    /// Entries handed out and not yet acknowledged, at most; bounds memory.
    pub in_flight_max: usize,
    /// How often the consumer cursor is made durable.
    pub cursor_commit_interval: Duration,
    pub segment_bytes_max: u64,
    pub record_bytes_max: u32,
}

impl Default for WalQueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            attempts_max: 8,
            in_flight_max: 64 * 1024,
            cursor_commit_interval: Duration::from_millis(50),
            segment_bytes_max: 64 * 1024 * 1024,
            record_bytes_max: 1024 * 1024,
        }
    }
}

/// A durable queue in a directory: `entries/` and `dead/` logs.
pub struct WalQueue {
    name: String,
    entries: Wal,
    dead: Wal,
    options: WalQueueOptions,
    state: Mutex<State>,
    appended: Notify,
}

struct State {
    reader: Reader,
    /// Entries handed out or waiting to be handed out again, by offset.
    held: HashMap<u64, Held>,
    /// (when, offset): visibility deadlines and retry delays.
    timers: BTreeSet<(Instant, u64)>,
    /// Offsets due for redelivery, oldest first.
    ready: VecDeque<u64>,
    /// Acknowledged offsets at or above `cursor`.
    acked: BTreeSet<u64>,
    /// Lowest offset not yet acknowledged.
    cursor: u64,
    committed_cursor: u64,
    dead: Vec<(u64, DeadRecord)>,
}

struct Held {
    payload: Vec<u8>,
    attempts: u32,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    InFlight { deadline: Instant },
    Waiting { due: Instant },
    Ready,
}

impl WalQueue {
    /// Opens (or creates) the queue `name` in `dir`, recovering both logs.
    pub fn open(
        dir: &Path,
        name: &str,
        options: WalQueueOptions,
    ) -> Result<Arc<Self>, BackendError> {
        Self::open_with_sync_hook(dir, name, options, Arc::new(|_| Ok(())))
    }

    /// [`WalQueue::open`] with a hook that runs before every fsync of both logs; an error from
    /// it counts as a failed fsync (see `parlor_wal::Wal::open_with_sync_hook`). For
    /// fault-injection tests only.
    #[doc(hidden)]
    pub fn open_with_sync_hook(
        dir: &Path,
        name: &str,
        options: WalQueueOptions,
        sync: parlor_wal::SyncHook,
    ) -> Result<Arc<Self>, BackendError> {
        let wal_options = || WalOptions {
            segment_bytes_max: options.segment_bytes_max,
            record_bytes_max: options.record_bytes_max,
            cursor_names: vec![CURSOR.to_string()],
        };
        let (entries, recovery) =
            Wal::open_with_sync_hook(&dir.join("entries"), wal_options(), Arc::clone(&sync))
                .map_err(wal_error)?;
        let (dead, _) =
            Wal::open_with_sync_hook(&dir.join("dead"), wal_options(), sync).map_err(wal_error)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                queue = name,
                bytes = recovery.truncated_bytes,
                "truncated a torn tail of the log"
            );
        }
        let cursor = entries
            .cursor(CURSOR)
            .map_err(wal_error)?
            .max(entries.start_offset());
        let reader = entries.reader(cursor).map_err(wal_error)?;
        let dead_letters = replay_dead(&dead)?;
        Ok(Arc::new(Self {
            name: name.to_string(),
            entries,
            dead,
            options,
            state: Mutex::new(State {
                reader,
                held: HashMap::new(),
                timers: BTreeSet::new(),
                ready: VecDeque::new(),
                acked: BTreeSet::new(),
                cursor,
                committed_cursor: cursor,
                dead: dead_letters,
            }),
            appended: Notify::new(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the consumer cursor durable if it moved. Called periodically by
    /// [`WalQueue::run_cursor_commits`] and at shutdown.
    pub async fn commit_cursor(self: &Arc<Self>) -> Result<(), BackendError> {
        let cursor = {
            let state = self.state.lock().expect("queue lock");
            if state.cursor == state.committed_cursor {
                return Ok(());
            }
            state.cursor
        };
        let queue = Arc::clone(self);
        tokio::task::spawn_blocking(move || queue.entries.commit_cursor(CURSOR, cursor))
            .await
            .map_err(|error| BackendError::unavailable(format!("cursor commit task: {error}")))?
            .map_err(wal_error)?;
        let mut state = self.state.lock().expect("queue lock");
        state.committed_cursor = state.committed_cursor.max(cursor);
        Ok(())
    }

    /// Commits the cursor every `cursor_commit_interval` until `shutdown` resolves, then once more.
    pub async fn run_cursor_commits(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.options.cursor_commit_interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut shutdown => break,
            }
            if let Err(error) = self.commit_cursor().await {
                tracing::error!(queue = %self.name, %error, "cannot commit the queue cursor");
            }
        }
        if let Err(error) = self.commit_cursor().await {
            tracing::error!(queue = %self.name, %error, "cannot commit the queue cursor at shutdown");
        }
    }

    /// What failed if either log (entries or dead letters) is poisoned: nothing more is
    /// acknowledged, and the process should exit so that a restart recovers.
    pub fn poison_cause(&self) -> Option<String> {
        [("entries", &self.entries), ("dead letters", &self.dead)]
            .into_iter()
            .find(|(_, wal)| wal.is_poisoned())
            .map(|(log, wal)| {
                let cause = wal.poison_cause().unwrap_or_else(|| "unknown".to_string());
                format!("the {log} log of queue {}: {cause}", self.name)
            })
    }

    /// Flushes and stops both logs' writers.
    pub fn close(&self) {
        self.entries.close();
        self.dead.close();
    }

    async fn append_to(
        wal: &Wal,
        records: Vec<Vec<u8>>,
    ) -> Result<std::ops::Range<u64>, BackendError> {
        let (sender, receiver) = oneshot::channel();
        wal.append_with(
            records,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver
            .await
            .map_err(|_| BackendError::unavailable("the log writer stopped"))?
            .map_err(|error| wal_failure(wal, error))
    }

    /// Marks offsets acknowledged and moves the cursor over the acknowledged prefix.
    fn acknowledge(state: &mut State, offsets: impl IntoIterator<Item = u64>) {
        for offset in offsets {
            if offset < state.cursor {
                continue;
            }
            if let Some(held) = state.held.remove(&offset) {
                match held.phase {
                    Phase::InFlight { deadline } => {
                        state.timers.remove(&(deadline, offset));
                    }
                    Phase::Waiting { due } => {
                        state.timers.remove(&(due, offset));
                    }
                    Phase::Ready => state.ready.retain(|o| *o != offset),
                }
            }
            state.acked.insert(offset);
        }
        while state.acked.remove(&state.cursor) {
            state.cursor += 1;
        }
    }

    /// Moves due timers: waiting entries become ready; entries whose visibility ran out are
    /// redelivered, or dead-lettered once they used up their attempts (returned).
    fn fire_timers(&self, state: &mut State, now: Instant) -> Vec<(u64, Held)> {
        let mut exhausted = Vec::new();
        while let Some(&(when, offset)) = state.timers.first() {
            if when > now {
                break;
            }
            state.timers.pop_first();
            let Some(held) = state.held.get_mut(&offset) else {
                continue;
            };
            match held.phase {
                Phase::InFlight { .. } if held.attempts >= self.options.attempts_max => {
                    let held = state.held.remove(&offset).expect("held entry");
                    exhausted.push((offset, held));
                }
                Phase::InFlight { .. } | Phase::Waiting { .. } => {
                    held.phase = Phase::Ready;
                    state.ready.push_back(offset);
                }
                Phase::Ready => {}
            }
        }
        exhausted
    }

    fn take(
        &self,
        state: &mut State,
        max: usize,
        now: Instant,
    ) -> Result<Vec<Delivery>, BackendError> {
        let deadline = now + self.options.visibility_timeout;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(offset) = state.ready.pop_front() else {
                break;
            };
            let held = state.held.get_mut(&offset).expect("ready entries are held");
            held.attempts += 1;
            held.phase = Phase::InFlight { deadline };
            state.timers.insert((deadline, offset));
            out.push(Delivery {
                id: DeliveryId(offset),
                payload: held.payload.clone(),
                attempts: held.attempts,
            });
        }
        while out.len() < max && state.held.len() < self.options.in_flight_max {
            let Some((offset, payload)) = state.reader.next().map_err(wal_error)? else {
                break;
            };
            state.held.insert(
                offset,
                Held {
                    payload: payload.clone(),
                    attempts: 1,
                    phase: Phase::InFlight { deadline },
                },
            );
            state.timers.insert((deadline, offset));
            out.push(Delivery {
                id: DeliveryId(offset),
                payload,
                attempts: 1,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Queue for WalQueue {
    async fn append(&self, entries: Vec<Vec<u8>>) -> Result<(), BackendError> {
        if entries.is_empty() {
            return Ok(());
        }
        Self::append_to(&self.entries, entries).await?;
        self.appended.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BackendError> {
        let give_up = Instant::now() + wait;
        loop {
            // Registered before looking, so an append between the look and the wait wakes us.
            let appended = self.appended.notified();
            let (deliveries, exhausted, next_timer) = {
                let mut state = self.state.lock().expect("queue lock");
                let now = Instant::now();
                let exhausted = self.fire_timers(&mut state, now);
                let deliveries = self.take(&mut state, max, now)?;
                (
                    deliveries,
                    exhausted,
                    state.timers.first().map(|(when, _)| *when),
                )
            };
            for (offset, held) in exhausted {
                let reason = format!(
                    "not acknowledged within the visibility timeout after {} attempts",
                    held.attempts
                );
                let record = DeadRecord {
                    payload: held.payload,
                    reason,
                    attempts: held.attempts,
                    failed_at: OffsetDateTime::now_utc(),
                };
                let ids = self
                    .write_dead(vec![DeadLogRecord::Dead(record.clone())])
                    .await?;
                let mut state = self.state.lock().expect("queue lock");
                state.dead.push((ids.start, record));
                Self::acknowledge(&mut state, [offset]);
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let wake = next_timer.map_or(give_up, |when| when.min(give_up));
            let _ = tokio::time::timeout(wake.saturating_duration_since(now), appended).await;
        }
    }

    async fn ack(&self, ids: &[DeliveryId]) -> Result<(), BackendError> {
        let mut state = self.state.lock().expect("queue lock");
        Self::acknowledge(&mut state, ids.iter().map(|id| id.0));
        Ok(())
    }

    async fn retry_later(&self, id: DeliveryId, delay: Duration) -> Result<(), BackendError> {
        let mut state = self.state.lock().expect("queue lock");
        let due = Instant::now() + delay;
        let Some(held) = state.held.get_mut(&id.0) else {
            return Ok(()); // already acknowledged or dead-lettered
        };
        let previous = held.phase;
        held.phase = Phase::Waiting { due };
        match previous {
            Phase::InFlight { deadline } => {
                state.timers.remove(&(deadline, id.0));
            }
            Phase::Waiting { due } => {
                state.timers.remove(&(due, id.0));
            }
            Phase::Ready => state.ready.retain(|o| *o != id.0),
        }
        state.timers.insert((due, id.0));
        drop(state);
        self.appended.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, id: DeliveryId, reason: &str) -> Result<(), BackendError> {
        let (payload, attempts) = {
            let state = self.state.lock().expect("queue lock");
            match state.held.get(&id.0) {
                Some(held) => (held.payload.clone(), held.attempts),
                None => return Ok(()),
            }
        };
        let record = DeadRecord {
            payload,
            reason: reason.to_string(),
            attempts,
            failed_at: OffsetDateTime::now_utc(),
        };
        let ids = self
            .write_dead(vec![DeadLogRecord::Dead(record.clone())])
            .await?;
        let mut state = self.state.lock().expect("queue lock");
        state.dead.push((ids.start, record));
        Self::acknowledge(&mut state, [id.0]);
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        Ok(self.list_dead(limit))
    }

    async fn redrive(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        self.redrive_dead(selection).await
    }

    async fn purge(&self, selection: DeadLetterSelection) -> Result<usize, BackendError> {
        self.purge_dead(selection).await
    }

    async fn depth(&self) -> Result<QueueDepth, BackendError> {
        let state = self.state.lock().expect("queue lock");
        let end = self.entries.durable_end();
        let in_flight = state
            .held
            .values()
            .filter(|held| matches!(held.phase, Phase::InFlight { .. }))
            .count() as u64;
        Ok(QueueDepth {
            pending: end
                .saturating_sub(state.cursor)
                .saturating_sub(state.acked.len() as u64),
            in_flight,
            dead: state.dead.len() as u64,
        })
    }
}

/// [`wal_error`] with the cause of a poisoned `wal` in the message.
fn wal_failure(wal: &Wal, error: WalError) -> BackendError {
    match (error, wal.poison_cause()) {
        (WalError::Poisoned, Some(cause)) => BackendError::poisoned(format!(
            "the write-ahead log is poisoned by an earlier failure ({cause})"
        )),
        (error, _) => wal_error(error),
    }
}

fn wal_error(error: WalError) -> BackendError {
    match error {
        WalError::Poisoned => BackendError::poisoned(
            "the write-ahead log is poisoned by an earlier failed write or fsync",
        ),
        // Nothing of the append was written: an outage until space is freed, not a bad entry.
        WalError::StorageFull => BackendError::storage_full(error.to_string()),
        WalError::RecordTooLarge { .. } => BackendError::rejected(error.to_string()),
        other => BackendError::unavailable(other.to_string()).with_source(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> WalQueueOptions {
        WalQueueOptions {
            visibility_timeout: Duration::from_millis(100),
            attempts_max: 3,
            ..WalQueueOptions::default()
        }
    }

    fn payloads(deliveries: &[Delivery]) -> Vec<&[u8]> {
        deliveries.iter().map(|d| d.payload.as_slice()).collect()
    }

    #[tokio::test]
    async fn unacknowledged_entries_are_redelivered_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = WalQueue::open(dir.path(), "q", options()).unwrap();
            queue
                .append((0..5u8).map(|i| vec![i]).collect())
                .await
                .unwrap();
            let got = queue.receive(5, Duration::ZERO).await.unwrap();
            // Acknowledge 0, 1 and 3: the cursor can only pass 0 and 1.
            queue.ack(&[got[0].id, got[1].id, got[3].id]).await.unwrap();
            queue.commit_cursor().await.unwrap();
            queue.close();
        }
        let queue = WalQueue::open(dir.path(), "q", options()).unwrap();
        let again = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(payloads(&again), [[2u8].as_slice(), &[3], &[4]]);
    }

    #[tokio::test]
    async fn dead_letters_survive_restarts_and_can_be_redriven_or_purged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = WalQueue::open(dir.path(), "q", options()).unwrap();
            queue
                .append(vec![b"one".to_vec(), b"two".to_vec(), b"ok".to_vec()])
                .await
                .unwrap();
            let got = queue.receive(3, Duration::ZERO).await.unwrap();
            queue.dead_letter(got[0].id, "bad one").await.unwrap();
            queue.dead_letter(got[1].id, "bad two").await.unwrap();
            queue.ack(&[got[2].id]).await.unwrap();
            queue.commit_cursor().await.unwrap();
            queue.close();
        }
        let queue = WalQueue::open(dir.path(), "q", options()).unwrap();
        assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
        let dead = queue.dead_letters(10).await.unwrap();
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons, ["bad one", "bad two"]);
        assert_eq!(queue.depth().await.unwrap().dead, 2);

        let redriven = queue
            .redrive(DeadLetterSelection::Ids(vec![dead[0].id]))
            .await
            .unwrap();
        assert_eq!(redriven, 1);
        assert_eq!(queue.purge(DeadLetterSelection::All).await.unwrap(), 1);
        let back = queue.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(payloads(&back), [b"one"]);
        queue.close();

        let queue = WalQueue::open(dir.path(), "q", options()).unwrap();
        assert!(
            queue.dead_letters(10).await.unwrap().is_empty(),
            "removals are durable"
        );
    }
}
