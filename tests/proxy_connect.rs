//! The upstream behind an outbound HTTP proxy, as on a corporate network: a CONNECT proxy in
//! the test (`common::connect_proxy`) that alone resolves the upstream's name
//! (`upstream.test`), so a connection that skipped it could not reach the upstream at all.
//! Configured with README's `upstream.proxy` (in-process) or its proxy variables (in a
//! `wsbridge serve` child with an environment of its own).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use serde_json::{Value, json};
use wsbridge::Proxy;
use wsbridge::config::{Config, Sources};
use wsbridge::simulator::SimulatorHandle;
use wsbridge::simulator::stats::Transport;

use common::child::{Log, serve, stop};
use common::connect_proxy::{ConnectProxy, UPSTREAM_NAME};
use common::tls::{Pki, Terminator};
use common::{KEY, Reply, output_text, post_json, request};

/// README's credentials, which the test proxy requires.
const README_CREDENTIALS: (&str, &str) = ("alice", "s3cret");
const README_PROXY: &str = "proxy.corp.example:3128";

/// The fenced block of `kind` in README's "Behind a corporate proxy" section.
fn readme_block(kind: &str) -> &'static str {
    let readme = include_str!("../README.md");
    let section = &readme[readme
        .find("### Behind a corporate proxy")
        .expect("README has a corporate proxy section")..];
    let fence = format!("```{kind}\n");
    let start = section.find(&fence).unwrap() + fence.len();
    &section[start..start + section[start..].find("```").unwrap()]
}

/// README's `upstream.proxy` configuration pointed at `proxy` and `base_url`, plus `extra`
/// `[upstream]` lines.
fn readme_config(proxy: &ConnectProxy, base_url: &str, extra: &str) -> Config {
    let block = readme_block("toml");
    assert!(block.contains(README_PROXY) && block.contains("alice:s3cret@"));
    let text = format!(
        "{}base_url = \"{base_url}\"\n{extra}",
        block.replace(README_PROXY, &proxy.addr.to_string())
    );
    let file = std::env::temp_dir().join(format!(
        "wsbridge-proxy-{}-{}.toml",
        std::process::id(),
        proxy.addr.port()
    ));
    std::fs::write(&file, text).unwrap();
    let mut config = Config::load(Sources {
        file: Some(file),
        ..Sources::default()
    })
    .unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.pool.min_idle = 0;
    config
}

/// README's variables, pointed at `proxy`.
fn readme_env(proxy: &ConnectProxy) -> Vec<(String, String)> {
    let line = readme_block("sh").trim();
    let (assignments, command) = line.split_at(line.find("wsbridge").unwrap());
    assert_eq!(command, "wsbridge serve");
    assignments
        .split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap();
            let value = value.replace(README_PROXY, &proxy.addr.to_string());
            (name.to_owned(), value)
        })
        .collect()
}

/// A streamed turn, a two-turn conversation (the second continued), pass-through requests
/// (`/models`, a chat request the bridge cannot translate) and a REST fallback (`background`),
/// all answered as without a proxy.
async fn converse(base: &str) {
    let streamed = post_json(base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert_eq!(
        streamed.events().last().unwrap()["type"],
        "response.completed"
    );
    let mut input = vec![json!({"role": "user", "content": "hi"})];
    let first = post_json(base, &json!({"model": "m", "input": input})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    input.extend(first.json()["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"role": "user", "content": "and then?"}));
    let second = post_json(base, &json!({"model": "m", "input": input})).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.headers["x-wsbridge-continuation"], "continued");
    assert!(output_text(&second.json()).starts_with("You said: and then?"));
    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    assert_eq!(models.status, 200, "{}", models.body);
    let chat = json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "hi"}]});
    let chat = request(
        "POST",
        &format!("{base}/chat/completions"),
        Some(KEY),
        Some(chat.to_string()),
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    assert_eq!(chat.headers["x-wsbridge-route"], "chat-passthrough");
    let background = json!({"model": "m", "input": "later", "background": true});
    let background = post_json(base, &background).await;
    assert_eq!(background.status, 200, "{}", background.body);
}

/// Turns the upstream served over REST (the fallback), not the WebSocket.
fn rest_turns(sim: &SimulatorHandle) -> usize {
    let stats = sim.stats();
    stats
        .turns
        .iter()
        .filter(|turn| turn.transport == Transport::Rest)
        .count()
}

fn ws_turns(sim: &SimulatorHandle) -> usize {
    let stats = sim.stats();
    stats
        .turns
        .iter()
        .filter(|turn| turn.transport == Transport::Ws)
        .count()
}

/// Every tunnel went to `target`; there were `at_least` of them.
fn assert_tunnels_to(proxy: &ConnectProxy, target: &str, at_least: usize) -> usize {
    let tunnels = proxy.tunnels();
    assert!(tunnels.len() >= at_least, "{tunnels:?}");
    assert!(tunnels.iter().all(|t| t == target), "{tunnels:?}");
    tunnels.len()
}

#[tokio::test]
async fn readme_config_bridges_continues_and_passes_through_over_http_through_the_proxy() {
    let sim = common::default_simulator().await;
    let proxy = ConnectProxy::start(Some(README_CREDENTIALS)).await;
    let base_url = format!("http://{UPSTREAM_NAME}:{}/v1", sim.addr().port());
    let bridge = Proxy::start(readme_config(&proxy, &base_url, ""))
        .await
        .unwrap();

    converse(&bridge.base_url()).await;
    assert_eq!(ws_turns(&sim), 3, "every turn went over the WebSocket");
    assert_eq!(rest_turns(&sim), 1, "the background turn went over REST");
    // A WebSocket and a REST connection at least, each a tunnel to the upstream.
    let target = format!("{UPSTREAM_NAME}:{}", sim.addr().port());
    assert_tunnels_to(&proxy, &target, 2);
    assert!(proxy.refused().is_empty());
    bridge.shutdown().await;
}

#[tokio::test]
async fn over_tls_every_connection_is_tunnelled_and_pass_through_speaks_h2() {
    let sim = common::default_simulator().await;
    let pki = Pki::new("proxied");
    let terminator = Terminator::start(&pki, sim.addr()).await;
    let proxy = ConnectProxy::start(Some(README_CREDENTIALS)).await;
    let base_url = format!("https://{UPSTREAM_NAME}:{}/v1", terminator.addr.port());
    let ca_file = format!("ca_file = {:?}\n", pki.ca_file.display().to_string());
    let bridge = Proxy::start(readme_config(&proxy, &base_url, &ca_file))
        .await
        .unwrap();

    converse(&bridge.base_url()).await;
    assert_eq!(ws_turns(&sim), 3);
    assert_eq!(rest_turns(&sim), 1, "the background turn went over REST");
    let target = format!("{UPSTREAM_NAME}:{}", terminator.addr.port());
    let tunnels = assert_tunnels_to(&proxy, &target, 2);
    assert_eq!(
        terminator.handshakes(),
        tunnels,
        "every TLS connection the upstream saw came through a tunnel"
    );
    // WebSockets offer no ALPN (the upgrade is HTTP/1.1); pass-through settles on h2.
    let connections = terminator.connections();
    let websockets: Vec<_> = connections
        .iter()
        .filter(|c| c.first_line.starts_with("GET /v1/responses HTTP/1.1"))
        .collect();
    assert!(!websockets.is_empty(), "{connections:?}");
    assert!(
        websockets.iter().all(|c| c.alpn.is_none()),
        "{connections:?}"
    );
    assert!(
        connections
            .iter()
            .any(|c| c.alpn.as_deref() == Some("h2") && c.first_line == "PRI * HTTP/2.0"),
        "pass-through went over HTTP/2: {connections:?}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn pass_through_speaks_h2_to_a_tls_upstream_without_a_proxy_too() {
    let sim = common::default_simulator().await;
    let pki = Pki::new("direct-h2");
    let terminator = Terminator::start(&pki, sim.addr()).await;
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.pool.min_idle = 0;
    config.upstream.base_url = wsbridge::config::BaseUrl::parse(&terminator.base_url()).unwrap();
    config.upstream.trust.ca_file = Some(wsbridge::net::CaBundle::read(&pki.ca_file).unwrap());
    let bridge = Proxy::start(config).await.unwrap();
    let base = bridge.base_url();
    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    assert_eq!(models.status, 200, "{}", models.body);
    let connections = terminator.connections();
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert_eq!(connections[0].alpn.as_deref(), Some("h2"));
    assert_eq!(connections[0].first_line, "PRI * HTTP/2.0");
    bridge.shutdown().await;
}

/// A `wsbridge serve` child at `upstream` with `env`, at debug level.
async fn child(upstream: &str, env: &[(String, String)]) -> (std::process::Child, String, Log) {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("WSBRIDGE_LOG_LEVEL", "debug"));
    serve(upstream, &env).await
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One streamed turn and one pass-through request.
async fn turn_and_models(base: &str) -> (Reply, Reply) {
    let turn = post_json(base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    (turn, models)
}

#[tokio::test]
async fn readme_variables_route_through_the_proxy_and_its_password_is_never_logged() {
    let sim = common::default_simulator().await;
    let pki = Pki::new("env-proxy");
    let terminator = Terminator::start(&pki, sim.addr()).await;
    let proxy = ConnectProxy::start(Some(README_CREDENTIALS)).await;
    let mut env = readme_env(&proxy);
    env.push((
        "WSBRIDGE_UPSTREAM_CA_FILE".into(),
        pki.ca_file.display().to_string(),
    ));
    // No background connect may be mid-handshake when the connections are counted.
    env.push(("WSBRIDGE_POOL_MIN_IDLE".into(), "0".into()));
    let upstream = format!("https://{UPSTREAM_NAME}:{}/v1", terminator.addr.port());
    let (child_process, base, log) = child(&upstream, &env).await;
    let (turn, models) = turn_and_models(&base).await;
    let log = log.lock().unwrap().join("\n");
    assert_eq!(turn.status, 200, "{}\n{log}", turn.body);
    assert_eq!(models.status, 200, "{}\n{log}", models.body);
    let target = format!("{UPSTREAM_NAME}:{}", terminator.addr.port());
    let tunnels = assert_tunnels_to(&proxy, &target, 2);
    assert_eq!(terminator.handshakes(), tunnels);
    let shown = format!("through the HTTP proxy http://***@{}", proxy.addr);
    assert!(log.contains(&shown), "{log}");
    assert!(
        log.contains("NO_PROXY bypasses it for: localhost,.corp.example"),
        "{log}"
    );
    assert!(
        !shows_password(&log, README_CREDENTIALS.0, README_CREDENTIALS.1),
        "the password leaked: {log}"
    );
    stop(child_process);
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let sim = common::default_simulator().await;
    let pki = Pki::new("no-proxy");
    let terminator = Terminator::start(&pki, sim.addr()).await;
    let proxy = ConnectProxy::start(None).await;
    let ca_file = pki.ca_file.display().to_string();
    let tls_port = terminator.addr.port();
    let plain = format!("http://127.0.0.1:{}/v1", sim.addr().port());
    let https = terminator.base_url();
    let by_port = format!(".example.com, localhost:{tls_port}");
    for (upstream, variable, no_proxy) in [
        (https.as_str(), "HTTPS_PROXY", "localhost"),
        (https.as_str(), "https_proxy", by_port.as_str()),
        (https.as_str(), "ALL_PROXY", "*"),
        (plain.as_str(), "HTTP_PROXY", "10.0.0.0/8,127.0.0.0/8"),
    ] {
        let env = owned(&[
            (variable, &proxy.url(None)),
            ("NO_PROXY", no_proxy),
            ("WSBRIDGE_UPSTREAM_CA_FILE", &ca_file),
        ]);
        let (child_process, base, log) = child(upstream, &env).await;
        let (turn, models) = turn_and_models(&base).await;
        let log = log.lock().unwrap().join("\n");
        assert_eq!(turn.status, 200, "{no_proxy}: {}\n{log}", turn.body);
        assert_eq!(models.status, 200, "{no_proxy}: {}\n{log}", models.body);
        assert!(log.contains("is in NO_PROXY: connecting directly"), "{log}");
        stop(child_process);
    }
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());

    // The same variables without NO_PROXY do go through it (plain http: HTTP_PROXY).
    let env = owned(&[("HTTP_PROXY", &proxy.url(None))]);
    let (child_process, base, _log) = child(&plain, &env).await;
    let (turn, models) = turn_and_models(&base).await;
    assert_eq!((turn.status, models.status), (200, 200));
    let target = format!("127.0.0.1:{}", sim.addr().port());
    assert_tunnels_to(&proxy, &target, 2);
    stop(child_process);
}

#[tokio::test]
async fn upstream_proxy_none_ignores_the_proxy_variables() {
    let sim = common::default_simulator().await;
    let proxy = ConnectProxy::start(None).await;
    let url = proxy.url(None);
    let env = owned(&[
        ("HTTP_PROXY", &url),
        ("http_proxy", &url),
        ("ALL_PROXY", &url),
        ("WSBRIDGE_UPSTREAM_PROXY", "none"),
    ]);
    let upstream = format!("http://127.0.0.1:{}/v1", sim.addr().port());
    let (child_process, base, log) = child(&upstream, &env).await;
    let (turn, models) = turn_and_models(&base).await;
    assert_eq!((turn.status, models.status), (200, 200));
    assert!(proxy.tunnels().is_empty());
    let log = log.lock().unwrap().join("\n");
    assert!(log.contains("upstream connections are direct"), "{log}");
    stop(child_process);
}

/// Whether `text` shows the proxy password, as written or inside a `Proxy-Authorization`
/// header's Basic credentials.
fn shows_password(text: &str, user: &str, password: &str) -> bool {
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    text.contains(password) || text.contains(&basic)
}

/// The 502 of a refused tunnel: it names the proxy's answer, and never the password.
fn assert_refused_with_407(reply: &Reply, what: &str, password: &str) {
    assert_eq!(reply.status, 502, "{what}: {}", reply.body);
    let error: Value = reply.json()["error"].clone();
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("proxy refused CONNECT: 407 Proxy Authentication Required"),
        "{what}: {message}"
    );
    assert_eq!(error["code"], "upstream_unreachable", "{what}");
    assert!(
        !shows_password(&reply.body, "alice", password),
        "{what}: {}",
        reply.body
    );
}

#[tokio::test]
async fn wrong_or_missing_proxy_credentials_give_a_502_naming_407_and_never_the_password() {
    let sim = common::default_simulator().await;
    let pki = Pki::new("proxy-auth");
    let terminator = Terminator::start(&pki, sim.addr()).await;
    // A password with characters a URL must percent-encode.
    let proxy = ConnectProxy::start(Some(("alice", "p@ss:w0rd"))).await;
    let upstream = format!("https://{UPSTREAM_NAME}:{}/v1", terminator.addr.port());
    let ca_file = pki.ca_file.display().to_string();
    let wrong = proxy.url(Some(("alice", "wr0ng-pa55")));
    for (case, url) in [("wrong", wrong.as_str()), ("missing", &proxy.url(None))] {
        let env = owned(&[
            ("HTTPS_PROXY", url),
            ("WSBRIDGE_UPSTREAM_CA_FILE", &ca_file),
            ("WSBRIDGE_POOL_MIN_IDLE", "0"),
        ]);
        let (child_process, base, log) = child(&upstream, &env).await;
        let refused_before = proxy.refused().len();
        let (turn, models) = turn_and_models(&base).await;
        // One CONNECT each: a 407 is not retried (upstream.max_attempts is for failures
        // another attempt may not meet; repeated wrong credentials can lock an account).
        assert_eq!(proxy.refused().len() - refused_before, 2, "{case}");
        let log = log.lock().unwrap().join("\n");
        assert_refused_with_407(&turn, case, "wr0ng-pa55");
        assert_refused_with_407(&models, case, "wr0ng-pa55");
        assert!(
            log.lines()
                .any(|line| line.contains("WARN") && line.contains("407 Proxy Authentication")),
            "{case}: {log}"
        );
        assert!(
            !shows_password(&log, "alice", "wr0ng-pa55"),
            "{case}: the password leaked: {log}"
        );
        stop(child_process);
    }
    assert!(proxy.tunnels().is_empty());
    assert_eq!(terminator.handshakes(), 0, "nothing reached the upstream");

    // The right password, percent-encoded in the URL, is decoded before it is sent.
    let right = proxy.url(Some(("alice", "p%40ss%3Aw0rd")));
    let env = owned(&[
        ("HTTPS_PROXY", &right),
        ("WSBRIDGE_UPSTREAM_CA_FILE", &ca_file),
    ]);
    let (child_process, base, log) = child(&upstream, &env).await;
    let (turn, models) = turn_and_models(&base).await;
    assert_eq!((turn.status, models.status), (200, 200), "{}", turn.body);
    let log = log.lock().unwrap().join("\n");
    assert!(
        !log.contains("p%40ss") && !shows_password(&log, "alice", "p@ss:w0rd"),
        "{log}"
    );
    assert!(!proxy.tunnels().is_empty());
    stop(child_process);
}

#[test]
fn an_unusable_proxy_variable_stops_the_start_naming_it_without_its_password() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wsbridge"));
    for name in common::child::INHERITED {
        command.env_remove(name);
    }
    let output = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ALL_PROXY", "socks5://alice:s3cret@socks.corp.example:1080")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`upstream.proxy`"), "{stderr}");
    assert!(
        stderr.contains("ALL_PROXY = `socks5://***@socks.corp.example:1080`"),
        "{stderr}"
    );
    assert!(stderr.contains("upstream.proxy = \"none\""), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}
