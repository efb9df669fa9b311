//! The gateway: protocol v1 over HTTP and WebSocket. It authenticates, authorises by
//! membership, validates, and appends accepted messages to the inbound queue; it never
//! assigns `seq` and never writes messages to the store.

mod http;
mod hub;
mod origin;
mod reorder;
mod ws;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::Utf8Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use parlor_core::error::ApiError;
use parlor_core::ports::{NodeCommand, Session, TokenHash};
use parlor_core::protocol::User;
use parlor_core::queue::InboundEntry;
use parlor_core::{BackendError, BackendErrorKind, ConversationId, ErrorCode, UserId, validate};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{self, Passwords};
use crate::config::GatewayConfig;
use crate::limits::Limits;
use crate::listen::{self, ConnectionsPerAddress};
use crate::metrics as m;
use crate::{Deps, Shutdown};
use origin::{OriginPolicy, Scheme};
use reorder::Reorder;

/// How long a message frame that arrived before its predecessors waits for them.
const REORDER_HOLD: Duration = Duration::from_millis(100);

pub use hub::Hub;
pub use origin::Origin;

/// Everything a request handler needs. Shared as `Arc<Gateway>`.
pub struct Gateway {
    deps: Deps,
    config: GatewayConfig,
    limits: Limits,
    passwords: Passwords,
    hub: Hub,
    /// Open WebSockets per client address: behind a trusted proxy the listener sees only the
    /// proxy, so this is where one client's connections are capped.
    websockets_per_ip: Arc<ConnectionsPerAddress>,
    metrics: PrometheusHandle,
    shutdown: Shutdown,
}

/// Serves the gateway on `listener` until `shutdown`, with `fallback` (the web client's
/// assets, say) for paths outside the API.
pub async fn run(
    deps: Deps,
    config: GatewayConfig,
    listener: TcpListener,
    metrics: PrometheusHandle,
    fallback: Option<Router>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let gateway = Arc::new(Gateway {
        limits: Limits::new(&config.limits),
        passwords: Passwords::new(config.limits.password_hashes_concurrent_max),
        hub: Hub::default(),
        websockets_per_ip: ConnectionsPerAddress::new(config.listener.connections_per_ip_max),
        deps,
        config,
        metrics,
        shutdown: shutdown.clone(),
    });
    let mut inbox = gateway
        .deps
        .relay
        .inbox(gateway.config.node)
        .await
        .map_err(std::io::Error::other)?;
    let inbox_task = {
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let mut reorder = Reorder::new(REORDER_HOLD);
            loop {
                let deadline = reorder.deadline();
                tokio::select! {
                    command = inbox.next() => match command {
                        Some(command) => gateway.execute(command, &mut reorder),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                        for (users, frame) in reorder.expire(tokio::time::Instant::now()) {
                            gateway.hub.deliver(&users, &Utf8Bytes::from(frame.as_ref()));
                        }
                    }
                }
            }
        })
    };
    let housekeeping_task = tokio::spawn(Arc::clone(&gateway).housekeeping());

    let mut app = router(Arc::clone(&gateway));
    if let Some(fallback) = fallback {
        app = app.fallback_service(fallback);
    }
    let serve_shutdown = {
        let gateway = Arc::clone(&gateway);
        async move {
            shutdown.wait().await;
            gateway.hub.close_all();
        }
    };
    let listen_config = gateway.config.listener.clone();
    listen::serve(listener, app, listen_config, serve_shutdown).await;
    inbox_task.abort();
    housekeeping_task.abort();
    Ok(())
}

fn router(gateway: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/auth/register", post(http::register))
        .route("/auth/login", post(http::login))
        .route("/auth/logout", post(http::logout))
        .route("/me", get(http::me))
        .route("/users", get(http::users))
        .route(
            "/conversations",
            get(http::conversations)
                .post(http::create_conversation)
                .layer(DefaultBodyLimit::max(http::CREATE_CONVERSATION_BYTES_MAX)),
        )
        .route(
            "/conversations/{id}/messages",
            get(http::messages).post(http::post_message),
        )
        .route("/conversations/{id}/read", post(http::mark_read))
        .route("/ws", get(ws::upgrade))
        .fallback(|| async { HttpError::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&gateway),
            refuse_cross_site,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&gateway),
            limit_requests,
        ))
        .layer(DefaultBodyLimit::max(gateway.config.request_bytes_max));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(http::ready))
        .route("/metrics", get(http::metrics))
        .nest("/api/v1", api)
        .with_state(gateway)
        // On every answer, the web client's files included: no type sniffing (a JSON error
        // quoting input must never become a page), and no URLs leaking to other sites.
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
}

impl Gateway {
    /// Acts on a command relayed to this node.
    fn execute(&self, command: NodeCommand, reorder: &mut Reorder) {
        match command {
            NodeCommand::Deliver {
                users,
                frame,
                order: None,
            } => {
                self.hub.deliver(&users, &Utf8Bytes::from(frame.as_ref()));
            }
            NodeCommand::Deliver {
                users,
                frame,
                order: Some(order),
            } => {
                let now = tokio::time::Instant::now();
                for (users, frame) in reorder.arrive(order, (users, frame), now) {
                    self.hub.deliver(&users, &Utf8Bytes::from(frame.as_ref()));
                }
            }
            NodeCommand::CloseSession { user, token } => self.hub.close_session(user, token),
        }
    }

    /// Renews this node's lease, publishes gauges and trims rate-limit state, until shutdown.
    async fn housekeeping(self: Arc<Self>) {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        let mut trim = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    if let Err(error) = self.deps.registry.heartbeat(self.config.node, self.config.heartbeat_lease).await {
                        tracing::warn!(%error, "cannot renew this node's registry lease");
                    }
                }
                _ = gauges.tick() => self.publish_gauges().await,
                _ = trim.tick() => self.limits.forget_idle(),
                _ = self.shutdown.clone().wait() => return,
            }
        }
    }

    async fn publish_gauges(&self) {
        metrics::gauge!(m::CONNECTIONS).set(self.hub.connection_count() as f64);
        for (name, queue) in [
            ("inbound", &self.deps.inbound),
            ("notifications", &self.deps.notifications),
        ] {
            if let Ok(depth) = queue.depth().await {
                metrics::gauge!(m::QUEUE_PENDING, "queue" => name).set(depth.pending as f64);
                metrics::gauge!(m::QUEUE_IN_FLIGHT, "queue" => name).set(depth.in_flight as f64);
                metrics::gauge!(m::QUEUE_DEAD, "queue" => name).set(depth.dead as f64);
            }
        }
    }

    /// The session behind a token, if it is live.
    async fn session(&self, token: &str) -> Result<Option<(Session, TokenHash)>, HttpError> {
        // Tokens are 64 hex digits; anything else cannot be one of ours.
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let hash = auth::token_hash(token);
        let session = self
            .deps
            .store
            .session_user(hash, OffsetDateTime::now_utc())
            .await?;
        Ok(session.map(|session| (session, hash)))
    }

    /// Opens a session for `user`: the token, and the cookie that carries it for browsers.
    async fn open_session(&self, user: &User) -> Result<(String, String), HttpError> {
        let token = auth::new_token().map_err(|error| {
            tracing::error!(%error, "no randomness for a session token");
            HttpError::internal()
        })?;
        let ttl = self.config.session_ttl;
        let expires_at = OffsetDateTime::now_utc() + ttl;
        self.deps
            .store
            .create_session(auth::token_hash(&token), user.id, expires_at)
            .await?;
        let cookie = format!(
            "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            auth::SESSION_COOKIE,
            ttl.as_secs(),
            if self.config.cookie_secure {
                "; Secure"
            } else {
                ""
            }
        );
        Ok((token, cookie))
    }

    fn clear_cookie(&self) -> String {
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
            auth::SESSION_COOKIE,
            if self.config.cookie_secure {
                "; Secure"
            } else {
                ""
            }
        )
    }

    /// Checks one send and turns it into an inbound entry: valid input, under the rate
    /// limit, and a member of the conversation (`not_found` otherwise, as for a conversation
    /// that does not exist).
    async fn check_send(
        &self,
        sender: UserId,
        conversation_id: &str,
        client_msg_id: String,
        body: String,
        known_member_of: &mut MembershipCache,
    ) -> Result<InboundEntry, ApiError> {
        validate::client_msg_id(&client_msg_id)?;
        validate::body(&body, self.config.body_bytes_max)?;
        let conversation = self
            .member_conversation(sender, conversation_id, known_member_of)
            .await?;
        if let Err(wait) = self.limits.sends.check(&sender) {
            metrics::counter!(m::RATE_LIMITED, "what" => "send").increment(1);
            return Err(ApiError::rate_limited("too many messages; slow down", wait));
        }
        Ok(InboundEntry {
            conversation_id: conversation,
            sender_id: sender,
            client_msg_id,
            body,
            accepted_at: OffsetDateTime::now_utc(),
        })
    }

    /// Parses a conversation id and checks that `user` is a member; both failures are the
    /// same `not_found`, so that non-members learn nothing.
    async fn member_conversation(
        &self,
        user: UserId,
        conversation_id: &str,
        known_member_of: &mut MembershipCache,
    ) -> Result<ConversationId, ApiError> {
        let not_found = || ApiError::new(ErrorCode::NotFound, "no such conversation");
        let conversation: ConversationId = conversation_id.parse().map_err(|_| not_found())?;
        if known_member_of.contains(conversation) {
            return Ok(conversation);
        }
        let member = self
            .deps
            .store
            .is_member(conversation, user)
            .await
            .map_err(|error| HttpError::from(error).0)?;
        if !member {
            return Err(not_found());
        }
        known_member_of.insert(conversation);
        Ok(conversation)
    }

    /// Appends checked entries to the inbound queue; `Ok` means they are durable.
    async fn accept(&self, entries: Vec<InboundEntry>) -> Result<(), ApiError> {
        if entries.is_empty() {
            return Ok(());
        }
        let count = entries.len() as u64;
        let started = std::time::Instant::now();
        let encoded = entries.iter().map(InboundEntry::encode).collect();
        self.deps
            .inbound
            .append(encoded)
            .await
            .map_err(|error| HttpError::from(error).0)?;
        metrics::histogram!(m::ACCEPT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(m::MESSAGES_ACCEPTED).increment(count);
        Ok(())
    }
}

/// Conversations a connection's user is known to be a member of. Membership is never
/// revoked in protocol v1, so a positive answer can be kept; the set is bounded.
#[derive(Default)]
pub(crate) struct MembershipCache(std::collections::HashSet<ConversationId>);

impl MembershipCache {
    const ENTRIES_MAX: usize = 4096;

    fn contains(&self, conversation: ConversationId) -> bool {
        self.0.contains(&conversation)
    }

    fn insert(&mut self, conversation: ConversationId) {
        if self.0.len() >= Self::ENTRIES_MAX {
            self.0.clear();
        }
        self.0.insert(conversation);
    }
}

/// A per-IP limit on every API request.
async fn limit_requests(
    State(gateway): State<Arc<Gateway>>,
    ClientIp(ip): ClientIp,
    request: Request,
    next: Next,
) -> Response {
    if let Err(wait) = gateway.limits.requests.check(&ip) {
        metrics::counter!(m::RATE_LIMITED, "what" => "request").increment(1);
        return HttpError(ApiError::rate_limited("too many requests; slow down", wait))
            .into_response();
    }
    next.run(request).await
}

/// Refuses every state change that a browser says comes from another site. Cookies ride
/// along with cross-site requests, and an HTML form can post a body of any text: without
/// this a foreign page could log its visitor into an account of its choosing, or act in the
/// visitor's name. Non-browser clients send no `Origin` and pass.
async fn refuse_cross_site(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let policy = gateway.origin_policy(request.headers(), peer_of(request.extensions()));
    if !safe && policy.is_cross_site(request.headers()) {
        metrics::counter!(m::CROSS_SITE_REFUSED).increment(1);
        return HttpError::new(
            ErrorCode::Forbidden,
            "a request from another site may not change anything here",
        )
        .into_response();
    }
    next.run(request).await
}

/// The TCP peer of a request.
fn peer_of(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_canonical())
}

/// The TCP peer of a request (a balancer's address behind one), if known.
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_of(&parts.extensions)))
    }
}

impl Gateway {
    /// The origins a browser may use this server from: its own, as clients reach it (the
    /// scheme from `--cookie-secure`, or from a trusted balancer's `X-Forwarded-Proto`), and
    /// the configured ones.
    fn origin_policy(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> OriginPolicy<'_> {
        let forwarded = peer
            .filter(|peer| self.config.listener.trusted_proxies.contains(peer))
            .and_then(|_| headers.get("x-forwarded-proto"))
            .and_then(|proto| proto.to_str().ok())
            // A balancer appends; the last hop is the one that terminated the client's TLS.
            .and_then(|proto| proto.rsplit(',').next())
            .map(str::trim);
        let scheme = match forwarded {
            Some(proto) if proto.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(proto) if proto.eq_ignore_ascii_case("http") => Scheme::Http,
            _ if self.config.cookie_secure => Scheme::Https,
            _ => Scheme::Http,
        };
        OriginPolicy {
            scheme,
            allowed: &self.config.allowed_origins,
        }
    }
}

/// The client's address: the peer's, or behind a trusted load balancer the last address it
/// appended to `X-Forwarded-For` (earlier entries come from the client and prove nothing).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Arc<Gateway>> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let peer = peer_of(&parts.extensions).unwrap_or(IpAddr::from([0, 0, 0, 0]));
        if !gateway.config.listener.trusted_proxies.contains(&peer) {
            return Ok(ClientIp(peer));
        }
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
            .next_back();
        Ok(ClientIp(forwarded.unwrap_or(peer)))
    }
}

/// The caller, authenticated by bearer token or session cookie. A cookie-authenticated
/// request that changes state must carry `X-Parlor-CSRF`, which a cross-site form cannot set.
pub struct Caller {
    pub user: User,
    pub token: TokenHash,
}

pub const CSRF_HEADER: &str = "x-parlor-csrf";

impl FromRequestParts<Arc<Gateway>> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, HttpError> {
        let (token, via_cookie) = match credentials(&parts.headers) {
            Some(found) => found,
            None => return Err(HttpError::unauthorized()),
        };
        let safe = matches!(parts.method, Method::GET | Method::HEAD);
        if via_cookie && !safe && !parts.headers.contains_key(CSRF_HEADER) {
            return Err(HttpError::new(
                ErrorCode::Forbidden,
                "a cookie-authenticated request must carry the X-Parlor-CSRF header",
            ));
        }
        match gateway.session(&token).await? {
            Some((session, token)) => Ok(Caller {
                user: session.user,
                token,
            }),
            None => Err(HttpError::unauthorized()),
        }
    }
}

/// The token from `Authorization: Bearer`, else from the session cookie; and whether it
/// came from the cookie.
fn credentials(headers: &HeaderMap) -> Option<(String, bool)> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some((token.trim().to_string(), false));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == auth::SESSION_COOKIE)
        .map(|(_, token)| (token.to_string(), true))
}

/// An error response: `{"error": {"code", "message"}}` with the status that fits the code.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ApiError::new(code, message))
    }

    fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing, unknown or expired session",
        )
    }

    fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<BackendError> for HttpError {
    fn from(error: BackendError) -> Self {
        // The cause goes to the log, never to the client.
        match error.kind {
            BackendErrorKind::Unavailable => {
                tracing::warn!(%error, "backend unavailable");
                Self::new(
                    ErrorCode::Unavailable,
                    "temporarily unavailable; nothing was changed, retry later",
                )
            }
            BackendErrorKind::Rejected => {
                tracing::info!(%error, "backend rejected a request");
                Self::new(ErrorCode::InvalidInput, error.message)
            }
            BackendErrorKind::Poisoned => {
                tracing::error!(%error, "backend poisoned");
                Self::new(
                    ErrorCode::Unavailable,
                    "the server cannot accept writes; it must restart",
                )
            }
            BackendErrorKind::StorageFull => {
                tracing::error!(%error, "backend out of space");
                Self::new(
                    ErrorCode::StorageFull,
                    "the server is out of disk space; nothing was changed, retry later",
                )
            }
        }
    }
}

/// The one place where error codes become HTTP statuses.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson
        | ErrorCode::UnknownType
        | ErrorCode::InvalidInput
        | ErrorCode::InvalidUsername
        | ErrorCode::WeakPassword => StatusCode::BAD_REQUEST,
        ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UsernameTaken => StatusCode::CONFLICT,
        ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let ApiError {
            code,
            message,
            retry_after_ms,
        } = self.0;
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Some(wait_ms) = retry_after_ms {
            error["retry_after_ms"] = wait_ms.into();
        }
        let mut response = (
            status_of(code),
            axum::Json(serde_json::json!({ "error": error })),
        )
            .into_response();
        if let Some(wait_ms) = retry_after_ms {
            // Whole seconds, rounded up, for clients that only know the header.
            let seconds = wait_ms.div_ceil(1000).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
