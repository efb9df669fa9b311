//! The WebSocket endpoint: one task per connection, reading frames and translating them
//! into the calls of `actions`, and writing the replies and the frames the hub queues for it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, SinkExt};
use parlor_core::error::ApiError;
use parlor_core::events::Change;
use parlor_core::ports::{ConnectionInfo, Session, TokenHash};
use parlor_core::protocol::{ClientFrame, ServerFrame, User, decode_client_frame};
use parlor_core::queue::InboundEntry;
use parlor_core::{ConnectionId, ConversationId, ErrorCode, Seq};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use super::Gateway;
use super::actions::{Marker, MembershipCache};
use super::extract::{ClientIp, Peer, credentials};
use super::http::HttpError;
use super::hub::ConnectionHandle;
use crate::metrics as m;

/// Frames read and handled together: their sends go to the inbound queue in one append.
const FRAMES_PER_TURN_MAX: usize = 64;
/// Buffer sizes of one connection. The library's defaults (128 KiB) would cost more than
/// everything else a connection holds; a larger frame still fits, the buffer grows for it.
/// Measured on 10,000 idle connections: a 4 KiB read buffer cost 9.8 KiB per connection in
/// all, 2 KiB costs 7.8 KiB.
const READ_BUFFER_BYTES: usize = 2 * 1024;
const WRITE_BUFFER_BYTES: usize = 4 * 1024;

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// How long a handshake waits for its turn (`handshakes_concurrent_max`) before it is
/// answered 503: long enough to keep the gateway busy through a burst, short enough that a
/// client refused retries (after its backoff) before its own timeout.
const HANDSHAKE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    Peer(peer): Peer,
    ClientIp(client): ClientIp,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    check_origin(&gateway, &headers, peer)?;
    // Held for the life of the WebSocket.
    let client_slot = gateway.websockets_per_ip.take(client).ok_or_else(|| {
        metrics::counter!(m::RATE_LIMITED, "what" => "websockets_per_ip").increment(1);
        HttpError::new(
            ErrorCode::RateLimited,
            "too many connections from this address",
        )
    })?;
    let token = credentials(&headers)
        .map(|(token, _)| token)
        .or(query.token)
        .ok_or_else(HttpError::unauthorized)?;
    // Held until the connection is registered (see `handshakes_concurrent_max`).
    let waited = tokio::time::timeout(
        HANDSHAKE_WAIT_MAX,
        Arc::clone(&gateway.handshakes).acquire_owned(),
    )
    .await;
    let Ok(Ok(handshake)) = waited else {
        metrics::counter!(m::RATE_LIMITED, "what" => "handshakes").increment(1);
        return Err(HttpError::new(
            ErrorCode::Unavailable,
            "busy; reconnect later",
        ));
    };
    let (session, token) = gateway
        .session(&token)
        .await?
        .ok_or_else(HttpError::unauthorized)?;
    let frame_bytes_max = gateway.config.request_bytes_max;
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES.max(frame_bytes_max) * 4)
        .max_message_size(frame_bytes_max)
        .max_frame_size(frame_bytes_max)
        .on_upgrade(move |socket| async move {
            serve(gateway, socket, session, token, handshake).await;
            drop(client_slot);
        })
        .into_response())
}

/// A browser always sends `Origin`; it must be this server's own origin (scheme, host and
/// port) or an allowed one. A client that sends none (not a browser) is allowed.
fn check_origin(
    gateway: &Gateway,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<(), HttpError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let policy = gateway.origin_policy(headers, peer);
    if origin
        .to_str()
        .is_ok_and(|origin| policy.allows(origin, headers))
    {
        Ok(())
    } else {
        Err(HttpError::new(
            ErrorCode::Forbidden,
            "this origin may not open a WebSocket here",
        ))
    }
}

struct Connection {
    gateway: Arc<Gateway>,
    user: User,
    /// When the session ends: the socket closes then, as after a logout.
    session_expires_at: OffsetDateTime,
    known_member_of: MembershipCache,
    markers: Markers,
}

/// Read and delivered markers of one connection, coalesced: a client may send one per
/// message it shows or receives, but each written marker costs a store write and a frame to
/// every member. Markers wait here while the user's limit for their kind is spent; only the
/// newest of each conversation and kind is written, and none at or below a marker this
/// connection has already moved.
#[derive(Default)]
struct Markers {
    pending: HashMap<(ConversationId, Marker), Seq>,
    /// Where the markers this connection moved are now, as the store said.
    written: HashMap<(ConversationId, Marker), Seq>,
    /// When to try the pending ones again (the limit allows one more then).
    retry_at: Option<Instant>,
}

impl Markers {
    /// Markers remembered, at most; beyond, the memory of written markers starts over (the
    /// store still refuses to move a marker backwards).
    const REMEMBERED_MAX: usize = 1024;

    fn add(&mut self, key: (ConversationId, Marker), seq: Seq) {
        if self
            .written
            .get(&key)
            .is_some_and(|&written| written >= seq)
        {
            return;
        }
        if self.pending.len() >= Self::REMEMBERED_MAX {
            self.pending.clear();
        }
        let pending = self.pending.entry(key).or_insert(seq);
        *pending = (*pending).max(seq);
    }

    fn written(&mut self, key: (ConversationId, Marker), seq: Seq) {
        if self.written.len() >= Self::REMEMBERED_MAX {
            self.written.clear();
        }
        self.written.insert(key, seq);
    }
}

async fn serve(
    gateway: Arc<Gateway>,
    mut socket: WebSocket,
    session: Session,
    token: TokenHash,
    handshake: OwnedSemaphorePermit,
) {
    let user = session.user;
    let (frames_sender, mut frames) = mpsc::channel(gateway.config.connection_frames_queued_max);
    let close = Arc::new(Notify::new());
    let info = ConnectionInfo {
        id: ConnectionId::new(),
        user: user.id,
        node: gateway.config.node,
    };
    let handle = ConnectionHandle {
        id: info.id,
        token,
        frames: frames_sender,
        close: Arc::clone(&close),
    };
    if !gateway.hub.add(
        user.id,
        handle,
        gateway.config.limits.connections_per_user_max,
    ) {
        let error = ApiError::new(ErrorCode::RateLimited, "too many connections for this user");
        let _ = socket.send(text(ServerFrame::error(error, None))).await;
        let _ = socket
            .send(close_frame(close_code::POLICY, "too many connections"))
            .await;
        return;
    }
    if let Err(error) = gateway.deps.registry.register(info).await {
        tracing::warn!(%error, "cannot register a connection");
        gateway.hub.remove(user.id, info.id);
        let error = ApiError::new(
            ErrorCode::Unavailable,
            "temporarily unavailable; reconnect later",
        );
        let _ = socket.send(text(ServerFrame::error(error, None))).await;
        let _ = socket
            .send(close_frame(close_code::AGAIN, "unavailable"))
            .await;
        return;
    }
    drop(handshake);
    let mut connection = Connection {
        gateway: Arc::clone(&gateway),
        user,
        session_expires_at: session.expires_at,
        known_member_of: MembershipCache::default(),
        markers: Markers::default(),
    };
    connection.run(&mut socket, &mut frames, &close).await;
    gateway.hub.remove(connection.user.id, info.id);
    // The socket goes before the registry hears of it: a stopping gateway's unregistrations
    // wait their turn (the registry bounds its writes), and its clients are gone already.
    drop(socket);
    if let Err(error) = gateway.deps.registry.unregister(info).await {
        tracing::warn!(%error, "cannot unregister a connection");
    }
}

/// What becomes of a socket after a turn's replies are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterTurn {
    KeepOpen,
    Close,
    /// Closed with 1013 (try again later): an append failed and the frames after it must not
    /// be handled before the client sends it again.
    Reconnect,
}

fn text(frame: ServerFrame) -> Message {
    Message::Text(frame.to_json().into())
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

impl Connection {
    async fn run(
        &mut self,
        socket: &mut WebSocket,
        frames: &mut mpsc::Receiver<Utf8Bytes>,
        close: &Notify,
    ) {
        let hello = ServerFrame::Hello {
            user_id: self.user.id,
        };
        if !self.write(socket, vec![text(hello)]).await {
            return;
        }
        let idle_timeout = self.gateway.config.idle_timeout;
        let shutdown = self.gateway.shutdown.clone();
        let mut shutdown = std::pin::pin!(shutdown.wait());
        // The session's end, in the runtime's clock: the socket closes then.
        let session_left = (self.session_expires_at - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(std::time::Duration::ZERO);
        let session_end = Instant::now() + session_left;
        loop {
            // Checked here too: a busy queue of deliveries would keep the timer below unpolled.
            if Instant::now() >= session_end {
                self.write(
                    socket,
                    vec![close_frame(close_code::POLICY, "session expired")],
                )
                .await;
                return;
            }
            // One timer for everything this connection waits for besides its peer and its
            // queue (a timer costs memory in every one of many idle connections): the idle
            // timeout, the session's end, and held-back markers.
            let idle_at = Instant::now() + idle_timeout;
            let wake_at = [Some(idle_at), Some(session_end), self.markers.retry_at]
                .into_iter()
                .flatten()
                .min()
                .expect("an idle deadline");
            tokio::select! {
                biased;
                _ = close.notified() => {
                    self.write(socket, vec![close_frame(close_code::POLICY, "closed by the server")]).await;
                    return;
                }
                _ = &mut shutdown => {
                    self.write(socket, vec![close_frame(close_code::AWAY, "server shutting down")]).await;
                    return;
                }
                Some(frame) = frames.recv() => {
                    // Write whatever else is queued in the same flush.
                    let mut batch = vec![Message::Text(frame)];
                    while let Ok(frame) = frames.try_recv() {
                        batch.push(Message::Text(frame));
                    }
                    if !self.write(socket, batch).await {
                        return;
                    }
                }
                received = tokio::time::timeout_at(wake_at, socket.recv()) => {
                    let Ok(received) = received else {
                        let now = Instant::now();
                        if now >= session_end {
                            self.write(socket, vec![close_frame(close_code::POLICY, "session expired")]).await;
                            return;
                        }
                        if self.markers.retry_at.is_some_and(|at| now >= at) {
                            // Boxed, like `handle` below: see there.
                            let replies = Box::pin(self.write_markers()).await;
                            let replies = replies.into_iter().map(text).collect();
                            if !self.write(socket, replies).await {
                                return;
                            }
                            continue;
                        }
                        self.write(socket, vec![close_frame(close_code::AWAY, "idle")]).await;
                        return;
                    };
                    let Some(Ok(first)) = received else { return };
                    // Take what else has already arrived, so that its sends share one append.
                    let mut batch = vec![first];
                    while batch.len() < FRAMES_PER_TURN_MAX {
                        match socket.recv().now_or_never() {
                            Some(Some(Ok(message))) => batch.push(message),
                            _ => break,
                        }
                    }
                    // Boxed: its future is the largest this loop awaits, and an unboxed one
                    // would be part of every idle connection's memory (measured: 976 bytes
                    // of each connection's 2.8 KiB future).
                    let (replies, after) = Box::pin(self.handle(batch)).await;
                    let mut replies: Vec<Message> = replies.into_iter().map(text).collect();
                    if after == AfterTurn::Reconnect {
                        replies.push(close_frame(close_code::AGAIN, "unavailable"));
                    }
                    if !self.write(socket, replies).await || after != AfterTurn::KeepOpen {
                        return;
                    }
                }
            }
        }
    }

    /// Writes and flushes `messages`; false if the socket failed or the peer stopped reading
    /// for longer than the write timeout (the connection is then dropped).
    async fn write(&self, socket: &mut WebSocket, messages: Vec<Message>) -> bool {
        let write = async {
            for message in messages {
                socket.feed(message).await?;
            }
            socket.flush().await
        };
        matches!(
            tokio::time::timeout(self.gateway.config.write_timeout, write).await,
            Ok(Ok(()))
        )
    }

    /// Handles frames in order; returns the replies and what becomes of the socket.
    async fn handle(&mut self, messages: Vec<Message>) -> (Vec<ServerFrame>, AfterTurn) {
        if OffsetDateTime::now_utc() >= self.session_expires_at {
            // The timer closes the socket; nothing read meanwhile may act.
            let error = ApiError::new(ErrorCode::Unauthorized, "the session has expired");
            return (vec![ServerFrame::error(error, None)], AfterTurn::Close);
        }
        let mut replies = Vec::new();
        let mut entries: Vec<InboundEntry> = Vec::new();
        for message in messages {
            let text = match message {
                Message::Text(text) => text,
                Message::Binary(_) => {
                    let error =
                        ApiError::new(ErrorCode::InvalidJson, "frames are JSON text, not binary");
                    replies.push(ServerFrame::error(error, None));
                    continue;
                }
                Message::Close(_) => return (replies, AfterTurn::Close),
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            let frame = match decode_client_frame(text.as_str()) {
                Ok(frame) => frame,
                Err(error) => {
                    replies.push(ServerFrame::error(error, None));
                    continue;
                }
            };
            match frame {
                ClientFrame::Send {
                    conversation_id,
                    client_msg_id,
                    body,
                    reply_to_seq,
                    files,
                } => {
                    let change = Change::Message {
                        body,
                        reply_to_seq,
                        files,
                    };
                    let checked = self.check(&conversation_id, client_msg_id, change).await;
                    match checked {
                        Ok(entry) => entries.push(entry),
                        Err(error) => replies.push(error),
                    }
                }
                ClientFrame::Event {
                    conversation_id,
                    client_msg_id,
                    change,
                } => match self.check(&conversation_id, client_msg_id, change).await {
                    Ok(entry) => entries.push(entry),
                    Err(error) => replies.push(error),
                },
                ClientFrame::Typing { conversation_id } => {
                    let typing = self
                        .gateway
                        .typing(self.user.id, &conversation_id, &mut self.known_member_of)
                        .await;
                    if let Err(error) = typing {
                        replies.push(ServerFrame::error(error, None));
                    }
                }
                ClientFrame::Read {
                    conversation_id,
                    seq,
                } => {
                    self.add_marker(Marker::Read, &conversation_id, seq, &mut replies)
                        .await
                }
                ClientFrame::Delivered {
                    conversation_id,
                    seq,
                } => {
                    self.add_marker(Marker::Delivered, &conversation_id, seq, &mut replies)
                        .await
                }
                ClientFrame::Ping => replies.push(ServerFrame::Pong),
            }
        }
        // `accepted` only after the append returned: the entries are durable.
        let pending: Vec<_> = entries
            .iter()
            .map(|entry| (entry.client_msg_id.clone(), entry.conversation_id))
            .collect();
        let mut after = AfterTurn::KeepOpen;
        match self.gateway.accept(entries).await {
            Ok(()) => {
                replies.extend(pending.into_iter().map(|(client_msg_id, conversation_id)| {
                    ServerFrame::Accepted {
                        client_msg_id,
                        conversation_id,
                    }
                }))
            }
            Err(error) => {
                // What the client sent behind these is not appended before them: with the
                // queue failing over (a NATS leader elected, say) a later append could
                // succeed, and the client's resends would then come after it. Closed, the
                // client reconnects and sends these again first, then the rest.
                if error.code == ErrorCode::Unavailable && !pending.is_empty() {
                    after = AfterTurn::Reconnect;
                }
                replies.extend(pending.into_iter().map(|(client_msg_id, _)| {
                    ServerFrame::error(error.clone(), Some(client_msg_id))
                }))
            }
        }
        if self.markers.retry_at.is_none() {
            replies.extend(self.write_markers().await);
        }
        (replies, after)
    }

    /// A send or another change, checked; the error frame names its `client_msg_id`.
    async fn check(
        &mut self,
        conversation_id: &str,
        client_msg_id: String,
        change: Change,
    ) -> Result<InboundEntry, ServerFrame> {
        self.gateway
            .check_event(
                self.user.id,
                conversation_id,
                client_msg_id.clone(),
                change,
                &mut self.known_member_of,
            )
            .await
            .map_err(|error| ServerFrame::error(error, Some(client_msg_id)))
    }

    /// Holds a marker to be written with the others (a member's only).
    async fn add_marker(
        &mut self,
        marker: Marker,
        conversation_id: &str,
        seq: Seq,
        replies: &mut Vec<ServerFrame>,
    ) {
        let conversation = self
            .gateway
            .member_conversation(self.user.id, conversation_id, &mut self.known_member_of)
            .await;
        match conversation {
            Ok(conversation) => self.markers.add((conversation, marker), seq),
            Err(error) => replies.push(ServerFrame::error(error, None)),
        }
    }

    /// Writes the pending markers the user's limits allow now, and schedules the rest;
    /// returns errors to reply with.
    async fn write_markers(&mut self) -> Vec<ServerFrame> {
        self.markers.retry_at = None;
        let mut errors = Vec::new();
        let mut held = Vec::new();
        let pending: Vec<_> = self.markers.pending.drain().collect();
        for ((conversation, marker), seq) in pending {
            let limiter = match marker {
                Marker::Read => &self.gateway.limits.reads,
                Marker::Delivered => &self.gateway.limits.delivered,
            };
            if let Err(wait) = limiter.check(&self.user.id) {
                let at = Instant::now() + wait;
                self.markers.retry_at = Some(self.markers.retry_at.map_or(at, |r| r.min(at)));
                held.push(((conversation, marker), seq));
                continue;
            }
            match self
                .gateway
                .move_marker(marker, self.user.id, conversation, seq)
                .await
            {
                Ok(Some(moved)) => self.markers.written((conversation, marker), moved),
                Ok(None) => {}
                Err(error) => errors.push(ServerFrame::error(error, None)),
            }
        }
        self.markers.pending.extend(held);
        errors
    }
}
