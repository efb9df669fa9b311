//! The admin commands that are not about dead letters.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::harness::{BIN, Server};

#[tokio::test]
async fn user_add_creates_a_user_who_can_log_in_while_parlor_runs() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[], &[]);
    let add = |name: &str, password: &str| {
        let mut child = Command::new(BIN)
            .args(["user", "add", name, "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let added = add("erin", "a long enough password");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let user: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(user["username"], "erin");

    let login = server
        .http()
        .request(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "erin", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(login.status, 200);

    let taken = add("ERIN", "another long password");
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("taken"));
    let weak = add("frank", "short");
    assert!(!weak.status.success());
}

#[test]
fn config_prints_the_effective_values_with_flags_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parlor.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9000\"\nattempts_max = 4\nbody_bytes_max = 1000\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["config", "--config"])
        .arg(&file)
        .args(["--body-bytes-max", "2000"])
        .env("PARLOR_ATTEMPTS_MAX", "6")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("127.0.0.1:9000"), "{printed}");
    assert!(printed.contains("attempts_max: 6"), "{printed}");
    assert!(printed.contains("body_bytes_max: 2000"), "{printed}");

    std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nno_such_setting = 1\n").unwrap();
    let output = Command::new(BIN)
        .args(["config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_setting"));
}
