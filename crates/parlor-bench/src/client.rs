//! Protocol v1 over real sockets: a small keep-alive HTTP/1.1 client and WebSocket
//! connections, as any client of Parlor would use them.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

pub const PASSWORD: &str = "correct horse battery staple";

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    address: String,
    stream: BufReader<TcpStream>,
}

impl Http {
    pub async fn connect(address: &str) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            address: address.to_string(),
            stream: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response: (status, JSON body or Null).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, raw) = self.raw(method, path, token, body).await?;
        let value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// A GET whose answer is text (`/metrics`).
    pub async fn text(&mut self, path: &str) -> anyhow::Result<String> {
        let (_, raw) = self.raw("GET", path, None, None).await?;
        Ok(String::from_utf8_lossy(&raw).into_owned())
    }

    async fn raw(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = token
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;

        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the connection closed mid-response");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut raw = vec![0; length];
        self.stream.read_exact(&mut raw).await?;
        Ok((status, raw))
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
                    let body = json!({"username": name, "password": PASSWORD});
                    let reply = http
                        .expect(201, "POST", "/api/v1/auth/register", None, Some(&body))
                        .await?;
                    accounts.push(Account {
                        id: reply["user"]["id"].as_str().context("no user id")?.into(),
                        token: reply["token"].as_str().context("no token")?.into(),
                    });
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
    let body = json!({"kind": "direct", "members": [b.id]});
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
    let remote: SocketAddr = address.parse().context("the address must be IP:PORT")?;
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(remote).await?;
    stream.set_nodelay(true)?;
    let request = format!("ws://{address}/api/v1/ws?token={token}").into_client_request()?;
    // Small buffers: a generator holding thousands of sockets should not need gigabytes.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut socket, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.contains("\"hello\"") => Ok(socket),
        other => bail!("expected hello, got {other:?}"),
    }
}

/// A `send` frame.
pub fn send_frame(conversation: &str, client_msg_id: &str, body: &str) -> Message {
    Message::Text(
        json!({"type": "send", "conversation_id": conversation, "client_msg_id": client_msg_id, "body": body})
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
