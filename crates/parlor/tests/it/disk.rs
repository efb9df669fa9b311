//! A full disk is an outage: with the data directory on a small tmpfs that fills up under
//! load, sends are refused with `storage_full` (nothing half-written), the server stays up and
//! ready, nothing accepted is dead-lettered, and service resumes once space is freed.
//!
//! These tests mount a tmpfs (they need root, as on CI) and fail if they cannot.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{BIN, Http, Server, Ws};

/// Room for the fresh data directory (about 120 KiB), SQLite's WAL growing by some hundred
/// KiB, and the junk that fills the rest.
const TMPFS_BYTES: u64 = 8 * 1024 * 1024;

/// A tmpfs mounted on a temporary directory, unmounted on drop (after the server is gone).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}); these tests need root"
        );
        Tmpfs { dir }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn junk(&self) -> PathBuf {
        self.dir.path().join("junk")
    }

    /// Fills the device with junk, then frees `room_bytes` of it again.
    fn fill_leaving(&self, room_bytes: u64) {
        let mut file = fs::File::create(self.junk()).expect("create junk");
        let chunk = vec![0xa5u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
        let len = file.metadata().expect("junk metadata").len();
        file.set_len(len.saturating_sub(room_bytes))
            .expect("free some room");
    }

    fn free(&self) {
        fs::remove_file(self.junk()).expect("remove the junk");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(status, Ok(status) if status.success()) && !std::thread::panicking() {
            panic!("unmounting the test tmpfs failed: {status:?}");
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Accepted,
    StorageFull,
}

/// What the sender saw, in send order: (client_msg_id, outcome).
type Outcomes = Arc<Mutex<Vec<(String, Outcome)>>>;

/// Sends one message at a time on one WebSocket until `stop`, each answered before the next.
/// Any answer but `accepted` or `storage_full` fails the test.
fn start_sender(
    mut ws: Ws,
    conversation: String,
    mut stop: watch::Receiver<bool>,
) -> (Outcomes, tokio::task::JoinHandle<()>) {
    let outcomes: Outcomes = Arc::default();
    let seen = Arc::clone(&outcomes);
    let task = tokio::spawn(async move {
        for index in 0.. {
            if *stop.borrow_and_update() {
                return;
            }
            let id = format!("m{index:05}");
            ws.send_message(&conversation, &id, &format!("message {index}"))
                .await;
            let outcome = loop {
                let frame = ws.next().await;
                if frame["client_msg_id"] != id.as_str() {
                    continue; // our own messages coming back, presence
                }
                match (frame["type"].as_str(), frame["code"].as_str()) {
                    (Some("accepted"), _) => break Outcome::Accepted,
                    (Some("error"), Some("storage_full")) => break Outcome::StorageFull,
                    _ => panic!("send {id}: unexpected answer {frame}"),
                }
            };
            seen.lock().unwrap().push((id, outcome));
            // Paced, so a refused send does not spin; still dozens of sends a second.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (outcomes, task)
}

fn count(outcomes: &Outcomes, outcome: Outcome) -> usize {
    outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, seen)| *seen == outcome)
        .count()
}

async fn wait_until(what: &str, wait: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metrics(http: &Http) -> String {
    let response = http.raw("GET", "/metrics", &[], b"").await;
    assert_eq!(response.status, 200);
    String::from_utf8_lossy(&response.body).into_owned()
}

async fn assert_ready(http: &Http) {
    let ready = http.raw("GET", "/readyz", &[], b"").await;
    assert_eq!(
        ready.status, 200,
        "a full disk is not a reason to leave the pool"
    );
}

/// Every accepted message is stored exactly once, in send order, with gap-free `seq`; no
/// refused one is stored.
async fn assert_stored_exactly_the_accepted(
    http: &Http,
    token: &str,
    conversation: &str,
    outcomes: &[(String, Outcome)],
) {
    let accepted: Vec<&str> = outcomes
        .iter()
        .filter(|(_, outcome)| *outcome == Outcome::Accepted)
        .map(|(id, _)| id.as_str())
        .collect();
    let history = http
        .wait_for_history(token, conversation, accepted.len())
        .await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "seq is gap-free from 1"
    );
    let stored: Vec<&str> = history
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        stored.iter().collect::<HashSet<_>>().len(),
        stored.len(),
        "a message stored twice"
    );
    assert_eq!(
        stored, accepted,
        "exactly the accepted messages, in send order"
    );
}

fn assert_no_dead_letters(data_dir: &Path) {
    for queue in ["inbound", "notifications"] {
        let output = Command::new(BIN)
            .args(["dlq", "list", "--queue", queue, "--data-dir"])
            .arg(data_dir)
            .env("PARLOR_LOG", "warn")
            .output()
            .expect("run parlor dlq list");
        assert!(
            output.status.success(),
            "dlq list: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "",
            "dead letters in {queue}"
        );
    }
}

struct Chat {
    server: Server,
    http: Http,
    bob: String,
    conversation: String,
    outcomes: Outcomes,
    stop: watch::Sender<bool>,
    sender: tokio::task::JoinHandle<()>,
}

/// A server on the tmpfs, with alice sending to bob under way.
async fn chat_under_load(tmpfs: &Tmpfs) -> Chat {
    // Retries that the old code spent on a full disk dead-letter within a fraction of a second.
    let server = Server::start(
        &tmpfs.data_dir(),
        &["--attempts-max", "3", "--retry-base-ms", "10"],
        &[],
    );
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let ws = Ws::connect(&server.address, &alice).await;
    let (stop, stopped) = watch::channel(false);
    let (outcomes, sender) = start_sender(ws, conversation.clone(), stopped);
    Chat {
        server,
        http,
        bob,
        conversation,
        outcomes,
        stop,
        sender,
    }
}

impl Chat {
    /// Frees the disk, waits for sends to be accepted again (within 5 s), stops the sender and
    /// checks what was stored.
    async fn free_and_check(mut self, tmpfs: &Tmpfs) {
        let refused_before_freeing = self.outcomes.lock().unwrap().len();
        tmpfs.free();
        let freed_at = std::time::Instant::now();
        wait_until(
            "a send accepted after space was freed",
            Duration::from_secs(5),
            || {
                self.outcomes.lock().unwrap()[refused_before_freeing..]
                    .iter()
                    .any(|(_, outcome)| *outcome == Outcome::Accepted)
            },
        )
        .await;
        eprintln!(
            "sends accepted again {:?} after space was freed",
            freed_at.elapsed()
        );
        let accepted_by_now = count(&self.outcomes, Outcome::Accepted);
        wait_until("more sends accepted", Duration::from_secs(5), || {
            count(&self.outcomes, Outcome::Accepted) >= accepted_by_now + 20
        })
        .await;
        self.stop.send(true).unwrap();
        self.sender.await.unwrap();
        let outcomes = self.outcomes.lock().unwrap().clone();
        assert_stored_exactly_the_accepted(&self.http, &self.bob, &self.conversation, &outcomes)
            .await;
        let metrics = metrics(&self.http).await;
        assert!(
            !metrics.contains("parlor_dead_lettered_total"),
            "nothing dead-lettered: {metrics}"
        );
        assert!(self.server.terminate().success(), "SIGTERM exits cleanly");
        assert_no_dead_letters(&tmpfs.data_dir());
    }
}

#[tokio::test]
async fn full_disk_refuses_sends_with_storage_full_and_resumes_once_space_is_freed() {
    let tmpfs = Tmpfs::mount(TMPFS_BYTES);
    let mut chat = chat_under_load(&tmpfs).await;
    wait_until("sends accepted", Duration::from_secs(10), || {
        count(&chat.outcomes, Outcome::Accepted) >= 30
    })
    .await;

    // Nothing left: the inbound log's next page cannot be had.
    tmpfs.fill_leaving(0);
    wait_until(
        "sends refused as storage_full",
        Duration::from_secs(10),
        || count(&chat.outcomes, Outcome::StorageFull) >= 20,
    )
    .await;
    // Refused, not wedged: still up, still ready, over HTTP too.
    assert_ready(&chat.http).await;
    let refused = chat
        .http
        .post(
            &format!("/api/v1/conversations/{}/messages", chat.conversation),
            &chat.bob,
            json!({"client_msg_id": "http-1", "body": "over http"}),
        )
        .await;
    assert_eq!(refused.status, 507, "{refused:?}");
    assert_eq!(refused.code(), "storage_full");
    assert!(chat.server_alive(), "a full disk must not stop the server");
    chat.free_and_check(&tmpfs).await;
}

#[tokio::test]
async fn full_database_holds_accepted_messages_without_dead_lettering_them() {
    let tmpfs = Tmpfs::mount(TMPFS_BYTES);
    let chat = chat_under_load(&tmpfs).await;
    wait_until("sends accepted", Duration::from_secs(10), || {
        count(&chat.outcomes, Outcome::Accepted) >= 30
    })
    .await;

    // Some room: every stored batch grows SQLite's WAL by whole 4 KiB pages, while an entry
    // takes a few hundred bytes of the inbound log, so the store runs out first, with
    // accepted messages in the log behind the batch it cannot store. (A failing SQLite
    // transaction keeps what it wrote of its WAL, so the log soon runs out too.)
    tmpfs.fill_leaving(256 * 1024);
    let full = "parlor_storage_full_total{step=\"store events\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !metrics(&chat.http).await.contains(full) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never reported a full disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Far longer than 3 attempts with 10 ms retries take: the old code dead-lettered by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ready(&chat.http).await;
    let held = metrics(&chat.http).await;
    assert!(
        !held.contains("parlor_dead_lettered_total"),
        "a full disk dead-lettered accepted messages: {held}"
    );
    chat.free_and_check(&tmpfs).await;
}

impl Chat {
    fn server_alive(&mut self) -> bool {
        self.server
            .child
            .try_wait()
            .expect("check parlor")
            .is_none()
    }
}

/// A failed write is not a full disk: the log is poisoned (as after a failed fsync), and
/// instead of answering 503 to every send forever the server fails readiness at once and exits
/// non-zero with the cause, so a supervisor restarts it; the restart recovers every accepted
/// message. The failure comes from outside the binary: the running server's file-size limit
/// (`prlimit`) is lowered to the size of the inbound log's segment, so its next write there
/// fails with EFBIG (SIGXFSZ is ignored, as a disposition the server inherits from the test).
#[tokio::test]
#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
async fn failed_log_write_makes_the_server_exit_and_a_restart_recovers() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    // Ignored dispositions survive exec: the server gets EFBIG instead of being killed.
    // SAFETY: sets a signal disposition to SIG_IGN; no handler runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let mut server = Server::start(&data_dir, &[], &[]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;
    ws.send_message(&conversation, "before", "before the fault")
        .await;
    assert_eq!(ws.next_of("accepted").await["client_msg_id"], "before");

    limit_file_size(
        &server,
        largest_file(&data_dir.join("queues/inbound/entries")),
    );
    ws.send_message(&conversation, "during", "while writes fail")
        .await;
    let refused = ws.next_of("error").await;
    assert_eq!(refused["client_msg_id"], "during");
    assert_eq!(refused["code"], "unavailable", "{refused}");

    let status = exits_on_its_own(&mut server);
    assert!(!status.success(), "a poisoned log is a failure: {status}");
    let ready = tokio::net::TcpStream::connect(&server.address).await;
    assert!(ready.is_err(), "nothing answers /readyz after the exit");

    let server = Server::start(&data_dir, &[], &[]);
    let history = server.http().wait_for_history(&bob, &conversation, 1).await;
    let stored: Vec<&str> = history
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(stored[0], "before", "{stored:?}");
}

/// An fsync that fails, on the real binary: strace makes the inbound log's `fdatasync` fail with
/// EIO from the writer thread's 4th call on (strace counts per thread; the first calls cover
/// the first sends). The send it covered is refused, nothing after it is accepted, the server
/// exits non-zero on its own, and a restart holds exactly the sends that were accepted, in order.
#[tokio::test]
async fn failed_fsync_acknowledges_nothing_more_and_the_server_exits() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let segment = data_dir.join("queues/inbound/entries/00000000000000000000.wal");
    let segment = segment.to_str().unwrap();
    let strace = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-P",
        segment,
        "-e",
        "trace=fdatasync",
        "-e",
        "inject=fdatasync:error=EIO:when=4+",
    ];
    let mut server = Server::start_wrapped(&strace, &data_dir);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;

    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..20 {
        let id = format!("m{i}");
        ws.send_message(&conversation, &id, "one at a time").await;
        let answer = loop {
            let frame = ws.next().await;
            if frame["client_msg_id"] == id.as_str() {
                break frame;
            }
        };
        match answer["type"].as_str() {
            Some("accepted") => accepted.push(id),
            _ => {
                refused = Some(answer);
                break;
            }
        }
    }
    let refused = refused.expect("a send refused once fdatasync fails");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(!accepted.is_empty(), "sends were accepted before the fault");
    // Nothing more is accepted, however long the server still answers (it may be gone
    // already, and the socket with it).
    for i in 0..3 {
        let frame = json!({"type": "send", "conversation_id": conversation,
            "client_msg_id": format!("after{i}"), "body": "after the failed fsync"});
        if ws
            .stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    while let Some(frame) = ws.try_next(Duration::from_secs(2)).await {
        assert_ne!(
            frame["type"], "accepted",
            "accepted after a failed fsync: {frame}"
        );
    }

    let status = exits_on_its_own(&mut server);
    assert!(!status.success(), "a failed fsync is a failure: {status}");

    let server = Server::start(&data_dir, &[], &[]);
    let history = server
        .http()
        .wait_for_history(&bob, &conversation, accepted.len())
        .await;
    let stored: Vec<&str> = history
        .iter()
        .map(|message| message["client_msg_id"].as_str().unwrap())
        .collect();
    // The refused send may have reached the disk before the failed fsync: stored or not,
    // but nothing sent after it.
    let refused_id = refused["client_msg_id"].as_str().unwrap();
    let expected_with_refused: Vec<&str> = accepted
        .iter()
        .map(String::as_str)
        .chain([refused_id])
        .collect();
    assert!(
        stored == accepted || stored == expected_with_refused,
        "stored {stored:?}, accepted {accepted:?}"
    );
}

/// How the server (or its wrapper) exits, within 10 s, with no signal sent.
fn exits_on_its_own(server: &mut Server) -> std::process::ExitStatus {
    let (sender, exited) = std::sync::mpsc::channel();
    let mut child = std::mem::replace(
        &mut server.child,
        Command::new("true").spawn().expect("a placeholder child"),
    );
    std::thread::spawn(move || {
        let _ = sender.send(child.wait().expect("wait for parlor"));
    });
    exited
        .recv_timeout(Duration::from_secs(10))
        .expect("parlor exits on its own")
}

/// The size of the largest file directly in `dir`: the inbound log's one segment.
fn largest_file(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read the log directory")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .metadata()
                .expect("metadata")
        })
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .max()
        .expect("a segment")
}

/// Lowers the running server's file-size limit: a write beyond `bytes` fails with EFBIG.
#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
fn limit_file_size(server: &Server, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: prlimit only reads `limit`; the old limit is not asked for (null).
    let result = unsafe {
        libc::prlimit(
            server.child.id() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
}
