//! The benchmark's load generator and process handling: the simulator and proxy as child
//! processes (so their CPU time and RSS can be read from `/proc`), an SSE client that timestamps
//! every event as it arrives, and a WebSocket client that talks to the simulator directly (the
//! floor every added-latency figure is measured against).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

mod chat;
pub use chat::chat_loop;

/// A `wsbridge` child process (the release build cargo made for this bench).
pub struct Process {
    child: Child,
    addr: String,
    /// For `serve --simulate`-less proxies: nothing; for simulators: their own address.
    is_simulator: bool,
}

impl Process {
    pub fn simulator(env: &[(&str, String)]) -> Self {
        Self::start(&["simulate", "--listen", "127.0.0.1:0"], env, true)
    }

    pub fn proxy(upstream: &str, env: &[(&str, String)]) -> Self {
        Self::start(
            &["serve", "--listen", "127.0.0.1:0", "--upstream", upstream],
            env,
            false,
        )
    }

    fn start(args: &[&str], env: &[(&str, String)], is_simulator: bool) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsbridge"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wsbridge");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("wsbridge exited before listening")
                .unwrap();
            if let Some(at) = line.find("listening on http://") {
                break line[at + "listening on http://".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            addr,
            is_simulator,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/responses", self.addr)
    }

    /// A proxy on a given address (for replicas that must know each other's before starting).
    pub fn proxy_on(listen: &str, upstream: &str, env: &[(&str, String)]) -> Self {
        Self::start(
            &["serve", "--listen", listen, "--upstream", upstream],
            env,
            false,
        )
    }

    /// The body of `GET {path}` on this process (stats, metrics; off the measured path).
    pub fn get(&self, path: &str) -> String {
        http_get(&self.addr, path)
    }

    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Resident set size now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
    }

    /// The highest RSS so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_field("VmHWM:")
    }

    /// User + system CPU time used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the `(comm)`: state is 3rd, utime 14th, stime 15th (1-based).
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    /// `GET /sim/stats` of a simulator process.
    pub fn sim_stats(&self) -> Value {
        assert!(self.is_simulator, "only simulators have stats");
        serde_json::from_str(&http_get(&self.addr, "/sim/stats")).unwrap_or(Value::Null)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// A blocking `GET` (for stats, off the measured path).
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a set of streams saw.
#[derive(Debug, Default)]
pub struct Stats {
    pub streams: usize,
    pub failures: usize,
    pub events: usize,
    first_bytes: Vec<Duration>,
    first_events: Vec<Duration>,
    gap_list: Vec<Duration>,
    per_stream: Vec<usize>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.streams += other.streams;
        self.failures += other.failures;
        self.events += other.events;
        self.first_bytes.extend(other.first_bytes);
        self.first_events.extend(other.first_events);
        self.gap_list.extend(other.gap_list);
        self.per_stream.extend(other.per_stream);
    }

    /// One stream that started at `started`: when its first byte (response head or first
    /// frame) and each event arrived.
    fn record(
        &mut self,
        started: Instant,
        first_byte: Option<Instant>,
        times: &[Instant],
        complete: bool,
    ) {
        self.streams += 1;
        if !complete {
            self.failures += 1;
            return;
        }
        self.events += times.len();
        self.per_stream.push(times.len());
        if let Some(first_byte) = first_byte {
            self.first_bytes.push(first_byte - started);
        }
        if let Some(first) = times.first() {
            self.first_events.push(*first - started);
        }
        self.gap_list.extend(times.windows(2).map(|w| w[1] - w[0]));
    }

    /// Time to first byte of each stream, sorted.
    pub fn first_byte(&self) -> Vec<Duration> {
        sorted(&self.first_bytes)
    }

    /// Time to first event of each stream, sorted.
    pub fn first_event(&self) -> Vec<Duration> {
        sorted(&self.first_events)
    }

    /// Every inter-event gap, sorted.
    pub fn gaps(&self) -> Vec<Duration> {
        sorted(&self.gap_list)
    }

    pub fn events_per_stream(&self) -> usize {
        self.per_stream.first().copied().unwrap_or(0)
    }

    /// Events missing from complete streams, against `expected` per stream.
    pub fn lost_events(&self, expected: usize) -> usize {
        self.per_stream
            .iter()
            .map(|n| expected.saturating_sub(*n))
            .sum()
    }
}

fn sorted(values: &[Duration]) -> Vec<Duration> {
    let mut values = values.to_vec();
    values.sort_unstable();
    values
}

/// The simulator's calibrated profile, or (quick mode) the same scaled down 10×.
pub fn simulator_profile(quick: bool) -> Vec<(&'static str, String)> {
    if quick {
        vec![
            ("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom".into()),
            ("WSBRIDGE_SIMULATOR_LATENCY_TTFT_MS", "35".into()),
            ("WSBRIDGE_SIMULATOR_LATENCY_PER_TOKEN_MS", "0.6".into()),
            (
                "WSBRIDGE_SIMULATOR_LATENCY_UNCACHED_PER_KIB_MS",
                "2.1".into(),
            ),
            ("WSBRIDGE_SIMULATOR_LATENCY_HYDRATE_MS", "15".into()),
            ("WSBRIDGE_SIMULATOR_LATENCY_CONNECT_MS", "4".into()),
            ("WSBRIDGE_SIMULATOR_LATENCY_UPGRADE_MS", "2".into()),
        ]
    } else {
        vec![("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "openai".into())]
    }
}

/// The `p`th percentile of sorted values (nearest rank).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .build(connector)
}

fn post_request(base: &str, key: &str, body: &Value) -> hyper::Request<Full<Bytes>> {
    post_to(base, "/responses", key, body)
}

/// A JSON POST to `{base}{path}` with `key` as the bearer token.
pub fn post_to(base: &str, path: &str, key: &str, body: &Value) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// `concurrency` clients, each sending `per_client` POSTs one after another; `each` turns one
/// request (and when it started) into a record.
async fn fan_out<T, F, Fut>(
    base: &str,
    key: &str,
    body: &Value,
    concurrency: usize,
    per_client: usize,
    each: F,
) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(HttpClient, hyper::Request<Full<Bytes>>, Instant) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let client = client();
    let body = Arc::new(body.clone());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, key, body, each) = (
                client.clone(),
                base.to_owned(),
                key.to_owned(),
                body.clone(),
                each.clone(),
            );
            tokio::spawn(async move {
                let mut records = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let request = post_request(&base, &key, &body);
                    records.push(each(client.clone(), request, Instant::now()).await);
                }
                records
            })
        })
        .collect();
    let mut records = Vec::new();
    for task in tasks {
        records.extend(task.await.unwrap());
    }
    records
}

/// `concurrency` clients each running `per_client` SSE streams one after another.
pub async fn sse_streams(
    base: &str,
    key: &str,
    body: &Value,
    concurrency: usize,
    per_client: usize,
) -> Stats {
    let streams = fan_out(
        base,
        key,
        body,
        concurrency,
        per_client,
        |client, request, started| async move { (started, sse_stream(&client, request).await) },
    )
    .await;
    let mut stats = Stats::default();
    for (started, (first_byte, times, complete)) in streams {
        stats.record(started, first_byte, &times, complete);
    }
    stats
}

/// One SSE stream: when the response head arrived, the arrival time of each event, and whether
/// it ended with a terminal event.
async fn sse_stream(
    client: &HttpClient,
    request: hyper::Request<Full<Bytes>>,
) -> (Option<Instant>, Vec<Instant>, bool) {
    let Ok(response) = client.request(request).await else {
        return (None, Vec::new(), false);
    };
    let head = Instant::now();
    if response.status() != 200 {
        return (Some(head), Vec::new(), false);
    }
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    let mut times = Vec::new();
    let mut terminal = false;
    while let Some(Ok(frame)) = body.frame().await {
        let now = Instant::now();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = find(&buffer, b"\n\n") {
            let block = &buffer[..end];
            if !block.starts_with(b":") {
                times.push(now);
                terminal |= [
                    &b"event: response.completed\n"[..],
                    b"event: response.failed\n",
                    b"event: response.incomplete\n",
                    b"event: error\n",
                ]
                .iter()
                .any(|kind| block.starts_with(kind));
            }
            buffer.drain(..end + 2);
        }
    }
    (Some(head), times, terminal)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// `concurrency` WebSocket clients, each on one persistent socket to `ws_url`, running
/// `per_client` turns one after another.
pub async fn ws_streams(
    ws_url: &str,
    key: &str,
    body: &Value,
    concurrency: usize,
    per_client: usize,
) -> Stats {
    let mut frame = json!({"type": "response.create"});
    for (k, v) in body.as_object().unwrap() {
        if k != "stream" {
            frame[k] = v.clone();
        }
    }
    let frame = Arc::new(frame.to_string());
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (url, key, frame) = (ws_url.to_owned(), key.to_owned(), frame.clone());
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut request = url.as_str().into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
            let Ok((mut socket, _)) =
                tokio_tungstenite::connect_async_with_config(request, Some(config), true).await
            else {
                stats.failures = per_client;
                stats.streams = per_client;
                return stats;
            };
            for _ in 0..per_client {
                let started = Instant::now();
                if socket.send(Message::text(frame.as_str())).await.is_err() {
                    stats.record(started, None, &[], false);
                    continue;
                }
                let mut times = Vec::new();
                let mut complete = false;
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        times.push(Instant::now());
                        let kind = wsbridge::protocol::sse::event_type(&text).unwrap_or_default();
                        if matches!(
                            &*kind,
                            "response.completed"
                                | "response.failed"
                                | "response.incomplete"
                                | "error"
                        ) {
                            complete = true;
                            break;
                        }
                    }
                }
                // Over a WebSocket the first byte is the first event's frame.
                stats.record(started, times.first().copied(), &times, complete);
            }
            stats
        }));
    }
    let mut stats = Stats::default();
    for task in tasks {
        stats.merge(task.await.unwrap());
    }
    stats
}

/// One non-streaming POST: status and body.
pub async fn post(base: &str, key: &str, body: &Value) -> (u16, String) {
    let response = client()
        .request(post_request(base, key, body))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Latencies of complete non-streaming POSTs.
#[derive(Debug, Default)]
pub struct Posts {
    pub latencies: Vec<Duration>,
    pub failures: usize,
}

/// `concurrency` clients each sending `per_client` non-streaming POSTs one after another.
pub async fn posts(
    base: &str,
    key: &str,
    body: &Value,
    concurrency: usize,
    per_client: usize,
) -> Posts {
    let records = fan_out(
        base,
        key,
        body,
        concurrency,
        per_client,
        |client, request, started| async move {
            let ok = match client.request(request).await {
                Ok(response) => {
                    let ok = response.status() == 200;
                    response.into_body().collect().await.is_ok() && ok
                }
                Err(_) => false,
            };
            ok.then(|| started.elapsed())
        },
    )
    .await;
    let mut all = Posts::default();
    for record in records {
        match record {
            Some(latency) => all.latencies.push(latency),
            None => all.failures += 1,
        }
    }
    all.latencies.sort_unstable();
    all
}

/// The usual SDK agent loop against `base` on `client` (its kept-alive connection): full
/// history every turn (`input += output` plus a `function_call_output` per call) until the model
/// answers; returns the answer.
pub async fn agent_loop(
    client: &HttpClient,
    base: &str,
    key: &str,
    calls: u32,
    seed: usize,
) -> String {
    let tools = json!([{"type": "function", "name": "lookup", "description": "Look it up.",
                        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}]);
    let mut input =
        vec![json!({"role": "user", "content": format!("Loop {seed}: find the answer.")})];
    loop {
        let body = json!({"model": "gpt-bench", "input": input, "tools": tools, "store": false,
                          "metadata": {"sim_tool_calls": calls.to_string()}});
        let response = client
            .request(post_request(base, key, &body))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let response: Value = serde_json::from_slice(&bytes).unwrap();
        let output = response["output"].as_array().unwrap().clone();
        let function_calls: Vec<Value> = output
            .iter()
            .filter(|i| i["type"] == "function_call")
            .cloned()
            .collect();
        input.extend(output.iter().cloned());
        if function_calls.is_empty() {
            return output
                .iter()
                .filter_map(|item| item["content"].as_array())
                .flatten()
                .filter_map(|part| part["text"].as_str())
                .collect();
        }
        for call in function_calls {
            // About 1 KiB of tool output, as in the simulator's calibration loop.
            let output = format!(
                "result for {}: {}",
                call["call_id"].as_str().unwrap_or(""),
                "data ".repeat(200)
            );
            input.push(json!({"type": "function_call_output", "call_id": call["call_id"], "output": output}));
        }
    }
}

/// Prints a Markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", headers.join(" | "));
    println!(
        "|{}|",
        headers.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

/// The machine, for the record.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cores} cores ({model}), {memory:.0} GiB, Linux {}; client, proxy and simulator \
         share it.",
        kernel.trim()
    )
}

/// CPU time (user + system) of `pid` and its children that are still running (nginx's master
/// and workers), from `/proc`: whole clock ticks.
fn process_tree_cpu(pid: u32) -> Duration {
    let mut ticks = 0;
    let mut pids = vec![pid];
    while let Some(pid) = pids.pop() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        ticks += fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// nginx as a plain pass-through in front of `upstream` (`http://HOST:PORT`), one worker,
/// buffering off (how one would put nginx in front of an SSE API), in its own temporary prefix.
/// `None` when nginx is not installed.
pub struct Nginx {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(upstream: &str) -> Option<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = std::env::temp_dir().join(format!("wsbridge-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let upstream = upstream.trim_start_matches("http://");
        let upstream = upstream.split('/').next().unwrap_or(upstream);
        let d = dir.display();
        let config = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream simulator {{ server {upstream}; keepalive 256; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://simulator;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
             proxy_buffering off;\n      proxy_request_buffering off;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), config).ok()?;
        let child = Command::new(binary)
            .args(["-e", "stderr", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { child, addr, dir })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// CPU time of the master and its worker.
    pub fn cpu_time(&self) -> Duration {
        process_tree_cpu(self.child.id())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its worker (a killed master leaves it running).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
