//! Conversations as event logs, end to end on the embedded server: every kind of change,
//! who may make it, what members receive, what history shows, membership that ends, and
//! markers that survive a reload.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Http, Server, Ws};

/// A group of `names` created by the first (its admin); (ids, tokens, conversation id).
async fn group(http: &Http, names: &[&str]) -> (Vec<String>, Vec<String>, String) {
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for name in names {
        let (id, token) = http.register(name).await;
        ids.push(id);
        tokens.push(token);
    }
    let response = http
        .post(
            "/api/v1/conversations",
            &tokens[0],
            json!({"kind": "group", "title": "Team", "members": ids[1..]}),
        )
        .await;
    assert_eq!(response.status, 201, "{response:?}");
    let conversation = response.json()["id"].as_str().unwrap().to_owned();
    (ids, tokens, conversation)
}

/// `POST …/events`: a change request; its HTTP status.
async fn change(http: &Http, token: &str, conversation: &str, request: Value) -> (u16, Value) {
    let response = http
        .post(
            &format!("/api/v1/conversations/{conversation}/events"),
            token,
            request,
        )
        .await;
    let body = if response.body.is_empty() {
        Value::Null
    } else {
        response.json()
    };
    (response.status, body)
}

/// Every event of a conversation, as `token`'s user reads them.
async fn events(http: &Http, token: &str, conversation: &str) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |event| event["seq"].as_u64().unwrap());
        let response = http
            .get(
                &format!("/api/v1/conversations/{conversation}/events?after_seq={after}&limit=200"),
                token,
            )
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        let page = response.json()["events"].as_array().unwrap().clone();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Waits until the conversation holds `count` events, and returns them.
async fn wait_for_events(http: &Http, token: &str, conversation: &str, count: usize) -> Vec<Value> {
    for _ in 0..400 {
        let all = events(http, token, conversation).await;
        if all.len() >= count {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{conversation} never held {count} events");
}

/// The next message or event frame's (seq, kind).
async fn next_event(ws: &mut Ws) -> (u64, String) {
    loop {
        let frame = ws.next().await;
        match frame["type"].as_str() {
            Some("message") => {
                return (frame["message"]["seq"].as_u64().unwrap(), "message".into());
            }
            Some("event") => {
                let event = &frame["event"];
                return (
                    event["seq"].as_u64().unwrap(),
                    event["kind"].as_str().unwrap().to_owned(),
                );
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_reaches_every_member_in_order_and_history_shows_the_result() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (ids, tokens, chat) = group(&http, &["ann", "ben", "cat"]).await;
    let mut sockets = Vec::new();
    for token in &tokens {
        sockets.push(Ws::connect(&server.address, token).await);
    }
    let (ann, ben, cat) = (&tokens[0], &tokens[1], &tokens[2]);

    let steps: Vec<(&String, Value)> = vec![
        (
            ann,
            json!({"client_msg_id": "a1", "kind": "message", "body": "lunch at noon?"}),
        ),
        (
            ben,
            json!({"client_msg_id": "b1", "kind": "message", "body": "yes @Ann, and @cat?", "reply_to_seq": 1}),
        ),
        (
            ann,
            json!({"client_msg_id": "a2", "kind": "edit", "target_seq": 1, "body": "lunch at one?"}),
        ),
        (
            cat,
            json!({"client_msg_id": "c1", "kind": "reaction_added", "target_seq": 1, "emoji": "👍"}),
        ),
        (
            ben,
            json!({"client_msg_id": "b2", "kind": "reaction_added", "target_seq": 1, "emoji": "👍"}),
        ),
        (
            cat,
            json!({"client_msg_id": "c2", "kind": "reaction_removed", "target_seq": 1, "emoji": "👍"}),
        ),
        (
            ann,
            json!({"client_msg_id": "a3", "kind": "title_changed", "title": "  Lunch crew "}),
        ),
        (
            ann,
            json!({"client_msg_id": "a4", "kind": "role_changed", "user_id": ids[1], "role": "admin"}),
        ),
        (
            cat,
            json!({"client_msg_id": "c3", "kind": "message", "body": "oops"}),
        ),
        (
            cat,
            json!({"client_msg_id": "c4", "kind": "delete", "target_seq": 9}),
        ),
    ];
    let kinds = [
        "message",
        "message",
        "edit",
        "reaction_added",
        "reaction_added",
        "reaction_removed",
        "title_changed",
        "role_changed",
        "message",
        "delete",
    ];
    for (seq, (token, request)) in steps.into_iter().enumerate() {
        let (status, body) = change(&http, token, &chat, request).await;
        assert_eq!(status, 202, "step {}: {body}", seq + 1);
        // Each change waits for the one before: the rules look at the state it left.
        wait_for_events(&http, ann, &chat, seq + 1).await;
    }
    for ws in &mut sockets {
        for (index, kind) in kinds.iter().enumerate() {
            assert_eq!(next_event(ws).await, (index as u64 + 1, kind.to_string()));
        }
    }

    // History backwards: messages in their current state.
    let messages = http.history(ann, &chat).await;
    assert_eq!(messages.len(), 3, "only messages: {messages:#?}");
    let first = &messages[0];
    assert_eq!(first["body"], "lunch at one?");
    assert!(first["edited_at"].is_string());
    assert_eq!(
        first["reactions"],
        json!([{"emoji": "👍", "user_ids": [ids[1]]}])
    );
    let reply = &messages[1];
    assert_eq!(reply["reply_to"]["seq"], 1);
    assert_eq!(reply["reply_to"]["excerpt"], "lunch at one?");
    assert_eq!(reply["mentions"], json!([ids[0], ids[2]]));
    assert_eq!(
        (&messages[2]["body"], &messages[2]["deleted"]),
        (&json!(""), &json!(true))
    );

    // Catch-up forwards: the events, with what each did.
    let all = events(&http, cat, &chat).await;
    let seen: Vec<&str> = all.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(seen, kinds);
    assert_eq!(all[2]["body"], "lunch at one?");
    assert_eq!(all[6]["title"], "Lunch crew", "titles are trimmed");
    assert_eq!(all[7]["role"], "admin");

    // The chat list: the title, roles, and Ann's unread mention.
    let list = http.get("/api/v1/conversations", ann).await.json();
    let row = &list[0];
    assert_eq!(row["title"], "Lunch crew");
    assert_eq!(row["last_seq"], 10);
    assert_eq!(
        row["last_message"]["seq"], 9,
        "the newest message, not the newest event"
    );
    let roles: Vec<(&str, &str)> = row["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["username"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [("ann", "admin"), ("ben", "admin"), ("cat", "member")]
    );
    assert_eq!(row["unread_mentions"], 1);
    assert_eq!(
        row["unread_count"], 1,
        "Ben's reply; Cat's deleted message does not count"
    );
}

/// Who may do what, over HTTP: each action by a member, an admin, a non-member and a member
/// who was removed, with the status the protocol promises and nothing changed when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorisation_table_for_every_change() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (ids, tokens, chat) = group(&http, &["admin", "member", "removed", "spare"]).await;
    let (outsider_id, outsider) = http.register("outsider").await;
    let (admin, member) = (&tokens[0], &tokens[1]);
    // Events stored so far: each accepted change is waited for, so that the next row meets
    // the state it left.
    let mut stored = 0;
    let (status, _) = change(
        &http,
        admin,
        &chat,
        json!({"client_msg_id": "rm", "kind": "member_removed", "user_id": ids[2]}),
    )
    .await;
    assert_eq!(status, 202);
    stored += 1;
    wait_for_events(&http, admin, &chat, stored).await;

    type Row<'a> = (&'a str, &'a str, u16);
    // (request kind, who, status) for the rules that need a target message by `member`.
    let on_a_message: &[Row] = &[
        ("edit", "member", 202),
        ("edit", "admin", 403),
        ("edit", "removed", 404),
        ("edit", "outsider", 404),
        ("delete", "member", 202),
        ("delete", "admin", 202),
        ("delete", "spare", 403),
        ("delete", "removed", 404),
        ("delete", "outsider", 404),
        ("reaction_added", "spare", 202),
        ("reaction_added", "removed", 404),
        ("reaction_added", "outsider", 404),
        ("reply", "spare", 202),
        ("reply", "removed", 404),
    ];
    let token_of = |who: &str| -> String {
        match who {
            "admin" => tokens[0].clone(),
            "member" => tokens[1].clone(),
            "removed" => tokens[2].clone(),
            "spare" => tokens[3].clone(),
            _ => outsider.clone(),
        }
    };
    for (index, &(kind, who, expected)) in on_a_message.iter().enumerate() {
        // A fresh message by `member` as the target of each row.
        let request =
            json!({"client_msg_id": format!("t{index}"), "kind": "message", "body": "target"});
        assert_eq!(change(&http, member, &chat, request).await.0, 202);
        stored += 1;
        let target = wait_for_events(&http, admin, &chat, stored).await[stored - 1]["seq"]
            .as_u64()
            .unwrap();
        let request = match kind {
            "edit" => json!({"kind": "edit", "target_seq": target, "body": "changed"}),
            "delete" => json!({"kind": "delete", "target_seq": target}),
            "reaction_added" => {
                json!({"kind": "reaction_added", "target_seq": target, "emoji": "🎉"})
            }
            _ => json!({"kind": "message", "body": "re", "reply_to_seq": target}),
        };
        let mut request = request;
        request["client_msg_id"] = json!(format!("row{index}"));
        let (status, body) = change(&http, &token_of(who), &chat, request).await;
        assert_eq!(status, expected, "{kind} by {who}: {body}");
        if expected == 202 {
            stored += 1;
            wait_for_events(&http, admin, &chat, stored).await;
        } else {
            assert!(body["error"]["code"].is_string(), "{body}");
        }
    }

    // Member changes: the subject is `spare` unless said.
    let member_rows: &[(&str, Value, u16)] = &[
        (
            "member",
            json!({"kind": "member_added", "user_id": outsider_id}),
            403,
        ),
        (
            "outsider",
            json!({"kind": "member_added", "user_id": outsider_id}),
            404,
        ),
        (
            "removed",
            json!({"kind": "member_added", "user_id": ids[2]}),
            404,
        ),
        (
            "admin",
            json!({"kind": "member_added", "user_id": ids[3]}),
            409,
        ),
        (
            "admin",
            json!({"kind": "member_added", "user_id": "0190a1b2-0000-7000-8000-000000000000"}),
            404,
        ),
        (
            "member",
            json!({"kind": "member_removed", "user_id": ids[3]}),
            403,
        ),
        (
            "admin",
            json!({"kind": "member_removed", "user_id": ids[2]}),
            404,
        ),
        (
            "admin",
            json!({"kind": "member_removed", "user_id": ids[0]}),
            400,
        ),
        (
            "member",
            json!({"kind": "title_changed", "title": "mine"}),
            403,
        ),
        (
            "admin",
            json!({"kind": "title_changed", "title": "   "}),
            400,
        ),
        (
            "removed",
            json!({"kind": "title_changed", "title": "mine"}),
            404,
        ),
        (
            "member",
            json!({"kind": "role_changed", "user_id": ids[3], "role": "admin"}),
            403,
        ),
        (
            "admin",
            json!({"kind": "role_changed", "user_id": ids[0], "role": "member"}),
            409,
        ),
        (
            "admin",
            json!({"kind": "role_changed", "user_id": ids[1], "role": "member"}),
            409,
        ),
        ("removed", json!({"kind": "member_left"}), 404),
        ("outsider", json!({"kind": "member_left"}), 404),
        (
            "admin",
            json!({"kind": "member_added", "user_id": outsider_id}),
            202,
        ),
        (
            "admin",
            json!({"kind": "role_changed", "user_id": ids[3], "role": "admin"}),
            202,
        ),
        (
            "spare",
            json!({"kind": "member_removed", "user_id": outsider_id}),
            202,
        ),
        ("member", json!({"kind": "member_left"}), 202),
    ];
    for (index, (who, request, expected)) in member_rows.iter().enumerate() {
        let mut request = request.clone();
        request["client_msg_id"] = json!(format!("member-row{index}"));
        let (status, body) = change(&http, &token_of(who), &chat, request.clone()).await;
        assert_eq!(status, *expected, "{request} by {who}: {body}");
        if *expected == 202 {
            stored += 1;
            wait_for_events(&http, admin, &chat, stored).await;
        }
    }

    // The direct conversation: fixed members, no title, nobody an admin.
    let direct = http.direct(admin, &ids[1]).await;
    for request in [
        json!({"client_msg_id": "d1", "kind": "member_added", "user_id": ids[3]}),
        json!({"client_msg_id": "d2", "kind": "member_left"}),
        json!({"client_msg_id": "d3", "kind": "title_changed", "title": "us"}),
    ] {
        let (status, body) = change(&http, admin, &direct, request).await;
        assert_eq!(status, 403, "{body}");
    }
    // Bad input is refused before any rule, whoever asks.
    for request in [
        json!({"client_msg_id": "x1", "kind": "reaction_added", "target_seq": 1, "emoji": "lol"}),
        json!({"client_msg_id": "x2", "kind": "shout"}),
        json!({"client_msg_id": "x3", "kind": "edit", "target_seq": 1, "body": " "}),
        json!({"client_msg_id": "bad id", "kind": "member_left"}),
    ] {
        let (status, body) = change(&http, admin, &direct, request).await;
        assert_eq!(status, 400, "{body}");
    }
    // Nothing that was refused left a trace: the log holds exactly what was accepted.
    let all = events(&http, &tokens[0], &chat).await;
    assert_eq!(all.len(), stored, "{all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_receiving_at_once_and_gets_not_found() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (ids, tokens, chat) = group(&http, &["ann", "ben", "cat"]).await;
    let (ann, cat) = (&tokens[0], &tokens[2]);
    let mut ann_ws = Ws::connect(&server.address, ann).await;
    let mut cat_ws = Ws::connect(&server.address, cat).await;
    // Cat writes first, so her connection has found her a member.
    cat_ws.send_message(&chat, "c1", "hello").await;
    assert_eq!(next_event(&mut cat_ws).await, (1, "message".into()));
    assert_eq!(next_event(&mut ann_ws).await, (1, "message".into()));

    let (status, _) = change(
        &http,
        ann,
        &chat,
        json!({"client_msg_id": "rm", "kind": "member_removed", "user_id": ids[2]}),
    )
    .await;
    assert_eq!(status, 202);
    let removed = loop {
        let frame = cat_ws.next().await;
        if frame["type"] == "event" {
            break frame["event"].clone();
        }
    };
    assert_eq!(
        (removed["kind"].as_str(), removed["user_id"].as_str()),
        (Some("member_removed"), Some(ids[2].as_str()))
    );

    // Nothing more reaches her: messages, typing, read marks.
    ann_ws.send_message(&chat, "a1", "without cat").await;
    ann_ws
        .send(json!({"type": "typing", "conversation_id": chat}))
        .await;
    ann_ws
        .send(json!({"type": "read", "conversation_id": chat, "seq": 3}))
        .await;
    assert_eq!(next_event(&mut ann_ws).await, (2, "member_removed".into()));
    assert_eq!(next_event(&mut ann_ws).await, (3, "message".into()));
    let mut leaked = Vec::new();
    while let Some(frame) = cat_ws.try_next(Duration::from_millis(1500)).await {
        if frame["type"] != "presence" {
            leaked.push(frame);
        }
    }
    assert!(leaked.is_empty(), "a removed member received {leaked:#?}");

    // Every read and write is the same 404 as for nothing at all; the list forgets it.
    for path in ["", "/messages", "/events?after_seq=0"] {
        let response = http
            .get(&format!("/api/v1/conversations/{chat}{path}"), cat)
            .await;
        assert_eq!(response.status, 404, "GET {path}: {response:?}");
        assert_eq!(response.code(), "not_found");
    }
    let post = http
        .post(
            &format!("/api/v1/conversations/{chat}/messages"),
            cat,
            json!({"client_msg_id": "c2", "body": "let me in"}),
        )
        .await;
    assert_eq!(post.status, 404);
    let list = http.get("/api/v1/conversations", cat).await.json();
    assert_eq!(list, json!([]));
    cat_ws.send_message(&chat, "c3", "still here?").await;
    let refused = cat_ws.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["client_msg_id"].as_str()),
        (Some("not_found"), Some("c3"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        events(&http, ann, &chat).await.len(),
        3,
        "nothing of hers was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_conversations_and_new_members_reach_chat_lists_live() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (ann_id, ann) = http.register("ann").await;
    let (ben_id, ben) = http.register("ben").await;
    let (cat_id, cat) = http.register("cat").await;
    let mut ben_ws = Ws::connect(&server.address, &ben).await;
    let mut cat_ws = Ws::connect(&server.address, &cat).await;

    let direct = http.direct(&ann, &ben_id).await;
    let frame = ben_ws.next_of("conversation").await;
    assert_eq!(frame["conversation"]["id"], direct.as_str());
    assert_eq!(frame["conversation"]["unread_count"], 0);
    // Opening it again creates nothing, and announces nothing.
    http.direct(&ann, &ben_id).await;

    let created = http
        .post(
            "/api/v1/conversations",
            &ann,
            json!({"kind": "group", "title": "Plans", "members": [ben_id]}),
        )
        .await;
    let group = created.json()["id"].as_str().unwrap().to_owned();
    let frame = ben_ws.next_of("conversation").await;
    assert_eq!(frame["conversation"]["id"], group.as_str());
    assert_eq!(frame["conversation"]["title"], "Plans");

    let (status, _) = change(
        &http,
        &ann,
        &group,
        json!({"client_msg_id": "add", "kind": "member_added", "user_id": cat_id}),
    )
    .await;
    assert_eq!(status, 202);
    let added = cat_ws.next_of("event").await["event"].clone();
    assert_eq!(added["kind"], "member_added");
    assert_eq!(added["user"], json!({"id": cat_id, "username": "cat"}));
    let row = http
        .get(&format!("/api/v1/conversations/{group}"), &cat)
        .await
        .json();
    assert_eq!(
        row["last_read_seq"], 1,
        "history before joining counts as read"
    );
    assert_eq!(row["unread_count"], 0);
    // The new member sees the history.
    let (status, _) = change(
        &http,
        &ann,
        &group,
        json!({"client_msg_id": "hi", "kind": "message", "body": "welcome"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(next_event(&mut cat_ws).await, (2, "message".into()));
    assert!(ben_ws.next_of("event").await["event"]["kind"] == "member_added");
    let _ = ann_id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_delivered_marks_are_per_member_coalesced_and_survive_a_reload() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (ids, tokens, chat) = group(&http, &["ann", "ben", "cat"]).await;
    let mut ann_ws = Ws::connect(&server.address, &tokens[0]).await;
    let mut ben_ws = Ws::connect(&server.address, &tokens[1]).await;
    for index in 0..3 {
        ann_ws
            .send_message(&chat, &format!("a{index}"), "news")
            .await;
    }
    for _ in 0..3 {
        next_event(&mut ben_ws).await;
    }
    // A flood of delivered marks costs one write and one announcement.
    for seq in 1..=300u64 {
        ben_ws
            .send(json!({"type": "delivered", "conversation_id": chat, "seq": seq.min(3)}))
            .await;
    }
    let delivered = ann_ws.next_of("delivered").await;
    assert_eq!(
        (delivered["user_id"].as_str(), delivered["seq"].as_u64()),
        (Some(ids[1].as_str()), Some(3))
    );
    ben_ws
        .send(json!({"type": "read", "conversation_id": chat, "seq": 2}))
        .await;
    let read = ann_ws.next_of("read").await;
    assert_eq!(read["seq"], 2);
    let mut more = Vec::new();
    while let Some(frame) = ann_ws.try_next(Duration::from_millis(500)).await {
        if matches!(frame["type"].as_str(), Some("delivered" | "read")) {
            more.push(frame);
        }
    }
    assert!(more.is_empty(), "{more:#?}");

    let list = http.get("/api/v1/conversations", &tokens[0]).await.json();
    let marks: Vec<(String, u64, u64)> = list[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().to_owned(),
                m["last_delivered_seq"].as_u64().unwrap(),
                m["last_read_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        marks,
        [
            ("ann".into(), 3, 3),
            ("ben".into(), 3, 2),
            ("cat".into(), 0, 0)
        ]
    );

    // Muting is private, and the user's other devices hear of it.
    let mute = http
        .request(
            "PUT",
            &format!("/api/v1/conversations/{chat}/mute"),
            Some(&tokens[1]),
            Some(json!({"muted": true})),
        )
        .await;
    assert_eq!(mute.status, 204, "{mute:?}");
    assert_eq!(ben_ws.next_of("muted").await["muted"], true);
    assert_eq!(
        http.get(&format!("/api/v1/conversations/{chat}"), &tokens[1])
            .await
            .json()["muted"],
        true
    );
    assert_eq!(
        http.get(&format!("/api/v1/conversations/{chat}"), &tokens[0])
            .await
            .json()["muted"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_leaving_makes_the_longest_standing_member_admin() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (ids, tokens, chat) = group(&http, &["ann", "ben", "cat"]).await;
    let (status, _) = change(
        &http,
        &tokens[0],
        &chat,
        json!({"client_msg_id": "bye", "kind": "member_left"}),
    )
    .await;
    assert_eq!(status, 202);
    let all = wait_for_events(&http, &tokens[1], &chat, 1).await;
    assert_eq!(all[0]["kind"], "member_left");
    assert_eq!(all[0]["user_id"], ids[0].as_str());
    // Ben and Cat joined together, when Ann created the group: the lower id wins the tie.
    let promoted = all[0]["promoted_user_id"].as_str().unwrap();
    assert!(promoted == ids[1] || promoted == ids[2], "{promoted}");
    let row = http
        .get(&format!("/api/v1/conversations/{chat}"), &tokens[1])
        .await
        .json();
    let admins: Vec<&str> = row["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "admin")
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(admins, [promoted]);
    assert_eq!(
        http.get(&format!("/api/v1/conversations/{chat}"), &tokens[0])
            .await
            .status,
        404
    );
}
