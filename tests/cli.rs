//! The `wsbridge` binary as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `wsbridge ARGS`, waits for its "listening on http://ADDR" log line, returns the
/// child and ADDR.
fn start(args: &[&str]) -> (std::process::Child, String) {
    start_with(args, &[])
}

/// [`start`] with extra environment variables.
#[expect(
    clippy::zombie_processes,
    reason = "every caller waits for the child in `terminate` or `wait_exit`"
)]
fn start_with(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(args)
        .envs(env.iter().copied())
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
    send_sigterm(child);
    wait_exit(child)
}

fn send_sigterm(child: &std::process::Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
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

#[tokio::test]
async fn serve_simulate_is_a_working_proxy_out_of_the_box() {
    let (mut child, addr) = start(&["serve", "--simulate", "--listen", "127.0.0.1:0"]);
    let reply = common::post_json(
        &format!("http://{addr}/v1"),
        &serde_json::json!({"model": "m", "input": "hi", "stream": true}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let events = reply.events();
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert!(common::output_text(common::final_response(&events)).starts_with("You said: hi."));
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[tokio::test]
async fn sigterm_during_a_stream_lets_the_stream_complete_then_exits_0() {
    use http_body_util::BodyExt;
    let (mut child, addr) = start_with(
        &["serve", "--simulate", "--listen", "127.0.0.1:0"],
        &[
            ("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom"),
            ("WSBRIDGE_SIMULATOR_LATENCY_PER_TOKEN_MS", "40"),
        ],
    );
    let body = serde_json::json!({"model": "m", "input": "slow", "stream": true, "metadata": {"sim_words": "20"}});
    let authorization = format!("Bearer {}", common::KEY);
    let response = common::send(
        "POST",
        &format!("http://{addr}/v1/responses"),
        &[("authorization", &authorization)],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(common::PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut text = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
    send_sigterm(&child);
    let rest = tokio::time::timeout(common::PATIENCE, body.collect())
        .await
        .unwrap()
        .unwrap();
    text.push_str(std::str::from_utf8(&rest.to_bytes()).unwrap());
    let events = common::parse_sse(&text);
    assert_eq!(
        events.last().unwrap()["type"],
        "response.completed",
        "the stream finished"
    );
    assert!(events.len() > 20);
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn inject_mode_on_a_public_address_without_client_tokens_refuses_to_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("WSBRIDGE_AUTH_MODE", "inject")
        .env("OPENAI_API_KEY", "sk-secret-value")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("auth.client_tokens"), "{stderr}");
    assert!(
        !stderr.contains("sk-secret-value"),
        "the key is never printed"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("WSBRIDGE_AUTH_MODE", "inject")
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("OPENAI_API_KEY"));
}
