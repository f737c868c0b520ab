//! What an attacker or a careless client cannot do to the proxy: leave the upstream's base
//! path, blame the upstream for its own malformed body, send huge header blocks, hold
//! connections without sending a request, open connections without bound, or grow the proxy's
//! memory with keys that never work. And what every client sees when the shutdown grace runs
//! out: a terminal event, never a cut-off stream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsbridge::config::BaseUrl;
use wsbridge::simulator::SimulatorConfig;

/// Sends raw bytes on a new connection and reads until the proxy closes it (or `PATIENCE`).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[tokio::test]
async fn no_pass_through_path_leaves_the_upstream_base() {
    let bridge = bridge().await;
    for path in [
        "/v1/../admin",
        "/v1/models/../../admin",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/%2E%2E/admin",
        "/v1/.%2e/admin",
        "/v1/models%2F..%2F..%2Fadmin",
    ] {
        let answer = raw_exchange(
            bridge.proxy.addr(),
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
        assert!(answer.contains("\"invalid_request_error\""), "{answer}");
    }
    // The same request without dot-segments does reach the upstream.
    let models = request("GET", &format!("{}/models", bridge.url()), Some(KEY), None).await;
    assert_eq!(models.status, 200, "{}", models.body);
}

#[tokio::test]
async fn a_malformed_chunked_body_on_pass_through_is_the_clients_400_not_a_502() {
    let bridge = bridge().await;
    let answer = raw_exchange(
        bridge.proxy.addr(),
        format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\n{{\"a\":\r\nZZ\r\nnot hex\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("\"invalid_request_error\""), "{answer}");
}

#[tokio::test]
async fn header_blocks_over_the_limit_get_431_in_openais_shape() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.max_header_bytes = 16 << 10;
    })
    .await;
    let big = "a".repeat(20 << 10);
    let reply = request_with(
        "GET",
        &format!("{}/models", bridge.url()),
        &[("authorization", &format!("Bearer {KEY}")), ("x-big", &big)],
        None,
    )
    .await;
    assert_eq!(reply.status, 431, "{}", reply.body);
    assert_eq!(
        reply.json()["error"]["code"],
        "request_header_fields_too_large"
    );
    // Far over the limit, hyper refuses before any of it is buffered further.
    let huge = "a".repeat(72 << 10);
    let answer = raw_exchange(
        bridge.proxy.addr(),
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 431, "{answer}");
}

/// Waits for the proxy to close `tcp`, returning how long that took.
async fn closed_within(mut tcp: TcpStream) -> Duration {
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 256];
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection was still open after {PATIENCE:?}"),
        }
    }
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Silent: connects and sends nothing.
    let silent = TcpStream::connect(bridge.proxy.addr()).await.unwrap();
    // Trickling: a byte every 100 ms, never a complete header block.
    let mut trickling = TcpStream::connect(bridge.proxy.addr()).await.unwrap();
    let trickle_started = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        for byte in
            b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                .iter()
        {
            if trickling.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        trickling
    });
    assert!(closed_within(silent).await >= Duration::from_millis(900));
    let trickling = trickle.await.unwrap();
    // Cut off at the deadline, not after the whole 4.9 s trickle: each byte must not reset it.
    assert!(
        trickle_started.elapsed() < Duration::from_secs(3),
        "the trickling client kept its connection for {:?}",
        trickle_started.elapsed()
    );
    closed_within(trickling).await;
    // An idle keep-alive connection after a request is closed on the same deadline.
    let mut kept = TcpStream::connect(bridge.proxy.addr()).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_within(kept).await;
}

#[tokio::test]
async fn the_header_deadline_never_cuts_a_request_that_arrived_in_time() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // A stream that outlives the header deadline of its connection, then a second request on
    // the same (kept-alive) connection.
    let body = json!({"model": "gpt-sim", "input": "hi", "stream": true,
                      "metadata": {"sim_fault": "stall_within:1500"}});
    let (status, text, clean) =
        request_partial(&format!("{}/responses", bridge.url()), &body).await;
    assert_eq!(status, 200);
    assert!(clean, "the stream was cut: {text}");
    assert_eq!(
        parse_sse(&text).last().unwrap()["type"],
        "response.completed"
    );
    let mut tcp = TcpStream::connect(bridge.proxy.addr()).await.unwrap();
    let request = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.to_string().len(),
        body
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("response.completed") {
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buffer))
            .await
            .expect("the stream went on")
            .unwrap();
        assert!(
            read > 0,
            "closed mid-stream: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
    }
}

/// An HTTP/2 (prior knowledge) connection to the proxy: its request sender, and a task that
/// ends when the proxy closes the connection.
async fn h2_connection(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<String>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

async fn h2_request(
    sender: &mut hyper::client::conn::http2::SendRequest<String>,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    use http_body_util::BodyExt;
    let request = match body {
        Some(body) => hyper::Request::post("http://proxy/v1/responses")
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => hyper::Request::get("http://proxy/healthz").body(String::new()),
    };
    let response = sender.send_request(request.unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn idle_http2_connections_are_closed_and_busy_ones_kept() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // A stream that outlives two idle periods keeps its connection; a request after it works.
    let (mut sender, closed) = h2_connection(bridge.proxy.addr()).await;
    let body = json!({"model": "gpt-sim", "input": "hi", "stream": true,
                      "metadata": {"sim_fault": "stall_within:2500"}});
    let (status, text) = h2_request(&mut sender, Some(&body)).await;
    assert_eq!(status, 200);
    assert_eq!(
        parse_sse(&text).last().unwrap()["type"],
        "response.completed"
    );
    assert_eq!(h2_request(&mut sender, None).await.0, 200);
    // Then idle: closed (GOAWAY) within two periods, not before one.
    let started = tokio::time::Instant::now();
    tokio::time::timeout(PATIENCE, closed)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap();
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2500),
        "closed after {idle:?} idle"
    );
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.max_connections = 1;
    })
    .await;
    let holder = TcpStream::connect(bridge.proxy.addr()).await.unwrap();
    // Give the proxy time to accept the first connection before the second arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = TcpStream::connect(bridge.proxy.addr()).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(300), waiting.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "served while the only slot was taken: {answer:?}"
    );
    drop(holder);
    tokio::time::timeout(PATIENCE, waiting.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 200);
}

#[tokio::test]
async fn keys_that_never_work_leave_no_state_behind() {
    let mut simulator = SimulatorConfig::default();
    simulator.faults.upgrade_status = 401;
    let bridge = bridge_with(simulator, |_| {}).await;
    assert_failing_keys_leave_nothing(&bridge, 401).await;
}

/// Sends requests with 20 different keys, each answered `status`, then checks the pool
/// holds state for no key.
async fn assert_failing_keys_leave_nothing(bridge: &Bridge, status: u16) {
    for n in 0..20 {
        let reply = request(
            "POST",
            &format!("{}/responses", bridge.url()),
            Some(&format!("sk-failing-{n}")),
            Some(json!({"model": "gpt-sim", "input": "hi"}).to_string()),
        )
        .await;
        assert_eq!(reply.status, status, "{}", reply.body);
    }
    assert_eq!(
        bridge
            .wait_for_metric("wsbridge_pool_credentials", |n| n == 0.0)
            .await,
        0.0
    );
    assert!(
        bridge
            .metrics()
            .await
            .contains("\nwsbridge_pool_credentials 0\n")
    );
}

#[tokio::test]
async fn keys_whose_upstream_is_unreachable_leave_no_state_behind() {
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.upstream.base_url = BaseUrl::parse(&format!("http://{unreachable}/v1")).unwrap();
        config.upstream.max_attempts = 1;
    })
    .await;
    assert_failing_keys_leave_nothing(&bridge, 502).await;
}

#[tokio::test]
async fn when_the_shutdown_grace_runs_out_every_stream_ends_with_a_terminal_event() {
    let bridge = bridge_with(SimulatorConfig::default(), |config| {
        config.server.shutdown_grace = Duration::from_millis(500);
    })
    .await;
    let url = bridge.url();
    // Streams that stall after their first delta, far longer than the grace.
    let mut streams = Vec::new();
    for _ in 0..5 {
        let url = url.clone();
        streams.push(tokio::spawn(async move {
            let body = json!({"model": "gpt-sim", "input": "hi", "stream": true,
                              "metadata": {"sim_fault": "stall_within:8000"}});
            request_partial(&format!("{url}/responses"), &body).await
        }));
    }
    // A JSON request and a stream still waiting for their first event.
    let waiting_json = {
        let url = url.clone();
        tokio::spawn(async move {
            let body = json!({"model": "gpt-sim", "input": "hi", "metadata": {"sim_fault": "stall_before:8000"}});
            post_json(&url, &body).await
        })
    };
    let midway_json = {
        let url = url.clone();
        tokio::spawn(async move {
            let body = json!({"model": "gpt-sim", "input": "hi", "metadata": {"sim_fault": "stall_within:8000"}});
            post_json(&url, &body).await
        })
    };
    // Every request holds its upstream socket before the shutdown starts.
    bridge
        .wait_for_metric("wsbridge_upstream_sockets{state=\"busy\"}", |n| n == 7.0)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Bridge { sim: _sim, proxy } = bridge;
    proxy.shutdown().await;
    for stream in streams {
        let (status, body, clean) = stream.await.unwrap();
        assert_eq!(status, 200);
        assert!(clean, "the body must end cleanly: {body}");
        let events = parse_sse(&body);
        let terminal: Vec<_> = events.iter().filter(|event| is_terminal(event)).collect();
        assert_eq!(terminal.len(), 1, "{body}");
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.failed", "{body}");
        assert_eq!(last["response"]["error"]["code"], "server_shutting_down");
        assert_consecutive_sequence_numbers(&events);
    }
    for reply in [waiting_json.await.unwrap(), midway_json.await.unwrap()] {
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.json()["error"]["code"], "server_shutting_down");
    }
}
