//! Parlor's delivery guarantee under crashes: the delivery checker of parlor-bench
//! (`parlor-bench check`) against this binary, with the server killed with SIGKILL 100 times
//! under a load of every kind of change; and what it found, pinned: a change resent after it
//! was stored (its `accepted` lost with the connection) is accepted again, not refused by the
//! state it made itself.

use std::path::Path;

use parlor_bench::scenarios::check;
use serde_json::{Value, json};

use crate::harness::{BIN, Server, Ws};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_survives_100_kill_9s_once_and_in_order() {
    let out = tempfile::tempdir().unwrap();
    let options = check::Options {
        kills: 100,
        ..check::Options::default()
    };
    let findings = check::run(Path::new(BIN), &options, out.path())
        .await
        .expect("the checker runs to the end");
    assert_eq!(findings.violations(), 0, "{:#?}", findings.notes);
    assert!(
        findings.accepted >= 2_000,
        "too little load to mean anything: {findings:?}"
    );
    for kind in [
        "message",
        "edit",
        "delete",
        "reaction_added",
        "reaction_removed",
    ] {
        assert!(
            findings
                .stored_kinds
                .get(kind)
                .is_some_and(|count| *count > 0),
            "no {kind} stored: {:?}",
            findings.stored_kinds
        );
    }
}

/// Frames until the answer (`accepted` or `error`) to the change `client_msg_id`.
async fn answer(ws: &mut Ws, client_msg_id: &str) -> Value {
    loop {
        let frame = ws.next().await;
        if matches!(frame["type"].as_str(), Some("accepted" | "error"))
            && frame["client_msg_id"] == client_msg_id
        {
            return frame;
        }
    }
}

/// Frames until the event of the change `client_msg_id` (it is stored).
async fn stored(ws: &mut Ws, client_msg_id: &str) {
    loop {
        let frame = ws.next().await;
        let event = match frame["type"].as_str() {
            Some("event") => &frame["event"],
            Some("message") => &frame["message"],
            _ => continue,
        };
        if event["client_msg_id"] == client_msg_id {
            return;
        }
    }
}

/// Sends a change, waits for it to be stored, and sends it again as a client that lost the
/// `accepted` with its connection would, on a new one: the answer to the resend.
async fn resend_after_stored(ws: &mut Ws, address: &str, token: &str, frame: Value) -> Value {
    let id = frame["client_msg_id"].as_str().unwrap().to_owned();
    ws.send(frame.clone()).await;
    assert_eq!(answer(ws, &id).await["type"], "accepted", "{frame}");
    stored(ws, &id).await;
    let mut again = Ws::connect(address, token).await;
    again.send(frame).await;
    answer(&mut again, &id).await
}

#[tokio::test]
async fn a_change_resent_after_it_was_stored_is_accepted_again() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[], &[]);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let (bob_id, bob) = http.register("bob").await;
    let (carl_id, carl) = http.register("carl").await;
    let created = http
        .post(
            "/api/v1/conversations",
            &ann,
            json!({"kind": "group", "title": "Team", "members": [bob_id]}),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let group = created.json()["id"].as_str().unwrap().to_owned();
    let (ann_ws, bob_ws, carl_ws) = (0, 1, 2);
    let mut sockets = [
        Ws::connect(&server.address, &ann).await,
        Ws::connect(&server.address, &bob).await,
        Ws::connect(&server.address, &carl).await,
    ];
    let change = |id: &str, fields: Value| {
        let mut frame = json!({"type": "event", "conversation_id": group, "client_msg_id": id});
        for (name, value) in fields.as_object().unwrap() {
            frame[name] = value.clone();
        }
        frame
    };

    let resends = [
        (ann_ws, json!({"kind": "message", "body": "one"})),
        (ann_ws, json!({"kind": "member_added", "user_id": carl_id})),
        (
            bob_ws,
            json!({"kind": "reaction_added", "target_seq": 1, "emoji": "👍"}),
        ),
        (
            bob_ws,
            json!({"kind": "reaction_removed", "target_seq": 1, "emoji": "👍"}),
        ),
        (
            ann_ws,
            json!({"kind": "role_changed", "user_id": bob_id, "role": "admin"}),
        ),
        (ann_ws, json!({"kind": "delete", "target_seq": 1})),
        // Leaving ends the membership: the resend comes from a non-member.
        (carl_ws, json!({"kind": "member_left"})),
    ];
    let ids = ["m1", "a1", "r1", "r2", "p1", "d1", "l1"];
    let tokens = [&ann, &bob, &carl];
    for ((socket, fields), id) in resends.into_iter().zip(ids) {
        let frame = change(id, fields);
        let (ws, token) = (&mut sockets[socket], tokens[socket]);
        let again = resend_after_stored(ws, &server.address, token, frame.clone()).await;
        assert_eq!(again["type"], "accepted", "a resend of {frame}: {again}");
    }

    // Each is stored once, and a non-member's own departure is the only thing it may resend.
    let history = http
        .get(
            &format!("/api/v1/conversations/{group}/events?after_seq=0&limit=200"),
            &ann,
        )
        .await;
    let stored: Vec<Value> = history.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["client_msg_id"].clone())
        .collect();
    assert_eq!(stored, ids);
    let other = change("l2", json!({"kind": "member_left"}));
    sockets[carl_ws].send(other).await;
    assert_eq!(
        answer(&mut sockets[carl_ws], "l2").await["code"],
        "not_found"
    );
}
