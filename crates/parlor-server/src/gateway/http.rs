//! The HTTP endpoints of protocol v1: each translates a request into the calls of
//! `actions` (or a store read) and the answer back; `HttpError` and [`status_of`] are where
//! error codes become HTTP statuses.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parlor_core::error::ApiError;
use parlor_core::events::Change;
use parlor_core::ports::{ConversationView, Page};
use parlor_core::protocol::{Conversation, ConversationKind, ConversationMember, Member, User};
use parlor_core::rules::GROUP_MEMBERS_MAX;
use parlor_core::{BackendError, ErrorCode, Seq, UserId, validate};
use serde::Deserialize;
use serde_json::json;

use super::Gateway;
use super::actions::{self, Marker, MembershipCache};
use super::extract::{Caller, ClientIp, JsonBody, PathId, Peer};
use crate::auth;

type Shared = State<Arc<Gateway>>;

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

fn check_auth_rate(gateway: &Gateway, ip: IpAddr) -> Result<(), HttpError> {
    gateway.limits.auth.check(&ip).map_err(|wait| {
        HttpError(ApiError::rate_limited(
            "too many attempts; wait a little",
            wait,
        ))
    })
}

fn session_response(status: StatusCode, user: User, token: String, cookie: String) -> Response {
    (
        status,
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "user": user, "token": token })),
    )
        .into_response()
}

pub async fn register(
    State(gateway): Shared,
    ClientIp(ip): ClientIp,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<Response, HttpError> {
    check_auth_rate(&gateway, ip)?;
    validate::username(&credentials.username)?;
    validate::password(&credentials.password, &credentials.username)?;
    let hash = gateway
        .passwords
        .hash(credentials.password)
        .await
        .map_err(|error| {
            tracing::error!(%error, "password hashing failed");
            HttpError(actions::internal())
        })?;
    let Some(user) = gateway
        .deps
        .store
        .create_user(&credentials.username, &hash)
        .await?
    else {
        return Err(HttpError::new(
            ErrorCode::UsernameTaken,
            "this username is taken",
        ));
    };
    let token = gateway.open_session(&user).await?;
    let cookie = session_cookie(&gateway, &token);
    Ok(session_response(StatusCode::CREATED, user, token, cookie))
}

pub async fn login(
    State(gateway): Shared,
    ClientIp(ip): ClientIp,
    JsonBody(credentials): JsonBody<Credentials>,
) -> Result<Response, HttpError> {
    check_auth_rate(&gateway, ip)?;
    let found = if validate::username(&credentials.username).is_ok() {
        gateway
            .deps
            .store
            .user_credentials(&credentials.username)
            .await?
    } else {
        None
    };
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    let valid = gateway.passwords.verify(credentials.password, hash).await;
    match user {
        Some(user) if valid => {
            let token = gateway.open_session(&user).await?;
            let cookie = session_cookie(&gateway, &token);
            Ok(session_response(StatusCode::OK, user, token, cookie))
        }
        _ => Err(HttpError::new(
            ErrorCode::Unauthorized,
            "wrong username or password",
        )),
    }
}

pub async fn logout(State(gateway): Shared, caller: Caller) -> Result<Response, HttpError> {
    gateway.end_session(caller.user.id, caller.token).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, clear_cookie(&gateway))],
    )
        .into_response())
}

/// The cookie that carries a session's token for browsers.
fn session_cookie(gateway: &Gateway, token: &str) -> String {
    format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        auth::SESSION_COOKIE,
        gateway.config.session_ttl.as_secs(),
        secure_attribute(gateway),
    )
}

fn clear_cookie(gateway: &Gateway) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        auth::SESSION_COOKIE,
        secure_attribute(gateway),
    )
}

fn secure_attribute(gateway: &Gateway) -> &'static str {
    if gateway.config.cookie_secure {
        "; Secure"
    } else {
        ""
    }
}

pub async fn me(caller: Caller) -> Json<User> {
    Json(caller.user)
}

#[derive(Deserialize)]
pub struct UserQuery {
    #[serde(default)]
    q: String,
}

const USERS_LISTED_MAX: u16 = 20;

pub async fn users(
    State(gateway): Shared,
    caller: Caller,
    query: Result<Query<UserQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Member>>, HttpError> {
    let query = query_of(query)?;
    if query.q.len() > 32 {
        return Ok(Json(Vec::new()));
    }
    let mut found = gateway
        .deps
        .store
        .users_by_prefix(&query.q, USERS_LISTED_MAX + 1)
        .await?;
    found.retain(|user| user.id != caller.user.id);
    found.truncate(USERS_LISTED_MAX as usize);
    Ok(Json(with_presence(&gateway, found).await?))
}

async fn with_presence(gateway: &Gateway, users: Vec<User>) -> Result<Vec<Member>, HttpError> {
    let ids: Vec<UserId> = users.iter().map(|user| user.id).collect();
    let online = gateway.deps.presence.online(&ids).await?;
    Ok(users
        .into_iter()
        .map(|user| member(user, &online))
        .collect())
}

/// A user as a member, online if listed in `online`.
fn member(user: User, online: &[UserId]) -> Member {
    Member {
        online: online.contains(&user.id),
        id: user.id,
        username: user.username,
    }
}

/// Chat list rows from the store's views, with every member's presence and last seen.
async fn to_protocol(
    gateway: &Gateway,
    views: Vec<ConversationView>,
) -> Result<Vec<Conversation>, HttpError> {
    let mut everyone: Vec<UserId> = views
        .iter()
        .flat_map(|v| v.members.iter().map(|m| m.user.id))
        .collect();
    everyone.sort_unstable();
    everyone.dedup();
    let online = gateway.deps.presence.online(&everyone).await?;
    let last_seen: std::collections::HashMap<_, _> = gateway
        .deps
        .store
        .last_seen(&everyone)
        .await?
        .into_iter()
        .collect();
    Ok(views
        .into_iter()
        .map(|view| Conversation {
            id: view.id,
            kind: view.kind,
            title: view.title,
            members: view
                .members
                .into_iter()
                .map(|member| {
                    let online = online.contains(&member.user.id);
                    ConversationMember {
                        online,
                        last_seen: if online {
                            None
                        } else {
                            last_seen.get(&member.user.id).copied().flatten()
                        },
                        id: member.user.id,
                        username: member.user.username,
                        role: member.role,
                        last_delivered_seq: member.last_delivered_seq,
                        last_read_seq: member.last_read_seq,
                    }
                })
                .collect(),
            last_message: view.last_message,
            last_seq: view.last_seq,
            unread_count: view.unread_count,
            unread_mentions: view.unread_mentions,
            last_read_seq: view.last_read_seq,
            muted: view.muted,
        })
        .collect())
}

pub async fn conversations(
    State(gateway): Shared,
    caller: Caller,
) -> Result<Json<Vec<Conversation>>, HttpError> {
    let views = gateway.deps.store.conversations_of(caller.user.id).await?;
    Ok(Json(to_protocol(&gateway, views).await?))
}

#[derive(Deserialize)]
pub struct NewConversation {
    kind: ConversationKind,
    #[serde(default)]
    title: Option<String>,
    members: Vec<String>,
}

/// A group of the largest size must fit in one request: 10,000 quoted ids of 36 characters.
pub const CREATE_CONVERSATION_BYTES_MAX: usize = 512 * 1024;

pub async fn create_conversation(
    State(gateway): Shared,
    caller: Caller,
    JsonBody(request): JsonBody<NewConversation>,
) -> Result<Response, HttpError> {
    let invalid = |message: &str| HttpError::new(ErrorCode::InvalidInput, message);
    gateway
        .limits
        .conversations
        .check(&caller.user.id)
        .map_err(|wait| {
            metrics::counter!(crate::metrics::RATE_LIMITED, "what" => "conversation").increment(1);
            HttpError(ApiError::rate_limited(
                "too many new conversations; wait a little",
                wait,
            ))
        })?;
    if request.members.len() > GROUP_MEMBERS_MAX {
        return Err(invalid("too many members"));
    }
    let mut members: Vec<UserId> = Vec::with_capacity(request.members.len() + 1);
    for member in &request.members {
        members.push(
            member
                .parse()
                .map_err(|_| invalid("members are user ids"))?,
        );
    }
    members.sort_unstable();
    members.dedup();
    members.retain(|member| *member != caller.user.id);
    if members.len() >= GROUP_MEMBERS_MAX {
        return Err(invalid("too many members"));
    }
    let existing = gateway.deps.store.users(&members).await?;
    if existing.len() != members.len() {
        return Err(invalid("every member must be an existing user"));
    }
    let (id, created) = match request.kind {
        ConversationKind::Direct => {
            if request.title.is_some() {
                return Err(invalid("a direct conversation has no title"));
            }
            let [other] = members[..] else {
                return Err(invalid(
                    "a direct conversation has exactly one other member",
                ));
            };
            gateway
                .deps
                .store
                .create_direct(caller.user.id, other)
                .await?
        }
        ConversationKind::Group => {
            let title = validate::group_title(request.title.as_deref().unwrap_or(""))?;
            members.push(caller.user.id);
            let id = gateway
                .deps
                .store
                .create_group(caller.user.id, title, &members)
                .await?;
            (id, true)
        }
    };
    let view = gateway
        .deps
        .store
        .conversation_of(caller.user.id, id)
        .await?
        .ok_or_else(|| HttpError(actions::internal()))?;
    let conversation = to_protocol(&gateway, vec![view]).await?.remove(0);
    let status = if created {
        // Everything in a new row is the same for every member (nothing read, nothing
        // muted yet), so the creator's row is everyone's.
        gateway.announce_new_conversation(&conversation).await;
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation)).into_response())
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before_seq: Option<Seq>,
    after_seq: Option<Seq>,
    limit: Option<u16>,
}

pub const HISTORY_LIMIT_MAX: u16 = parlor_core::ports::HISTORY_PAGE_MAX;

/// A query string's fields, or the protocol's `invalid_input` (never axum's plain text).
pub(super) fn query_of<T>(
    query: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, HttpError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| HttpError::new(ErrorCode::InvalidInput, rejection.body_text()))
}

/// A page's `limit`: 50 unless given, at most [`HISTORY_LIMIT_MAX`].
fn checked_limit(limit: Option<u16>) -> Result<u16, HttpError> {
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!("limit is 1 to {HISTORY_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

pub async fn messages(
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let query = query_of(query)?;
    let limit = checked_limit(query.limit)?;
    let conversation = gateway
        .member_conversation(caller.user.id, &id, &mut MembershipCache::default())
        .await?;
    let page = Page {
        before_seq: query.before_seq,
        after_seq: query.after_seq,
        limit,
    };
    let messages = gateway.deps.store.messages(conversation, page).await?;
    Ok(Json(json!({ "messages": messages })).into_response())
}

#[derive(Deserialize)]
pub struct PostMessage {
    client_msg_id: String,
    /// May be blank when there are files.
    #[serde(default)]
    body: String,
    #[serde(default)]
    reply_to_seq: Option<Seq>,
    #[serde(default)]
    files: Vec<parlor_core::FileId>,
}

pub async fn post_message(
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(request): JsonBody<PostMessage>,
) -> Result<Response, HttpError> {
    let change = Change::Message {
        body: request.body,
        reply_to_seq: request.reply_to_seq,
        files: request.files,
    };
    accept_change(&gateway, caller.user.id, &id, request.client_msg_id, change).await
}

/// A change request: its `kind` and the kind's fields beside `client_msg_id`.
pub async fn post_event(
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(request): JsonBody<serde_json::Value>,
) -> Result<Response, HttpError> {
    let invalid = |error: String| HttpError::new(ErrorCode::InvalidInput, error);
    let client_msg_id = match request.get("client_msg_id") {
        Some(serde_json::Value::String(id)) => id.clone(),
        _ => return Err(invalid("client_msg_id is a string".into())),
    };
    let change = Change::from_json(request).map_err(|error| invalid(error.to_string()))?;
    accept_change(&gateway, caller.user.id, &id, client_msg_id, change).await
}

/// Checks a change, appends it, and answers 202 once it is durable.
async fn accept_change(
    gateway: &Gateway,
    user: UserId,
    conversation_id: &str,
    client_msg_id: String,
    change: Change,
) -> Result<Response, HttpError> {
    let entry = gateway
        .check_event(
            user,
            conversation_id,
            client_msg_id,
            change,
            &mut MembershipCache::default(),
        )
        .await?;
    let accepted = json!({
        "accepted": {
            "client_msg_id": entry.client_msg_id,
            "conversation_id": entry.conversation_id,
        }
    });
    gateway.accept(vec![entry]).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[derive(Deserialize)]
pub struct EventsQuery {
    after_seq: Option<Seq>,
    limit: Option<u16>,
}

pub async fn events(
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let query = query_of(query)?;
    let limit = checked_limit(query.limit)?;
    let conversation = gateway
        .member_conversation(caller.user.id, &id, &mut MembershipCache::default())
        .await?;
    let events = gateway
        .deps
        .store
        .events(conversation, query.after_seq.unwrap_or(0), limit)
        .await?;
    Ok(Json(json!({ "events": events })).into_response())
}

pub async fn conversation(
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<Conversation>, HttpError> {
    let not_found = || HttpError::new(ErrorCode::NotFound, "no such conversation");
    let conversation = id.parse().map_err(|_| not_found())?;
    let view = gateway
        .deps
        .store
        .conversation_of(caller.user.id, conversation)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(to_protocol(&gateway, vec![view]).await?.remove(0)))
}

#[derive(Deserialize)]
pub struct Mute {
    muted: bool,
}

pub async fn set_muted(
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(request): JsonBody<Mute>,
) -> Result<Response, HttpError> {
    // Membership is the store's to check here: setting mute answers whether it was one.
    let conversation = id
        .parse()
        .map_err(|_| HttpError::new(ErrorCode::NotFound, "no such conversation"))?;
    gateway
        .set_muted(caller.user.id, conversation, request.muted)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct MarkerBody {
    seq: Seq,
}

pub async fn mark_read(
    state: Shared,
    caller: Caller,
    path: PathId,
    body: JsonBody<MarkerBody>,
) -> Result<Response, HttpError> {
    move_marker(Marker::Read, state, caller, path, body).await
}

pub async fn mark_delivered(
    state: Shared,
    caller: Caller,
    path: PathId,
    body: JsonBody<MarkerBody>,
) -> Result<Response, HttpError> {
    move_marker(Marker::Delivered, state, caller, path, body).await
}

async fn move_marker(
    marker: Marker,
    State(gateway): Shared,
    caller: Caller,
    PathId(id): PathId,
    JsonBody(body): JsonBody<MarkerBody>,
) -> Result<Response, HttpError> {
    let user = caller.user.id;
    let conversation = gateway
        .member_conversation(user, &id, &mut MembershipCache::default())
        .await?;
    let (limiter, what) = match marker {
        Marker::Read => (&gateway.limits.reads, "read"),
        Marker::Delivered => (&gateway.limits.delivered, "delivered"),
    };
    limiter.check(&user).map_err(|wait| {
        metrics::counter!(crate::metrics::RATE_LIMITED, "what" => what).increment(1);
        HttpError(ApiError::rate_limited(
            "too many markers; send the newest one later",
            wait,
        ))
    })?;
    gateway
        .move_marker(marker, user, conversation, body.seq)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The HTTP API as OpenAPI 3.1 (`docs/openapi.json`, built into the binary).
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../../../docs/openapi.json"),
    )
        .into_response()
}

pub async fn ready(State(gateway): Shared) -> Response {
    if gateway.shutdown.is_fired() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

/// Metrics tell a lot about the users (how many, how active): they are for operators, so
/// only loopback peers and configured addresses may read them, never a client forwarded by
/// a balancer.
pub async fn metrics(
    State(gateway): Shared,
    Peer(peer): Peer,
    headers: axum::http::HeaderMap,
) -> Response {
    let forwarded = headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");
    let allowed = peer.is_some_and(|peer| {
        (peer.is_loopback() && !forwarded) || gateway.config.metrics_allowed.contains(&peer)
    });
    if !allowed {
        return HttpError::new(ErrorCode::NotFound, "no such endpoint").into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gateway.metrics.render(),
    )
        .into_response()
}

/// An error response: `{"error": {"code", "message"}}` with the status that fits the code.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ApiError::new(code, message))
    }

    pub(super) fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "missing, unknown or expired session",
        )
    }
}

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<BackendError> for HttpError {
    fn from(error: BackendError) -> Self {
        Self(actions::backend(error))
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
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::NotAvailable => StatusCode::NOT_IMPLEMENTED,
        ErrorCode::QuotaExceeded => StatusCode::CONFLICT,
        ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
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
