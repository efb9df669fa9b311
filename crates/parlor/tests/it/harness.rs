//! Starting `parlor serve` as a child process, and small HTTP and WebSocket clients.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub const BIN: &str = env!("CARGO_BIN_EXE_parlor");

/// A running `parlor serve`; killed (`SIGKILL`) when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    /// Starts a server on a fresh port with limits high enough for tests, plus `extra`
    /// flags and `env`.
    pub fn start(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_with_open_files(data_dir, extra, env, None)
    }

    /// Like `start`, with at most `open_files_max` open files (`ulimit -n`) if given.
    pub fn start_with_open_files(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        open_files_max: Option<u64>,
    ) -> Server {
        let data_dir = data_dir.to_str().expect("a UTF-8 path");
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
        args.extend_from_slice(extra);
        Self::spawn_with_open_files(&args, env, open_files_max)
    }

    /// Runs `parlor ARGS…` (a command that prints its listening address) with the same
    /// generous limits.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_with_open_files(args, env, None)
    }

    #[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
    fn spawn_with_open_files(
        args: &[&str],
        env: &[(&str, &str)],
        open_files_max: Option<u64>,
    ) -> Server {
        let mut command = Command::new(BIN);
        command
            .args(args)
            // Generous limits through the environment, so that a test's flags still win.
            .env("PARLOR_AUTH_PER_SECOND_PER_IP", "1000")
            .env("PARLOR_AUTH_BURST_PER_IP", "1000")
            .env("PARLOR_REQUESTS_PER_SECOND_PER_IP", "100000")
            .env("PARLOR_REQUESTS_BURST_PER_IP", "100000")
            .env("PARLOR_SENDS_PER_SECOND_PER_USER", "100000")
            .env("PARLOR_SENDS_BURST_PER_USER", "100000")
            // Every test client connects from 127.0.0.1.
            .env("PARLOR_CONNECTIONS_PER_IP_MAX", "100000")
            .env("PARLOR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        if let Some(open_files_max) = open_files_max {
            let limit = libc::rlimit {
                rlim_cur: open_files_max,
                rlim_max: open_files_max,
            };
            // SAFETY: between fork and exec only async-signal-safe calls may run, and
            // setrlimit is one; it only reads the struct we pass.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("start parlor");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let line = lines
                .next()
                .expect("parlor exited before listening")
                .expect("read parlor's stdout");
            if let Some(url) = line.strip_prefix("parlor listening on http://") {
                break url.to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, address }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait for parlor")
    }

    pub fn http(&self) -> Http {
        Http {
            address: self.address.clone(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
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

/// A deliberately small HTTP/1.1 client: one request per connection, so that what the
/// tests send is exactly what they say.
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
        let mut stream = TcpStream::connect(&self.address).await.expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        parse_response(&raw)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut headers = vec![("Content-Type", "application/json".to_string())];
        if let Some(token) = token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
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
                Some(json!({"username": username, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(
            response.status,
            201,
            "register {username}: {:?}",
            String::from_utf8_lossy(&response.body)
        );
        let body = response.json();
        (
            body["user"]["id"].as_str().unwrap().to_string(),
            body["token"].as_str().unwrap().to_string(),
        )
    }

    /// Opens (or finds) the direct conversation of the token's user with `other`.
    pub async fn direct(&self, token: &str, other: &str) -> String {
        let response = self
            .post(
                "/api/v1/conversations",
                token,
                json!({"kind": "direct", "members": [other]}),
            )
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
                .get(
                    &format!(
                        "/api/v1/conversations/{conversation}/messages?after_seq={after}&limit=200"
                    ),
                    token,
                )
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

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}

/// A WebSocket client that speaks protocol v1.
pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(address: &str, token: &str) -> Ws {
        Self::try_connect(address, token, None)
            .await
            .expect("websocket connect")
    }

    pub async fn try_connect(
        address: &str,
        token: &str,
        origin: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{address}/api/v1/ws").into_client_request()?;
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", origin.parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        let mut ws = Ws { stream };
        let hello = ws.next().await;
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
        self.send(json!({"type": "send", "conversation_id": conversation, "client_msg_id": client_msg_id, "body": body}))
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
