//! Protocol v1 through real sockets: every endpoint and frame, the bad inputs and the
//! authorisation cases.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Http, Server, Ws};

fn start() -> (tempfile::TempDir, Server) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[], &[]);
    (data, server)
}

async fn register_raw(http: &Http, username: &str, password: &str) -> crate::harness::Response {
    http.request(
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({"username": username, "password": password})),
    )
    .await
}

#[tokio::test]
async fn accounts_register_log_in_and_out() {
    let (_data, server) = start();
    let http = server.http();

    let created = register_raw(&http, "Alice", "correct horse battery").await;
    assert_eq!(created.status, 201);
    let body = created.json();
    assert_eq!(body["user"]["username"], "Alice");
    let token = body["token"].as_str().unwrap().to_string();
    assert!(token.len() >= 32, "a token carries at least 128 bits");
    let cookie = created.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    assert_eq!(
        register_raw(&http, "alice", "another password")
            .await
            .code(),
        "username_taken"
    );
    assert_eq!(
        register_raw(&http, "alice", "another password")
            .await
            .status,
        409
    );
    for bad in ["al", "has space", "<script>", &"x".repeat(33)] {
        let response = register_raw(&http, bad, "correct horse battery").await;
        assert_eq!(
            (response.status, response.code()),
            (400, "invalid_username".into()),
            "{bad}"
        );
    }
    let weak = register_raw(&http, "carol", "short").await;
    assert_eq!((weak.status, weak.code()), (400, "weak_password".into()));
    let malformed = http
        .raw(
            "POST",
            "/api/v1/auth/register",
            &[("Content-Type", "application/json")],
            b"{\"username\": ",
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.code()),
        (400, "invalid_json".into())
    );
    let missing = http
        .request(
            "POST",
            "/api/v1/auth/register",
            None,
            Some(json!({"username": "dave"})),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (400, "invalid_input".into())
    );
    let invalid_utf8 = http
        .raw(
            "POST",
            "/api/v1/auth/register",
            &[("Content-Type", "application/json")],
            b"{\"username\":\"\xff\xfe\",\"password\":\"correct horse\"}",
        )
        .await;
    assert_eq!(
        (invalid_utf8.status, invalid_utf8.code()),
        (400, "invalid_json".into())
    );

    let me = http.get("/api/v1/me", &token).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["username"], "Alice");
    assert_eq!(
        http.request("GET", "/api/v1/me", None, None).await.status,
        401
    );
    assert_eq!(
        http.get("/api/v1/me", &"0".repeat(64)).await.code(),
        "unauthorized"
    );

    let wrong = http
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "wrong password"})),
        )
        .await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthorized".into()));
    let unknown = http
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "nobody", "password": "wrong password"})),
        )
        .await;
    assert_eq!(unknown.status, 401);
    let login = http
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(login.status, 200);
    let second = login.json()["token"].as_str().unwrap().to_string();

    // Logout ends this session everywhere at once, its live sockets too, and no other.
    let mut socket = Ws::connect(&server.address, &token).await;
    let mut other_socket = Ws::connect(&server.address, &second).await;
    assert_eq!(
        http.post("/api/v1/auth/logout", &token, json!({}))
            .await
            .status,
        204
    );
    assert_eq!(http.get("/api/v1/me", &token).await.status, 401);
    assert!(
        socket.closed_within(Duration::from_secs(5)).await,
        "the session's socket is closed"
    );
    assert!(
        Ws::try_connect(&server.address, &token, None)
            .await
            .is_err()
    );
    assert_eq!(http.get("/api/v1/me", &second).await.status, 200);
    other_socket.send(json!({"type": "ping"})).await;
    assert_eq!(other_socket.next().await["type"], "pong");
}

#[tokio::test]
async fn cookie_sessions_need_the_csrf_header_to_change_anything() {
    let (_data, server) = start();
    let http = server.http();
    let (_, _alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let login = http
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse battery"})),
        )
        .await;
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    let me = http
        .raw("GET", "/api/v1/me", &[("Cookie", &cookie)], b"")
        .await;
    assert_eq!(me.status, 200);
    let body = json!({"kind": "direct", "members": [bob_id]}).to_string();
    let json = ("Content-Type", "application/json");
    let forged = http
        .raw(
            "POST",
            "/api/v1/conversations",
            &[("Cookie", &cookie), json],
            body.as_bytes(),
        )
        .await;
    assert_eq!((forged.status, forged.code()), (403, "forbidden".into()));
    assert_eq!(
        http.raw("GET", "/api/v1/conversations", &[("Cookie", &cookie)], b"")
            .await
            .json(),
        json!([])
    );
    let allowed = http
        .raw(
            "POST",
            "/api/v1/conversations",
            &[("Cookie", &cookie), ("X-Parlor-CSRF", "1"), json],
            body.as_bytes(),
        )
        .await;
    assert_eq!(allowed.status, 201);
}

#[tokio::test]
async fn conversations_are_listed_and_hidden_from_non_members() {
    let (_data, server) = start();
    let http = server.http();
    let (alice_id, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let (carol_id, carol) = http.register("carol").await;

    // User search: by prefix, ignoring case, without oneself, with presence.
    let _online = Ws::connect(&server.address, &bob).await;
    let found = http.get("/api/v1/users?q=B", &alice).await.json();
    assert_eq!(
        found,
        json!([{"id": bob_id, "username": "bob", "online": true}])
    );
    assert!(
        http.get("/api/v1/users?q=al", &alice)
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // One direct conversation per pair, whoever opens it.
    let created = http
        .post(
            "/api/v1/conversations",
            &alice,
            json!({"kind": "direct", "members": [bob_id]}),
        )
        .await;
    assert_eq!(created.status, 201);
    let direct = created.json()["id"].as_str().unwrap().to_string();
    let again = http
        .post(
            "/api/v1/conversations",
            &bob,
            json!({"kind": "direct", "members": [alice_id]}),
        )
        .await;
    assert_eq!(
        (again.status, again.json()["id"].as_str().unwrap()),
        (200, direct.as_str())
    );
    for bad in [
        json!({"kind": "direct", "members": [alice_id]}),
        json!({"kind": "direct", "members": ["not-a-user-id"]}),
        json!({"kind": "direct", "members": [bob_id, carol_id]}),
        json!({"kind": "group", "members": [bob_id]}),
        json!({"kind": "group", "title": "  ", "members": [bob_id]}),
        json!({"kind": "channel", "members": [bob_id]}),
    ] {
        let response = http
            .post("/api/v1/conversations", &alice, bad.clone())
            .await;
        assert_eq!(response.status, 400, "{bad}");
    }
    // A group holds 10,000 members, creator included, and a request that large fits.
    let ids = |count: usize| -> Vec<String> {
        (0..count)
            .map(|i| format!("00000000-0000-7000-8000-{i:012}"))
            .collect()
    };
    for (count, message) in [
        (9_999, "every member must be an existing user"),
        (10_000, "too many members"),
    ] {
        let response = http
            .post(
                "/api/v1/conversations",
                &alice,
                json!({"kind": "group", "title": "Big", "members": ids(count)}),
            )
            .await;
        assert_eq!(
            (
                response.status,
                response.json()["error"]["message"].as_str()
            ),
            (400, Some(message)),
            "{count} members"
        );
    }
    let group = http
        .post(
            "/api/v1/conversations",
            &alice,
            json!({"kind": "group", "title": "Team", "members": [bob_id, carol_id]}),
        )
        .await;
    assert_eq!(group.status, 201);
    let group = group.json();
    assert_eq!(group["title"], "Team");
    assert_eq!(group["members"].as_array().unwrap().len(), 3);
    let group_id = group["id"].as_str().unwrap().to_string();

    // Messages through HTTP, the same path as a WebSocket send.
    let posted = http
        .post(
            &format!("/api/v1/conversations/{direct}/messages"),
            &alice,
            json!({"client_msg_id": "h1", "body": "hi bob"}),
        )
        .await;
    assert_eq!(posted.status, 202);
    assert_eq!(
        posted.json(),
        json!({"accepted": {"client_msg_id": "h1", "conversation_id": direct}})
    );
    let posted = http
        .post(
            &format!("/api/v1/conversations/{group_id}/messages"),
            &carol,
            json!({"client_msg_id": "g1", "body": "hi team"}),
        )
        .await;
    assert_eq!(posted.status, 202);
    http.wait_for_history(&bob, &group_id, 1).await;
    http.wait_for_history(&bob, &direct, 1).await;

    // Bob's chat list: most recent first, with the last message and unread counts.
    let list = http.get("/api/v1/conversations", &bob).await.json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [group_id.as_str(), direct.as_str()]);
    assert_eq!(list[0]["last_message"]["body"], "hi team");
    assert_eq!(
        (list[0]["unread_count"].clone(), list[0]["last_seq"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(list[1]["kind"], "direct");
    assert_eq!(list[1]["title"], Value::Null);
    // The sender has read their own message.
    let carol_list = http.get("/api/v1/conversations", &carol).await.json();
    assert_eq!(carol_list[0]["unread_count"], 0);

    let read = http
        .post(
            &format!("/api/v1/conversations/{group_id}/read"),
            &bob,
            json!({"seq": 1}),
        )
        .await;
    assert_eq!(read.status, 204);
    assert_eq!(
        http.get("/api/v1/conversations", &bob).await.json()[0]["unread_count"],
        0
    );

    // A non-member gets the same 404 as for a conversation that does not exist.
    let missing = format!(
        "/api/v1/conversations/{}/messages",
        "0192f0c1-7c5e-7a4b-9c1e-2f3a4b5c6d7e"
    );
    let foreign = format!("/api/v1/conversations/{direct}/messages");
    for path in [
        missing.as_str(),
        foreign.as_str(),
        "/api/v1/conversations/garbage/messages",
    ] {
        let read = http.get(path, &carol).await;
        assert_eq!(
            (read.status, read.code()),
            (404, "not_found".into()),
            "{path}"
        );
        let write = http
            .post(
                path,
                &carol,
                json!({"client_msg_id": "x1", "body": "let me in"}),
            )
            .await;
        assert_eq!(
            (write.status, write.code()),
            (404, "not_found".into()),
            "{path}"
        );
    }
    let read = http
        .post(
            &format!("/api/v1/conversations/{direct}/read"),
            &carol,
            json!({"seq": 1}),
        )
        .await;
    assert_eq!(read.status, 404);
    assert_eq!(
        http.get("/api/v1/conversations", &carol)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn history_pages_by_seq() {
    let (_data, server) = start();
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;
    for i in 1..=30 {
        ws.send_message(&conversation, &format!("m{i}"), &format!("body {i}"))
            .await;
    }
    http.wait_for_history(&alice, &conversation, 30).await;
    let page = |query: &'static str| {
        let http = http.clone();
        let alice = alice.clone();
        let path = format!("/api/v1/conversations/{conversation}/messages?{query}");
        async move {
            let response = http.get(&path, &alice).await;
            assert_eq!(response.status, 200, "{query}: {response:?}");
            response.json()["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page("limit=3").await, [28, 29, 30]);
    assert_eq!(page("before_seq=10&limit=3").await, [7, 8, 9]);
    assert_eq!(page("after_seq=25&limit=3").await, [26, 27, 28]);
    assert_eq!(page("after_seq=30").await, Vec::<u64>::new());
    for bad in ["limit=0", "limit=201", "after_seq=-1", "limit=abc"] {
        let response = http
            .get(
                &format!("/api/v1/conversations/{conversation}/messages?{bad}"),
                &alice,
            )
            .await;
        assert_eq!(
            (response.status, response.code()),
            (400, "invalid_input".into()),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn two_people_chat_live_with_typing_reads_and_presence() {
    let (_data, server) = start();
    let http = server.http();
    let (alice_id, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;

    let mut bob_ws = Ws::connect(&server.address, &bob).await;
    let mut alice_phone = Ws::connect(&server.address, &alice).await;
    let online = bob_ws.next_of("presence").await;
    assert_eq!(
        (
            online["user_id"].as_str().unwrap(),
            online["online"].as_bool().unwrap()
        ),
        (alice_id.as_str(), true)
    );
    let mut alice_laptop = Ws::connect(&server.address, &alice).await;

    alice_phone
        .send(json!({"type": "typing", "conversation_id": conversation}))
        .await;
    let typing = bob_ws.next_of("typing").await;
    assert_eq!(
        typing,
        json!({"type": "typing", "conversation_id": conversation, "user_id": alice_id})
    );

    alice_phone
        .send_message(&conversation, "a1", "hello bob")
        .await;
    // (A presence frame of Bob's may come first: presence is announced asynchronously.)
    let accepted = alice_phone.next_of("accepted").await;
    assert_eq!(
        accepted,
        json!({"type": "accepted", "client_msg_id": "a1", "conversation_id": conversation})
    );
    let received = bob_ws.next_of("message").await["message"].clone();
    assert_eq!(received["body"], "hello bob");
    assert_eq!(received["seq"], 1);
    assert_eq!(received["sender_id"], json!(alice_id));
    assert_eq!(received["client_msg_id"], "a1");
    assert!(received["created_at"].as_str().unwrap().ends_with('Z'));
    // The sender's other device gets it too, and so does the sending one (with its seq).
    assert_eq!(
        alice_laptop.next_of("message").await["message"]["id"],
        received["id"]
    );
    assert_eq!(
        alice_phone.next_of("message").await["message"]["id"],
        received["id"]
    );

    bob_ws.send_message(&conversation, "b1", "hi alice").await;
    assert_eq!(
        alice_phone.next_of("message").await["message"]["body"],
        "hi alice"
    );

    // Bob's own message moved his marker to 2; a marker that moves nothing is announced to
    // nobody, so Alice writes once more and Bob reads that.
    alice_phone
        .send_message(&conversation, "a2", "see you")
        .await;
    while bob_ws.next_of("message").await["message"]["seq"] != 3 {}
    bob_ws
        .send(json!({"type": "read", "conversation_id": conversation, "seq": 3}))
        .await;
    let read = alice_laptop.next_of("read").await;
    assert_eq!(
        read,
        json!({"type": "read", "conversation_id": conversation, "user_id": bob_id, "seq": 3})
    );

    bob_ws.send(json!({"type": "ping"})).await;
    assert_eq!(bob_ws.next_of("pong").await, json!({"type": "pong"}));

    // Alice is offline once her last connection closes; Bob is told, with last_seen.
    drop(alice_phone);
    drop(alice_laptop);
    let offline = bob_ws.next_of("presence").await;
    assert_eq!(offline["online"], false);
    assert!(offline["last_seen"].as_str().is_some(), "{offline}");
}

#[tokio::test]
async fn bad_frames_get_clear_errors_and_change_nothing() {
    let (_data, server) = start();
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let (_, carol) = http.register("carol").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;

    ws.send_text("{not json".into()).await;
    assert_eq!(ws.next().await["code"], "invalid_json");
    ws.send(json!({"type": "shout"})).await;
    assert_eq!(ws.next().await["code"], "unknown_type");
    ws.send(json!({"type": "send", "conversation_id": conversation}))
        .await;
    assert_eq!(ws.next().await["code"], "invalid_input");

    let cases = [
        ("big", "x".repeat(16 * 1024 + 1), "body_too_large"),
        ("nul", "a\u{0}b".to_string(), "invalid_input"),
        ("blank", "   ".to_string(), "invalid_input"),
    ];
    for (id, body, code) in cases {
        ws.send_message(&conversation, id, &body).await;
        let error = ws.next().await;
        assert_eq!(
            (
                error["type"].as_str(),
                error["code"].as_str(),
                error["client_msg_id"].as_str()
            ),
            (Some("error"), Some(code), Some(id))
        );
    }
    ws.send_message(&conversation, "bad id with spaces", "hello")
        .await;
    assert_eq!(ws.next().await["code"], "invalid_input");
    // Exactly 16 KiB is fine.
    ws.send_message(&conversation, "max", &"é".repeat(8 * 1024))
        .await;
    assert_eq!(ws.next().await["type"], "accepted");

    // Someone else's conversation is indistinguishable from none.
    let mut carol_ws = Ws::connect(&server.address, &carol).await;
    carol_ws
        .send_message(&conversation, "c1", "intruding")
        .await;
    assert_eq!(carol_ws.next().await["code"], "not_found");
    carol_ws
        .send(json!({"type": "typing", "conversation_id": conversation}))
        .await;
    assert_eq!(carol_ws.next().await["code"], "not_found");
    carol_ws
        .send(json!({"type": "read", "conversation_id": conversation, "seq": 1}))
        .await;
    assert_eq!(carol_ws.next().await["code"], "not_found");

    let history = http.wait_for_history(&bob, &conversation, 1).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["client_msg_id"], "max");
    // Still connected after all that.
    ws.send(json!({"type": "ping"})).await;
    ws.next_of("pong").await;
}

#[tokio::test]
async fn websocket_upgrades_check_origin_and_credentials() {
    let (_data, server) = start();
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let own = format!("http://{}", server.address);
    assert!(
        Ws::try_connect(&server.address, &alice, Some(&own))
            .await
            .is_ok()
    );
    assert!(Ws::try_connect(&server.address, &alice, None).await.is_ok());
    let foreign = Ws::try_connect(&server.address, &alice, Some("https://evil.example")).await;
    match foreign {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!(
            "a foreign origin must be refused, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(
        Ws::try_connect(&server.address, "nonsense", None)
            .await
            .is_err()
    );
    let path = format!("/api/v1/ws?token={alice}");
    let mut stream = parlor_testkit::client::upgrade(&server.address, &path, &[], None, None)
        .await
        .expect("?token= authenticates");
    use futures::StreamExt;
    let hello = stream.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains("\"hello\""));
}

#[tokio::test]
async fn floods_are_rate_limited() {
    let data = tempfile::tempdir().unwrap();
    // Start with the default limits, not the harness's generous ones.
    let server = Server::start(
        data.path(),
        &[
            "--sends-per-second-per-user",
            "5",
            "--sends-burst-per-user",
            "5",
            "--auth-burst-per-ip",
            "3",
            "--auth-per-second-per-ip",
            "1",
        ],
        &[],
    );
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;
    for i in 0..10 {
        ws.send_message(&conversation, &format!("f{i}"), "flood")
            .await;
    }
    let mut codes = Vec::new();
    for _ in 0..10 {
        let frame = ws.next().await;
        if frame["code"] == "rate_limited" {
            // Each says when the same frame can succeed.
            let wait_ms = frame["retry_after_ms"].as_u64().unwrap();
            assert!(wait_ms > 0 && wait_ms <= 1000, "{frame}");
        }
        codes.push(
            frame["code"]
                .as_str()
                .unwrap_or(frame["type"].as_str().unwrap())
                .to_string(),
        );
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "accepted").count(),
        5,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "rate_limited").count(),
        5,
        "{codes:?}"
    );
    // A burst of 3 authentications per IP: two went to alice and bob.
    assert_eq!(
        register_raw(&http, "carol", "correct horse battery")
            .await
            .status,
        201
    );
    let limited = register_raw(&http, "dave", "correct horse battery").await;
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limited".into())
    );
    assert!(limited.json()["error"]["retry_after_ms"].as_u64().is_some());
    assert!(limited.header("retry-after").is_some());

    // Creating conversations is a write like any other.
    let mut created = 0;
    let limited = loop {
        let body = json!({"kind": "group", "title": format!("g{created}"), "members": [bob_id]});
        let response = http.post("/api/v1/conversations", &alice, body).await;
        if response.status != 201 {
            break response;
        }
        created += 1;
        assert!(created <= 100, "100 groups in a burst were all created");
    };
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limited".into())
    );
    assert!(limited.json()["error"]["retry_after_ms"].as_u64().is_some());
}

#[tokio::test]
async fn behind_a_trusted_balancer_each_forwarded_client_has_its_own_limit() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        data.path(),
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--auth-burst-per-ip",
            "1",
            "--auth-per-second-per-ip",
            "1",
        ],
        &[],
    );
    let http = server.http();
    let register = |name: &'static str, forwarded: &'static str| {
        let http = http.clone();
        async move {
            let body = json!({"username": name, "password": "correct horse battery"});
            http.raw(
                "POST",
                "/api/v1/auth/register",
                &[
                    ("Content-Type", "application/json"),
                    ("X-Forwarded-For", forwarded),
                ],
                body.to_string().as_bytes(),
            )
            .await
            .status
        }
    };
    assert_eq!(register("alice", "10.0.0.1").await, 201);
    assert_eq!(register("bob", "10.0.0.1").await, 429, "same client");
    assert_eq!(register("bob", "10.0.0.2").await, 201, "another client");
    // Only the balancer's own entry counts: a client cannot pick its address.
    assert_eq!(register("carol", "10.0.0.3, 10.0.0.2").await, 429);
}

#[tokio::test]
async fn health_readiness_metrics_and_limits() {
    let (_data, server) = start();
    let http = server.http();
    assert_eq!(http.raw("GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(http.raw("GET", "/readyz", &[], b"").await.status, 200);
    let (_, alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let _ws = Ws::connect(&server.address, &alice).await;
    http.post(
        &format!("/api/v1/conversations/{conversation}/messages"),
        &alice,
        json!({"client_msg_id": "m", "body": "x"}),
    )
    .await;
    http.wait_for_history(&alice, &conversation, 1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // gauges are published every second
    let metrics = String::from_utf8(http.raw("GET", "/metrics", &[], b"").await.body).unwrap();
    for needle in [
        "parlor_messages_accepted_total 1",
        "parlor_messages_stored_total 1",
        "parlor_connections 1",
        "parlor_queue_pending{queue=\"inbound\"}",
        "parlor_queue_dead_letters{queue=\"notifications\"} 0",
        "parlor_delivery_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let huge = vec![b'x'; 1024 * 1024];
    let json = [("Content-Type", "application/json")];
    let too_big = http.raw("POST", "/api/v1/auth/login", &json, &huge).await;
    assert_eq!(
        (too_big.status, too_big.code()),
        (413, "body_too_large".into())
    );
    let unknown = http.get("/api/v1/nothing-here", &alice).await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found".into()));
}

#[tokio::test]
async fn sessions_expire() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--session-ttl-secs", "1"], &[]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    assert_eq!(http.get("/api/v1/me", &alice).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = http.get("/api/v1/me", &alice).await;
    assert_eq!(
        (expired.status, expired.code()),
        (401, "unauthorized".into())
    );
    assert!(
        Ws::try_connect(&server.address, &alice, None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected_not_buffered_forever() {
    let (_data, server) = start();
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut stalled = Ws::connect(&server.address, &bob).await; // never reads from here on
    let ws = Ws::connect(&server.address, &alice).await;
    let (mut sink, mut stream) = futures::StreamExt::split(ws.stream);
    // Alice reads everything that comes back, as a real client does.
    let reader = tokio::spawn(async move {
        let mut accepted = 0;
        while let Some(Ok(message)) = futures::StreamExt::next(&mut stream).await {
            if message
                .to_text()
                .is_ok_and(|text| text.contains("\"accepted\""))
            {
                accepted += 1;
                if accepted == 3000 {
                    break;
                }
            }
        }
        (accepted, stream)
    });
    // 3,000 messages of 8 KiB: 24 MiB, far more than socket buffers and the bounded
    // per-connection queue (2,048 frames) can hold.
    let body = "x".repeat(8 * 1024);
    for i in 0..3000 {
        let frame = json!({"type": "send", "conversation_id": conversation, "client_msg_id": format!("m{i}"), "body": body});
        futures::SinkExt::send(
            &mut sink,
            tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into()),
        )
        .await
        .unwrap();
    }
    let (accepted, stream) = reader.await.unwrap();
    assert_eq!(accepted, 3000);
    let mut ws = Ws {
        stream: stream.reunite(sink).unwrap(),
    };
    let mut disconnected = false;
    for _ in 0..200 {
        let metrics = String::from_utf8(http.raw("GET", "/metrics", &[], b"").await.body).unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("parlor_slow_consumer_disconnects_total") && !l.ends_with(" 0"))
        {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(disconnected, "the stalled connection was never dropped");
    // Alice, who reads, is still connected.
    ws.send(json!({"type": "ping"})).await;
    ws.next_of("pong").await;
    assert!(stalled.closed_within(Duration::from_secs(10)).await);
}
