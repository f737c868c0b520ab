//! `cluster`: three replicas vs a single instance, a client spreading each conversation's turns
//! over the replicas round-robin (as a load balancer does): continuation hit rate and upload,
//! and the added latency of the forwarding hop (a forwarded turn vs one its receiver owns).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Conversation, continued_from_previous, percent};
use crate::load::{self, HttpClient, Process, pct, table};
use crate::{Options, ratio, us, us_delta};

const SECRET: &str = "bench-cluster-secret-0123456789";

/// Three replicas on loopback ports chosen before any starts (each lists all of them).
fn replicas(upstream: &str) -> Vec<Process> {
    let listeners: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(listeners);
    let peers = serde_json::to_string(
        &addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    addrs
        .iter()
        .map(|addr| {
            Process::proxy_on(
                addr,
                upstream,
                &[
                    ("WSBRIDGE_POOL_MIN_IDLE", "0".into()),
                    ("WSBRIDGE_CLUSTER_PEERS", peers.clone()),
                    ("WSBRIDGE_CLUSTER_SELF", format!("http://{addr}")),
                    ("WSBRIDGE_CLUSTER_SECRET", SECRET.into()),
                ],
            )
        })
        .collect()
}

/// Runs `count` conversations of `calls` tool calls at once (seeds from `seed`), turn `t` of
/// conversation `i` sent to `bases[(i + t) % bases.len()]`.
async fn spread(bases: &[String], count: usize, calls: u32, seed: usize) -> Vec<Conversation> {
    let client = load::client();
    let bases = Arc::new(bases.to_vec());
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, bases) = (client.clone(), bases.clone());
            tokio::spawn(async move {
                let mut conversation = Conversation::new(seed + i, calls);
                let mut turn = i;
                while !conversation.done() {
                    conversation.turn(&client, &bases[turn % bases.len()]).await;
                    turn += 1;
                }
                conversation
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    done
}

/// Upstream bytes of the conversations' turns, per turn.
fn bytes_per_turn(stats: &Value, conversations: &[Conversation]) -> f64 {
    let turns = stats["turns"].as_array().unwrap();
    let (mut bytes, mut count) = (0, 0);
    for turn in turns {
        let id = turn["response_id"].as_str().unwrap_or("");
        if conversations.iter().any(|c| c.ids.iter().any(|i| i == id)) {
            bytes += turn["bytes"].as_u64().unwrap_or(0);
            count += 1;
        }
    }
    bytes as f64 / f64::from(count.max(1))
}

fn forwarded(replica: &Process) -> u64 {
    replica
        .get("/metrics")
        .lines()
        .find_map(|line| line.strip_prefix("wsbridge_cluster_forwarded_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Conversations one after another, turns round-robin over `replicas`: each turn's time to its
/// response head, split by whether the receiving replica forwarded it (its
/// `wsbridge_cluster_forwarded_total` moved) or served it itself.
async fn hop_times(
    client: &HttpClient,
    replicas: &[&Process],
    loops: usize,
    calls: u32,
    seed: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut local, mut hop) = (Vec::new(), Vec::new());
    for n in 0..loops {
        let mut conversation = Conversation::new(seed + n, calls);
        let mut turn = n;
        while !conversation.done() {
            let replica = replicas[turn % replicas.len()];
            let before = forwarded(replica);
            let time = conversation.turn(client, &replica.base_url()).await;
            if forwarded(replica) > before {
                hop.push(time);
            } else {
                local.push(time);
            }
            turn += 1;
        }
    }
    local.sort_unstable();
    hop.sort_unstable();
    (local, hop)
}

/// Table i: the continuation hit rate and upload of `count` concurrent loops of `calls` tool
/// calls, through `single` vs spread round-robin over `three`.
async fn continuation(
    sim: &Process,
    single: &Process,
    three: &[Process],
    count: usize,
    calls: u32,
) {
    let bases: Vec<String> = three.iter().map(Process::base_url).collect();

    let alone = spread(&[single.base_url()], count, calls, 0).await;
    let spread_out = spread(&bases, count, calls, 0).await;
    let stats = sim.sim_stats();
    let answers = |c: &[Conversation]| c.iter().map(|c| c.answer.clone()).collect::<Vec<_>>();
    assert_eq!(answers(&alone), answers(&spread_out), "same answers");
    let mut rows = Vec::new();
    for (name, conversations) in [
        ("single instance", &alone),
        ("3 replicas, round-robin", &spread_out),
    ] {
        let (continued, later) = continued_from_previous(&stats, conversations);
        assert!(
            continued * 100 >= later * 99,
            "{name}: {continued} of {later} later turns continued (owner routing keeps ≥ 99 %)"
        );
        rows.push(vec![
            name.into(),
            format!("{} ({continued} / {later})", percent(continued, later)),
            format!("{:.0}", bytes_per_turn(&stats, conversations)),
        ]);
    }
    println!(
        "## i. Cluster: {count} concurrent tool loops of {calls} calls, each turn to the next replica round-robin\n"
    );
    table(
        &[
            "path",
            "later turns continued from the previous turn",
            "upstream bytes per turn",
        ],
        &rows,
    );
}

pub async fn cluster(options: &Options) {
    let (count, calls, loops) = if options.quick {
        (3, 4, 2)
    } else {
        (10, 20, 10)
    };
    // No latency model: the hop's own cost is what shows.
    let sim = Process::simulator(&[]);
    let single = Process::proxy(&sim.base_url(), &[("WSBRIDGE_POOL_MIN_IDLE", "0".into())]);
    let three = replicas(&sim.base_url());
    continuation(&sim, &single, &three, count, calls).await;

    let client = load::client();
    let (single_times, _) = hop_times(&client, &[&single], loops, calls, 1000).await;
    let (local, hop) = hop_times(
        &client,
        &three.iter().collect::<Vec<_>>(),
        loops,
        calls,
        2000,
    )
    .await;
    assert!(!hop.is_empty() && !local.is_empty(), "both kinds of turn");
    let row = |name: &str, v: &[Duration]| {
        vec![
            name.to_owned(),
            v.len().to_string(),
            us(pct(v, 50.0)),
            us(pct(v, 99.0)),
            format!(
                "{} / {}",
                us_delta(pct(v, 50.0), pct(&local, 50.0)),
                us_delta(pct(v, 99.0), pct(&local, 99.0))
            ),
            format!("{:.2}", ratio(pct(v, 50.0), pct(&local, 50.0))),
        ]
    };
    println!(
        "## i2. Cluster: the forwarding hop, {loops} tool loops of {calls} calls one after another (µs to the response head of a non-streaming turn; simulator without latency model)\n"
    );
    table(
        &[
            "turn",
            "turns",
            "p50",
            "p99",
            "vs local p50 / p99",
            "p50 ratio vs local",
        ],
        &[
            row("single instance", &single_times),
            row("3 replicas: served by the receiver (owner)", &local),
            row("3 replicas: **forwarded to the owner**", &hop),
        ],
    );
    drop((sim, single, three));
}
