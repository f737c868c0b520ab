//! End-to-end benchmarks: the simulator and the proxy as separate processes (the release build
//! of `wsbridge`), driven by the SSE-aware load generator in `benches/load/`. Every table
//! compares against a baseline measured in the same run.
//!
//! ```text
//! cargo bench --bench e2e                      # every scenario, full counts
//! cargo bench --bench e2e -- --quick           # small counts
//! cargo test --bench e2e                       # quick mode on the debug build: checks that it
//!                                              # runs (CI does this), says nothing about speed
//! cargo bench --bench e2e -- latency capacity  # some scenarios
//! ```
//!
//! `BENCH_PROXY_ENV=KEY=VALUE,...` adds environment to the latency scenario's proxy (for
//! experiments such as `WSBRIDGE_CONTINUATION_ENABLED=false`).
//!
//! Scenarios: `latency` (added time to first event and inter-event gap vs a WebSocket client
//! talking to the simulator directly, concurrency sweep), `capacity` (stall-free concurrent
//! streams, CPU per 1,000 events), `memory` (RSS idle, per pooled socket, per conversation, peak,
//! after load), `agent` (a 20-tool-call loop: REST direct vs through wsbridge, calibrated
//! latency), `chat` (the same loop as a Chat Completions client: the simulator's chat endpoint
//! direct vs through wsbridge), `cpu` (CPU per request against nginx, when nginx is installed), `passthrough`
//! (REST pass-through added latency; with `--peer NAME=URL` also for
//! other proxies, see `benches/peers.sh`), and in `benches/scale/`: `lanes` (sockets, RSS and
//! continuations for 64 and 512 concurrent conversations, `upstream.lanes` off vs on), `relay`
//! (a WebSocket client's first turn relayed vs direct), `cluster` (three replicas vs one:
//! continuation hit rate, added latency of the forwarding hop).

#![allow(
    clippy::disallowed_types,
    reason = "benchmarks time real processes on the wall clock"
)]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]
#![allow(clippy::print_stdout, reason = "benchmarks print their tables")]

mod load;
mod scale;

use std::time::{Duration, Instant};

use load::{Process, pct, table};
use serde_json::{Value, json};

const KEY: &str = "sk-bench";

struct Options {
    quick: bool,
    scenarios: Vec<String>,
    peers: Vec<(String, String)>,
    upstream: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        quick: false,
        scenarios: Vec::new(),
        peers: Vec::new(),
        upstream: None,
    };
    // `cargo bench` passes `--bench`; without it this is `cargo test`: a quick smoke run.
    options.quick = !std::env::args().any(|arg| arg == "--bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--bench" => {}
            "--peer" => {
                let spec = args.next().expect("--peer NAME=URL");
                let (name, url) = spec.split_once('=').expect("--peer NAME=URL");
                options.peers.push((name.to_owned(), url.to_owned()));
            }
            "--upstream" => options.upstream = Some(args.next().expect("--upstream URL")),
            other if !other.starts_with('-') => options.scenarios.push(other.to_owned()),
            _ => {}
        }
    }
    if options.scenarios.is_empty() {
        options.scenarios = [
            "latency",
            "capacity",
            "memory",
            "agent",
            "chat",
            "passthrough",
            "cpu",
            "lanes",
            "relay",
            "cluster",
        ]
        .map(str::to_owned)
        .to_vec();
    }
    options
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "# wsbridge end-to-end benchmarks ({} mode)\n\n{}\n",
        if options.quick { "quick" } else { "full" },
        load::machine()
    );
    runtime.block_on(async {
        for scenario in &options.scenarios {
            let started = Instant::now();
            match scenario.as_str() {
                "latency" => latency(&options).await,
                "capacity" => capacity(&options).await,
                "memory" => memory(&options).await,
                "agent" => agent_loop(&options).await,
                "chat" => chat_loop(&options).await,
                "passthrough" => passthrough(&options).await,
                "cpu" => cpu(&options).await,
                "lanes" => scale::lanes(&options).await,
                "relay" => scale::relay(&options).await,
                "cluster" => scale::cluster(&options).await,
                other => panic!("unknown scenario {other}"),
            }
            println!("_({scenario}: {:.1} s)_\n", started.elapsed().as_secs_f64());
        }
    });
}

/// A simulator pacing its output at `per_token_ms` and a proxy in front of it.
async fn pair(per_token_ms: f64, words: u32, proxy_env: &[(&str, String)]) -> (Process, Process) {
    let sim = Process::simulator(&[
        ("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom".into()),
        (
            "WSBRIDGE_SIMULATOR_LATENCY_PER_TOKEN_MS",
            per_token_ms.to_string(),
        ),
        ("WSBRIDGE_SIMULATOR_ANSWER_WORDS", words.to_string()),
    ]);
    let mut env = vec![
        ("WSBRIDGE_POOL_MAX_SOCKETS", "4096".to_owned()),
        ("WSBRIDGE_POOL_MIN_IDLE", "0".to_owned()),
    ];
    env.extend(proxy_env.iter().map(|(k, v)| (*k, v.clone())));
    let proxy = Process::proxy(&sim.base_url(), &env);
    (sim, proxy)
}

fn request(input: &str) -> Value {
    json!({"model": "gpt-bench", "input": input, "stream": true, "store": false})
}

/// Added time to first event and inter-event gap, proxy vs WebSocket-direct, by concurrency.
async fn latency(options: &Options) {
    let levels: &[usize] = if options.quick {
        &[1, 16]
    } else {
        &[1, 16, 64, 256]
    };
    let mut rows = Vec::new();
    for &concurrency in levels {
        // Each request is a new conversation, so it takes an empty socket: keep as many
        // pre-warmed as there are clients (the pool refills them in the background).
        let mut env = vec![("WSBRIDGE_POOL_MIN_IDLE", concurrency.to_string())];
        if let Ok(extra) = std::env::var("BENCH_PROXY_ENV") {
            for pair in extra.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((Box::leak(k.to_owned().into_boxed_str()), v.to_owned()));
            }
        }
        let (sim, proxy) = pair(1.0, 32, &env).await;
        let per_client = if options.quick {
            5
        } else {
            (400 / concurrency).clamp(4, 100)
        };
        let body = request("latency");
        // Warm-up: connections on both paths, the pool filled.
        load::ws_streams(&sim.ws_url(), KEY, &body, concurrency, 1).await;
        load::sse_streams(&proxy.base_url(), KEY, &body, concurrency, 1).await;
        let direct = load::ws_streams(&sim.ws_url(), KEY, &body, concurrency, per_client).await;
        // The second floor: what a REST client streaming straight from the simulator sees
        // (the same HTTP/SSE client as through wsbridge, so the protocol's own cost is in both).
        let rest = load::sse_streams(&sim.base_url(), KEY, &body, concurrency, per_client).await;
        let through =
            load::sse_streams(&proxy.base_url(), KEY, &body, concurrency, per_client).await;
        assert_eq!(
            direct.failures + rest.failures + through.failures,
            0,
            "every stream completes"
        );
        let (d_first, p_first) = (direct.first_event(), through.first_event());
        let r_first = rest.first_event();
        let (r_byte, p_byte) = (rest.first_byte(), through.first_byte());
        let (d_gap, p_gap) = (direct.gaps(), through.gaps());
        rows.push(vec![
            concurrency.to_string(),
            through.streams.to_string(),
            format!("{} / {}", us(pct(&r_byte, 50.0)), us(pct(&p_byte, 50.0))),
            format!("{} / {}", us(pct(&d_first, 50.0)), us(pct(&d_first, 99.0))),
            format!("{} / {}", us(pct(&r_first, 50.0)), us(pct(&r_first, 99.0))),
            format!("{} / {}", us(pct(&p_first, 50.0)), us(pct(&p_first, 99.0))),
            format!(
                "**{} / {}**",
                us_delta(pct(&p_first, 50.0), pct(&d_first, 50.0)),
                us_delta(pct(&p_first, 99.0), pct(&d_first, 99.0))
            ),
            format!(
                "{} / {}",
                us_delta(pct(&p_first, 50.0), pct(&r_first, 50.0)),
                us_delta(pct(&p_first, 99.0), pct(&r_first, 99.0))
            ),
            format!("{} / {}", us(pct(&d_gap, 50.0)), us(pct(&d_gap, 99.0))),
            format!("{} / {}", us(pct(&p_gap, 50.0)), us(pct(&p_gap, 99.0))),
            format!(
                "**{} / {}**",
                us_delta(pct(&p_gap, 50.0), pct(&d_gap, 50.0)),
                us_delta(pct(&p_gap, 99.0), pct(&d_gap, 99.0))
            ),
            format!("{:.2}", ratio(pct(&p_first, 50.0), pct(&d_first, 50.0))),
        ]);
        drop((sim, proxy));
    }
    println!("## a. Added latency, streaming (µs; p50 / p99; deltas paced at 1 ms)\n");
    table(
        &[
            "concurrency",
            "streams",
            "first byte p50, REST direct / via wsbridge",
            "first event, WS direct",
            "first event, REST direct (SSE)",
            "first event, via wsbridge",
            "added first event (vs WS direct)",
            "vs REST direct",
            "gap, WS direct",
            "gap, via wsbridge",
            "added gap",
            "first-event ratio p50",
        ],
        &rows,
    );
}

/// The largest number of concurrent paced streams with no lost event and no gap above 10×
/// the pacing; CPU per 1,000 events.
async fn capacity(options: &Options) {
    const PACE_MS: f64 = 20.0;
    let (sim, proxy) = pair(PACE_MS, 64, &[]).await;
    let levels: &[usize] = if options.quick {
        &[20, 50]
    } else {
        &[250, 500, 1000, 2000, 3000]
    };
    let body = request("capacity");
    // A reference stream: how many events a complete stream has.
    let reference = load::sse_streams(&proxy.base_url(), KEY, &body, 1, 1).await;
    let expected = reference.events_per_stream();
    let mut rows = Vec::new();
    let mut peak_rss = 0;
    let stall_free = |lost: usize, max_gap: Duration| {
        lost == 0 && max_gap < Duration::from_secs_f64(PACE_MS * 10.0 / 1000.0)
    };
    let verdict = |ok: bool| if ok { "yes" } else { "**no**" }.to_owned();
    for &streams in levels {
        // The floor: the same streams over WebSockets straight to the simulator, on the same
        // machine (whose two cores the load generator shares).
        let direct = load::ws_streams(&sim.ws_url(), KEY, &body, streams, 1).await;
        let direct_max_gap = direct.gaps().last().copied().unwrap_or_default();
        let direct_ok = stall_free(
            direct.lost_events(expected) + direct.failures * expected,
            direct_max_gap,
        );
        let cpu_before = proxy.cpu_time();
        let run = load::sse_streams(&proxy.base_url(), KEY, &body, streams, 1).await;
        let cpu = proxy.cpu_time() - cpu_before;
        peak_rss = peak_rss.max(proxy.peak_rss_kib());
        let lost = run.lost_events(expected) + run.failures * expected;
        let max_gap = run.gaps().last().copied().unwrap_or_default();
        let gaps = run.gaps();
        let events = run.events.max(1);
        rows.push(vec![
            streams.to_string(),
            run.failures.to_string(),
            lost.to_string(),
            ms(pct(&gaps, 50.0)),
            ms(pct(&gaps, 99.0)),
            ms(max_gap),
            verdict(stall_free(lost, max_gap)),
            format!("{} / {}", ms(direct_max_gap), verdict(direct_ok)),
            format!("{:.1}", cpu.as_secs_f64() * 1000.0 / events as f64 * 1000.0),
        ]);
    }
    println!("## b. Capacity ({expected} events per stream, deltas every {PACE_MS} ms)\n");
    table(
        &[
            "concurrent streams",
            "failed",
            "lost events",
            "gap p50 (ms)",
            "gap p99 (ms)",
            "max gap (ms)",
            "stall-free (< 10× pacing)",
            "WS direct: max gap (ms) / stall-free",
            "proxy CPU ms / 1,000 events",
        ],
        &rows,
    );
    println!(
        "Proxy peak RSS during the capacity runs: {:.1} MiB.\n",
        peak_rss as f64 / 1024.0
    );
    drop((sim, proxy));
}

/// RSS of the proxy: idle, with idle pooled sockets, with tracked conversations, at peak, and
/// after the load is gone.
async fn memory(options: &Options) {
    let (sockets, conversations, burst) = if options.quick {
        (20, 20, 50)
    } else {
        (500, 500, 1000)
    };
    let sim = Process::simulator(&[]);
    // Inject mode pre-warms `min_idle` sockets for its one credential at start.
    let warm = Process::proxy(
        &sim.base_url(),
        &[
            ("WSBRIDGE_AUTH_MODE", "inject".into()),
            ("OPENAI_API_KEY", KEY.into()),
            ("WSBRIDGE_POOL_MIN_IDLE", sockets.to_string()),
            ("WSBRIDGE_POOL_MAX_SOCKETS", "4096".into()),
        ],
    );
    // Sockets left idle by the burst stay pooled until the idle timeout: a short one here, so
    // the run also shows what the process keeps once they are gone.
    const IDLE_TIMEOUT_SECS: u64 = 4;
    let plain = Process::proxy(
        &sim.base_url(),
        &[
            ("WSBRIDGE_POOL_MIN_IDLE", "0".into()),
            ("WSBRIDGE_POOL_MAX_SOCKETS", "4096".into()),
            (
                "WSBRIDGE_POOL_IDLE_TIMEOUT_SECS",
                IDLE_TIMEOUT_SECS.to_string(),
            ),
        ],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = plain.rss_kib();
    load::wait_until(Duration::from_secs(60), || {
        sim.sim_stats()["sockets_open"].as_u64() >= Some(sockets as u64)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pooled = warm.rss_kib();
    drop(warm);

    // Conversations: each leaves its head on its own socket.
    let before = plain.rss_kib();
    let batch = 50.min(conversations);
    for start in (0..conversations).step_by(batch) {
        let mut tasks = Vec::new();
        for n in start..(start + batch).min(conversations) {
            let url = plain.base_url();
            tasks.push(tokio::spawn(async move {
                let body = json!({"model": "gpt-bench", "input": format!("conversation {n}"), "store": false});
                load::post(&url, KEY, &body).await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().0, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tracked = plain.rss_kib();
    let body = request("burst");
    let run = load::sse_streams(&plain.base_url(), KEY, &body, burst, 1).await;
    assert_eq!(run.failures, 0);
    let peak = plain.peak_rss_kib();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = plain.rss_kib();
    load::wait_until(Duration::from_secs(60), || {
        sim.sim_stats()["sockets_open"].as_u64() == Some(0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let drained = plain.rss_kib();
    // The same burst twice more, each once the previous one's sockets are gone: memory the
    // first left behind is reused, so the peak levels off instead of growing with every burst.
    let mut peaks = Vec::new();
    for _ in 0..2 {
        let again = load::sse_streams(&plain.base_url(), KEY, &body, burst, 1).await;
        assert_eq!(again.failures, 0);
        peaks.push(plain.peak_rss_kib());
        load::wait_until(Duration::from_secs(60), || {
            sim.sim_stats()["sockets_open"].as_u64() == Some(0)
        })
        .await;
    }

    println!("## c. Memory (proxy RSS, MiB)\n");
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    table(
        &["state", "RSS", "per unit"],
        &[
            vec!["idle (fresh process)".into(), mib(idle), "".into()],
            vec![
                format!("{sockets} idle pooled sockets"),
                mib(pooled),
                format!(
                    "{:.1} KiB per socket",
                    pooled.saturating_sub(idle) as f64 / sockets as f64
                ),
            ],
            vec![
                format!("{conversations} tracked conversations (one socket + head each)"),
                mib(tracked),
                format!(
                    "{:.1} KiB per conversation",
                    tracked.saturating_sub(before) as f64 / conversations as f64
                ),
            ],
            vec![
                format!("peak ({burst} concurrent streams on top)"),
                mib(peak),
                "".into(),
            ],
            vec![
                "2 s after the load ended (its sockets still pooled)".into(),
                mib(after),
                "".into(),
            ],
            vec![
                format!("after pool.idle_timeout ({IDLE_TIMEOUT_SECS} s) closed every socket"),
                mib(drained),
                "".into(),
            ],
            vec![
                "peak of each of 2 more bursts of the same size, sockets closed in between".into(),
                peaks
                    .iter()
                    .map(|kib| mib(*kib))
                    .collect::<Vec<_>>()
                    .join(" → "),
                "".into(),
            ],
        ],
    );
    drop((sim, plain));
}

/// Which API a tool-loop scenario's client speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Responses,
    Chat,
}

/// The headline: a 20-tool-call loop resending its full history every turn, REST direct to the
/// simulator vs the same client through wsbridge, with the calibrated latency profile.
async fn agent_loop(options: &Options) {
    tool_loop(options, Api::Responses).await;
}

/// The same loop as a Chat Completions client runs it (`messages` resent every turn): direct
/// to the simulator's chat endpoint vs through wsbridge, which bridges each request onto a
/// Responses turn over its sockets, continued from the one before.
async fn chat_loop(options: &Options) {
    tool_loop(options, Api::Chat).await;
}

async fn tool_loop(options: &Options, api: Api) {
    let loops = if options.quick { 1 } else { 3 };
    // Quick mode scales the profile down 10× (same ratios, a tenth of the wait).
    let env = load::simulator_profile(options.quick);
    let sim = Process::simulator(&env);
    let proxy = Process::proxy(&sim.base_url(), &[("WSBRIDGE_POOL_MIN_IDLE", "0".into())]);
    let direct = match api {
        Api::Responses => "REST direct",
        Api::Chat => "chat direct",
    };
    let mut rows = Vec::new();
    let mut times = [Vec::new(), Vec::new()];
    let mut answers_by_path = Vec::new();
    let mut last_turn_bytes = Vec::new();
    for (index, (name, base)) in [(direct, sim.base_url()), ("via wsbridge", proxy.base_url())]
        .into_iter()
        .enumerate()
    {
        let turns_before = sim.sim_stats()["turns"].as_array().map_or(0, Vec::len);
        let mut answers = Vec::new();
        // One client per path for all its loops, as one agent process keeps its connection:
        // the direct path pays the simulator's connect cost once, not once per loop, so the
        // table compares continuations rather than crediting wsbridge with handshakes (that is
        // h). wsbridge pays for each socket it opens: one per loop, since a new conversation
        // gets a new socket rather than another's head.
        let client = load::client();
        for n in 0..loops {
            let started = Instant::now();
            answers.push(match api {
                Api::Responses => load::agent_loop(&client, &base, KEY, 20, n).await,
                Api::Chat => load::chat_loop(&client, &base, KEY, 20, n).await,
            });
            times[index].push(started.elapsed());
        }
        let stats = sim.sim_stats();
        let turns = &stats["turns"].as_array().unwrap()[turns_before..];
        if index == 1 {
            // What the upstream saw through wsbridge: each loop's first turn in full, every
            // later one a continuation over a socket.
            let continued = turns.iter().filter(|t| t["continued"] == true).count();
            assert_eq!(continued, turns.len() - loops, "every later turn continued");
            assert!(turns.iter().all(|t| t["transport"] == "ws"), "bridged");
        }
        let bytes: u64 = turns.iter().map(|t| t["bytes"].as_u64().unwrap_or(0)).sum();
        last_turn_bytes.push(turns.last().map_or(0, |t| t["bytes"].as_u64().unwrap_or(0)));
        let sockets: std::collections::BTreeSet<u64> =
            turns.iter().filter_map(|t| t["socket"].as_u64()).collect();
        let mean = times[index].iter().sum::<Duration>() / loops as u32;
        rows.push(vec![
            name.to_owned(),
            turns.len().to_string(),
            format!("{:.2}", mean.as_secs_f64()),
            format!("{:.0}", bytes as f64 / turns.len().max(1) as f64),
            if sockets.is_empty() {
                "REST".into()
            } else {
                sockets.len().to_string()
            },
            answers[0].chars().take(48).collect::<String>() + "…",
        ]);
        answers_by_path.push(answers);
    }
    assert_eq!(
        answers_by_path[0], answers_by_path[1],
        "every loop's final answer through wsbridge equals the direct one"
    );
    let mean = |v: &Vec<Duration>| v.iter().sum::<Duration>().as_secs_f64() / v.len() as f64;
    let speedup = 1.0 - mean(&times[1]) / mean(&times[0]);
    let profile = if options.quick {
        "openai ÷ 10"
    } else {
        "openai"
    };
    match api {
        Api::Responses => println!(
            "## d. Agent loop: 20 tool calls, full history resent every turn ({profile} latency profile, {loops} loop(s) each)\n"
        ),
        Api::Chat => println!(
            "## d2. Chat Completions tool loop: 20 tool calls, full `messages` resent every turn ({profile} latency profile, {loops} loop(s) each)\n"
        ),
    }
    table(
        &[
            "client path",
            "upstream turns",
            "seconds per loop",
            "upstream bytes per turn",
            "upstream sockets",
            "final answer",
        ],
        &rows,
    );
    println!(
        "wsbridge loop time / {direct} loop time = **{:.2}** ({:.0} % faster); every final answer \
         (it ends with a digest of the whole conversation) identical on both paths; the last \
         turn sent {} bytes upstream directly, {} through wsbridge.\n",
        mean(&times[1]) / mean(&times[0]),
        speedup * 100.0,
        last_turn_bytes[0],
        last_turn_bytes[1],
    );
    drop((sim, proxy));
}

/// Added latency of REST pass-through (`POST /v1/responses`, non-streaming, forced onto the
/// pass-through path) vs talking to the simulator directly; optionally for peer proxies too.
async fn passthrough(options: &Options) {
    let owned_sim;
    let sim_url = match &options.upstream {
        Some(url) => url.clone(),
        None => {
            owned_sim = Process::simulator(&[]);
            owned_sim.base_url()
        }
    };
    // A frame limit of 1 byte sends every POST /v1/responses over the REST pass-through path.
    let rest_proxy = Process::proxy(
        &sim_url,
        &[("WSBRIDGE_UPSTREAM_MAX_FRAME_BYTES", "1".into())],
    );
    let ws_proxy = Process::proxy(&sim_url, &[]);
    let mut targets = vec![
        (
            "wsbridge (REST pass-through)".to_owned(),
            rest_proxy.base_url(),
        ),
        (
            "wsbridge (WebSocket bridge)".to_owned(),
            ws_proxy.base_url(),
        ),
    ];
    targets.extend(options.peers.iter().cloned());
    let levels: &[usize] = if options.quick { &[1, 4] } else { &[1, 8, 32] };
    let per_client = if options.quick { 10 } else { 200 };
    let body = json!({"model": "gpt-bench", "input": "pass me through", "store": false});
    let mut rows = Vec::new();
    for &concurrency in levels {
        let direct = load::posts(&sim_url, KEY, &body, concurrency, per_client).await;
        assert_eq!(direct.failures, 0);
        let (d50, d99) = (pct(&direct.latencies, 50.0), pct(&direct.latencies, 99.0));
        rows.push(vec![
            concurrency.to_string(),
            "direct to the simulator".into(),
            us(d50),
            us(d99),
            "—".into(),
            "—".into(),
        ]);
        for (name, url) in &targets {
            let run = load::posts(url, KEY, &body, concurrency, per_client).await;
            let (p50, p99) = (pct(&run.latencies, 50.0), pct(&run.latencies, 99.0));
            rows.push(vec![
                concurrency.to_string(),
                format!(
                    "{name}{}",
                    if run.failures > 0 {
                        format!(" ({} failed)", run.failures)
                    } else {
                        String::new()
                    }
                ),
                us(p50),
                us(p99),
                format!("**{}**", us_delta(p50, d50)),
                format!("**{}**", us_delta(p99, d99)),
            ]);
        }
    }
    println!("## e. REST pass-through, non-streaming POST /v1/responses (µs)\n");
    table(
        &[
            "concurrency",
            "path",
            "p50",
            "p99",
            "added p50",
            "added p99",
        ],
        &rows,
    );
}

/// CPU per request of the proxy against nginx passing the same answer through, in the same run:
/// one unpaced answer per request, streamed (`stream: true`) and not, at two concurrencies.
/// wsbridge bridges it (HTTP in, WebSocket to the simulator, SSE or JSON out); nginx forwards
/// the simulator's own REST answer. Each request is a new conversation (the pool at its
/// defaults reuses sockets, evicting old heads once it holds `pool.max_sockets`).
async fn cpu(options: &Options) {
    let sim = Process::simulator(&[
        ("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom".into()),
        ("WSBRIDGE_SIMULATOR_LATENCY_PER_TOKEN_MS", "0".into()),
        ("WSBRIDGE_SIMULATOR_ANSWER_WORDS", "10".into()),
    ]);
    let proxy = Process::proxy(&sim.base_url(), &[]);
    // Configured as nginx is here: one worker thread, no access log.
    let lean = Process::proxy(
        &sim.base_url(),
        &[
            ("WSBRIDGE_SERVER_WORKER_THREADS", "1".into()),
            ("WSBRIDGE_LOG_ACCESS", "false".into()),
        ],
    );
    let Some(nginx) = load::Nginx::start(&sim.base_url()) else {
        println!("## f. CPU per request\n\nnginx is not installed: skipped.\n");
        return;
    };
    let per_client_total = if options.quick { 40 } else { 4000 };
    let mut rows = Vec::new();
    for stream in [true, false] {
        for concurrency in [1, 16] {
            let body =
                json!({"model": "gpt-bench", "input": "cpu", "stream": stream, "store": false});
            let per_client = per_client_total / concurrency;
            let measure = async |base: &str, cpu: &dyn Fn() -> Duration| {
                // Warm-up: connections, and (for wsbridge) a pool past `pool.max_sockets`.
                run(base, &body, stream, concurrency, 100 / concurrency + 1).await;
                let before = cpu();
                let (requests, events) = run(base, &body, stream, concurrency, per_client).await;
                let spent = cpu() - before;
                (spent.as_secs_f64() * 1e6 / requests as f64, events)
            };
            let (nginx_us, events) = measure(&nginx.base_url(), &|| nginx.cpu_time()).await;
            let (proxy_us, _) = measure(&proxy.base_url(), &|| proxy.cpu_time()).await;
            let (lean_us, _) = measure(&lean.base_url(), &|| lean.cpu_time()).await;
            rows.push(vec![
                if stream {
                    format!("stream ({events} events)")
                } else {
                    "stream: false".into()
                },
                concurrency.to_string(),
                (per_client * concurrency).to_string(),
                format!("{nginx_us:.0}"),
                format!("{proxy_us:.0}"),
                format!("{lean_us:.0}"),
                format!("{:.2}", proxy_us / nginx_us),
                format!("**{:.2}**", lean_us / nginx_us),
            ]);
        }
    }
    println!(
        "## f. CPU per request: wsbridge bridging vs nginx passing the same answer through (µs)\n"
    );
    table(
        &[
            "request",
            "concurrency",
            "requests",
            "nginx, 1 worker, no access log (REST pass-through)",
            "wsbridge, defaults (WebSocket bridge)",
            "wsbridge, 1 worker thread, no access log",
            "defaults / nginx",
            "1 thread / nginx",
        ],
        &rows,
    );
}

/// `per_client` requests from each of `concurrency` clients; returns how many completed and
/// the events per stream (0 for `stream: false`). Panics on a failure: CPU of failed requests
/// would not compare.
async fn run(
    base: &str,
    body: &Value,
    stream: bool,
    concurrency: usize,
    per_client: usize,
) -> (usize, usize) {
    if stream {
        let run = load::sse_streams(base, KEY, body, concurrency, per_client).await;
        assert_eq!(run.failures, 0, "every stream completes");
        (run.streams, run.events_per_stream())
    } else {
        let run = load::posts(base, KEY, body, concurrency, per_client).await;
        assert_eq!(run.failures, 0, "every request completes");
        (run.latencies.len(), 0)
    }
}

fn us(duration: Duration) -> String {
    format!("{:.0}", duration.as_secs_f64() * 1e6)
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e3)
}

fn us_delta(a: Duration, b: Duration) -> String {
    format!("{:+.0}", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
