//! `lanes`: N concurrent conversations of one credential (a few turns each) with
//! `upstream.lanes` off (a socket per conversation) vs on (`stream_id` lanes, ≤ 16 turns in
//! flight and ≤ 32 lanes per socket): upstream sockets opened, proxy RSS, continuation rate.

use std::sync::Arc;
use std::time::Instant;

use super::{Conversation, continued_from_previous, mib, percent, profile, profile_name};
use crate::Options;
use crate::load::{self, Process, table};

/// Tool calls per conversation: 1 + CALLS turns.
const CALLS: u32 = 2;

/// What one run (one fresh simulator and proxy) measured.
struct Run {
    opened: u64,
    open_after: u64,
    idle_rss: u64,
    peak_rss: u64,
    after_rss: u64,
    continued: usize,
    later: usize,
    seconds: f64,
    answers: Vec<String>,
}

async fn run(options: &Options, conversations: usize, lanes: bool) -> Run {
    let sim = Process::simulator(&profile(options.quick));
    let proxy = Process::proxy(
        &sim.base_url(),
        &[
            ("WSBRIDGE_UPSTREAM_LANES", lanes.to_string()),
            ("WSBRIDGE_POOL_MIN_IDLE", "0".into()),
            ("WSBRIDGE_POOL_MAX_SOCKETS", "4096".into()),
        ],
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let idle_rss = proxy.rss_kib();
    let client = load::client();
    let base = Arc::new(proxy.base_url());
    let started = Instant::now();
    let tasks: Vec<_> = (0..conversations)
        .map(|n| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                let mut conversation = Conversation::new(n, CALLS);
                while !conversation.done() {
                    conversation.turn(&client, &base).await;
                }
                conversation
            })
        })
        .collect();
    let mut done = Vec::with_capacity(conversations);
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = sim.sim_stats();
    let (continued, later) = continued_from_previous(&stats, &done);
    let after_rss = proxy.rss_kib();
    Run {
        opened: stats["sockets_opened"].as_u64().unwrap_or(0),
        open_after: stats["sockets_open"].as_u64().unwrap_or(0),
        idle_rss,
        peak_rss: proxy.peak_rss_kib(),
        after_rss,
        continued,
        later,
        seconds,
        answers: done.into_iter().map(|c| c.answer.unwrap()).collect(),
    }
}

pub async fn lanes(options: &Options) {
    let levels: &[usize] = if options.quick { &[16, 64] } else { &[64, 512] };
    let mut rows = Vec::new();
    for &conversations in levels {
        let off = run(options, conversations, false).await;
        let on = run(options, conversations, true).await;
        assert_eq!(off.answers, on.answers, "lanes change no answer");
        for r in [&off, &on] {
            assert_eq!(r.continued, r.later, "every later turn continued");
        }
        for (name, r) in [("off", &off), ("on", &on)] {
            rows.push(vec![
                conversations.to_string(),
                name.into(),
                r.opened.to_string(),
                r.open_after.to_string(),
                mib(r.idle_rss),
                mib(r.peak_rss),
                mib(r.after_rss),
                format!(
                    "{:.1}",
                    r.after_rss.saturating_sub(r.idle_rss) as f64 / conversations as f64
                ),
                format!(
                    "{} ({} / {})",
                    percent(r.continued, r.later),
                    r.continued,
                    r.later
                ),
                format!("{:.2}", r.seconds),
            ]);
        }
        rows.push(vec![
            conversations.to_string(),
            "**on / off**".into(),
            format!("**{:.3}**", on.opened as f64 / off.opened.max(1) as f64),
            format!("{:.3}", on.open_after as f64 / off.open_after.max(1) as f64),
            "".into(),
            format!("**{:.2}**", on.peak_rss as f64 / off.peak_rss.max(1) as f64),
            format!("{:.2}", on.after_rss as f64 / off.after_rss.max(1) as f64),
            "".into(),
            "".into(),
            format!("{:.2}", on.seconds / off.seconds),
        ]);
    }
    println!(
        "## g. Lanes: N concurrent conversations of one key, {} turns each, `upstream.lanes` off vs on ({} latency profile)\n",
        CALLS + 1,
        profile_name(options.quick)
    );
    table(
        &[
            "conversations",
            "lanes",
            "upstream sockets opened",
            "open at the end (heads kept)",
            "proxy RSS idle (MiB)",
            "proxy peak RSS (MiB)",
            "RSS at the end (MiB)",
            "KiB per conversation at the end",
            "later turns continued from the previous one",
            "seconds (all conversations)",
        ],
        &rows,
    );
    println!(
        "Every conversation's answer (it ends with a digest of the whole conversation) is the \
         same with lanes on as off.\n"
    );
}
