//! The janitor: removes uploads that were never attached, and deletes the blobs no file uses
//! any more. A blob is claimed in the store first (from then on no new file may use it),
//! deleted from the blob store, and only then forgotten; a janitor that dies in between
//! leaves a claim that a later round takes again. Any number may run: a claim made less than
//! `unused_grace` ago is left to the janitor that made it.

use std::time::Duration;

use parlor_core::BackendError;
use time::OffsetDateTime;

use crate::{Deps, Shutdown};

#[derive(Clone, Debug)]
pub struct JanitorConfig {
    /// How often a round runs.
    pub interval: Duration,
    /// An upload not attached by then is removed.
    pub upload_ttl: Duration,
    /// How long a blob stays unused (or claimed) before it is claimed (again): longer than a
    /// round takes, so that two janitors never delete the same blob at once.
    pub unused_grace: Duration,
    /// Uploads removed, or blobs claimed, per store call.
    pub batch: u16,
}

impl Default for JanitorConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            upload_ttl: Duration::from_secs(24 * 3600),
            unused_grace: Duration::from_secs(600),
            batch: 200,
        }
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub uploads_expired: u64,
    pub blobs_deleted: u64,
}

/// Runs a round every `interval` until `shutdown`; a failed round is logged and the next one
/// tries again.
pub async fn run(deps: Deps, config: JanitorConfig, shutdown: Shutdown) {
    let mut ticks = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.clone().wait() => return,
        }
        match sweep(&deps, &config, OffsetDateTime::now_utc()).await {
            Ok(swept) if swept != Swept::default() => {
                tracing::info!(?swept, "janitor: swept files");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "janitor: a round failed"),
        }
    }
}

/// One round at `now`: expires uploads, then deletes unused blobs, each in batches until
/// none is left.
pub async fn sweep(
    deps: &Deps,
    config: &JanitorConfig,
    now: OffsetDateTime,
) -> Result<Swept, BackendError> {
    let mut swept = Swept::default();
    loop {
        let expired = deps
            .store
            .expire_uploads(now - config.upload_ttl, config.batch)
            .await?;
        swept.uploads_expired += expired;
        if expired < u64::from(config.batch) {
            break;
        }
    }
    loop {
        let claimed = deps
            .store
            .claim_unused_blobs(now - config.unused_grace, config.batch)
            .await?;
        let mut deleted = Vec::with_capacity(claimed.len());
        for key in &claimed {
            match deps.blobs.delete(key).await {
                Ok(()) => deleted.push(key.clone()),
                // Claimed still: a later round tries again.
                Err(error) => tracing::warn!(%error, %key, "janitor: cannot delete a blob"),
            }
        }
        deps.store.forget_blobs(&deleted).await?;
        swept.blobs_deleted += deleted.len() as u64;
        if claimed.len() < usize::from(config.batch) || deleted.is_empty() {
            break;
        }
    }
    Ok(swept)
}
