//! The `wsbridge` binary as a user runs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]
#![allow(
    clippy::disallowed_types,
    reason = "child processes run on the wall clock, which no runtime can pause"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts `wsbridge ARGS`, waits for its "listening on http://ADDR" log line, returns the
/// child and ADDR.
fn start(args: &[&str]) -> (std::process::Child, String) {
    start_with(args, &[])
}

/// [`start`] with extra environment variables.
fn start_with(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String) {
    let (child, addr, _) = start_logged(args, env);
    (child, addr)
}

/// Every stderr line a child printed, as it goes.
type Log = Arc<Mutex<Vec<String>>>;

/// [`start_with`], keeping what the child logs.
#[expect(
    clippy::zombie_processes,
    reason = "every caller waits for the child in `terminate` or `wait_exit`"
)]
fn start_logged(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, String, Log) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let started = Instant::now();
    let mut before = Vec::new();
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
            before.push(line.clone());
            let log = Log::new(Mutex::new(before));
            let kept = log.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    kept.lock().unwrap().push(line);
                }
            });
            return (child, addr, log);
        }
        before.push(line);
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
            .output()
            .unwrap()
    };
    assert!(probe(format!("http://{addr}/healthz")).status.success());
    let failed = probe(format!("http://{addr}/nope"));
    assert!(!failed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&failed.stderr),
        format!("wsbridge health: http://{addr}/nope answered 404\n")
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
    let refused = probe(format!("http://{addr}/healthz"));
    assert!(!refused.status.success(), "nothing listens after exit");
    assert!(
        String::from_utf8_lossy(&refused.stderr).starts_with("wsbridge health: "),
        "says why"
    );
}

#[tokio::test]
async fn health_without_a_url_probes_the_configured_listen_address() {
    let (mut child, addr) = start(&["serve", "--listen", "127.0.0.1:0"]);
    let probe = |env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_wsbridge"))
            .arg("health")
            .env_remove("WSBRIDGE_SERVER_LISTEN")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    // As in the container: the port comes from the environment (or the config file).
    assert!(probe(&[("WSBRIDGE_SERVER_LISTEN", &addr)]).status.success());
    let port = addr.rsplit(':').next().unwrap();
    let unspecified = format!("0.0.0.0:{port}");
    assert!(
        probe(&[("WSBRIDGE_SERVER_LISTEN", &unspecified)])
            .status
            .success(),
        "0.0.0.0 is probed on loopback"
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
    let after = probe(&[("WSBRIDGE_SERVER_LISTEN", &addr)]);
    assert!(!after.status.success());
    let bad = probe(&[("WSBRIDGE_SERVER_LISTEN", "nowhere")]);
    assert_eq!(
        bad.status.code(),
        Some(64),
        "a bad configuration is still 64"
    );
}

#[test]
fn a_bad_variable_value_names_the_key_the_variable_and_what_is_accepted() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("WSBRIDGE_POOL_MAX_SOCKETS", "abc")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "wsbridge: invalid value for `pool.max_sockets` (from environment variable \
         WSBRIDGE_POOL_MAX_SOCKETS): \"abc\" is not a whole number from 0 to 4294967295\n"
    );
}

#[test]
fn config_prints_the_upstream_its_profile_and_what_was_derived_without_secrets() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["--config", "/dev/null", "config"])
        .env(
            "WSBRIDGE_UPSTREAM_BASE_URL",
            "https://u:hunter2@ai-gateway.vercel.sh/v1?team=a",
        )
        .env("WSBRIDGE_POOL_MAX_AGE_SECS", "100")
        .env("WSBRIDGE_UPSTREAM_HEADERS", r#"{ OpenAI-Beta = "x" }"#)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    for line in [
        "upstream.base_url: https://ai-gateway.vercel.sh/v1?team=a",
        "upstream.websocket_url: wss://ai-gateway.vercel.sh/v1/responses?team=a",
        "upstream.profile: vercel (host ai-gateway.vercel.sh): pool.max_age_secs=100 set, \
         pool.idle_timeout_secs=240 derived, upstream.max_frame_bytes=4194304 derived",
        "upstream.auth_header: authorization",
        "upstream.headers: openai-beta",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in {text}");
    }
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn latency_figures_without_the_custom_profile_stop_the_simulator() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["simulate", "--listen", "127.0.0.1:0"])
        .env("WSBRIDGE_SIMULATOR_LATENCY_TTFT_MS", "300")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "`simulator.latency.ttft_ms` (from environment variable \
             WSBRIDGE_SIMULATOR_LATENCY_TTFT_MS): 300 has no effect"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_misspelt_variable_is_logged_as_a_warning() {
    let (mut child, _addr, log) = start_logged(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("WSBRIDGE_POOL_MAX_SOCKET", "4")],
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
    let lines = log.lock().unwrap().clone();
    assert!(
        lines.iter().any(|line| line.contains("WARN")
            && line.contains(
                "ignoring unknown environment variable WSBRIDGE_POOL_MAX_SOCKET (did you mean \
                 WSBRIDGE_POOL_MAX_SOCKETS?)"
            )),
        "{lines:?}"
    );
}

#[test]
fn help_shows_the_built_in_defaults() {
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    let defaults = wsbridge::config::RawConfig::default();
    for shown in [
        format!(
            "[default: {}; config server.listen]",
            defaults.server.listen
        ),
        format!(
            "[default: {}; config upstream.base_url]",
            defaults.upstream.base_url
        ),
        format!("[default: {}; config log.format]", defaults.log.format),
    ] {
        // clap wraps long help lines; compare with the whitespace folded.
        let folded = help.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(folded.contains(&shown), "{shown} not in:\n{help}");
    }
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
async fn with_no_subcommand_it_serves_as_the_config_file_says() {
    let dir = std::env::temp_dir().join(format!("wsbridge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("custom.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nmode = \"simulator\"\n",
    )
    .unwrap();
    let (mut child, addr) = start(&["--config", file.to_str().unwrap()]);
    let reply = common::post_json(
        &format!("http://{addr}/v1"),
        &serde_json::json!({"model": "m", "input": "from the file"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(common::output_text(&reply.json()).starts_with("You said: from the file."));
    assert_eq!(terminate(&mut child).code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_open_relay_starts_when_explicitly_allowed() {
    let (mut child, addr) = start_with(
        &["serve", "--simulate", "--listen", "0.0.0.0:0"],
        &[
            ("WSBRIDGE_AUTH_MODE", "inject"),
            ("WSBRIDGE_AUTH_ALLOW_OPEN_RELAY", "true"),
            ("OPENAI_API_KEY", "sk-injected"),
        ],
    );
    let port = addr.rsplit(':').next().unwrap();
    // No key from the client: the injected one is used.
    let reply = common::request(
        "POST",
        &format!("http://127.0.0.1:{port}/v1/responses"),
        None,
        Some(serde_json::json!({"model": "m", "input": "relay"}).to_string()),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_never_show_the_key() {
    const SECRET: &str = "sk-secret-never-logged-4242";
    let (mut child, addr, log) = start_logged(
        &[
            "--log-format",
            "json",
            "serve",
            "--simulate",
            "--listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "debug")],
    );
    let url = format!("http://{addr}/v1");
    // A clean turn, then one whose retries all fail (warnings with the credential in scope).
    for (body, status) in [
        (
            serde_json::json!({"model": "m", "input": "hi", "stream": true}),
            200,
        ),
        (
            serde_json::json!({"model": "m", "input": "hi", "metadata": {"sim_fault": "close_before_created"}}),
            502,
        ),
    ] {
        let reply = common::request(
            "POST",
            &format!("{url}/responses"),
            Some(SECRET),
            Some(body.to_string()),
        )
        .await;
        assert_eq!(reply.status, status, "{}", reply.body);
    }
    // A turn that breaks mid-stream: the warning is logged in that request's span.
    let broken = common::post_json(
        &url,
        &serde_json::json!({"model": "m", "input": "hi", "stream": true, "metadata": {"sim_fault": "close_mid_stream"}}),
    )
    .await;
    assert_eq!(broken.events().last().unwrap()["type"], "response.failed");
    let models = common::request("GET", &format!("{url}/models"), Some(SECRET), None).await;
    assert!(models.status < 500);
    assert_eq!(terminate(&mut child).code(), Some(0));
    let lines = log.lock().unwrap().clone();
    assert!(
        lines.len() > 5,
        "debug logging says what happened: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("\"upstream_socket\"") && line.contains("socket opened")),
        "socket events are logged in a per-socket span: {lines:?}"
    );
    let broke = lines
        .iter()
        .find(|line| line.contains("the upstream turn broke after it started"))
        .unwrap_or_else(|| panic!("the mid-stream failure is logged: {lines:?}"));
    let broke: serde_json::Value = serde_json::from_str(broke).unwrap();
    assert_eq!(broke["level"], "WARN");
    assert_eq!(broke["span"]["name"], "request", "{broke}");
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(
            event["level"].is_string() && event["fields"].is_object(),
            "{line}"
        );
        assert!(
            !line.contains(SECRET),
            "the key leaked into a log line: {line}"
        );
        assert!(
            !line.contains("secret-never"),
            "part of the key leaked: {line}"
        );
    }
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

/// Waits until `log` holds a line satisfying `found`, and returns it.
fn wait_for_line(log: &Log, found: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = log.lock().unwrap().iter().find(|line| found(line)) {
            return line.clone();
        }
        assert!(
            started.elapsed() < common::PATIENCE,
            "no such line: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn the_start_up_line_says_what_is_in_force_without_secrets() {
    let (mut child, _addr, log) = start_logged(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "https://user:hunter2@example.invalid/v1",
        ],
        &[
            ("WSBRIDGE_POOL_MAX_SOCKETS", "5"),
            ("WSBRIDGE_POOL_IDLE_TIMEOUT_SECS", "30"),
        ],
    );
    assert_eq!(terminate(&mut child).code(), Some(0));
    let line = wait_for_line(&log, |line| line.contains("listening on http://"));
    for shown in [
        " upstream=https://example.invalid/v1 ",
        " auth=passthrough ",
        " pool.min_idle=1 pool.max_sockets=5 ",
        " upstream.profile=openai (host example.invalid): pool.max_age_secs=3300 derived, \
         pool.idle_timeout_secs=30 set, upstream.max_frame_bytes=16777216 derived ",
        " upstream.auth_header=authorization ",
        " continuation=on (reasoning lenient, stored_on_any_socket false) ",
        " chat=bridge ",
        " + WSBRIDGE_POOL_MAX_SOCKETS ",
        " + WSBRIDGE_POOL_IDLE_TIMEOUT_SECS ",
        " + --listen + --upstream",
    ] {
        assert!(line.contains(shown), "{shown:?} not in {line}");
    }
    assert!(!line.contains("hunter2"), "{line}");
}

#[tokio::test]
async fn every_request_gets_an_access_line_with_its_request_id() {
    let (mut child, addr, log) = start_logged(
        &[
            "--log-format",
            "json",
            "serve",
            "--simulate",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let url = format!("http://{addr}/v1");
    let first = common::post_json(&url, &serde_json::json!({"model": "m", "input": "hi"})).await;
    assert_eq!(first.status, 200);
    let mut input = vec![serde_json::json!({"role": "user", "content": "hi"})];
    input.extend(first.json()["output"].as_array().unwrap().clone());
    input.push(serde_json::json!({"role": "user", "content": "and then?"}));
    let second = common::post_json(
        &url,
        &serde_json::json!({"model": "m", "input": input, "stream": true}),
    )
    .await;
    assert_eq!(second.headers["x-wsbridge-continuation"], "continued");
    let chat_url = format!("{url}/chat/completions");
    let chat = |body: serde_json::Value| {
        common::request("POST", &chat_url, Some(common::KEY), Some(body.to_string()))
    };
    let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
    let bridged = chat(serde_json::json!({"model": "m", "messages": messages})).await;
    let passed = chat(serde_json::json!({"model": "m", "messages": messages, "n": 2})).await;
    let refused = chat(serde_json::json!({"model": "m", "messages": []})).await;
    let health = common::request("GET", &format!("http://{addr}/healthz"), None, None).await;
    let models = common::request("GET", &format!("{url}/models"), Some(common::KEY), None).await;
    let line_of = |reply: &common::Reply| {
        let id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.starts_with("req_"), "{id}");
        let line = wait_for_line(&log, |line| {
            line.contains("wsbridge::access") && line.contains(&id)
        });
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(line["level"], "INFO");
        (id, line)
    };
    let access = |reply: &common::Reply| {
        let (id, line) = line_of(reply);
        assert_eq!(line["span"]["request_id"], id.as_str());
        line["fields"].clone()
    };
    // The first turn waited for its socket to connect; the continuation reused it.
    assert_eq!(access(&first)["socket"], "opened");
    let fields = access(&second);
    assert_eq!(fields["message"], "POST /v1/responses");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["route"], "responses");
    assert_eq!(fields["continuation"], "continued");
    assert_eq!(fields["socket"], "reused");
    assert_eq!(fields["bytes"], second.body.len() as u64);
    assert_eq!(fields["complete"], true);
    assert!(fields["ttfb_ms"].as_u64().unwrap() <= fields["duration_ms"].as_u64().unwrap());
    // Chat requests: the path each took.
    for (reply, route) in [
        (&bridged, "chat-bridged"),
        (&passed, "chat-passthrough"),
        (&refused, "chat"),
    ] {
        let fields = line_of(reply).1["fields"].clone();
        assert_eq!(fields["message"], "POST /v1/chat/completions");
        assert_eq!(fields["route"], route, "{}", reply.body);
    }
    assert_eq!(access(&bridged)["continuation"], "fresh");
    let fields = access(&health);
    assert_eq!(fields["message"], "GET /healthz");
    assert_eq!(fields["route"], "operations");
    assert_eq!(fields["continuation"], "-");
    assert_eq!(fields["socket"], "-");
    // A passed-through answer keeps the upstream's id; the span has it beside wsbridge's own.
    let (id, line) = line_of(&models);
    assert_eq!(line["span"]["upstream_request_id"], id.as_str());
    assert!(
        line["span"]["request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
    assert_ne!(line["span"]["request_id"], id.as_str());
    assert_eq!(line["fields"]["route"], "passthrough");
    assert_eq!(terminate(&mut child).code(), Some(0));
}

#[tokio::test]
async fn log_access_false_turns_the_access_lines_off() {
    let (mut child, addr, log) = start_logged(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("WSBRIDGE_LOG_ACCESS", "false")],
    );
    let health = common::request("GET", &format!("http://{addr}/healthz"), None, None).await;
    assert_eq!(health.status, 200);
    assert!(health.headers.contains_key("x-request-id"));
    assert_eq!(terminate(&mut child).code(), Some(0));
    wait_for_line(&log, |line| line.contains("shutting down"));
    let lines = log.lock().unwrap().clone();
    assert!(
        !lines.iter().any(|line| line.contains("wsbridge::access")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn under_simulate_the_models_endpoints_answer_with_the_simulators_model() {
    let (mut child, addr) = start(&["serve", "--simulate", "--listen", "127.0.0.1:0"]);
    let models = common::request(
        "GET",
        &format!("http://{addr}/v1/models"),
        Some(common::KEY),
        None,
    )
    .await;
    assert_eq!(models.status, 200, "{}", models.body);
    let list = models.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "gpt-sim");
    assert_eq!(list["data"][0]["object"], "model");
    let model = common::request(
        "GET",
        &format!("http://{addr}/v1/models/gpt-sim"),
        Some(common::KEY),
        None,
    )
    .await;
    assert_eq!(model.status, 200, "{}", model.body);
    assert_eq!(model.json()["id"], "gpt-sim");
    assert_eq!(terminate(&mut child).code(), Some(0));
}
