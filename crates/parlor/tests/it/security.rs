//! The holes an outside review found, each closed and kept closed: login CSRF, origins
//! compared as origins, cross-site writes, read-marker floods, sockets that outlive their
//! session, resends broadcast again, and the smaller findings (methods, headers, metrics).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Http, Response, Server, Ws};

fn start(extra: &[&str]) -> (tempfile::TempDir, Server) {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), extra, &[]);
    (data, server)
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const PASSWORD: &str = "correct horse battery";

async fn post_raw(http: &Http, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    http.raw("POST", path, headers, body.to_string().as_bytes())
        .await
}

fn credentials(username: &str) -> Value {
    json!({"username": username, "password": PASSWORD})
}

#[tokio::test]
async fn login_and_register_refuse_form_bodies_and_other_sites() {
    let (_data, server) = start(&[]);
    let http = server.http();
    http.register("alice").await;
    let own = format!("http://{}", server.address);
    for path in ["/api/v1/auth/login", "/api/v1/auth/register"] {
        let body = credentials(if path.ends_with("login") {
            "alice"
        } else {
            "mallory"
        });
        // What an HTML form with enctype=text/plain (or a urlencoded one) can post anywhere.
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            let response = post_raw(
                &http,
                path,
                &[("Content-Type", content_type), ("Origin", &own)],
                &body,
            )
            .await;
            assert_eq!(
                (response.status, response.code()),
                (415, "unsupported_media_type".into()),
                "{path} with {content_type}"
            );
            assert!(response.header("set-cookie").is_none());
        }
        let no_type = post_raw(&http, path, &[], &body).await;
        assert_eq!(no_type.status, 415, "{path} without a content type");
        for foreign in [
            vec![("Origin", "http://evil.example")],
            vec![("Origin", "null")],
            vec![("Sec-Fetch-Site", "cross-site")],
            vec![("Sec-Fetch-Site", "same-site")],
        ] {
            let mut headers = vec![JSON];
            headers.extend(foreign.iter().copied());
            let response = post_raw(&http, path, &headers, &body).await;
            assert_eq!(
                (response.status, response.code()),
                (403, "forbidden".into()),
                "{path} with {foreign:?}"
            );
            assert!(response.header("set-cookie").is_none());
        }
    }
    // Nothing of that created an account or a session.
    let mallory = post_raw(
        &http,
        "/api/v1/auth/login",
        &[JSON],
        &credentials("mallory"),
    )
    .await;
    assert_eq!(mallory.status, 401);
    // The same requests from the server's own page, or from a client that is no browser, work.
    let charset = ("Content-Type", "application/json; charset=utf-8");
    let from_own_page = post_raw(
        &http,
        "/api/v1/auth/login",
        &[charset, ("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
        &credentials("alice"),
    )
    .await;
    assert_eq!(from_own_page.status, 200);
    assert!(from_own_page.header("set-cookie").is_some());
    let plain = post_raw(&http, "/api/v1/auth/login", &[JSON], &credentials("alice")).await;
    assert_eq!(plain.status, 200);
}

#[tokio::test]
async fn cookie_writes_from_another_site_change_nothing() {
    let (_data, server) = start(&[]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let login = post_raw(&http, "/api/v1/auth/login", &[JSON], &credentials("alice")).await;
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let host = server.address.clone();
    let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    let messages = format!("/api/v1/conversations/{conversation}/messages");
    let foreign_origins = [
        "http://evil.example".to_string(),
        "null".to_string(),
        format!("http://127.0.0.1:{}", port + 1),
        format!("https://{host}"),
        format!("http://{host}.evil.example"),
        format!("http://evil.{host}"),
        format!("http://{host}@evil.example"),
    ];
    let base = [("Cookie", cookie.as_str()), ("X-Parlor-CSRF", "1"), JSON];
    for (i, origin) in foreign_origins.iter().enumerate() {
        let mut headers = base.to_vec();
        headers.push(("Origin", origin));
        let body = json!({"client_msg_id": format!("forged-{i}"), "body": "forged"});
        let response = post_raw(&http, &messages, &headers, &body).await;
        assert_eq!(
            (response.status, response.code()),
            (403, "forbidden".into()),
            "Origin {origin}"
        );
    }
    let mut cross_site = base.to_vec();
    cross_site.push(("Sec-Fetch-Site", "cross-site"));
    let body = json!({"client_msg_id": "forged-fetch", "body": "forged"});
    let response = post_raw(&http, &messages, &cross_site, &body).await;
    assert_eq!(response.status, 403);
    let read = format!("/api/v1/conversations/{conversation}/read");
    let mut read_headers = base.to_vec();
    read_headers.push(("Origin", "http://evil.example"));
    let response = post_raw(&http, &read, &read_headers, &json!({"seq": 1})).await;
    assert_eq!(response.status, 403);
    let mut logout_headers = base.to_vec();
    logout_headers.push(("Origin", "http://evil.example"));
    let logout = http
        .raw("POST", "/api/v1/auth/logout", &logout_headers, b"")
        .await;
    assert_eq!(logout.status, 403, "a foreign page cannot log anyone out");

    // From the server's own page it works, and it is the only message stored.
    let own = format!("http://{host}");
    let mut headers = base.to_vec();
    headers.push(("Origin", &own));
    let body = json!({"client_msg_id": "real", "body": "real"});
    assert_eq!(
        post_raw(&http, &messages, &headers, &body).await.status,
        202
    );
    let history = http.wait_for_history(&alice, &conversation, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let history_after = http.history(&alice, &conversation).await;
    assert_eq!(history_after, history);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["client_msg_id"], "real");
}

/// Opens a WebSocket with these extra headers; `Ok(())` if it was upgraded, else the status.
async fn upgrade_status(
    address: &str,
    token: &str,
    headers: &[(&'static str, &str)],
) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::Error;
    let authorization = format!("Bearer {token}");
    let mut all = vec![("Authorization", authorization.as_str())];
    all.extend_from_slice(headers);
    match parlor_testkit::client::upgrade(address, "/api/v1/ws", &all, None, None).await {
        Ok(_) => Ok(()),
        Err(Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("upgrade failed without an answer: {other}"),
    }
}

#[tokio::test]
async fn websocket_origins_are_compared_by_scheme_host_and_port() {
    let (_data, plain) = start(&[]);
    let http = plain.http();
    let (_, alice) = http.register("alice").await;
    let host = plain.address.clone();
    let port: u16 = host.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        upgrade_status(&host, &alice, &[("Origin", &format!("http://{host}"))]).await,
        Ok(())
    );
    assert_eq!(
        upgrade_status(
            &host,
            &alice,
            &[("Origin", &format!("HTTP://{}", host.to_uppercase()))]
        )
        .await,
        Ok(()),
        "scheme and host compare without case"
    );
    for origin in [
        format!("https://{host}"),
        format!("http://127.0.0.1:{}", port + 1),
        "http://127.0.0.1".to_string(),
        format!("http://localhost:{port}"),
        format!("http://{host}."),
        format!("http://{host}.evil.example"),
        format!("http://evil.{host}"),
        format!("http://user@{host}"),
        format!("http://{host}/"),
        format!("http://[::1]:{port}"),
        "null".to_string(),
        "file://".to_string(),
    ] {
        assert_eq!(
            upgrade_status(&host, &alice, &[("Origin", &origin)]).await,
            Err(403),
            "Origin {origin}"
        );
    }

    // Behind TLS (`--cookie-secure`) the server's own origin is https.
    let (_data, secure) = start(&["--cookie-secure", "true"]);
    let http = secure.http();
    let (_, bob) = http.register("bob").await;
    let host = secure.address.clone();
    assert_eq!(
        upgrade_status(&host, &bob, &[("Origin", &format!("https://{host}"))]).await,
        Ok(())
    );
    assert_eq!(
        upgrade_status(&host, &bob, &[("Origin", &format!("http://{host}"))]).await,
        Err(403)
    );

    // A trusted balancer says which scheme the client used; anyone else is not believed.
    let (_data, proxied) = start(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--allowed-origins",
        "https://app.example",
    ]);
    let http = proxied.http();
    let (_, carol) = http.register("carol").await;
    let host = proxied.address.clone();
    let https_origin = format!("https://{host}");
    let forwarded_https = [
        ("Origin", https_origin.as_str()),
        ("X-Forwarded-Proto", "https"),
    ];
    assert_eq!(
        upgrade_status(&host, &carol, &forwarded_https).await,
        Ok(())
    );
    let http_origin = format!("http://{host}");
    assert_eq!(
        upgrade_status(
            &host,
            &carol,
            &[
                ("Origin", http_origin.as_str()),
                ("X-Forwarded-Proto", "https")
            ]
        )
        .await,
        Err(403)
    );
    assert_eq!(
        upgrade_status(&host, &carol, &[("Origin", "https://app.example")]).await,
        Ok(()),
        "a configured origin"
    );
    for near in [
        "http://app.example",
        "https://app.example.evil",
        "https://evil.app.example",
        "https://app.example:8443",
    ] {
        assert_eq!(
            upgrade_status(&host, &carol, &[("Origin", near)]).await,
            Err(403),
            "{near} is not the configured origin"
        );
    }
    let (_data, untrusted) = start(&[]);
    let http = untrusted.http();
    let (_, dave) = http.register("dave").await;
    let host = untrusted.address.clone();
    let https_origin = format!("https://{host}");
    assert_eq!(
        upgrade_status(
            &host,
            &dave,
            &[
                ("Origin", https_origin.as_str()),
                ("X-Forwarded-Proto", "https")
            ]
        )
        .await,
        Err(403),
        "X-Forwarded-Proto from a peer that is no trusted balancer"
    );
}

/// Read frames seen on `ws` until it has been quiet for `quiet`.
async fn reads_until_quiet(ws: &mut Ws, quiet: Duration) -> Vec<Value> {
    let mut reads = Vec::new();
    while let Some(frame) = ws.try_next(quiet).await {
        if frame["type"] == "read" {
            reads.push(frame);
        }
    }
    reads
}

#[tokio::test]
async fn read_floods_are_coalesced_and_markers_that_move_nothing_reach_nobody() {
    let (_data, server) = start(&[]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut alice_ws = Ws::connect(&server.address, &alice).await;
    let mut bob_ws = Ws::connect(&server.address, &bob).await;
    for i in 1..=5 {
        alice_ws
            .send_message(&conversation, &format!("m{i}"), "hello")
            .await;
    }
    http.wait_for_history(&bob, &conversation, 5).await;

    // 300 identical markers: one store write, one frame to each member.
    let read = json!({"type": "read", "conversation_id": conversation, "seq": 5}).to_string();
    for _ in 0..300 {
        bob_ws.send_text(read.clone()).await;
    }
    let reads = reads_until_quiet(&mut alice_ws, Duration::from_millis(800)).await;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["seq"], 5);
    assert_eq!(reads[0]["user_id"], json!(bob_id));

    // Markers that go nowhere new (the same, older, from another device) reach nobody.
    let mut bob_phone = Ws::connect(&server.address, &bob).await;
    for seq in [5, 3, 1, 0] {
        bob_phone
            .send(json!({"type": "read", "conversation_id": conversation, "seq": seq}))
            .await;
    }
    assert_eq!(
        reads_until_quiet(&mut alice_ws, Duration::from_millis(500))
            .await
            .len(),
        0
    );

    // A burst that moves forward is written at the read limit's pace, newest last.
    for i in 6..=45 {
        alice_ws
            .send_message(&conversation, &format!("m{i}"), "hello")
            .await;
    }
    http.wait_for_history(&bob, &conversation, 45).await;
    for seq in 6..=45 {
        bob_ws
            .send(json!({"type": "read", "conversation_id": conversation, "seq": seq}))
            .await;
    }
    let reads = reads_until_quiet(&mut alice_ws, Duration::from_millis(1500)).await;
    assert!(
        !reads.is_empty() && reads.len() <= 10,
        "40 markers in a burst must be coalesced: {reads:?}"
    );
    assert_eq!(reads.last().unwrap()["seq"], 45, "{reads:?}");
    let list = http.get("/api/v1/conversations", &bob).await.json();
    assert_eq!(list[0]["unread_count"], 0);

    // Over HTTP a flood is refused with a hint of when to come back.
    let path = format!("/api/v1/conversations/{conversation}/read");
    let mut limited = None;
    for _ in 0..50 {
        let response = http.post(&path, &bob, json!({"seq": 45})).await;
        if response.status == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status, 204);
    }
    let limited = limited.expect("a read flood over HTTP is rate-limited");
    assert_eq!(limited.code(), "rate_limited");
    let wait_ms = limited.json()["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(wait_ms > 0 && wait_ms <= 1000, "{wait_ms}");
    assert!(limited.header("retry-after").is_some());
}

#[tokio::test]
async fn a_socket_closes_when_its_session_expires() {
    let (_data, server) = start(&["--session-ttl-secs", "2"]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, _) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut ws = Ws::connect(&server.address, &alice).await;
    ws.send_message(&conversation, "before", "still in time")
        .await;
    assert_eq!(ws.next_of("accepted").await["client_msg_id"], "before");
    // Kept busy with pings, as the review did: the socket still closes at the expiry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket outlived its session"
        );
        let ping = Message::Text(json!({"type": "ping"}).to_string().into());
        if ws.stream.send(ping).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(300), ws.stream.next()).await {
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) | Err(_) => {}
        }
    }
    assert_eq!(http.get("/api/v1/me", &alice).await.status, 401);
    let history = http
        .get(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &alice,
        )
        .await;
    assert_eq!(history.status, 401);
}

#[tokio::test]
async fn a_resend_of_a_stored_message_reaches_only_its_sender() {
    let (_data, server) = start(&[]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;
    let (bob_id, bob) = http.register("bob").await;
    let conversation = http.direct(&alice, &bob_id).await;
    let mut bob_ws = Ws::connect(&server.address, &bob).await;
    let mut alice_ws = Ws::connect(&server.address, &alice).await;
    alice_ws.send_message(&conversation, "m1", "once").await;
    assert_eq!(bob_ws.next_of("message").await["message"]["seq"], 1);
    assert_eq!(alice_ws.next_of("message").await["message"]["seq"], 1);

    // Alice's connection drops before she saw the answer; she resends after reconnecting.
    drop(alice_ws);
    let mut alice_ws = Ws::connect(&server.address, &alice).await;
    alice_ws.send_message(&conversation, "m1", "once").await;
    assert_eq!(alice_ws.next_of("accepted").await["client_msg_id"], "m1");
    let again = alice_ws.next_of("message").await;
    assert_eq!(
        (
            again["message"]["seq"].clone(),
            again["message"]["client_msg_id"].clone()
        ),
        (json!(1), json!("m1")),
        "the sender learns the stored seq"
    );
    alice_ws.send_message(&conversation, "m2", "twice").await;
    let next = bob_ws.next_of("message").await;
    assert_eq!(
        next["message"]["client_msg_id"], "m2",
        "Bob must not get m1 again: {next}"
    );
    assert_eq!(next["message"]["seq"], 2);
}

#[tokio::test]
async fn smaller_findings_stay_fixed() {
    let (_data, server) = start(&["--trusted-proxies", "127.0.0.1"]);
    let http = server.http();
    let (_, alice) = http.register("alice").await;

    // The web client's paths are read-only.
    for method in ["CONNECT", "POST", "PUT", "DELETE"] {
        let response = http.raw(method, "/some/page", &[], b"").await;
        assert_eq!(response.status, 405, "{method}");
    }
    assert_ne!(http.raw("GET", "/some/page", &[], b"").await.status, 405);

    // Every answer says not to sniff it and not to leak where it came from.
    let me = http.get("/api/v1/me", &alice).await;
    assert_eq!(me.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(me.header("referrer-policy"), Some("no-referrer"));
    let missing = http.get("/api/v1/nothing", &alice).await;
    assert_eq!(missing.header("x-content-type-options"), Some("nosniff"));

    // Metrics are for operators: loopback, not a client forwarded by the balancer.
    assert_eq!(http.raw("GET", "/metrics", &[], b"").await.status, 200);
    let forwarded = http
        .raw(
            "GET",
            "/metrics",
            &[("X-Forwarded-For", "203.0.113.9")],
            b"",
        )
        .await;
    assert_eq!(forwarded.status, 404);
}
