//! What both transports do, written once: sessions, the checks and the append of a send,
//! membership, read markers, typing, logout. `http.rs` and `ws.rs` only translate requests
//! and frames into these calls, and their answers back. Errors are the wire's `ApiError`;
//! a backend's failure becomes one in [`backend`], the one place that decides what a client
//! learns of it.

use std::time::Duration;

use parlor_core::error::ApiError;
use parlor_core::events::Change;
use parlor_core::ports::{NodeCommand, Session, TokenHash};
use parlor_core::protocol::{Conversation, ServerFrame, User};
use parlor_core::queue::InboundEntry;
use parlor_core::{
    BackendError, BackendErrorKind, ConversationId, ErrorCode, Seq, UserId, validate,
};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::Gateway;
use crate::auth;
use crate::deliver;
use crate::metrics as m;

/// A backend's failure as the client sees it: what to do about it, never the cause, which
/// goes to the log.
pub(super) fn backend(error: BackendError) -> ApiError {
    match error.kind {
        BackendErrorKind::Unavailable => {
            tracing::warn!(%error, "backend unavailable");
            ApiError::new(
                ErrorCode::Unavailable,
                "temporarily unavailable; nothing was changed, retry later",
            )
        }
        BackendErrorKind::Rejected => {
            tracing::info!(%error, "backend rejected a request");
            ApiError::new(ErrorCode::InvalidInput, error.message)
        }
        BackendErrorKind::Poisoned => {
            tracing::error!(%error, "backend poisoned");
            ApiError::new(
                ErrorCode::Unavailable,
                "the server cannot accept writes; it must restart",
            )
        }
        // Not a gateway's error (a persister's only), but told as what it is to a client.
        BackendErrorKind::Fenced => {
            tracing::warn!(%error, "backend fenced a write");
            ApiError::new(
                ErrorCode::Unavailable,
                "temporarily unavailable; nothing was changed, retry later",
            )
        }
        BackendErrorKind::StorageFull => {
            tracing::error!(%error, "backend out of space");
            ApiError::new(
                ErrorCode::StorageFull,
                "the server is out of disk space; nothing was changed, retry later",
            )
        }
    }
}

/// The error of a failure that is ours, not the client's; the cause is logged by the caller.
pub(super) fn internal() -> ApiError {
    ApiError::new(ErrorCode::Internal, "internal error; see the server log")
}

impl Gateway {
    /// The session behind a token, if it is live.
    pub(super) async fn session(
        &self,
        token: &str,
    ) -> Result<Option<(Session, TokenHash)>, ApiError> {
        // Tokens are 64 hex digits; anything else cannot be one of ours.
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hash = auth::token_hash(token);
        let session = self
            .deps
            .store
            .session_user(hash, OffsetDateTime::now_utc())
            .await
            .map_err(backend)?;
        Ok(session.map(|session| (session, hash)))
    }

    /// Opens a session for `user` and returns its token.
    pub(super) async fn open_session(&self, user: &User) -> Result<String, ApiError> {
        let token = auth::new_token().map_err(|error| {
            tracing::error!(%error, "no randomness for a session token");
            internal()
        })?;
        let expires_at = OffsetDateTime::now_utc() + self.config.session_ttl;
        self.deps
            .store
            .create_session(auth::token_hash(&token), user.id, expires_at)
            .await
            .map_err(backend)?;
        Ok(token)
    }

    /// Ends a session: the token stops working, and its sockets close on every node.
    pub(super) async fn end_session(&self, user: UserId, token: TokenHash) -> Result<(), ApiError> {
        self.deps
            .store
            .delete_session(token)
            .await
            .map_err(backend)?;
        let nodes = self.deps.registry.locate(&[user]).await.map_err(backend)?;
        for (node, _) in nodes {
            let command = NodeCommand::CloseSession { user, token };
            self.deps.relay.send(node, command).await.map_err(backend)?;
        }
        Ok(())
    }

    /// Checks one change (a send included) and turns it into an inbound entry: valid input,
    /// a member of the conversation (`not_found` otherwise, as for a conversation that does
    /// not exist), under the rate limit, and allowed by the conversation's rules now. A
    /// plain message needs only membership; any other change costs one store read for the
    /// rules ([`parlor_core::rules`]).
    pub(super) async fn check_event(
        &self,
        sender: UserId,
        conversation_id: &str,
        client_msg_id: String,
        mut change: Change,
        known_member_of: &mut MembershipCache,
    ) -> Result<InboundEntry, ApiError> {
        validate::client_msg_id(&client_msg_id)?;
        validate::change(&mut change, self.config.body_bytes_max)?;
        // Leaving ends the membership, so a `member_left` resent after it was stored (its
        // `accepted` lost with the connection) comes from a non-member: the store's
        // `refusal` below tells that repeat (none) from any other change of a non-member
        // (`not_found`, which stands if the store cannot say).
        let mut not_a_member = None;
        let conversation = match self
            .member_conversation(sender, conversation_id, known_member_of)
            .await
        {
            Ok(conversation) => conversation,
            Err(error) if error.code == ErrorCode::NotFound && change == Change::MemberLeft {} => {
                let conversation = conversation_id.parse().map_err(|_| error.clone())?;
                not_a_member = Some(error);
                conversation
            }
            Err(error) => return Err(error),
        };
        if let Err(wait) = self.limits.sends.check(&sender) {
            metrics::counter!(m::RATE_LIMITED, "what" => "send").increment(1);
            return Err(ApiError::rate_limited("too many messages; slow down", wait));
        }
        let entry = InboundEntry {
            conversation_id: conversation,
            sender_id: sender,
            client_msg_id,
            accepted_at: OffsetDateTime::now_utc(),
            change,
        };
        let plain_message = matches!(
            &entry.change,
            Change::Message {
                reply_to_seq: None,
                files,
                ..
            } if files.is_empty()
        );
        if !plain_message {
            match self
                .deps
                .store
                .refusal(&entry.clone().into_new_event())
                .await
            {
                Ok(None) => {}
                Ok(Some(error)) => return Err(error),
                Err(_) if let Some(not_a_member) = not_a_member => return Err(not_a_member),
                // The store is the judge, and will judge again when it stores the change:
                // while it is down the queue takes changes, as it takes messages, and the
                // sender learns of a refusal then.
                Err(error) if error.kind == BackendErrorKind::Unavailable => {
                    tracing::debug!(%error, "rules not checked before accepting: store down");
                }
                Err(error) => return Err(backend(error)),
            }
        }
        Ok(entry)
    }

    /// Parses a conversation id and checks that `user` is a member; both failures are the
    /// same `not_found`, so that non-members learn nothing.
    pub(super) async fn member_conversation(
        &self,
        user: UserId,
        conversation_id: &str,
        known_member_of: &mut MembershipCache,
    ) -> Result<ConversationId, ApiError> {
        let not_found = || ApiError::new(ErrorCode::NotFound, "no such conversation");
        let conversation: ConversationId = conversation_id.parse().map_err(|_| not_found())?;
        let now = Instant::now();
        if known_member_of.is_fresh(conversation, now) {
            return Ok(conversation);
        }
        let member = match self.deps.store.is_member(conversation, user).await {
            Ok(member) => member,
            // The store is down: a member found before stays one until it can say otherwise
            // (it checks again when it stores what they send), so that the queue takes
            // their messages through an outage.
            Err(error)
                if error.kind == BackendErrorKind::Unavailable
                    && known_member_of.was_member(conversation) =>
            {
                tracing::debug!(%error, "membership not checked: store down");
                return Ok(conversation);
            }
            Err(error) => return Err(backend(error)),
        };
        if !member {
            known_member_of.forget(conversation);
            return Err(not_found());
        }
        known_member_of.insert(conversation, now);
        Ok(conversation)
    }

    /// Appends checked entries to the inbound queue; `Ok` means they are durable.
    pub(super) async fn accept(&self, entries: Vec<InboundEntry>) -> Result<(), ApiError> {
        if entries.is_empty() {
            return Ok(());
        }
        let count = entries.len() as u64;
        let started = std::time::Instant::now();
        let encoded = entries
            .iter()
            .map(|entry| (entry.conversation_id, entry.encode()))
            .collect();
        self.deps
            .inbound
            .append_keyed(encoded)
            .await
            .map_err(backend)?;
        metrics::histogram!(m::ACCEPT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::MESSAGES_ACCEPTED).increment(count);
        Ok(())
    }

    /// Moves a read or delivered marker and, if it moved, tells the conversation's members
    /// (the user's other devices clear their badge; the others see a receipt) and returns
    /// where it is now. A marker that moves nothing costs one store read and reaches nobody.
    /// The caller has checked membership and the marker's limit.
    pub(super) async fn move_marker(
        &self,
        marker: Marker,
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Option<Seq>, ApiError> {
        let store = &self.deps.store;
        let moved = match marker {
            Marker::Read => store.mark_read(conversation, user, seq).await,
            Marker::Delivered => store.mark_delivered(conversation, user, seq).await,
        }
        .map_err(backend)?;
        let Some(seq) = moved else {
            return Ok(None);
        };
        let members = store.members(conversation).await.map_err(backend)?;
        let frame = match marker {
            Marker::Read => ServerFrame::Read {
                conversation_id: conversation,
                user_id: user,
                seq,
            },
            Marker::Delivered => ServerFrame::Delivered {
                conversation_id: conversation,
                user_id: user,
                seq,
            },
        };
        deliver::to_users(&self.deps, &members, frame.to_json().into(), None)
            .await
            .map_err(backend)?;
        Ok(Some(seq))
    }

    /// Mutes or unmutes a conversation for `user`, and tells their other devices.
    pub(super) async fn set_muted(
        &self,
        user: UserId,
        conversation: ConversationId,
        muted: bool,
    ) -> Result<(), ApiError> {
        let member = self
            .deps
            .store
            .set_muted(conversation, user, muted)
            .await
            .map_err(backend)?;
        if !member {
            return Err(ApiError::new(ErrorCode::NotFound, "no such conversation"));
        }
        let frame = ServerFrame::Muted {
            conversation_id: conversation,
            muted,
        };
        deliver::to_users(&self.deps, &[user], frame.to_json().into(), None)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Puts a conversation created just now on the chat lists of its members' live
    /// connections (the creator's other devices too). Best effort: a member who misses it
    /// finds it in their list on the next load.
    pub(super) async fn announce_new_conversation(&self, conversation: &Conversation) {
        let members: Vec<UserId> = conversation.members.iter().map(|m| m.id).collect();
        let frame = ServerFrame::Conversation {
            conversation: conversation.clone(),
        };
        if let Err(error) =
            deliver::to_users(&self.deps, &members, frame.to_json().into(), None).await
        {
            tracing::warn!(%error, "cannot announce a new conversation");
        }
    }

    /// Tells the conversation's other members that `user` is typing. Typing notices are
    /// advisory: over the limit they are dropped quietly.
    pub(super) async fn typing(
        &self,
        user: UserId,
        conversation_id: &str,
        known_member_of: &mut MembershipCache,
    ) -> Result<(), ApiError> {
        let conversation = self
            .member_conversation(user, conversation_id, known_member_of)
            .await?;
        if !self.limits.typing.allow(&user) {
            return Ok(());
        }
        let mut members = self
            .deps
            .store
            .members(conversation)
            .await
            .map_err(backend)?;
        members.retain(|member| *member != user);
        let frame = ServerFrame::Typing {
            conversation_id: conversation,
            user_id: user,
        };
        deliver::to_users(&self.deps, &members, frame.to_json().into(), None)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// A member's marker in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Marker {
    Read,
    Delivered,
}

/// Conversations a connection's user was found to be a member of, trusted for
/// [`MembershipCache::TRUSTED_FOR`]: a member can be removed, and a removed member must
/// stop being able to write within a second on every node. Within that window the store
/// still refuses what a removed member sent (the persister checks the rules again), so the
/// window is never a hole, only a later error. After it, the store is asked again, and
/// while the store is down an earlier answer stands (the store judges again when it stores).
/// Bounded in size.
#[derive(Default)]
pub(crate) struct MembershipCache(std::collections::HashMap<ConversationId, Instant>);

impl MembershipCache {
    const ENTRIES_MAX: usize = 4096;
    const TRUSTED_FOR: Duration = Duration::from_millis(500);

    fn is_fresh(&self, conversation: ConversationId, now: Instant) -> bool {
        self.0
            .get(&conversation)
            .is_some_and(|&checked_at| now.duration_since(checked_at) < Self::TRUSTED_FOR)
    }

    fn was_member(&self, conversation: ConversationId) -> bool {
        self.0.contains_key(&conversation)
    }

    fn forget(&mut self, conversation: ConversationId) {
        self.0.remove(&conversation);
    }

    fn insert(&mut self, conversation: ConversationId, now: Instant) {
        if self.0.len() >= Self::ENTRIES_MAX {
            self.0.clear();
        }
        self.0.insert(conversation, now);
    }
}
