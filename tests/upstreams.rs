//! Upstreams other than api.openai.com, with no network. Azure OpenAI's shape: the simulator
//! serves under `/openai/v1`, takes its key only in `api-key` and refuses any request without
//! `api-version=preview`; the proxy runs README's "Azure OpenAI" configuration against it.
//! Also `upstream.headers` on every handshake and REST request, and a profile's frame limit.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use serde_json::json;
use wsbridge::Proxy;
use wsbridge::config::{Config, KeyHeader, Sources};
use wsbridge::simulator::stats::{SeenRequest, Transport};
use wsbridge::simulator::{SimulatorConfig, SimulatorHandle};

use common::{KEY, output_text, post_json, request, request_with};

/// How the simulator shows [`KEY`] in its request records.
const MASKED_KEY: &str = "sk-****-key";
const README_HOST: &str = "https://my-resource.openai.azure.com";

/// A simulator shaped like an Azure OpenAI resource.
async fn azure_simulator() -> SimulatorHandle {
    common::simulator(SimulatorConfig {
        path_prefix: "/openai/v1".into(),
        auth_header: KeyHeader::ApiKey,
        required_query: vec![("api-version".into(), "preview".into())],
        ..SimulatorConfig::default()
    })
    .await
}

/// README's "Azure OpenAI" configuration, pointed at `sim`.
fn readme_azure_config(sim: &SimulatorHandle) -> String {
    let readme = include_str!("../README.md");
    let section = &readme[readme
        .find("### Azure OpenAI")
        .expect("README has an Azure OpenAI section")..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    assert!(block.contains(README_HOST), "{block}");
    block.replace(README_HOST, &format!("http://{}", sim.addr()))
}

/// A proxy on port 0 loading `file_text` with `env`, then `tune`.
async fn proxy(file_text: &str, env: &[(&str, &str)], tune: impl FnOnce(&mut Config)) -> Proxy {
    let dir = std::env::temp_dir().join(format!("wsbridge-azure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.toml", rand_suffix()));
    std::fs::write(&file, file_text).unwrap();
    let mut config = Config::load(Sources {
        file: Some(file),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        overrides: Vec::new(),
    })
    .unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.pool.min_idle = 0;
    tune(&mut config);
    Proxy::start(config).await.unwrap()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The upgrades and the REST requests the simulator received.
fn seen(sim: &SimulatorHandle) -> (Vec<SeenRequest>, Vec<SeenRequest>) {
    sim.stats()
        .requests
        .into_iter()
        .partition(SeenRequest::is_upgrade)
}

#[tokio::test]
async fn readme_azure_config_streams_continues_and_passes_through_with_api_key_and_api_version() {
    let sim = azure_simulator().await;
    let config = readme_azure_config(&sim);
    let proxy = proxy(&config, &[("AZURE_OPENAI_API_KEY", KEY)], |_| {}).await;
    let base = proxy.base_url();

    let streamed = post_json(&base, &json!({"model": "m", "input": "hi", "stream": true})).await;
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert_eq!(
        streamed.events().last().unwrap()["type"],
        "response.completed"
    );

    let mut input = vec![json!({"role": "user", "content": "hi"})];
    let first = post_json(&base, &json!({"model": "m", "input": input})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    input.extend(first.json()["output"].as_array().unwrap().iter().cloned());
    input.push(json!({"role": "user", "content": "and then?"}));
    let second = post_json(&base, &json!({"model": "m", "input": input})).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.headers["x-wsbridge-continuation"], "continued");
    assert!(output_text(&second.json()).starts_with("You said: and then?"));

    // `background` goes over REST: the fallback carries the key and the version too.
    let background = json!({"model": "m", "input": "later", "background": true});
    let background = post_json(&base, &background).await;
    assert_eq!(background.status, 200, "{}", background.body);

    let models = request("GET", &format!("{base}/models?limit=2"), Some(KEY), None).await;
    assert_eq!(models.status, 200, "{}", models.body);
    assert!(models.json()["data"].is_array());

    let stats = sim.stats();
    let transports: Vec<Transport> = stats.turns.iter().map(|t| t.transport).collect();
    assert_eq!(
        transports,
        [Transport::Ws, Transport::Ws, Transport::Ws, Transport::Rest]
    );
    let (upgrades, rest) = seen(&sim);
    assert!(!upgrades.is_empty());
    for upgrade in &upgrades {
        assert_eq!(upgrade.path, "/openai/v1/responses");
        assert_eq!(upgrade.query.as_deref(), Some("api-version=preview"));
        assert_eq!(upgrade.headers["api-key"], MASKED_KEY, "{upgrade:?}");
        assert!(!upgrade.headers.contains_key("authorization"));
    }
    let [fallback, models] = rest.as_slice() else {
        panic!("two REST requests: {rest:?}");
    };
    assert_eq!(
        (fallback.method.as_str(), fallback.path.as_str()),
        ("POST", "/openai/v1/responses")
    );
    assert_eq!(fallback.query.as_deref(), Some("api-version=preview"));
    assert_eq!(models.path, "/openai/v1/models");
    assert_eq!(models.query.as_deref(), Some("api-version=preview&limit=2"));
    for rest in [fallback, models] {
        assert_eq!(rest.headers["api-key"], MASKED_KEY, "{rest:?}");
        assert!(!rest.headers.contains_key("authorization"), "{rest:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_api_key_or_api_version_the_azure_shape_refuses() {
    let sim = azure_simulator().await;
    let config = readme_azure_config(&sim);
    let env = [("AZURE_OPENAI_API_KEY", KEY)];

    let bearer = proxy(&config, &env, |config| {
        config.upstream.auth_header = KeyHeader::Authorization;
    })
    .await;
    let refused = post_json(&bearer.base_url(), &json!({"model": "m", "input": "hi"})).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(refused.body.contains("api-key header"), "{}", refused.body);
    bearer.shutdown().await;

    let no_version = config.replace("?api-version=preview", "");
    let unversioned = proxy(&no_version, &env, |_| {}).await;
    let base = unversioned.base_url();
    let refused = post_json(&base, &json!({"model": "m", "input": "hi"})).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"]["param"], "api-version");
    let models = request("GET", &format!("{base}/models"), Some(KEY), None).await;
    assert_eq!(models.status, 400, "{}", models.body);
    unversioned.shutdown().await;

    assert_eq!(sim.stats().sockets_opened, 0);
    assert_eq!(sim.stats().turns_total, 0);
}

#[tokio::test]
async fn a_client_sending_api_key_itself_is_passed_through_with_extra_headers() {
    let sim = azure_simulator().await;
    let file = format!(
        "[upstream]\nbase_url = \"http://{}/openai/v1?api-version=preview\"\n\
         auth_header = \"api-key\"\n",
        sim.addr()
    );
    let headers = r#"{ OpenAI-Beta = "responses_websockets=2026-02-06", x-team = "blue" }"#;
    let proxy = proxy(&file, &[("WSBRIDGE_UPSTREAM_HEADERS", headers)], |_| {}).await;
    let base = proxy.base_url();
    let client = [("api-key", KEY), ("openai-beta", "assistants=v2")];

    let body = json!({"model": "m", "input": "hi"}).to_string();
    let turn = request_with("POST", &format!("{base}/responses"), &client, Some(body)).await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    let id = turn.json()["id"].as_str().unwrap().to_owned();
    let models = request_with("GET", &format!("{base}/models"), &client, None).await;
    assert_eq!(models.status, 200, "{}", models.body);

    let (upgrades, rest) = seen(&sim);
    assert_eq!(upgrades.len(), 1, "{upgrades:?}");
    assert_eq!(rest.len(), 1, "{rest:?}");
    for seen in upgrades.iter().chain(&rest) {
        assert_eq!(seen.headers["api-key"], MASKED_KEY, "{seen:?}");
        assert_eq!(
            seen.headers["openai-beta"], "responses_websockets=2026-02-06",
            "the configured value replaces the client's: {seen:?}"
        );
        assert_eq!(seen.headers["x-team"], "blue", "{seen:?}");
    }
    let stored = sim.stats().turns;
    assert_eq!(
        stored.last().unwrap().response_id.as_deref(),
        Some(id.as_str())
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_headers_reach_the_handshake_and_rest_of_a_plain_openai_upstream() {
    let bridge = common::bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.headers.insert(
            "openai-beta",
            "responses_websockets=2026-02-06".parse().unwrap(),
        );
    })
    .await;
    let turn = bridge.post(&json!({"model": "m", "input": "hi"})).await;
    assert_eq!(turn.status, 200, "{}", turn.body);
    let models = request("GET", &format!("{}/models", bridge.url()), Some(KEY), None).await;
    assert_eq!(models.status, 200, "{}", models.body);
    let (upgrades, rest) = seen(&bridge.sim);
    assert_eq!((upgrades.len(), rest.len()), (1, 1));
    for seen in upgrades.iter().chain(&rest) {
        assert_eq!(
            seen.headers["openai-beta"],
            "responses_websockets=2026-02-06"
        );
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {MASKED_KEY}")
        );
        assert_eq!(seen.query, None);
    }
}

#[tokio::test]
async fn the_vercel_profile_sends_a_frame_over_4_mib_over_rest() {
    let sim = common::default_simulator().await;
    let file = format!(
        "[upstream]\nbase_url = \"{}\"\nprofile = \"vercel\"\n",
        sim.base_url()
    );
    let proxy = proxy(&file, &[], |config| {
        assert_eq!(config.upstream.max_frame_bytes, 4 << 20);
        assert_eq!(config.pool.max_age.as_secs(), 480);
        assert_eq!(config.pool.idle_timeout.as_secs(), 240);
    })
    .await;
    let base = proxy.base_url();
    let small = post_json(&base, &json!({"model": "m", "input": "hi"})).await;
    assert_eq!(small.status, 200, "{}", small.body);
    let large = "x".repeat(9 << 19);
    let large = post_json(&base, &json!({"model": "m", "input": large})).await;
    assert_eq!(large.status, 200, "{}", large.body);
    let transports: Vec<Transport> = sim.stats().turns.iter().map(|t| t.transport).collect();
    assert_eq!(transports, [Transport::Ws, Transport::Rest]);
    let metrics = request(
        "GET",
        &format!("http://{}/metrics", proxy.addr()),
        None,
        None,
    )
    .await;
    let series = "wsbridge_rest_fallbacks_total{reason=\"frame_too_large\"}";
    assert_eq!(common::metric(&metrics.body, series), 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_relayed_websocket_client_reaches_the_azure_shape_with_both_queries() {
    let sim = azure_simulator().await;
    let config = readme_azure_config(&sim);
    let proxy = proxy(&config, &[("AZURE_OPENAI_API_KEY", KEY)], |_| {}).await;
    // Pooled (no client query), then a socket of its own for a client query: the base's
    // `api-version` is on both upgrades, the client's parameter after it.
    for url in [
        format!("ws://{}/v1/responses", proxy.addr()),
        format!("ws://{}/v1/responses?trace=1", proxy.addr()),
    ] {
        let mut ws = common::ws_connect_with(&url, &[("api-key", KEY)])
            .await
            .unwrap();
        ws.create(json!({"model": "m", "input": "hi"})).await;
        let events = ws.turn().await;
        assert_eq!(
            events.last().unwrap()["type"],
            "response.completed",
            "{events:?}"
        );
    }
    let (upgrades, _) = seen(&sim);
    let queries: Vec<Option<&str>> = upgrades.iter().map(|u| u.query.as_deref()).collect();
    assert!(
        queries.contains(&Some("api-version=preview")),
        "{queries:?}"
    );
    assert!(
        queries.contains(&Some("api-version=preview&trace=1")),
        "{queries:?}"
    );
    for upgrade in &upgrades {
        assert_eq!(upgrade.headers["api-key"], MASKED_KEY, "{upgrade:?}");
    }
    proxy.shutdown().await;
}

/// An Azure client always sends the `api-version` the base URL already has: nothing to add,
/// so its socket comes from the pool (the socket the first client gave back), not a new one.
#[tokio::test]
async fn a_relayed_client_query_that_only_repeats_the_bases_is_served_from_the_pool() {
    let sim = azure_simulator().await;
    let config = readme_azure_config(&sim);
    let proxy = proxy(&config, &[("AZURE_OPENAI_API_KEY", KEY)], |config| {
        config.pool.min_idle = 0;
    })
    .await;
    for query in ["", "?api-version=preview"] {
        let url = format!("ws://{}/v1/responses{query}", proxy.addr());
        let mut ws = common::ws_connect_with(&url, &[("api-key", KEY)])
            .await
            .unwrap();
        ws.create(json!({"model": "m", "input": "hi"})).await;
        assert_eq!(ws.outcome().await, "response.completed");
        ws.socket.close(None).await.unwrap();
        let deadline = tokio::time::Instant::now() + common::PATIENCE;
        let idle = "wsbridge_upstream_sockets{state=\"idle\"}";
        while common::proxy_metric(&proxy, idle).await != 1.0 {
            assert!(tokio::time::Instant::now() < deadline, "not given back");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let (upgrades, _) = seen(&sim);
    assert_eq!(upgrades.len(), 1, "{upgrades:?}");
    proxy.shutdown().await;
}
