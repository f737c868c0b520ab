//! The upstream over TLS, as every real deployment reaches it: the simulator behind a TLS
//! terminator whose certificate a private CA (made at test time) signed, the proxy pointed at
//! `https://localhost:PORT/v1`. Trusted through `upstream.ca_file` or, in child processes,
//! `SSL_CERT_FILE` with the OS store; refused with only the built-in roots.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::process::Command;

use serde_json::{Value, json};
use wsbridge::Proxy;
use wsbridge::config::{Config, Sources};
use wsbridge::simulator::stats::Transport;

use common::child::{serve, stop};
use common::tls::{Pki, Terminator};
use common::{KEY, output_text, post_json, request};

/// README's "Custom CA" configuration, with the port and the CA file of this test.
fn readme_custom_ca_config(port: u16, ca_file: &std::path::Path) -> String {
    let readme = include_str!("../README.md");
    let section = &readme[readme
        .find("### Custom CA")
        .expect("README has a Custom CA section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    assert!(block.contains("localhost:18443") && block.contains("\"ca.pem\""));
    block
        .replace("localhost:18443", &format!("localhost:{port}"))
        .replace(
            "\"ca.pem\"",
            &format!("{:?}", ca_file.display().to_string()),
        )
}

/// A simulator behind a TLS terminator.
async fn tls_upstream(name: &str) -> (wsbridge::simulator::SimulatorHandle, Pki, Terminator) {
    let sim = common::default_simulator().await;
    let pki = Pki::new(name);
    let terminator = Terminator::start(&pki, sim.addr()).await;
    (sim, pki, terminator)
}

#[tokio::test]
async fn streams_continuations_and_pass_through_work_over_tls_with_ca_file() {
    let (sim, pki, terminator) = tls_upstream("ca-file").await;
    let dir = pki.ca_file.parent().unwrap();
    let file = dir.join("custom-ca.toml");
    std::fs::write(
        &file,
        readme_custom_ca_config(terminator.addr.port(), &pki.ca_file),
    )
    .unwrap();
    let mut config = Config::load(Sources {
        file: Some(file),
        ..Sources::default()
    })
    .unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.pool.min_idle = 0;
    let proxy = Proxy::start(config).await.unwrap();
    let base = proxy.base_url();

    let streamed = post_json(&base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    let events = streamed.events();
    assert_eq!(events.last().unwrap()["type"], "response.completed");

    // A continuation chain: the second turn resends the whole history and is continued.
    let mut input = vec![json!({"role": "user", "content": "hi"})];
    let first = post_json(&base, &json!({"model": "m", "input": input})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let answer = first.json();
    assert!(output_text(&answer).starts_with("You said: hi."));
    input.extend(answer["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"role": "user", "content": "and then?"}));
    let second = post_json(
        &base,
        &json!({"model": "m", "input": input, "stream": false}),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.headers["x-wsbridge-continuation"], "continued");
    assert!(output_text(&second.json()).starts_with("You said: and then?"));

    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    assert_eq!(models.status, 200, "{}", models.body);
    assert!(models.json()["data"].is_array());

    let stats = sim.stats();
    let ws = stats.turns.iter().filter(|t| t.transport == Transport::Ws);
    assert_eq!(ws.count(), 3, "every turn went over the WebSocket");
    assert!(
        terminator.handshakes() >= 2,
        "a socket and a REST connection"
    );
    assert_eq!(terminator.refused(), 0);
    proxy.shutdown().await;
}

/// One streamed turn and one pass-through request through a `wsbridge serve` child.
async fn turn_and_models(base: &str) -> (common::Reply, common::Reply) {
    let turn = post_json(base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    (turn, models)
}

#[tokio::test]
async fn ssl_cert_file_is_trusted_with_native_and_both_roots() {
    let (_sim, pki, terminator) = tls_upstream("native").await;
    let ca_file = pki.ca_file.display().to_string();
    for roots in ["native", "both"] {
        let env = [
            ("SSL_CERT_FILE", ca_file.as_str()),
            ("WSBRIDGE_UPSTREAM_TLS_ROOTS", roots),
        ];
        let (child, base, log) = serve(&terminator.base_url(), &env).await;
        let (turn, models) = turn_and_models(&base).await;
        let log = log.lock().unwrap().join("\n");
        assert_eq!(turn.status, 200, "{roots}: {}\n{log}", turn.body);
        assert_eq!(turn.events().last().unwrap()["type"], "response.completed");
        assert_eq!(models.status, 200, "{roots}: {}\n{log}", models.body);
        stop(child);
    }
    assert_eq!(terminator.refused(), 0);
}

/// The 502's message and the warn line, both naming the cause.
fn assert_untrusted(reply: &common::Reply, log: &[String], what: &str) {
    assert_eq!(reply.status, 502, "{what}: {}", reply.body);
    let error: &Value = &reply.json()["error"];
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{what}: {message}"
    );
    assert_eq!(error["code"], "upstream_unreachable");
    assert!(
        log.iter()
            .any(|line| line.contains("WARN") && line.contains("UnknownIssuer")),
        "{what}: {log:?}"
    );
}

#[tokio::test]
async fn the_built_in_roots_alone_refuse_the_private_ca_with_a_502_naming_the_cause() {
    let (sim, pki, terminator) = tls_upstream("untrusted").await;
    let ca_file = pki.ca_file.display().to_string();
    // SSL_CERT_FILE is set but `webpki` does not read the OS store.
    let env = [
        ("SSL_CERT_FILE", ca_file.as_str()),
        ("WSBRIDGE_UPSTREAM_TLS_ROOTS", "webpki"),
        ("WSBRIDGE_POOL_MIN_IDLE", "0"),
    ];
    let (child, base, log) = serve(&terminator.base_url(), &env).await;
    // Each request checked on its own: the warning must come from its own path.
    let turn = post_json(&base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    assert_untrusted(&turn, &log.lock().unwrap().clone(), "bridged turn");
    assert_eq!(
        terminator.refused(),
        1,
        "a refused certificate is not retried: another attempt meets the same certificate"
    );
    log.lock().unwrap().clear();
    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    assert_untrusted(&models, &log.lock().unwrap().clone(), "pass-through");
    assert_eq!(terminator.refused(), 2);
    assert_eq!(terminator.handshakes(), 0);
    assert!(sim.stats().turns.is_empty(), "nothing reached the upstream");
    stop(child);
}

#[test]
fn a_ca_file_that_cannot_be_read_stops_the_start_naming_the_key_and_path() {
    let missing = std::env::temp_dir().join("wsbridge-no-such-ca.pem");
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("WSBRIDGE_UPSTREAM_CA_FILE", &missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("upstream.ca_file"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn an_unreadable_os_store_stops_native_and_is_a_warning_with_both() {
    let missing = std::env::temp_dir().join("wsbridge-no-such-bundle.pem");
    let missing = missing.display().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("SSL_CERT_DIR")
        .env("SSL_CERT_FILE", &missing)
        .env("WSBRIDGE_UPSTREAM_TLS_ROOTS", "native")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("upstream.tls_roots = \"native\" found no usable certificate"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&missing),
        "the unread file is named: {stderr}"
    );

    // With `both`, the built-in roots remain: the proxy starts and says what it could not read.
    let (child, _base, log) = serve(
        "https://localhost:1/v1",
        &[
            ("SSL_CERT_FILE", &missing),
            ("WSBRIDGE_UPSTREAM_TLS_ROOTS", "both"),
        ],
    )
    .await;
    let log = log.lock().unwrap().join("\n");
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("OS trust store could not be read")
            && line.contains(&missing)),
        "{log}"
    );
    stop(child);
}
