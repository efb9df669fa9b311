//! Protocol v1 over real sockets, for the system tests and the bench: HTTP/1.1 written and
//! read by hand (so a test sends exactly what it says), one request per connection (`Http`)
//! or keep-alive (`Connection`), the API's bodies and paths, and WebSocket connections
//! (`upgrade`, and `Ws`, which speaks frames as JSON).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// The password of every user these clients register.
pub const PASSWORD: &str = "correct horse battery";

/// The body of `POST /api/v1/auth/register`.
pub fn register_body(username: &str) -> Value {
    json!({"username": username, "password": PASSWORD})
}

/// (user id, token) from the answer to a registration or a login.
pub fn session(reply: &Value) -> Option<(String, String)> {
    Some((
        reply["user"]["id"].as_str()?.to_string(),
        reply["token"].as_str()?.to_string(),
    ))
}

/// The body of `POST /api/v1/conversations` for the direct conversation with `other`.
pub fn direct_body(other: &str) -> Value {
    json!({"kind": "direct", "members": [other]})
}

/// One page of a conversation's history: up to `limit` messages after `after_seq`.
pub fn history_path(conversation: &str, after_seq: u64, limit: usize) -> String {
    format!("/api/v1/conversations/{conversation}/messages?after_seq={after_seq}&limit={limit}")
}

/// A `send` frame.
pub fn send_frame(conversation: &str, client_msg_id: &str, body: &str) -> Value {
    json!({"type": "send", "conversation_id": conversation, "client_msg_id": client_msg_id, "body": body})
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error response.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .expect("an error code")
            .to_string()
    }
}

/// The headers of a JSON request, with the bearer token if given.
fn json_headers(token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if let Some(token) = token {
        headers.push(("Authorization", format!("Bearer {token}")));
    }
    headers
}

/// Writes one request on `stream` and reads its response.
async fn exchange(
    stream: &mut BufReader<TcpStream>,
    host: &str,
    close: bool,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if close {
        request.push_str("Connection: close\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    stream.get_mut().write_all(&request).await?;
    read_response(stream, method).await
}

/// Reads one response: its head, then a body of `Content-Length` bytes, or chunked, or up to
/// the end of the connection.
async fn read_response<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    method: &str,
) -> io::Result<Response> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Err(bad("the connection closed before a response".into()));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.trim().parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Err(bad("the connection closed mid-head".into()));
        }
        let header = line.trim_end_matches(['\r', '\n']);
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let value_of = |wanted: &str| {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.as_str())
    };
    let mut body = Vec::new();
    if method == "HEAD" || matches!(status, 100..=199 | 204 | 304) {
        // No body.
    } else if value_of("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            let size = line.trim().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).await?;
            let mut crlf = [0; 2];
            reader.read_exact(&mut crlf).await?;
        }
    } else if let Some(length) = value_of("content-length") {
        let length = length
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {length:?}")))?;
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    } else {
        reader.read_to_end(&mut body).await?;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A deliberately small HTTP/1.1 client: one request per connection, so that what the
/// tests send is exactly what they say. Fails the test on any IO error.
#[derive(Clone)]
pub struct Http {
    pub address: String,
}

impl Http {
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let stream = TcpStream::connect(&self.address).await.expect("connect");
        exchange(
            &mut BufReader::new(stream),
            &self.address,
            true,
            method,
            path,
            headers,
            body,
        )
        .await
        .expect("an HTTP exchange")
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let headers = json_headers(token);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.raw(method, path, &headers, &body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.request("POST", path, Some(token), Some(body)).await
    }

    /// Registers `username` and returns (user id, token).
    pub async fn register(&self, username: &str) -> (String, String) {
        let response = self
            .request(
                "POST",
                "/api/v1/auth/register",
                None,
                Some(register_body(username)),
            )
            .await;
        assert_eq!(
            response.status,
            201,
            "register {username}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
        session(&response.json()).expect("a user id and a token")
    }

    /// Opens (or finds) the direct conversation of the token's user with `other`.
    pub async fn direct(&self, token: &str, other: &str) -> String {
        let response = self
            .post("/api/v1/conversations", token, direct_body(other))
            .await;
        assert!(matches!(response.status, 200 | 201), "{:?}", response);
        response.json()["id"].as_str().unwrap().to_string()
    }

    /// Polls history until it holds at least `count` messages (the persister runs behind
    /// `accepted`), and returns it.
    pub async fn wait_for_history(
        &self,
        token: &str,
        conversation: &str,
        count: usize,
    ) -> Vec<Value> {
        for _ in 0..400 {
            let history = self.history(token, conversation).await;
            if history.len() >= count {
                return history;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("history of {conversation} never reached {count} messages");
    }

    /// Every message of a conversation, paging with `after_seq`.
    pub async fn history(&self, token: &str, conversation: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let response = self
                .get(&history_path(conversation, after, 200), token)
                .await;
            assert_eq!(response.status, 200, "{:?}", response);
            let page = response.json()["messages"].as_array().unwrap().clone();
            if page.is_empty() {
                return all;
            }
            after = page.last().unwrap()["seq"].as_u64().unwrap();
            all.extend(page);
        }
    }
}

/// One keep-alive HTTP/1.1 connection (`TCP_NODELAY`), for many requests in a row.
pub struct Connection {
    address: String,
    stream: BufReader<TcpStream>,
}

impl Connection {
    pub async fn connect(address: &str) -> io::Result<Connection> {
        let stream = TcpStream::connect(address).await.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot connect to {address}: {error}"),
            )
        })?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            address: address.to_string(),
            stream: BufReader::new(stream),
        })
    }

    pub async fn raw(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        exchange(
            &mut self.stream,
            &self.address,
            false,
            method,
            path,
            headers,
            body,
        )
        .await
    }

    /// A JSON request (the body, if any, is JSON), with the bearer token if given.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> io::Result<Response> {
        let headers = json_headers(token);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let body = body.map(Value::to_string).unwrap_or_default();
        self.raw(method, path, &headers, body.as_bytes()).await
    }
}

/// A WebSocket connection to Parlor.
pub type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Has a `bind` to a source address leave the port to `connect`, which picks one free for
/// that destination only. A plain `bind(address, 0)` takes a port from the ephemeral range
/// for every destination: ~28,000 sockets bound so (whatever their addresses) leave none for
/// anyone's `connect` on the machine, HAProxy's to the gateways and its health checks
/// included.
#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let enable: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own and open; the option value is a c_int that
    // lives across the call, and its size is passed with it.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const enable).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a WebSocket at `path` (`/api/v1/ws`, perhaps with a query) with these request
/// headers, from `source` if given (each source address has its own ephemeral ports), with
/// `config` if given; `TCP_NODELAY`. An upgrade the server refuses is
/// `Err(tungstenite::Error::Http(response))`.
pub async fn upgrade(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    source: Option<IpAddr>,
    config: Option<WebSocketConfig>,
) -> Result<Socket, tungstenite::Error> {
    let stream = match source {
        None => TcpStream::connect(address).await?,
        Some(source) => {
            let remote: SocketAddr = address.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{address} is not IP:PORT"),
                )
            })?;
            let socket = match remote {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            bind_address_no_port(&socket)?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(remote).await?
        }
    };
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{address}{path}").into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, config).await?;
    Ok(socket)
}

/// A WebSocket client that speaks protocol v1 (frames as JSON); fails the test when the
/// server does not answer as expected.
pub struct Ws {
    pub stream: Socket,
}

impl Ws {
    pub async fn connect(address: &str, token: &str) -> Ws {
        Self::try_connect(address, token, None)
            .await
            .expect("websocket connect")
    }

    /// Connects with the bearer token (and `Origin`, if given), and reads the `hello`. A
    /// refusal after the upgrade (an `error` frame, as when the registry is unavailable) is
    /// an `Err`, as a refused upgrade is.
    pub async fn try_connect(
        address: &str,
        token: &str,
        origin: Option<&str>,
    ) -> Result<Ws, tungstenite::Error> {
        let authorization = format!("Bearer {token}");
        let mut headers = vec![("Authorization", authorization.as_str())];
        if let Some(origin) = origin {
            headers.push(("Origin", origin));
        }
        let stream = upgrade(address, "/api/v1/ws", &headers, None, None).await?;
        let mut ws = Ws { stream };
        let Some(hello) = ws.try_next(Duration::from_secs(10)).await else {
            return Err(tungstenite::Error::ConnectionClosed);
        };
        if hello["type"] == "error" {
            return Err(tungstenite::Error::Io(std::io::Error::other(format!(
                "refused: {hello}"
            ))));
        }
        assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        Ok(ws)
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("ws send");
    }

    pub async fn send_message(&mut self, conversation: &str, client_msg_id: &str, body: &str) {
        self.send(send_frame(conversation, client_msg_id, body))
            .await;
    }

    /// The next text frame as JSON (fails after 10 s).
    pub async fn next(&mut self) -> Value {
        self.try_next(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    pub async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(wait, self.stream.next())
                .await
                .ok()??
                .ok()?;
            match message {
                Message::Text(text) => {
                    return Some(serde_json::from_str(&text).expect("JSON frame"));
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Skips frames until one of `kind` arrives.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Whether the server closed the connection within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}
