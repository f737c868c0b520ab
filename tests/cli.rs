//! The `wsbridge` binary as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `wsbridge ARGS`, waits for its "listening on http://ADDR" log line, returns the
/// child and ADDR.
#[expect(
    clippy::zombie_processes,
    reason = "every caller waits for the child in `terminate`"
)]
fn start(args: &[&str]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(args)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < common::PATIENCE,
            "no listening line in time"
        );
        let line = lines
            .next()
            .expect("stderr closed before the listening line")
            .unwrap();
        if let Some(at) = line.find("listening on http://") {
            let addr = line[at + "listening on http://".len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned();
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, addr);
        }
    }
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < common::PATIENCE,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn simulate_serves_on_the_logged_address_and_exits_cleanly_on_sigterm() {
    let (mut child, addr) = start(&["simulate", "--listen", "127.0.0.1:0"]);
    let reply = common::post_json(
        &format!("http://{addr}/v1"),
        &serde_json::json!({"model": "m", "input": "hi"}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(common::output_text(&reply.json()).starts_with("You said: hi."));
    let status = terminate(&mut child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_bad_configuration_exits_with_status_64_and_says_why() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["simulate", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("simulator.listen"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["simulate"])
        .env("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "warp")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
}

#[tokio::test]
async fn serve_answers_healthz_and_the_health_probe_agrees() {
    let (mut child, addr) = start(&["serve", "--listen", "127.0.0.1:0"]);
    let reply = common::request("GET", &format!("http://{addr}/healthz"), None, None).await;
    assert_eq!(reply.status, 200);
    let probe = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_wsbridge"))
            .args(["health", "--url", &url])
            .status()
            .unwrap()
    };
    assert!(probe(format!("http://{addr}/healthz")).success());
    assert!(!probe(format!("http://{addr}/nope")).success());
    assert_eq!(terminate(&mut child).code(), Some(0));
    assert!(
        !probe(format!("http://{addr}/healthz")).success(),
        "nothing listens after exit"
    );
}
