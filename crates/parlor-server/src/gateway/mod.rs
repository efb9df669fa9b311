//! The gateway: protocol v1 over HTTP and WebSocket. It authenticates, authorises by
//! membership, validates, and appends accepted messages to the inbound queue; it never
//! assigns `seq` and never writes messages to the store. It also holds this node's live
//! connections and delivers what is relayed to them.
//!
//! - `actions`: what both transports do (sessions, send checks and accept, membership, read
//!   markers, typing, logout), transport-free, with errors as `ApiError`;
//! - `extract`: what every request is checked for (caller, CSRF, other sites, request limit)
//!   and JSON bodies; `origin`: origins compared as origins;
//! - `http` and `ws`: the two transports, translating to and from `actions`; `search`, the
//!   search endpoint (HTTP only);
//! - `inbox` (with `reorder`): commands relayed to this node, in `seq` order, to `hub`, the
//!   node's connections.

mod actions;
mod extract;
mod files;
mod http;
mod hub;
mod inbox;
mod origin;
mod reorder;
mod search;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::middleware;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use parlor_core::ErrorCode;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::Passwords;
use crate::config::GatewayConfig;
use crate::limits::Limits;
use crate::listen::{self, ConnectionsPerAddress};
use crate::metrics as m;
use crate::{Deps, Shutdown};
use http::HttpError;

pub use hub::Hub;
pub use origin::Origin;

/// Everything a request handler needs. Shared as `Arc<Gateway>`.
pub struct Gateway {
    deps: Deps,
    config: GatewayConfig,
    limits: Limits,
    passwords: Passwords,
    /// Decodes uploaded images, a few at a time (each may hold up to 160 MiB).
    images: parlor_media::ImageWorker,
    hub: Hub,
    /// Open WebSockets per client address: behind a trusted proxy the listener sees only the
    /// proxy, so this is where one client's connections are capped.
    websockets_per_ip: Arc<ConnectionsPerAddress>,
    /// WebSocket handshakes in progress (`LimitsConfig::handshakes_concurrent_max`).
    handshakes: Arc<tokio::sync::Semaphore>,
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
        images: parlor_media::ImageWorker::new(
            parlor_media::ImageLimits::default(),
            std::num::NonZeroUsize::new(2).expect("non-zero"),
        ),
        hub: Hub::default(),
        websockets_per_ip: ConnectionsPerAddress::new(config.listener.connections_per_ip_max),
        handshakes: Arc::new(tokio::sync::Semaphore::new(
            config.limits.handshakes_concurrent_max,
        )),
        deps,
        config,
        metrics,
        shutdown: shutdown.clone(),
    });
    let inbox = gateway
        .deps
        .relay
        .inbox(gateway.config.node)
        .await
        .map_err(std::io::Error::other)?;
    let inbox_task = tokio::spawn(inbox::run(Arc::clone(&gateway), inbox));
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
    if let Err(error) = gateway.deps.registry.retire(gateway.config.node).await {
        tracing::warn!(%error, "cannot end this node's registry lease; it lapses");
    }
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
        .route("/conversations/{id}", get(http::conversation))
        .route(
            "/conversations/{id}/messages",
            get(http::messages).post(http::post_message),
        )
        .route(
            "/conversations/{id}/events",
            get(http::events).post(http::post_event),
        )
        .route("/conversations/{id}/read", post(http::mark_read))
        .route("/conversations/{id}/delivered", post(http::mark_delivered))
        .route("/conversations/{id}/mute", put(http::set_muted))
        .route("/search", get(search::search))
        .route(
            "/files",
            post(files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/{id}", get(files::download))
        .route("/files/{id}/thumbnail", get(files::thumbnail))
        .route("/openapi.json", get(http::openapi))
        .route("/ws", get(ws::upgrade))
        .fallback(|| async { HttpError::new(ErrorCode::NotFound, "no such endpoint") })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&gateway),
            extract::refuse_cross_site,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&gateway),
            extract::limit_requests,
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
}
