//! Test clients for the simulator and the proxy: plain HTTP with hyper, SSE parsing that checks
//! the framing, a WebSocket client that reads whole turns, and [`bridge`] (a simulator with a
//! proxy in front of it, both in-process on port 0).

#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

pub mod chat;
pub mod child;
pub mod cluster;
pub mod connect_proxy;
pub mod tls;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use wsbridge::Proxy;
use wsbridge::config::{BaseUrl, Config};
use wsbridge::simulator::latency::LatencyModel;
use wsbridge::simulator::{Simulator, SimulatorConfig, SimulatorHandle};

pub const KEY: &str = "sk-test-key";
/// Long enough for anything these tests do on a loaded 2-core machine; only failures wait it out.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub async fn simulator(config: SimulatorConfig) -> SimulatorHandle {
    Simulator::spawn(config).await.unwrap()
}

pub async fn default_simulator() -> SimulatorHandle {
    simulator(SimulatorConfig::default()).await
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Parses an SSE body, asserting OpenAI's framing on every event.
    pub fn events(&self) -> Vec<Value> {
        parse_sse(&self.body)
    }
}

/// `event: T\ndata: JSON\n\n` for every event, `T` equal to the JSON `type`, no `[DONE]`.
pub fn parse_sse(body: &str) -> Vec<Value> {
    assert!(
        body.ends_with("\n\n"),
        "an SSE body ends with a blank line: {body:?}"
    );
    assert!(
        !body.contains("[DONE]"),
        "the Responses API never sends [DONE]"
    );
    body.split("\n\n")
        .filter(|block| !block.is_empty() && !block.starts_with(':'))
        .map(|block| {
            let mut lines = block.lines();
            let event = lines
                .next()
                .and_then(|l| l.strip_prefix("event: "))
                .expect("event: line first");
            let data = lines
                .next()
                .and_then(|l| l.strip_prefix("data: "))
                .expect("data: line second");
            assert!(
                lines.next().is_none(),
                "exactly two lines per event: {block:?}"
            );
            let value: Value = serde_json::from_str(data).unwrap();
            assert_eq!(value["type"], event, "event: must equal the JSON type");
            value
        })
        .collect()
}

/// Sends one request and returns the response with its body still streaming.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> hyper::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .unwrap()
        .unwrap()
}

fn bearer(key: Option<&str>) -> Option<String> {
    key.map(|key| format!("Bearer {key}"))
}

pub async fn request(method: &str, url: &str, key: Option<&str>, body: Option<String>) -> Reply {
    let authorization = bearer(key);
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    request_with(method, url, &headers, body).await
}

/// [`request`] with any headers.
pub async fn request_with(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let response = send(method, url, headers, body).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .unwrap();
    let body = String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// Like [`request`] but tolerates a body that breaks off: returns what arrived and whether
/// the body ended cleanly.
pub async fn request_partial(url: &str, body: &Value) -> (u16, String, bool) {
    let authorization = format!("Bearer {KEY}");
    let response = send(
        "POST",
        url,
        &[("authorization", &authorization)],
        Some(body.to_string()),
    )
    .await;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    let clean = loop {
        match tokio::time::timeout(PATIENCE, body.frame()).await.unwrap() {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    text.extend_from_slice(&data);
                }
            }
        }
    };
    (status, String::from_utf8(text).unwrap(), clean)
}

pub async fn post_json(base_url: &str, body: &Value) -> Reply {
    request(
        "POST",
        &format!("{base_url}/responses"),
        Some(KEY),
        Some(body.to_string()),
    )
    .await
}

/// A WebSocket client speaking Responses WebSocket mode.
pub struct Ws {
    /// Headers of the 101 answer.
    pub handshake: hyper::HeaderMap,
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

pub async fn ws_connect(url: &str, key: &str) -> Result<Ws, tungstenite::Error> {
    let authorization = format!("Bearer {key}");
    ws_connect_with(url, &[("authorization", &authorization)]).await
}

/// [`ws_connect`] with any headers (none: no key at all).
pub async fn ws_connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let (socket, response) =
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
            .await
            .unwrap()?;
    Ok(Ws {
        handshake: response.headers().clone(),
        socket,
    })
}

/// What a client can observe next on a socket.
#[derive(Debug)]
pub enum Seen {
    Event(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn send(&mut self, frame: Value) {
        self.socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// `{"type":"response.create", ...body}`.
    pub async fn create(&mut self, body: Value) {
        let mut frame = serde_json::json!({"type": "response.create"});
        frame
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        self.send(frame).await;
    }

    pub async fn next(&mut self) -> Seen {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("no frame in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Seen::Event(serde_json::from_str(&text).unwrap());
                }
                Some(Ok(Message::Binary(_))) => panic!("the server must never send binary frames"),
                Some(Ok(Message::Close(frame))) => {
                    return Seen::Closed(frame.map(|f| f.code.into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    pub async fn event(&mut self) -> Value {
        match self.next().await {
            Seen::Event(event) => event,
            Seen::Closed(code) => panic!("socket closed ({code:?}) while an event was expected"),
        }
    }

    /// Events up to and including a terminal event or a request-scoped `error`.
    pub async fn turn(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.event().await;
            let done = is_terminal(&event);
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// The `type` of the event that ends the next turn.
    pub async fn outcome(&mut self) -> String {
        let events = self.turn().await;
        events
            .last()
            .and_then(|e| e["type"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// Events until the server closes the socket, and the close code.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut events = Vec::new();
        loop {
            match self.next().await {
                Seen::Event(event) => events.push(event),
                Seen::Closed(code) => return (events, code),
            }
        }
    }
}

pub fn is_terminal(event: &Value) -> bool {
    matches!(
        event["type"].as_str(),
        Some("response.completed" | "response.failed" | "response.incomplete" | "error")
    )
}

pub fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?"))
        .collect()
}

/// The final Response object of a turn's events.
pub fn final_response(events: &[Value]) -> &Value {
    &events.last().expect("no events")["response"]
}

/// The text of the first message in a Response object's output.
pub fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// A simulator with a proxy in front of it.
pub struct Bridge {
    pub sim: SimulatorHandle,
    pub proxy: Proxy,
}

impl Bridge {
    /// The proxy's `http://ADDR/v1`.
    pub fn url(&self) -> String {
        self.proxy.base_url()
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> String {
        request(
            "GET",
            &format!("http://{}/metrics", self.proxy.addr()),
            None,
            None,
        )
        .await
        .body
    }

    /// One series of the proxy's metrics (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }

    /// Waits until one series of the proxy's metrics satisfies `condition` (the pool's sweeper
    /// acts on its own schedule); returns the last value either way.
    pub async fn wait_for_metric(&self, series: &str, condition: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.metric(series).await;
            if condition(value) || tokio::time::Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /v1/responses` through the proxy with [`KEY`].
    pub async fn post(&self, body: &Value) -> Reply {
        post_json(&self.url(), body).await
    }
}

/// A proxy for tests: port 0, the given simulator as upstream, no pre-warmed sockets (so socket
/// counts are exact), then `tune`.
pub async fn bridge_with(
    simulator_config: SimulatorConfig,
    tune: impl FnOnce(&mut Config),
) -> Bridge {
    let sim = simulator(simulator_config).await;
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = BaseUrl::parse(&sim.base_url()).unwrap();
    config.pool.min_idle = 0;
    tune(&mut config);
    let proxy = Proxy::start(config).await.unwrap();
    Bridge { sim, proxy }
}

pub async fn bridge() -> Bridge {
    bridge_with(SimulatorConfig::default(), |_| {}).await
}

/// Replaces the values of JSON string fields named `keys` with `*` and of numeric fields named
/// `numbers` with `0`, working on the text so everything else stays byte for byte.
pub fn mask_fields(text: &str, keys: &[&str], numbers: &[&str]) -> String {
    let mut out = text.to_owned();
    for key in keys {
        let needle = format!("\"{key}\":\"");
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&needle) {
            let start = at + needle.len();
            result.push_str(&rest[..start]);
            let end = rest[start..].find('"').unwrap() + start;
            result.push('*');
            rest = &rest[end..];
        }
        result.push_str(rest);
        out = result;
    }
    for key in numbers {
        let needle = format!("\"{key}\":");
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&needle) {
            let start = at + needle.len();
            result.push_str(&rest[..start]);
            let end = rest[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |n| n + start);
            if end > start {
                result.push('0');
            }
            rest = &rest[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// One series of a proxy's metrics (`name{labels}`), 0 when absent.
pub async fn proxy_metric(proxy: &Proxy, series: &str) -> f64 {
    let text = request(
        "GET",
        &format!("http://{}/metrics", proxy.addr()),
        None,
        None,
    )
    .await
    .body;
    metric(&text, series)
}

/// Sequence numbers go up by one from event to event, nothing dropped or doubled.
pub fn assert_consecutive_sequence_numbers(events: &[Value]) {
    let sequence: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert!(
        sequence.windows(2).all(|w| w[1] == w[0] + 1),
        "{sequence:?}"
    );
}

/// The value of one series (`name{labels}`) in a Prometheus text exposition, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A fake upstream speaking WebSocket mode, whose answers a test writes frame by frame: for the
/// loose and broken forms real servers send, which the simulator never does. Each
/// `response.create` it receives (as JSON) is recorded and passed with its index to the script;
/// the frames the script returns are sent as they are. The frame [`CLOSE`] closes the socket.
pub struct Scripted {
    pub base_url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    /// Every text frame received, as its bytes came, a close frame as `CLOSE:CODE:REASON`, and
    /// each upgrade's request URI as `CLOSEuri:URI`.
    pub raw: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub sockets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// A script frame that closes the socket instead of sending anything; `CLOSE:CODE:REASON`
/// closes it with that close frame.
pub const CLOSE: &str = "\u{0}close";

type Script = dyn Fn(usize, &Value) -> Vec<String> + Send + Sync;

pub async fn scripted(
    script: impl Fn(usize, &Value) -> Vec<String> + Send + Sync + 'static,
) -> Scripted {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sockets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let script: std::sync::Arc<Script> = std::sync::Arc::new(script);
    let (seen, opened, seen_raw) = (received.clone(), sockets.clone(), raw.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (seen, script, seen_raw) = (seen.clone(), script.clone(), seen_raw.clone());
            opened.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                #[allow(clippy::result_large_err, reason = "tungstenite's callback signature")]
                let record_uri = |request: &tungstenite::handshake::server::Request, response| {
                    let uri = format!("{CLOSE}uri:{}", request.uri());
                    seen_raw.lock().unwrap().push(uri);
                    Ok(response)
                };
                let accepted = tokio_tungstenite::accept_hdr_async(tcp, record_uri).await;
                let Ok(mut ws) = accepted else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Close(Some(frame)) = &message {
                        let close = format!("{CLOSE}:{}:{}", u16::from(frame.code), frame.reason);
                        seen_raw.lock().unwrap().push(close);
                    }
                    let Message::Text(text) = message else {
                        continue;
                    };
                    seen_raw.lock().unwrap().push(text.to_string());
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(frame.clone());
                        seen.len() - 1
                    };
                    for out in script(index, &frame) {
                        if let Some(rest) = out.strip_prefix(CLOSE) {
                            let frame = rest.strip_prefix(':').and_then(|r| r.split_once(':')).map(
                                |(code, reason)| tungstenite::protocol::CloseFrame {
                                    code: code.parse::<u16>().unwrap().into(),
                                    reason: reason.to_owned().into(),
                                },
                            );
                            let _ = ws.close(frame).await;
                            return;
                        }
                        if ws.send(Message::Text(out.into())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Scripted {
        base_url: format!("http://{addr}/v1"),
        received,
        raw,
        sockets,
    }
}

impl Scripted {
    /// The `response.create` frames received so far.
    pub fn frames(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

/// A proxy in front of a [`Scripted`] upstream (no pre-warmed sockets), then `tune`.
pub async fn proxy_for(upstream: &Scripted, tune: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.base_url = BaseUrl::parse(&upstream.base_url).unwrap();
    config.pool.min_idle = 0;
    tune(&mut config);
    Proxy::start(config).await.unwrap()
}

/// Scripted events of one plain answer: `response.created` … `response.completed` for
/// response `id`, numbered from 0, answering `text` as one message.
pub fn answer(id: &str, text: &str) -> Vec<String> {
    let message = serde_json::json!({
        "id": format!("msg_{id}"), "type": "message", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    });
    let response = |status: &str, output: Value| serde_json::json!({"id": id, "object": "response", "status": status, "model": "gpt-sim", "output": output});
    [
        serde_json::json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", serde_json::json!([]))}),
        serde_json::json!({"type": "response.in_progress", "sequence_number": 1, "response": response("in_progress", serde_json::json!([]))}),
        serde_json::json!({"type": "response.output_text.delta", "sequence_number": 2, "item_id": format!("msg_{id}"), "output_index": 0, "content_index": 0, "delta": text}),
        serde_json::json!({"type": "response.completed", "sequence_number": 3, "response": response("completed", serde_json::json!([message]))}),
    ]
    .iter()
    .map(Value::to_string)
    .collect()
}

// Requests the proxy tests share.

/// A plain request, streamed or not.
pub fn hello(stream: bool) -> Value {
    serde_json::json!({"model": "gpt-test", "input": "hello", "stream": stream})
}

/// A streamed request with a simulator fault directive.
pub fn with_fault(fault: &str) -> Value {
    serde_json::json!({"model": "gpt-test", "input": "hello", "stream": true, "metadata": {"sim_fault": fault}})
}

/// Starts a streaming `POST /v1/responses` through the proxy and reads its first chunk, which
/// must be `response.created`; returns the rest of the body and that chunk's text.
pub async fn open_stream(bridge: &Bridge, body: &Value) -> (hyper::body::Incoming, String) {
    let authorization = format!("Bearer {KEY}");
    let response = send(
        "POST",
        &format!("{}/responses", bridge.url()),
        &[("authorization", &authorization)],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(first.data_ref().unwrap()).into_owned();
    assert!(first.starts_with("event: response.created"), "{first}");
    (body, first)
}

// ---------------------------------------------------------------- the normal path

// Requests and configurations the simulator tests share.

/// The simulator tests' plain request.
pub fn greeting() -> Value {
    serde_json::json!({"model": "gpt-test", "input": "hello there"})
}

/// The default simulator with output tokens `ms` apart, so concurrency becomes visible.
pub fn paced(ms: u64) -> SimulatorConfig {
    SimulatorConfig {
        latency: LatencyModel {
            per_token: Duration::from_millis(ms),
            ..LatencyModel::NONE
        },
        ..SimulatorConfig::default()
    }
}

/// One function tool, for the simulator's tool loop.
pub fn lookup_tools() -> Value {
    serde_json::json!([{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}])
}

// ---------------------------------------------------------------- Chat Completions

/// The text of every `delta.content` of choice `index`, concatenated.
pub fn chat_deltas(chunks: &[Value], index: u64, field: &str) -> String {
    chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .filter(|choice| choice["index"] == index)
        .filter_map(|choice| choice["delta"][field].as_str().map(str::to_owned))
        .collect()
}

/// Chat function tools named `names`.
pub fn chat_tools(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|name| serde_json::json!({"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}))
            .collect(),
    )
}
