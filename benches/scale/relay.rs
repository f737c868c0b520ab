//! `relay`: a WebSocket-mode client's first turn on a new connection, relayed through wsbridge
//! (its pool warm, so no upstream handshake on the way) vs the same client connecting straight
//! to the simulator, which makes it pay the profile's handshakes (`connect_ms` and
//! `upgrade_ms`): time from the start of the connect to `response.created` and to the terminal
//! event.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use super::{profile, profile_name};
use crate::load::{self, Process, pct, table};
use crate::{KEY, Options, ms, ratio};

/// Connect, one `response.create`, read to its terminal event, close: when `response.created`
/// and the terminal event arrived, counted from the start of the connect.
async fn first_turn(url: &str, frame: &str) -> Option<(Duration, Duration)> {
    let started = Instant::now();
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.ok()?;
    socket.send(Message::text(frame)).await.ok()?;
    let mut created = None;
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let kind = wsbridge::protocol::sse::event_type(&text).unwrap_or_default();
        match &*kind {
            "response.created" => created = Some(started.elapsed()),
            "response.completed" => {
                let done = started.elapsed();
                let _ = socket.close(None).await;
                return Some((created?, done));
            }
            "response.failed" | "response.incomplete" | "error" => return None,
            _ => {}
        }
    }
    None
}

/// `concurrency` clients, each opening `per_client` connections one after another; the sorted
/// times to `response.created` and to the terminal event, and the failures.
async fn first_turns(
    url: &str,
    concurrency: usize,
    per_client: usize,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let frame = serde_json::json!({"type": "response.create", "model": "gpt-bench",
                                   "input": "relay", "store": false})
    .to_string();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, frame) = (url.to_owned(), frame.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..per_client {
                    times.push(first_turn(&url, &frame).await);
                }
                times
            })
        })
        .collect();
    let (mut created, mut done, mut failures) = (Vec::new(), Vec::new(), 0);
    for task in tasks {
        for time in task.await.unwrap() {
            match time {
                Some((c, d)) => {
                    created.push(c);
                    done.push(d);
                }
                None => failures += 1,
            }
        }
    }
    created.sort_unstable();
    done.sort_unstable();
    (created, done, failures)
}

pub async fn relay(options: &Options) {
    let levels: &[usize] = if options.quick { &[1, 4] } else { &[1, 16] };
    let mut rows = Vec::new();
    for &concurrency in levels {
        let per_client = match (options.quick, concurrency) {
            (true, _) => 3,
            (false, 1) => 60,
            (false, _) => 10,
        };
        let sim = Process::simulator(&profile(options.quick));
        // Warm: at least as many idle sockets as clients connect at once.
        let proxy = Process::proxy(
            &sim.base_url(),
            &[("WSBRIDGE_POOL_MIN_IDLE", concurrency.to_string())],
        );
        // Warm-up on both paths; then wait for the pool's idle sockets.
        first_turns(&sim.ws_url(), concurrency, 1).await;
        first_turns(&proxy.ws_url(), concurrency, 1).await;
        load::wait_until(Duration::from_secs(30), || {
            sim.sim_stats()["sockets_open"].as_u64() >= Some(concurrency as u64)
        })
        .await;
        let opened_before = sim.sim_stats()["sockets_opened"].as_u64().unwrap_or(0);
        let (d_created, d_done, d_failed) =
            first_turns(&sim.ws_url(), concurrency, per_client).await;
        let after_direct = sim.sim_stats()["sockets_opened"].as_u64().unwrap_or(0);
        let (r_created, r_done, r_failed) =
            first_turns(&proxy.ws_url(), concurrency, per_client).await;
        let after_relay = sim.sim_stats()["sockets_opened"].as_u64().unwrap_or(0);
        assert_eq!(d_failed + r_failed, 0, "every first turn completes");
        let both = |v: &[Duration]| format!("{} / {}", ms(pct(v, 50.0)), ms(pct(v, 99.0)));
        let delta =
            |r: Duration, d: Duration| format!("{:+.1}", (r.as_secs_f64() - d.as_secs_f64()) * 1e3);
        let added = |r: &[Duration], d: &[Duration]| {
            format!(
                "**{} / {}**",
                delta(pct(r, 50.0), pct(d, 50.0)),
                delta(pct(r, 99.0), pct(d, 99.0))
            )
        };
        rows.push(vec![
            concurrency.to_string(),
            r_created.len().to_string(),
            both(&d_created),
            both(&r_created),
            added(&r_created, &d_created),
            both(&d_done),
            both(&r_done),
            added(&r_done, &d_done),
            format!("{:.3}", ratio(pct(&r_done, 50.0), pct(&d_done, 50.0))),
            format!(
                "{} / {}",
                after_direct - opened_before,
                after_relay - after_direct
            ),
        ]);
    }
    println!(
        "## h. WebSocket relay: a client's first turn on a new connection, from the start of its connect (ms; p50 / p99; {} latency profile)\n",
        profile_name(options.quick)
    );
    table(
        &[
            "concurrent clients",
            "connections",
            "to response.created, direct",
            "to response.created, relayed",
            "relayed − direct",
            "to response.completed, direct",
            "to response.completed, relayed",
            "relayed − direct",
            "completed ratio p50 (relayed / direct)",
            "upstream handshakes, direct / relayed",
        ],
        &rows,
    );
}
