//! Search end to end on the embedded server: who finds what (member, non-member, removed
//! member, logged out), bad queries, paging by cursor, and an edit found at once.

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Http, Server};

/// `GET /api/v1/search?QUERY` as `token` (none: logged out): (status, body).
async fn search(http: &Http, token: Option<&str>, query: &str) -> (u16, Value) {
    let response = http
        .request("GET", &format!("/api/v1/search?{query}"), token, None)
        .await;
    let body = if response.body.is_empty() {
        Value::Null
    } else {
        response.json()
    };
    (response.status, body)
}

/// The (conversation, seq) of every hit of a 200 answer.
fn hits(answer: &(u16, Value)) -> Vec<(String, u64)> {
    assert_eq!(answer.0, 200, "{answer:?}");
    let mut found: Vec<(String, u64)> = answer.1["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hit| {
            (
                hit["conversation_id"].as_str().unwrap().to_owned(),
                hit["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    found
}

async fn say(http: &Http, token: &str, conversation: &str, id: &str, body: &str) {
    let response = http
        .post(
            &format!("/api/v1/conversations/{conversation}/messages"),
            token,
            json!({"client_msg_id": id, "body": body}),
        )
        .await;
    assert_eq!(response.status, 202, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_only_what_the_caller_may_read() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let mut users = Vec::new();
    for name in ["ann", "ben", "cat", "dora"] {
        users.push(http.register(name).await);
    }
    let [(_, ann), (ben_id, ben), (cat_id, cat), (dora_id, dora)] = &users[..] else {
        unreachable!()
    };
    let response = http
        .post(
            "/api/v1/conversations",
            ann,
            json!({"kind": "group", "title": "Team", "members": [ben_id, cat_id]}),
        )
        .await;
    assert_eq!(response.status, 201, "{response:?}");
    let team = response.json()["id"].as_str().unwrap().to_owned();
    let direct = http.direct(ann, dora_id).await;
    say(&http, ann, &team, "t1", "The budget is due Friday").await;
    say(&http, ben, &team, "t2", "budgets again?").await;
    say(&http, dora, &direct, "d1", "my budget, privately").await;
    http.wait_for_history(ann, &team, 2).await;
    http.wait_for_history(ann, &direct, 1).await;

    let everything = [(direct.clone(), 1), (team.clone(), 1), (team.clone(), 2)];
    let mut expected = everything.to_vec();
    expected.sort();
    assert_eq!(hits(&search(&http, Some(ann), "q=budget").await), expected);
    let mut team_only = vec![(team.clone(), 1), (team.clone(), 2)];
    team_only.sort();
    assert_eq!(hits(&search(&http, Some(ben), "q=budget").await), team_only);
    assert_eq!(
        hits(&search(&http, Some(dora), "q=budget").await),
        [(direct.clone(), 1)]
    );

    // A conversation the caller is not in: the same not_found as for one that does not
    // exist, or for a malformed id.
    for id in [
        team.as_str(),
        "0190f5f0-0000-7000-8000-000000000000",
        "nonsense",
    ] {
        let (status, body) =
            search(&http, Some(dora), &format!("q=budget&conversation_id={id}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{id}"
        );
    }
    assert_eq!(
        hits(
            &search(
                &http,
                Some(ben),
                &format!("q=budget&conversation_id={team}")
            )
            .await
        ),
        team_only
    );

    // Logged out: nothing.
    let (status, _) = search(&http, None, "q=budget").await;
    assert_eq!(status, 401);

    // Removed: nothing of the group any more, from before the removal or after it.
    let response = http
        .post(
            &format!("/api/v1/conversations/{team}/events"),
            ann,
            json!({"client_msg_id": "rm", "kind": "member_removed", "user_id": cat_id}),
        )
        .await;
    assert_eq!(response.status, 202, "{response:?}");
    say(&http, ann, &team, "t3", "budget after cat left").await;
    http.wait_for_history(ann, &team, 3).await;
    assert_eq!(hits(&search(&http, Some(cat), "q=budget").await), []);
    let (status, _) = search(
        &http,
        Some(cat),
        &format!("q=budget&conversation_id={team}"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(hits(&search(&http, Some(ben), "q=budget").await).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_refused_with_a_reason() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let long = "a".repeat(201);
    for query in [
        "",
        "q=",
        "q=%20%3F%21",
        &format!("q={long}"),
        "q=x&limit=0",
        "q=x&limit=51",
        "q=x&limit=many",
        "q=x&sort=best",
        "q=x&cursor=abc",
        "q=x&cursor=1000000",
        "q=x&after=yesterday",
        "q=x&before=2026-13-01T00:00:00Z",
        "q=x&sender_id=bob",
    ] {
        let (status, body) = search(&http, Some(&ann), query).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_input")),
            "{query}: {body}"
        );
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    let (status, body) = search(
        &http,
        Some(&ann),
        "q=x&after=2026-01-01T00:00:00Z&sort=recent&limit=50",
    )
    .await;
    assert_eq!(
        (status, body["hits"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert!(body.get("next_cursor").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_follow_the_cursor_and_an_edit_is_found_at_once() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let (ben_id, ben) = http.register("ben").await;
    let chat = http.direct(&ann, &ben_id).await;
    for n in 1..=25 {
        say(
            &http,
            &ann,
            &chat,
            &format!("m{n}"),
            &format!("weekly report number {n}"),
        )
        .await;
    }
    http.wait_for_history(&ben, &chat, 25).await;

    let mut seen = Vec::new();
    let mut query = "q=weekly%20rep&sort=recent&limit=10".to_owned();
    let mut pages = 0;
    loop {
        let answer = search(&http, Some(&ben), &query).await;
        pages += 1;
        let page = answer.1["hits"].as_array().unwrap().clone();
        for hit in &page {
            seen.push(hit["seq"].as_u64().unwrap());
            let marked: Vec<&str> = hit["snippet"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|part| part["hit"] == true)
                .map(|part| part["text"].as_str().unwrap())
                .collect();
            assert_eq!(marked, ["weekly", "report"], "{hit}");
        }
        match answer.1["next_cursor"].as_str() {
            Some(cursor) => query = format!("q=weekly%20rep&sort=recent&limit=10&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (1..=25).rev().collect::<Vec<u64>>(),
        "newest first, each once"
    );

    let response = http
        .post(
            &format!("/api/v1/conversations/{chat}/events"),
            &ann,
            json!({"client_msg_id": "e1", "kind": "edit", "target_seq": 7, "body": "quarterly summary"}),
        )
        .await;
    assert_eq!(response.status, 202, "{response:?}");
    for _ in 0..400 {
        if hits(&search(&http, Some(&ben), "q=quarterly").await) == [(chat.clone(), 7)] {
            let (_, body) = search(&http, Some(&ben), "q=quarterly").await;
            assert!(body["hits"][0]["edited_at"].is_string(), "{body}");
            assert_eq!(
                hits(&search(&http, Some(&ben), "q=weekly&limit=50").await).len(),
                24
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("the edit was never found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_are_rate_limited_per_user() {
    let dir = TempDir::new().unwrap();
    let limits = [
        ("PARLOR_SEARCHES_PER_SECOND_PER_USER", "5"),
        ("PARLOR_SEARCHES_BURST_PER_USER", "20"),
    ];
    let server = Server::start(dir.path(), &[], &limits);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let mut limited = None;
    for _ in 0..40 {
        let (status, body) = search(&http, Some(&ann), "q=anything").await;
        if status == 429 {
            limited = Some(body);
            break;
        }
        assert_eq!(status, 200);
    }
    let body = limited.expect("a burst of 40 searches is limited");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{body}"
    );
    // Another user is not held back by ann's searches.
    let (_, ben) = http.register("ben").await;
    assert_eq!(search(&http, Some(&ben), "q=anything").await.0, 200);
}
