//! The web client, embedded in release builds and read from `web/dist` in debug builds.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "../../web/dist"]
#[allow_missing = true]
struct WebClient;

/// Serves the client's files; any other path gets `index.html` (the client routes itself).
pub fn router() -> Router {
    Router::new().fallback(serve)
}

async fn serve(method: Method, uri: Uri) -> Response {
    // Files are read, never written: CONNECT, POST and the rest get 405, not a page.
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "the web client's files can only be read\n",
        )
            .into_response();
    }
    let path = uri.path().trim_start_matches('/');
    if let Some(response) = file(path) {
        return response;
    }
    match file("index.html") {
        Some(response) => response,
        None => (
            StatusCode::NOT_FOUND,
            "the web client is not built: run `npm --prefix web ci && npm --prefix web run build`\n",
        )
            .into_response(),
    }
}

fn file(path: &str) -> Option<Response> {
    let file = WebClient::get(path)?;
    let mime = file.metadata.mimetype().to_string();
    // Vite puts a content hash in asset names: they can be cached for good.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Some(
        (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, cache.to_string()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'".to_string(),
                ),
            ],
            Body::from(file.data.into_owned()),
        )
            .into_response(),
    )
}
