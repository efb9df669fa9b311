//! The HTTP endpoints of protocol v1.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parlor_core::error::ApiError;
use parlor_core::ports::{ConversationView, NodeCommand, Page};
use parlor_core::protocol::{Conversation, ConversationKind, Member, ServerFrame, User};
use parlor_core::{ConversationId, ErrorCode, Seq, UserId, validate};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Caller, ClientIp, Gateway, HttpError, MembershipCache, Peer};
use crate::deliver;

type Shared = State<Arc<Gateway>>;

/// A JSON request body, with protocol errors instead of axum's plain-text rejections.
///
/// The body must say it is JSON: an HTML form can post `text/plain` (or form data) to any
/// site without asking, but only a script can send `application/json`, and to another origin
/// only after a CORS preflight that Parlor never grants.
pub struct JsonBody<T>(pub T);

/// How long a client may take to send a request body (the gateway's bodies are small).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(essence) = content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
    else {
        return false;
    };
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, HttpError> {
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(HttpError::new(
                ErrorCode::UnsupportedMediaType,
                "the request body must be JSON, sent as Content-Type: application/json",
            ));
        }
        let read = tokio::time::timeout(BODY_READ_TIMEOUT, Bytes::from_request(request, state));
        let bytes = read
            .await
            .map_err(|_| {
                HttpError::new(ErrorCode::InvalidInput, "the request body came too slowly")
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    HttpError::new(ErrorCode::BodyTooLarge, "the request body is too large")
                } else {
                    HttpError::new(ErrorCode::InvalidInput, rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| {
                let code = match error.classify() {
                    serde_json::error::Category::Data => ErrorCode::InvalidInput,
                    _ => ErrorCode::InvalidJson,
                };
                HttpError::new(code, format!("bad request body: {error}"))
            })
    }
}

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
            HttpError::internal()
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
    let (token, cookie) = gateway.open_session(&user).await?;
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
            let (token, cookie) = gateway.open_session(&user).await?;
            Ok(session_response(StatusCode::OK, user, token, cookie))
        }
        _ => Err(HttpError::new(
            ErrorCode::Unauthorized,
            "wrong username or password",
        )),
    }
}

pub async fn logout(State(gateway): Shared, caller: Caller) -> Result<Response, HttpError> {
    gateway.deps.store.delete_session(caller.token).await?;
    // Close this session's sockets on every node that holds the user.
    for (node, _) in gateway.deps.registry.locate(&[caller.user.id]).await? {
        let command = NodeCommand::CloseSession {
            user: caller.user.id,
            token: caller.token,
        };
        gateway.deps.relay.send(node, command).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, gateway.clear_cookie())],
    )
        .into_response())
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
    Query(query): Query<UserQuery>,
) -> Result<Json<Vec<Member>>, HttpError> {
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

async fn to_protocol(
    gateway: &Gateway,
    views: Vec<ConversationView>,
) -> Result<Vec<Conversation>, HttpError> {
    let mut everyone: Vec<UserId> = views
        .iter()
        .flat_map(|v| v.members.iter().map(|m| m.id))
        .collect();
    everyone.sort_unstable();
    everyone.dedup();
    let online = gateway.deps.presence.online(&everyone).await?;
    Ok(views
        .into_iter()
        .map(|view| Conversation {
            id: view.id,
            kind: view.kind,
            title: view.title,
            members: view
                .members
                .into_iter()
                .map(|user| member(user, &online))
                .collect(),
            last_message: view.last_message,
            last_seq: view.last_seq,
            unread_count: view.last_seq.saturating_sub(view.last_read_seq),
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

/// Members of one group, creator included, at most: a message to a group costs one delivery
/// per member.
const GROUP_MEMBERS_MAX: usize = 10_000;

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
            (
                gateway.deps.store.create_group(title, &members).await?,
                true,
            )
        }
    };
    let view = gateway
        .deps
        .store
        .conversation_of(caller.user.id, id)
        .await?
        .ok_or_else(HttpError::internal)?;
    let conversation = to_protocol(&gateway, vec![view]).await?.remove(0);
    let status = if created {
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

pub async fn messages(
    State(gateway): Shared,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(query) = query
        .map_err(|rejection| HttpError::new(ErrorCode::InvalidInput, rejection.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        return Err(HttpError::new(
            ErrorCode::InvalidInput,
            format!("limit is 1 to {HISTORY_LIMIT_MAX}"),
        ));
    }
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
    body: String,
}

pub async fn post_message(
    State(gateway): Shared,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<PostMessage>,
) -> Result<Response, HttpError> {
    let entry = gateway
        .check_send(
            caller.user.id,
            &id,
            request.client_msg_id,
            request.body,
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
pub struct ReadMarker {
    seq: Seq,
}

pub async fn mark_read(
    State(gateway): Shared,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(marker): JsonBody<ReadMarker>,
) -> Result<Response, HttpError> {
    let user = caller.user.id;
    let conversation = gateway
        .member_conversation(user, &id, &mut MembershipCache::default())
        .await?;
    gateway.limits.reads.check(&user).map_err(|wait| {
        metrics::counter!(crate::metrics::RATE_LIMITED, "what" => "read").increment(1);
        HttpError(ApiError::rate_limited(
            "too many read markers; send the newest one later",
            wait,
        ))
    })?;
    gateway.mark_read(user, conversation, marker.seq).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl Gateway {
    /// Moves a read marker and, if it moved, tells the conversation's members (the reader's
    /// other devices clear their badge; the others see a receipt) and returns where it is
    /// now. A marker that moves nothing costs one store read and reaches nobody.
    pub(super) async fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Option<Seq>, ApiError> {
        let backend = |error| HttpError::from(error).0;
        let moved = self
            .deps
            .store
            .mark_read(conversation, user, seq)
            .await
            .map_err(backend)?;
        let Some(seq) = moved else {
            return Ok(None);
        };
        let members = self
            .deps
            .store
            .members(conversation)
            .await
            .map_err(backend)?;
        let frame = ServerFrame::Read {
            conversation_id: conversation,
            user_id: user,
            seq,
        };
        deliver::to_users(&self.deps, &members, frame.to_json().into(), None)
            .await
            .map_err(backend)?;
        Ok(Some(seq))
    }
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
