//! What every request is checked for before a handler sees it, and what handlers extract
//! from it: the client's address, the caller's session (and the CSRF header that a
//! cookie-authenticated change must carry), the rule against state changes from other sites,
//! the per-IP request limit, and JSON bodies.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parlor_core::ErrorCode;
use parlor_core::error::ApiError;
use parlor_core::ports::TokenHash;
use parlor_core::protocol::User;
use serde::de::DeserializeOwned;

use super::Gateway;
use super::http::HttpError;
use super::origin::{OriginPolicy, Scheme};
use crate::auth;
use crate::metrics as m;

/// A per-IP limit on every API request.
pub(super) async fn limit_requests(
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
pub(super) async fn refuse_cross_site(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe
        && gateway
            .origin_policy(request.headers(), peer_of(request.extensions()))
            .is_cross_site(request.headers())
    {
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
    pub(super) fn origin_policy(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> OriginPolicy<'_> {
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
pub(super) fn credentials(headers: &HeaderMap) -> Option<(String, bool)> {
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

/// A path's `{id}`: one that is not even UTF-8 text names nothing, and gets the same
/// `not_found` as any other id that names nothing (never axum's plain-text rejection).
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| PathId(id))
            .map_err(|_| HttpError::new(ErrorCode::NotFound, "no such conversation"))
    }
}

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
