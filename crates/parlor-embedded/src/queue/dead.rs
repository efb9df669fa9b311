//! The dead-letter side of a [`WalQueue`]: a log of `Dead` records and `Removed` tombstones
//! (versioned payloads), replayed at open into the live dead letters; listing, redriving and
//! purging them; compaction once the oldest live letter moves.

use parlor_core::BackendError;
use parlor_core::ports::{DeadLetter, DeadLetterSelection, Queue};
use parlor_core::queue::{decode_payload, encode_payload};
use parlor_wal::Wal;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CURSOR, State, WalQueue, wal_error};

/// A record of the dead-letter log, a versioned payload like the entries themselves
/// (`parlor_core::queue`): version 0 had no version byte.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum DeadLogRecord {
    Dead(DeadRecord),
    Removed { id: u64 },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct DeadRecord {
    pub payload: Vec<u8>,
    pub reason: String,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: OffsetDateTime,
}

impl WalQueue {
    pub(super) async fn write_dead(
        &self,
        records: Vec<DeadLogRecord>,
    ) -> Result<std::ops::Range<u64>, BackendError> {
        let encoded = records.iter().map(encode_payload).collect();
        Self::append_to(&self.dead, encoded).await
    }

    /// Moves the cursor of the dead-letter log to its oldest live record, so that segments
    /// holding only removed letters are deleted.
    pub(super) async fn compact_dead(&self) -> Result<(), BackendError> {
        let oldest = {
            let state = self.state.lock().expect("queue lock");
            state.dead.first().map(|(id, _)| *id)
        };
        let cursor = oldest.unwrap_or_else(|| self.dead.durable_end());
        let dead = self.dead.clone();
        tokio::task::spawn_blocking(move || dead.commit_cursor(CURSOR, cursor))
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("dead-letter compaction task: {error}"))
            })?
            .map_err(wal_error)
    }

    fn select(state: &State, selection: &DeadLetterSelection) -> Vec<(u64, DeadRecord)> {
        state
            .dead
            .iter()
            .filter(|(id, _)| match selection {
                DeadLetterSelection::All => true,
                DeadLetterSelection::Ids(ids) => ids.contains(id),
            })
            .cloned()
            .collect()
    }

    async fn remove_dead(&self, ids: &[u64]) -> Result<(), BackendError> {
        self.write_dead(
            ids.iter()
                .map(|id| DeadLogRecord::Removed { id: *id })
                .collect(),
        )
        .await?;
        self.state
            .lock()
            .expect("queue lock")
            .dead
            .retain(|(id, _)| !ids.contains(id));
        self.compact_dead().await
    }

    pub(super) fn list_dead(&self, limit: usize) -> Vec<DeadLetter> {
        let state = self.state.lock().expect("queue lock");
        state
            .dead
            .iter()
            .take(limit)
            .map(|(id, record)| DeadLetter {
                id: *id,
                payload: record.payload.clone(),
                reason: record.reason.clone(),
                attempts: record.attempts,
                failed_at: record.failed_at,
            })
            .collect()
    }

    pub(super) async fn redrive_dead(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<usize, BackendError> {
        let selected = Self::select(&self.state.lock().expect("queue lock"), &selection);
        if selected.is_empty() {
            return Ok(0);
        }
        // Append first, remove second: a crash in between redrives twice (harmless, the
        // persister is idempotent) rather than losing the letter.
        let payloads = selected
            .iter()
            .map(|(_, record)| record.payload.clone())
            .collect();
        self.append(payloads).await?;
        let ids: Vec<u64> = selected.iter().map(|(id, _)| *id).collect();
        self.remove_dead(&ids).await?;
        Ok(ids.len())
    }

    pub(super) async fn purge_dead(
        &self,
        selection: DeadLetterSelection,
    ) -> Result<usize, BackendError> {
        let selected = Self::select(&self.state.lock().expect("queue lock"), &selection);
        let ids: Vec<u64> = selected.iter().map(|(id, _)| *id).collect();
        if !ids.is_empty() {
            self.remove_dead(&ids).await?;
        }
        Ok(ids.len())
    }
}

/// Rebuilds the live dead letters from the dead-letter log.
pub(super) fn replay_dead(dead: &Wal) -> Result<Vec<(u64, DeadRecord)>, BackendError> {
    let mut reader = dead.reader(dead.start_offset()).map_err(wal_error)?;
    let mut live: Vec<(u64, DeadRecord)> = Vec::new();
    while let Some((offset, bytes)) = reader.next().map_err(wal_error)? {
        let record: DeadLogRecord = decode_payload(&bytes).map_err(|error| {
            BackendError::poisoned(format!("unreadable dead-letter record {offset}: {error}"))
        })?;
        match record {
            DeadLogRecord::Dead(record) => live.push((offset, record)),
            DeadLogRecord::Removed { id } => live.retain(|(live_id, _)| *live_id != id),
        }
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dead-letter log's bytes as this build writes them, and as earlier builds wrote
    /// them (version 1, and version 0 from before payload versions: still in data
    /// directories after an upgrade).
    #[test]
    fn dead_letter_records_are_versioned_and_version_0_is_read() {
        let removed = DeadLogRecord::Removed { id: 7 };
        let written = encode_payload(&removed);
        assert_eq!(written, b"\x03{\"Removed\":{\"id\":7}}");
        for bytes in [
            &written[..],
            b"\x02{\"Removed\":{\"id\":7}}",
            b"\x01{\"Removed\":{\"id\":7}}",
            b"{\"Removed\":{\"id\":7}}",
        ] {
            let read: DeadLogRecord = decode_payload(bytes).unwrap();
            assert!(matches!(read, DeadLogRecord::Removed { id: 7 }));
        }
        let dead = br#"{"Dead":{"payload":[104,105],"reason":"r","attempts":3,"failed_at":"1970-01-01T00:00:00Z"}}"#;
        let DeadLogRecord::Dead(record) = decode_payload(dead).unwrap() else {
            panic!("a dead record");
        };
        assert_eq!((record.payload, record.attempts), (b"hi".to_vec(), 3));
    }
}
