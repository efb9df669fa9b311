//! What a peer without an account can hold open: connections that send nothing or dribble a
//! header are closed after the header-read timeout, one address is capped, and the process
//! keeps answering under an open-file limit.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::Server;

/// Longer than any wait below should take, so that a broken server fails the test instead of
/// hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

fn start(extra: &[&str], open_files_max: Option<u64>) -> (tempfile::TempDir, Server) {
    let data = tempfile::tempdir().expect("a temporary directory");
    let server = Server::start_with_open_files(data.path(), extra, &[], open_files_max);
    (data, server)
}

/// A TCP connection to the server from `source` (loopback answers for all of 127.0.0.0/8).
async fn connect_from(source: &str, server: &Server) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    let source: SocketAddr = format!("{source}:0").parse().expect("a source address");
    socket.bind(source).expect("bind the source address");
    let address: SocketAddr = server.address.parse().expect("the server's address");
    socket.connect(address).await.expect("connect")
}

/// Whether the server closed `stream` (end of file or reset) within `wait`; whatever it
/// sent before is read and ignored.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Whether the server has closed `stream` already (as opposed to waiting for it to talk).
fn closed_now(stream: &TcpStream) -> bool {
    let mut buffer = [0u8; 1];
    match stream.try_read(&mut buffer) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
        Ok(0) | Err(_) => true,
        Ok(_) => false,
    }
}

/// The status of `GET /healthz` sent from `source`, or `None` if the server closed the
/// connection without an answer (or gave none within `PATIENCE`).
async fn healthz_from(source: &str, server: &Server) -> Option<u16> {
    let mut stream = connect_from(source, server).await;
    let request = "GET /healthz HTTP/1.1\r\nHost: parlor\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let status_line = String::from_utf8_lossy(&response)
        .lines()
        .next()?
        .to_string();
    status_line.split(' ').nth(1)?.parse().ok()
}

/// Asks `/healthz` from `source` until it answers 200, for at most `PATIENCE`.
async fn healthz_answers_from(source: &str, server: &Server) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if healthz_from(source, server).await == Some(200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let (_data, server) = start(&["--header-read-timeout-secs", "1"], None);
    let mut silent = connect_from("127.0.0.1", &server).await;
    assert!(
        closed_within(&mut silent, PATIENCE).await,
        "a silent connection stayed open"
    );
}

#[tokio::test]
async fn a_connection_that_dribbles_its_header_is_closed_after_the_header_timeout() {
    let (_data, server) = start(&["--header-read-timeout-secs", "1"], None);
    let stream = connect_from("127.0.0.1", &server).await;
    let (mut reader, mut writer) = stream.into_split();
    // At one byte per 200 ms this head would take a minute to arrive.
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: parlor\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(300)
    );
    let dribble = tokio::spawn(async move {
        for byte in head.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut buffer = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, reader.read(&mut buffer)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
        }
    };
    dribble.abort();
    assert!(closed, "a dribbling connection stayed open");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let (_data, server) = start(&["--header-read-timeout-secs", "1"], None);
    let mut stream = connect_from("127.0.0.1", &server).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: parlor\r\n\r\n")
        .await
        .expect("write a request");
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while !response.ends_with(b"ok\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .expect("an answer")
            .expect("read the answer");
        assert!(read > 0, "closed before answering: {response:?}");
        response.extend_from_slice(&buffer[..read]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    assert!(
        closed_within(&mut stream, PATIENCE).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_at_once_and_others_still_get_in() {
    // A header timeout far beyond this test, so that only the cap can close anything.
    let (_data, server) = start(
        &[
            "--connections-per-ip-max",
            "4",
            "--header-read-timeout-secs",
            "600",
        ],
        None,
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.1", &server).await);
    }
    let mut excess = connect_from("127.0.0.1", &server).await;
    assert!(
        closed_within(&mut excess, PATIENCE).await,
        "the connection over the cap stayed open"
    );
    assert!(
        held.iter().all(|stream| !closed_now(stream)),
        "the connections under the cap were closed too"
    );
    assert_eq!(healthz_from("127.0.0.1", &server).await, None);
    assert_eq!(
        healthz_from("127.0.0.2", &server).await,
        Some(200),
        "another address is not capped"
    );

    drop(held);
    assert!(
        healthz_answers_from("127.0.0.1", &server).await,
        "the address got no slot back after its connections closed"
    );
}

#[tokio::test]
async fn upgraded_websockets_keep_counting_against_their_address() {
    let (_data, server) = start(&["--connections-per-ip-max", "2"], None);
    let (_, token) = server.http().register("alice").await;
    // Registering used one connection, closed by now; wait until its slot is back.
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let deadline = Instant::now() + PATIENCE;
        let socket = loop {
            let stream = connect_from("127.0.0.1", &server).await;
            match websocket(stream, &server, &token, None).await {
                Ok(socket) => break socket,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("no WebSocket: {error}"),
            }
        };
        sockets.push(socket);
    }
    let mut third = connect_from("127.0.0.1", &server).await;
    assert!(
        closed_within(&mut third, PATIENCE).await,
        "two open WebSockets did not hold their address's two slots"
    );
    drop(sockets);
    assert!(healthz_answers_from("127.0.0.1", &server).await);
}

#[tokio::test]
async fn hundreds_of_idle_connections_under_a_low_open_file_limit_do_not_stop_healthz() {
    // The review's attack: 300 silent connections from a few addresses (each under its
    // cap) against a process that may open 256 files.
    let (_data, mut server) = start(&["--header-read-timeout-secs", "1"], Some(256));
    let mut idle = Vec::new();
    for i in 0..300 {
        let source = format!("127.0.0.{}", 3 + i % 6);
        idle.push(connect_from(&source, &server).await);
    }
    assert!(
        healthz_answers_from("127.0.0.2", &server).await,
        "/healthz stopped answering"
    );
    assert!(
        server.child.try_wait().expect("poll parlor").is_none(),
        "parlor exited"
    );
    drop(idle);
}

#[tokio::test]
async fn over_the_total_cap_below_the_open_file_limit_new_connections_are_closed_at_once() {
    // No header timeout within this test: only the total cap, derived from the open-file
    // limit, can close anything.
    let open_files_max = 256;
    let (_data, mut server) = start(&["--header-read-timeout-secs", "600"], Some(open_files_max));
    let mut idle = Vec::new();
    for i in 0..300 {
        let source = format!("127.0.0.{}", 3 + i % 6);
        idle.push(connect_from(&source, &server).await);
    }
    // The excess is closed, not left waiting in the backlog, and what is held leaves the
    // binary's reserve (at least 64 files) free.
    let held_max = open_files_max as usize - 64;
    let deadline = Instant::now() + PATIENCE;
    let held = loop {
        let held = idle.iter().filter(|stream| !closed_now(stream)).count();
        if held <= held_max || Instant::now() >= deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        held <= held_max,
        "{held} of 300 connections held, with no room left for files"
    );
    assert!(
        server.child.try_wait().expect("poll parlor").is_none(),
        "parlor exited"
    );
    drop(idle);
    assert!(healthz_answers_from("127.0.0.2", &server).await);
}

#[tokio::test]
async fn behind_a_trusted_proxy_websockets_are_capped_per_forwarded_address() {
    let (_data, server) = start(
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--connections-per-ip-max",
            "2",
        ],
        None,
    );
    let (_, token) = server.http().register("alice").await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let stream = connect_from("127.0.0.1", &server).await;
        let socket = websocket(stream, &server, &token, Some("10.0.0.1"))
            .await
            .expect("a WebSocket under the cap");
        sockets.push(socket);
    }
    let stream = connect_from("127.0.0.1", &server).await;
    match websocket(stream, &server, &token, Some("10.0.0.1")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("an error body");
            assert_eq!(body["error"]["code"], "rate_limited");
        }
        Err(error) => panic!("expected 429, got {error}"),
        Ok(_) => panic!("a third WebSocket of one forwarded address got in"),
    }
    let stream = connect_from("127.0.0.1", &server).await;
    websocket(stream, &server, &token, Some("10.0.0.2"))
        .await
        .expect("another forwarded address is not capped");
}

#[tokio::test]
async fn sigterm_closes_waiting_connections_and_websockets_and_exits_cleanly() {
    let (_data, mut server) = start(&["--header-read-timeout-secs", "600"], None);
    let (_, token) = server.http().register("alice").await;
    let mut silent = connect_from("127.0.0.1", &server).await;
    let stream = connect_from("127.0.0.1", &server).await;
    let mut socket = websocket(stream, &server, &token, None)
        .await
        .expect("a WebSocket");
    assert!(server.terminate().success(), "SIGTERM exits cleanly");
    assert!(closed_within(&mut silent, PATIENCE).await);
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(tungstenite::Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the WebSocket stayed open");
}

type WebSocket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket over `stream`, as the balancer would for `forwarded_for` if given, and
/// reads its `hello`.
async fn websocket(
    stream: TcpStream,
    server: &Server,
    token: &str,
    forwarded_for: Option<&str>,
) -> Result<WebSocket, tungstenite::Error> {
    let mut request = format!("ws://{}/api/v1/ws", server.address).into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    if let Some(forwarded_for) = forwarded_for {
        headers.insert(
            "X-Forwarded-For",
            forwarded_for.parse().expect("a header value"),
        );
    }
    let (mut socket, _) = tokio_tungstenite::client_async(request, stream).await?;
    match tokio::time::timeout(PATIENCE, socket.next()).await {
        Ok(Some(Ok(tungstenite::Message::Text(hello)))) if hello.contains("\"hello\"") => {
            Ok(socket)
        }
        other => panic!("expected hello, got {other:?}"),
    }
}
