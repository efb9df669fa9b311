//! Fault injection for tests, compiled only with the `faults` feature.
//!
//! `PARLOR_FAULT_STORE_BODY=TEXT`: the store answers `unavailable` to every batch holding a
//! message whose body contains TEXT — a poison message, to drive retries and the DLQ.
//!
//! `PARLOR_FAULT_INBOUND_FSYNC_FAILS_WHILE=PATH`: every fsync of the inbound queue's logs fails
//! while PATH exists — a failed fsync, which poisons the log (a real one is hard to provoke).

use std::sync::Arc;

use async_trait::async_trait;
use parlor_core::ports::{Appended, ConversationView, NewMessage, Page, Session, Store, TokenHash};
use parlor_core::protocol::{Message, User};
use parlor_core::{BackendError, ConversationId, Seq, UserId};
use time::OffsetDateTime;

pub fn inbound_sync_hook() -> parlor_embedded::SyncHook {
    match std::env::var_os("PARLOR_FAULT_INBOUND_FSYNC_FAILS_WHILE") {
        Some(trigger) if !trigger.is_empty() => {
            let trigger = std::path::PathBuf::from(trigger);
            tracing::warn!(
                trigger = %trigger.display(),
                "fault injection: inbound fsyncs fail while this file exists"
            );
            Arc::new(move |_| {
                if trigger.exists() {
                    Err(std::io::Error::other("injected fsync failure"))
                } else {
                    Ok(())
                }
            })
        }
        _ => Arc::new(|_| Ok(())),
    }
}

pub fn wrap_store(store: Arc<dyn Store>) -> Arc<dyn Store> {
    match std::env::var("PARLOR_FAULT_STORE_BODY") {
        Ok(poison) if !poison.is_empty() => {
            tracing::warn!(
                poison,
                "fault injection: the store fails batches holding this text"
            );
            Arc::new(PoisonedBodies { store, poison })
        }
        _ => store,
    }
}

struct PoisonedBodies {
    store: Arc<dyn Store>,
    poison: String,
}

#[async_trait]
impl Store for PoisonedBodies {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Option<User>, BackendError> {
        self.store.create_user(username, password_hash).await
    }
    async fn user_credentials(
        &self,
        username: &str,
    ) -> Result<Option<(User, String)>, BackendError> {
        self.store.user_credentials(username).await
    }
    async fn users_by_prefix(&self, prefix: &str, limit: u16) -> Result<Vec<User>, BackendError> {
        self.store.users_by_prefix(prefix, limit).await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.store.ping().await
    }
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
        self.store.users(ids).await
    }
    async fn set_last_seen(&self, user: UserId, at: OffsetDateTime) -> Result<(), BackendError> {
        self.store.set_last_seen(user, at).await
    }
    async fn last_seen(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
        self.store.last_seen(users).await
    }
    async fn create_session(
        &self,
        token: TokenHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> Result<(), BackendError> {
        self.store.create_session(token, user, expires_at).await
    }
    async fn session_user(
        &self,
        token: TokenHash,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, BackendError> {
        self.store.session_user(token, now).await
    }
    async fn delete_session(&self, token: TokenHash) -> Result<(), BackendError> {
        self.store.delete_session(token).await
    }
    async fn create_direct(
        &self,
        a: UserId,
        b: UserId,
    ) -> Result<(ConversationId, bool), BackendError> {
        self.store.create_direct(a, b).await
    }
    async fn create_group(
        &self,
        title: &str,
        members: &[UserId],
    ) -> Result<ConversationId, BackendError> {
        self.store.create_group(title, members).await
    }
    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationView>, BackendError> {
        self.store.conversations_of(user).await
    }
    async fn conversation_of(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<Option<ConversationView>, BackendError> {
        self.store.conversation_of(user, conversation).await
    }
    async fn is_member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<bool, BackendError> {
        self.store.is_member(conversation, user).await
    }
    async fn members(&self, conversation: ConversationId) -> Result<Vec<UserId>, BackendError> {
        self.store.members(conversation).await
    }
    async fn contacts(
        &self,
        user: UserId,
        members_max: usize,
    ) -> Result<Vec<UserId>, BackendError> {
        self.store.contacts(user, members_max).await
    }
    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, BackendError> {
        if batch
            .iter()
            .any(|message| message.body.contains(&self.poison))
        {
            return Err(BackendError::unavailable("injected fault: poisoned body"));
        }
        self.store.append_messages(batch).await
    }
    async fn messages(
        &self,
        conversation: ConversationId,
        page: Page,
    ) -> Result<Vec<Message>, BackendError> {
        self.store.messages(conversation, page).await
    }
    async fn mark_read(
        &self,
        conversation: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<Option<Seq>, BackendError> {
        self.store.mark_read(conversation, user, seq).await
    }
}
