//! Protocol v1 over real sockets, as any client of Parlor would use it: parlor-testkit's
//! client (the one implementation of HTTP requests, responses, bodies and WebSocket
//! upgrades) with what a load generator adds: errors instead of panics, parallel
//! registration, small WebSocket buffers from chosen source addresses, frames as `Message`s.

use std::net::IpAddr;

use anyhow::{Context, bail};
use futures::StreamExt;
use parlor_testkit::client::{self as protocol, Connection};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use parlor_testkit::client::Socket;

/// One keep-alive HTTP/1.1 connection.
pub struct Http(Connection);

impl Http {
    pub async fn connect(address: &str) -> anyhow::Result<Http> {
        Ok(Http(Connection::connect(address).await?))
    }

    /// Sends one request and reads its response: (status, JSON body or Null).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let response = self.0.request(method, path, token, body).await?;
        let value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        Ok((response.status, value))
    }

    /// A GET whose answer is text (`/metrics`).
    pub async fn text(&mut self, path: &str) -> anyhow::Result<String> {
        let response = self.0.request("GET", path, None, None).await?;
        Ok(String::from_utf8_lossy(&response.body).into_owned())
    }

    /// Like `request`, but any status other than `expect` is an error.
    pub async fn expect(
        &mut self,
        expect: u16,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.request(method, path, token, body).await?;
        if status != expect {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }
}

/// A registered user.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub token: String,
}

/// Registers `count` users named `{prefix}{run}.{i}`, `parallel` at a time (the server hashes a
/// handful of passwords at once; more in flight only queue).
pub async fn register_many(
    address: &str,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<Account>> {
    // Unique per run, so that runs against a long-lived server do not collide.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() % 0xff_ffff)
        .unwrap_or_default();
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}{run:x}.{i}")).collect();
    let chunks: Vec<Vec<String>> = names
        .chunks(count.div_ceil(parallel.max(1)).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let address = address.to_string();
            tokio::spawn(async move {
                let mut http = Http::connect(&address).await?;
                let mut accounts = Vec::with_capacity(chunk.len());
                for name in chunk {
                    let body = protocol::register_body(&name);
                    let reply = http
                        .expect(201, "POST", "/api/v1/auth/register", None, Some(&body))
                        .await?;
                    let (id, token) = protocol::session(&reply).context("no user id or token")?;
                    accounts.push(Account { id, token });
                }
                anyhow::Ok(accounts)
            })
        })
        .collect();
    let mut accounts = Vec::with_capacity(count);
    for task in tasks {
        accounts.extend(task.await??);
    }
    Ok(accounts)
}

/// The direct conversation of two users, as `a` sees it.
pub async fn direct(http: &mut Http, a: &Account, b: &Account) -> anyhow::Result<String> {
    let body = protocol::direct_body(&b.id);
    let (status, reply) = http
        .request("POST", "/api/v1/conversations", Some(&a.token), Some(&body))
        .await?;
    if status != 201 && status != 200 {
        bail!("create direct: {status} {reply}");
    }
    Ok(reply["id"].as_str().context("no conversation id")?.into())
}

/// A WebSocket connection, optionally from a given local address (each source address has
/// its own ~28,000 ephemeral ports), after its `hello`.
pub async fn connect(address: &str, token: &str, source: Option<IpAddr>) -> anyhow::Result<Socket> {
    // Small buffers: a generator holding thousands of sockets should not need gigabytes.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let path = format!("/api/v1/ws?token={token}");
    let mut socket = protocol::upgrade(address, &path, &[], source, Some(config)).await?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.contains("\"hello\"") => Ok(socket),
        other => bail!("expected hello, got {other:?}"),
    }
}

/// A `send` frame.
pub fn send_frame(conversation: &str, client_msg_id: &str, body: &str) -> Message {
    Message::Text(
        protocol::send_frame(conversation, client_msg_id, body)
            .to_string()
            .into(),
    )
}

/// The value of a counter in the server's `/metrics` (0 when absent).
pub async fn counter(http: &mut Http, name: &str) -> anyhow::Result<f64> {
    let text = http.text("/metrics").await?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}
