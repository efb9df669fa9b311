//! A data directory written by the previous release opens with nothing lost.
//!
//! `fixtures/embedded-data-v1.tar.gz` was written by bc8c990's `parlor serve` (version 1
//! write-ahead log segments, store schema 4) with `fixtures/make-embedded-data.py`: ada, ben
//! and cyd; a direct chat (a message edited, a reply, a reaction, a message deleted) and a
//! group (a mention, a title change, cyd removed, non-ASCII text); ada's read mark. Then,
//! after the clean stop, bc8c990's `parlor-bench fill-inbound` appended three messages from
//! ada to the direct chat (m0, m1, m2) and was killed: acknowledged, never stored.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Http, Server};

const DIRECT: &str = "01a242bc-564b-777b-986a-12e58e965be4";
const GROUP: &str = "01a242bc-564d-7427-8dd5-55fc56902cd4";
const CYD: &str = "01a242bc-5649-7673-a07b-1bce4e756666";

fn unpack(fixture: &str, into: &Path) {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures")
        .join(fixture);
    std::fs::create_dir_all(into).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(status.success(), "unpack {}", archive.display());
}

async fn login(http: &Http, username: &str, password: &str) -> String {
    let response = http
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({ "username": username, "password": password })),
        )
        .await;
    assert_eq!(response.status, 200, "log in as {username}: {response:?}");
    response.json()["token"].as_str().unwrap().to_owned()
}

async fn events(http: &Http, token: &str, conversation: &str) -> Vec<Value> {
    let response = http
        .get(
            &format!("/api/v1/conversations/{conversation}/events"),
            token,
        )
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    response.json()["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<(u64, String, String)> {
    events
        .iter()
        .map(|event| {
            (
                event["seq"].as_u64().unwrap(),
                event["kind"].as_str().unwrap().to_owned(),
                event["client_msg_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn check_everything(http: &Http) {
    let ada = login(http, "ada", "correct horse battery").await;
    let ben = login(http, "ben", "staple gun battery").await;
    let cyd = login(http, "cyd", "purple monkey dish").await;

    // The three entries left in the old log are stored now, after the six events.
    let history = http.wait_for_history(&ben, DIRECT, 6).await;
    let direct = events(http, &ben, DIRECT).await;
    let expected: Vec<(u64, String, String)> = [
        "message d1",
        "message d2",
        "edit d3",
        "reaction_added d4",
        "message d5",
        "delete d6",
        "message m0",
        "message m1",
        "message m2",
    ]
    .iter()
    .zip(1..)
    .map(|(kind_and_id, seq)| {
        let (kind, id) = kind_and_id.split_once(' ').unwrap();
        (seq, kind.to_owned(), id.to_owned())
    })
    .collect();
    assert_eq!(kinds(&direct), expected, "history: {history:?}");
    let message = |seq: usize| direct[seq - 1]["message"].clone();
    assert_eq!(message(1)["body"], "hello ben!");
    assert!(message(1)["edited_at"].is_string());
    assert_eq!(message(2)["reactions"][0]["emoji"], "👍");
    assert_eq!(message(5)["deleted"], true);
    assert_eq!(message(5)["body"], "");

    let group = events(http, &ben, GROUP).await;
    assert_eq!(
        kinds(&group)
            .into_iter()
            .map(|(_, kind, _)| kind)
            .collect::<Vec<_>>(),
        ["message", "title_changed", "member_removed", "message"]
    );
    assert_eq!(group[3]["message"]["body"], "done: café ünïcode 日本語");
    assert_eq!(group[2]["user_id"], CYD);
    // Removed: cyd reads the group no more.
    let response = http
        .get(&format!("/api/v1/conversations/{GROUP}/events"), &cyd)
        .await;
    assert_eq!(response.status, 404, "{response:?}");

    let response = http.get("/api/v1/conversations", &ada).await;
    assert_eq!(response.status, 200);
    let conversations = response.json();
    let by_id = |id: &str| {
        conversations
            .as_array()
            .unwrap()
            .iter()
            .find(|conversation| conversation["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {conversations}"))
            .clone()
    };
    assert_eq!(by_id(GROUP)["title"], "Daily standups");
    // Her own messages m0..m2 carried ada's read mark (2) to 9.
    assert_eq!(by_id(DIRECT)["last_read_seq"], 9);
    assert_eq!(by_id(DIRECT)["last_seq"], 9);
    let response = http.get("/api/v1/conversations", &ben).await;
    let direct = response.json()[1].clone();
    let direct = if direct["id"] == DIRECT {
        direct
    } else {
        response.json()[0].clone()
    };
    assert_eq!(
        direct["unread_count"], 3,
        "ada's m0..m2 are new to ben: {direct}"
    );
}

#[tokio::test]
async fn a_data_directory_of_the_previous_release_opens_with_nothing_lost() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    unpack("embedded-data-v1.tar.gz", &data_dir);

    let mut server = Server::start(&data_dir, &[], &[]);
    let http = server.http();
    check_everything(&http).await;
    // What this release writes beside the old data reads back after a restart too.
    let ben = login(&http, "ben", "staple gun battery").await;
    let response = http
        .post(
            &format!("/api/v1/conversations/{DIRECT}/messages"),
            &ben,
            json!({ "client_msg_id": "after", "body": "written by this release" }),
        )
        .await;
    assert_eq!(response.status, 202, "{response:?}");
    http.wait_for_history(&ben, DIRECT, 7).await;
    assert!(server.terminate().success());
    // The old log's segments went once their entries were stored; new ones are version 2.
    for entry in std::fs::read_dir(data_dir.join("queues/inbound/entries")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "wal") {
            let header = std::fs::read(&path).unwrap();
            assert_eq!(header[4..8], 2u32.to_le_bytes(), "{}", path.display());
        }
    }

    let server = Server::start(&data_dir, &[], &[]);
    let http = server.http();
    check_everything_but_the_last_seq(&http).await;
}

/// [`check_everything`] once "after" is stored (seq 10).
async fn check_everything_but_the_last_seq(http: &Http) {
    let ben = login(http, "ben", "staple gun battery").await;
    let history = http.wait_for_history(&ben, DIRECT, 7).await;
    let bodies: Vec<&str> = history
        .iter()
        .map(|message| message["client_msg_id"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["d1", "d2", "d5", "m0", "m1", "m2", "after"]);
    let direct = events(http, &ben, DIRECT).await;
    assert_eq!(direct.len(), 10);
    assert_eq!(direct[9]["message"]["body"], "written by this release");
}
