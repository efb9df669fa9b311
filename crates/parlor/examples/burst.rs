//! A quick measurement against a running Parlor (the full load generator is `parlor-bench`,
//! a later issue): server RSS idle and with N idle WebSocket connections, then a burst of
//! 1:1 messages with a window of sends in flight per sender.
//!
//! `cargo run --release -p parlor --example burst -- ADDRESS SERVER_PID [IDLE] [PAIRS] [PER_SENDER]`

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const WINDOW: usize = 64;

async fn post(address: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    serde_json::from_slice(&raw[split + 4..]).unwrap()
}

async fn register(address: &str, name: &str) -> (String, String) {
    let body = post(
        address,
        "/api/v1/auth/register",
        None,
        json!({"username": name, "password": "correct horse battery"}),
    )
    .await;
    (
        body["user"]["id"].as_str().unwrap().into(),
        body["token"].as_str().unwrap().into(),
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(address: &str, token: &str) -> Socket {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{address}/api/v1/ws?token={token}"))
            .await
            .unwrap();
    socket.next().await.unwrap().unwrap(); // hello
    socket
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let address = args[1].clone();
    let pid: u32 = args[2].parse().unwrap();
    let idle: usize = args.get(3).map_or(2000, |a| a.parse().unwrap());
    let pairs: usize = args.get(4).map_or(20, |a| a.parse().unwrap());
    let per_sender: usize = args.get(5).map_or(5000, |a| a.parse().unwrap());
    let run = std::process::id();

    let rss_start = rss_kib(pid);
    // Parlor allows 32 connections per user: spread the idle ones over enough users.
    let mut idlers = Vec::new();
    for user in 0..idle.div_ceil(25) {
        idlers.push(register(&address, &format!("idle{run}x{user}")).await.1);
    }
    let mut idle_sockets = Vec::new();
    let rss_before = rss_kib(pid);
    for i in 0..idle {
        idle_sockets.push(connect(&address, &idlers[i / 25]).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);
    println!(
        "server RSS: {rss_start} KiB at start; {idle} idle authenticated connections: +{} KiB = {:.1} KiB each",
        rss_after - rss_before,
        (rss_after - rss_before) as f64 / idle as f64
    );
    drop(idle_sockets);

    let mut tasks = Vec::new();
    let mut receivers = Vec::new();
    for pair in 0..pairs {
        let (_, sender) = register(&address, &format!("s{run}x{pair}")).await;
        let (receiver_id, receiver) = register(&address, &format!("r{run}x{pair}")).await;
        let conversation = post(
            &address,
            "/api/v1/conversations",
            Some(&sender),
            json!({"kind": "direct", "members": [receiver_id]}),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let send_socket = connect(&address, &sender).await;
        let receive_socket = connect(&address, &receiver).await;
        receivers.push(tokio::spawn(async move {
            let (_, mut stream) = receive_socket.split();
            let mut last_seq = 0;
            let mut received = 0;
            while received < per_sender {
                let Some(Ok(Message::Text(text))) = stream.next().await else {
                    break;
                };
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "message" {
                    let seq = frame["message"]["seq"].as_u64().unwrap();
                    assert_eq!(seq, last_seq + 1, "in order, no gaps, no duplicates");
                    last_seq = seq;
                    received += 1;
                }
            }
            received
        }));
        tasks.push((conversation, send_socket));
    }
    let started = Instant::now();
    let senders: Vec<_> = tasks
        .into_iter()
        .map(|(conversation, socket)| {
            tokio::spawn(async move {
                let (mut sink, mut stream) = socket.split();
                let mut in_flight = 0;
                let mut accepted = 0;
                let mut sent = 0;
                while accepted < per_sender {
                    while in_flight < WINDOW && sent < per_sender {
                        let frame = json!({"type": "send", "conversation_id": conversation, "client_msg_id": format!("c{sent}"), "body": "a message of about sixty bytes, typical of a chat line"});
                        sink.feed(Message::Text(frame.to_string().into())).await.unwrap();
                        sent += 1;
                        in_flight += 1;
                    }
                    sink.flush().await.unwrap();
                    let Some(Ok(Message::Text(text))) = stream.next().await else { break };
                    if text.contains("\"accepted\"") {
                        accepted += 1;
                        in_flight -= 1;
                    } else if text.contains("\"error\"") {
                        panic!("{text}");
                    }
                }
                (accepted, started.elapsed())
            })
        })
        .collect();
    let mut accepted = 0;
    let mut accept_time = Duration::ZERO;
    for sender in senders {
        let (count, elapsed) = sender.await.unwrap();
        accepted += count;
        accept_time = accept_time.max(elapsed);
    }
    let mut delivered = 0;
    for receiver in receivers {
        delivered += receiver.await.unwrap();
    }
    let total = started.elapsed();
    println!(
        "{pairs} pairs x {per_sender}: accepted {accepted} in {:.2} s = {:.0}/s; delivered {delivered} in order in {:.2} s = {:.0}/s",
        accept_time.as_secs_f64(),
        accepted as f64 / accept_time.as_secs_f64(),
        total.as_secs_f64(),
        delivered as f64 / total.as_secs_f64()
    );
    println!("server RSS after the burst: {} KiB", rss_kib(pid));
}
