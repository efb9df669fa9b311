//! Files end to end on the embedded server: upload, attach, download; who may read what
//! (owner, member, stranger, removed member, logged out); bad input; ranges and headers; a
//! deleted message's file and its blob gone; kill -9 during an upload.

use std::time::Duration;

use parlor_testkit::images;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Http, Response, Server};

async fn upload(http: &Http, token: &str, name: &str, bytes: &[u8]) -> Response {
    let auth = format!("Bearer {token}");
    let path = format!("/api/v1/files?name={}", encode(name));
    http.raw(
        "POST",
        &path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        bytes,
    )
    .await
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn uploaded(http: &Http, token: &str, name: &str, bytes: &[u8]) -> Value {
    let response = upload(http, token, name, bytes).await;
    assert_eq!(response.status, 201, "{response:?}");
    response.json()["file"].clone()
}

async fn get(http: &Http, token: Option<&str>, path: &str, headers: &[(&str, &str)]) -> Response {
    let auth = token.map(|token| format!("Bearer {token}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(auth) = &auth {
        all.push(("Authorization", auth));
    }
    http.raw("GET", path, &all, &[]).await
}

async fn send_files(http: &Http, token: &str, conversation: &str, id: &str, files: &[&Value]) {
    let ids: Vec<&Value> = files.iter().map(|file| &file["id"]).collect();
    let response = http
        .post(
            &format!("/api/v1/conversations/{conversation}/messages"),
            token,
            json!({"client_msg_id": id, "body": "", "files": ids}),
        )
        .await;
    assert_eq!(response.status, 202, "{response:?}");
}

fn file_path(file: &Value) -> String {
    format!("/api/v1/files/{}", file["id"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_uploaded_attached_and_read_by_members_only() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let (ben_id, ben) = http.register("ben").await;
    let (cat_id, cat) = http.register("cat").await;
    let (_, dan) = http.register("dan").await;
    let response = http
        .post(
            "/api/v1/conversations",
            &ann,
            json!({"kind": "group", "title": "Team", "members": [ben_id, cat_id]}),
        )
        .await;
    let team = response.json()["id"].as_str().unwrap().to_owned();

    let png = images::png(640, 480);
    let photo = uploaded(&http, &ann, "holiday.png", &png).await;
    assert_eq!(photo["content_type"], "image/png");
    assert_eq!(photo["size"], png.len());
    assert_eq!(photo["image"], json!({"width": 640, "height": 480}));
    assert_eq!(photo["name"], "holiday.png");
    let path = file_path(&photo);

    // Before it is attached: its uploader's alone.
    assert_eq!(get(&http, Some(&ann), &path, &[]).await.status, 200);
    assert_eq!(get(&http, Some(&ben), &path, &[]).await.status, 404);

    send_files(&http, &ann, &team, "m1", &[&photo]).await;
    let history = http.wait_for_history(&ben, &team, 1).await;
    assert_eq!(history[0]["files"], json!([photo.clone()]));

    let thumbnail = format!("{path}/thumbnail");
    // The authorisation table: who reads the file and its thumbnail.
    let table: [(Option<&str>, u16, &str); 5] = [
        (Some(&ann), 200, "its uploader"),
        (Some(&ben), 200, "a member"),
        (Some(&cat), 200, "another member"),
        (Some(&dan), 404, "a stranger"),
        (None, 401, "logged out"),
    ];
    for (token, status, who) in table {
        assert_eq!(get(&http, token, &path, &[]).await.status, status, "{who}");
        assert_eq!(
            get(&http, token, &thumbnail, &[]).await.status,
            status,
            "{who}"
        );
    }
    let read = get(&http, Some(&ben), &path, &[]).await;
    assert_eq!(read.body, png, "the bytes as uploaded");
    assert_eq!(read.header("content-type"), Some("image/png"));
    assert!(
        read.header("content-disposition")
            .unwrap()
            .starts_with("inline")
    );
    assert_eq!(read.header("x-content-type-options"), Some("nosniff"));
    assert!(
        read.header("content-security-policy")
            .unwrap()
            .contains("sandbox")
    );
    let small = get(&http, Some(&ben), &thumbnail, &[]).await;
    assert_eq!(small.header("content-type"), Some("image/jpeg"));
    assert!(
        small.body.len() < png.len() / 10,
        "{} bytes",
        small.body.len()
    );

    // An unknown or malformed id is the same 404.
    for path in [
        "/api/v1/files/0190f5f0-0000-7000-8000-000000000000".to_owned(),
        "/api/v1/files/nonsense".to_owned(),
    ] {
        assert_eq!(get(&http, Some(&ann), &path, &[]).await.status, 404);
    }

    // Removed: at once, as for the conversation's history.
    let response = http
        .post(
            &format!("/api/v1/conversations/{team}/events"),
            &ann,
            json!({"client_msg_id": "rm", "kind": "member_removed", "user_id": cat_id}),
        )
        .await;
    assert_eq!(response.status, 202);
    for _ in 0..200 {
        if get(&http, Some(&cat), &path, &[]).await.status == 404 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("a removed member still reads the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_files_download_as_attachments_with_ranges() {
    let dir = TempDir::new().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let text = b"<html><script>alert(1)</script></html>".repeat(100);
    let page = uploaded(&http, &ann, "page.html", &text).await;
    assert_eq!(
        page["content_type"], "text/plain; charset=utf-8",
        "never served as HTML"
    );
    assert!(page.get("image").is_none());
    let path = file_path(&page);

    let whole = get(&http, Some(&ann), &path, &[]).await;
    assert_eq!(whole.status, 200);
    let disposition = whole.header("content-disposition").unwrap();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    assert!(disposition.contains("page.html"), "{disposition}");
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));

    let part = get(&http, Some(&ann), &path, &[("Range", "bytes=10-19")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, text[10..20]);
    let total = text.len();
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-19/{total}").as_str())
    );
    let tail = get(&http, Some(&ann), &path, &[("Range", "bytes=-5")]).await;
    assert_eq!((tail.status, &tail.body[..]), (206, &text[total - 5..]));
    let open = get(&http, Some(&ann), &path, &[("Range", "bytes=3700-")]).await;
    assert_eq!((open.status, &open.body[..]), (206, &text[3700..]));
    let past = get(&http, Some(&ann), &path, &[("Range", "bytes=99999-")]).await;
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{total}").as_str())
    );
    let etag = whole.header("etag").unwrap().to_owned();
    let cached = get(&http, Some(&ann), &path, &[("If-None-Match", &etag)]).await;
    assert_eq!(cached.status, 304);

    // An image downloads as an attachment when asked.
    let png = uploaded(&http, &ann, "a.png", &images::png(8, 8)).await;
    let asked = get(
        &http,
        Some(&ann),
        &format!("{}?download=1", file_path(&png)),
        &[],
    )
    .await;
    assert!(
        asked
            .header("content-disposition")
            .unwrap()
            .starts_with("attachment")
    );
    // No thumbnail for a file that is not an image.
    let none = get(&http, Some(&ann), &format!("{path}/thumbnail"), &[]).await;
    assert_eq!(none.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_a_reason_and_names_are_cleaned() {
    let dir = TempDir::new().unwrap();
    let limits = [
        ("PARLOR_FILE_BYTES_MAX", "100000"),
        ("PARLOR_FILE_QUOTA_BYTES", "250000"),
    ];
    let server = Server::start(dir.path(), &[], &limits);
    let http = server.http();
    let (_, ann) = http.register("ann").await;

    let refused = |response: Response, status: u16, code: &str| {
        assert_eq!(response.status, status, "{response:?}");
        assert_eq!(response.json()["error"]["code"], code, "{response:?}");
    };
    refused(
        upload(&http, &ann, "empty.txt", b"").await,
        400,
        "invalid_input",
    );
    refused(
        upload(&http, &ann, "big.bin", &vec![7u8; 100_001]).await,
        413,
        "body_too_large",
    );
    refused(upload(&http, &ann, "///", b"x").await, 400, "invalid_input");
    refused(
        upload(&http, &ann, "\u{0}\u{7}", b"x").await,
        400,
        "invalid_input",
    );
    let no_name = http
        .raw(
            "POST",
            "/api/v1/files",
            &[("Authorization", &format!("Bearer {ann}"))],
            b"x",
        )
        .await;
    refused(no_name, 400, "invalid_input");
    // A decompression bomb: a small file declaring a 100000 × 100000 image.
    let bomb = images::png_declaring(100_000, 100_000);
    assert!(bomb.len() < 1_000);
    refused(
        upload(&http, &ann, "bomb.png", &bomb).await,
        400,
        "invalid_input",
    );
    // Logged out, and a cookie without the CSRF header.
    let anonymous = http.raw("POST", "/api/v1/files?name=a", &[], b"x").await;
    assert_eq!(anonymous.status, 401);
    let cookie = format!("parlor_session={ann}");
    let forged = http
        .raw("POST", "/api/v1/files?name=a", &[("Cookie", &cookie)], b"x")
        .await;
    assert_eq!(forged.status, 403);

    // Names: the path, controls and direction overrides go; a long one is cut.
    let cleaned = uploaded(&http, &ann, "../../etc/pass\u{202e}wd\u{1}.txt", b"hi").await;
    assert_eq!(cleaned["name"], "passwd.txt");
    let windows = uploaded(&http, &ann, "C:\\Users\\ann\\notes.txt", b"hi").await;
    assert_eq!(windows["name"], "notes.txt");
    let long = format!("{}.txt", "é".repeat(1_000));
    let cut = uploaded(&http, &ann, &long, b"hi").await;
    let name = cut["name"].as_str().unwrap();
    assert!(name.len() <= 255 && name.ends_with(".txt"), "{name}");

    // A file that says it is an image and is not: kept as what it is.
    let liar = uploaded(&http, &ann, "photo.png", b"just some text").await;
    assert_eq!(liar["content_type"], "text/plain; charset=utf-8");
    assert!(liar.get("image").is_none());
    let mut broken = images::png(16, 16);
    broken.truncate(60);
    let broken = uploaded(&http, &ann, "broken.png", &broken).await;
    assert_eq!(broken["content_type"], "application/octet-stream");
    assert!(broken.get("image").is_none());

    // The quota: 250,000 bytes in all.
    uploaded(&http, &ann, "a.bin", &vec![1u8; 99_000]).await;
    uploaded(&http, &ann, "b.bin", &vec![2u8; 99_000]).await;
    refused(
        upload(&http, &ann, "c.bin", &vec![3u8; 99_000]).await,
        409,
        "quota_exceeded",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_carries_its_files_and_deleting_it_deletes_them() {
    let dir = TempDir::new().unwrap();
    let fast_janitor = [
        ("PARLOR_JANITOR_INTERVAL_SECS", "1"),
        ("PARLOR_BLOB_GRACE_SECS", "0"),
    ];
    let server = Server::start(dir.path(), &[], &fast_janitor);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let (ben_id, ben) = http.register("ben").await;
    let chat = http.direct(&ann, &ben_id).await;
    let mut ben_ws = crate::harness::Ws::connect(&server.address, &ben).await;

    let report = uploaded(&http, &ann, "report.pdf", b"%PDF-1.7 report").await;
    let photo = uploaded(&http, &ann, "p.png", &images::png(32, 32)).await;
    assert_eq!(report["content_type"], "application/pdf");
    send_files(&http, &ann, &chat, "m1", &[&photo, &report]).await;
    let frame = ben_ws.next_of("message").await;
    assert_eq!(
        frame["message"]["files"],
        json!([photo.clone(), report.clone()])
    );

    // Attached once: a second message with the same file is refused.
    let again = http
        .post(
            &format!("/api/v1/conversations/{chat}/messages"),
            &ann,
            json!({"client_msg_id": "m2", "body": "again", "files": [report["id"]]}),
        )
        .await;
    assert_eq!(again.json()["error"]["code"], "conflict", "{again:?}");
    // Someone else's upload cannot be attached.
    let bens = uploaded(&http, &ben, "mine.txt", b"mine").await;
    let stolen = http
        .post(
            &format!("/api/v1/conversations/{chat}/messages"),
            &ann,
            json!({"client_msg_id": "m3", "body": "look", "files": [bens["id"]]}),
        )
        .await;
    assert_eq!(stolen.json()["error"]["code"], "not_found", "{stolen:?}");
    let too_many: Vec<Value> = (0..11).map(|_| json!(uuid::Uuid::now_v7())).collect();
    let crowded = http
        .post(
            &format!("/api/v1/conversations/{chat}/messages"),
            &ann,
            json!({"client_msg_id": "m4", "body": "", "files": too_many}),
        )
        .await;
    assert_eq!(
        crowded.json()["error"]["code"],
        "invalid_input",
        "{crowded:?}"
    );

    let blobs = dir.path().join("blobs");
    // Stored blobs, not copies in progress (in `blobs/.tmp`).
    let blob_files = || {
        walk(&blobs)
            .into_iter()
            .filter(|path| !path.strip_prefix(&blobs).unwrap().starts_with(".tmp"))
            .count()
    };
    // The report, the photo and its thumbnail, and ben's upload.
    assert_eq!(blob_files(), 4);

    let delete = http
        .post(
            &format!("/api/v1/conversations/{chat}/events"),
            &ann,
            json!({"client_msg_id": "d1", "kind": "delete", "target_seq": 1}),
        )
        .await;
    assert_eq!(delete.status, 202);
    for _ in 0..200 {
        let gone = get(&http, Some(&ben), &file_path(&report), &[])
            .await
            .status
            == 404;
        if gone && blob_files() == 1 {
            let history = http.history(&ben, &chat).await;
            assert!(history[0].get("files").is_none(), "{:?}", history[0]);
            assert_eq!(
                get(&http, Some(&ann), &file_path(&photo), &[]).await.status,
                404
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the deleted message's files or blobs are still there");
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_upload_keeps_what_was_accepted_and_leaves_nothing_half_done() {
    let dir = TempDir::new().unwrap();
    let mut server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    let (_, ann) = http.register("ann").await;
    let (ben_id, ben) = http.register("ben").await;
    let chat = http.direct(&ann, &ben_id).await;
    let bytes: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    let kept = uploaded(&http, &ann, "kept.bin", &bytes).await;
    send_files(&http, &ann, &chat, "m1", &[&kept]).await;

    // An upload that is cut off by the kill: its head is sent, then nothing.
    let address = server.address.clone();
    let token = ann.clone();
    let cut = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /api/v1/files?name=cut.bin HTTP/1.1\r\nHost: {address}\r\n\
             Authorization: Bearer {token}\r\nContent-Length: 10000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![9u8; 500_000]).await.unwrap();
        let _ = stream.flush().await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let uploads = dir.path().join("uploads");
    for _ in 0..200 {
        if walk(&uploads)
            .iter()
            .any(|path| std::fs::metadata(path).is_ok_and(|meta| meta.len() > 0))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        !walk(&uploads).is_empty(),
        "the cut upload was being staged"
    );
    server.kill();
    cut.abort();

    let server = Server::start(dir.path(), &[], &[]);
    let http = server.http();
    assert!(
        walk(&uploads).is_empty(),
        "a cut-off upload is cleared at start"
    );
    let history = http.wait_for_history(&ben, &chat, 1).await;
    assert_eq!(history[0]["files"], json!([kept.clone()]));
    let read = get(&http, Some(&ben), &file_path(&kept), &[]).await;
    assert_eq!(
        read.body, bytes,
        "the accepted file's bytes survive kill -9"
    );
}
