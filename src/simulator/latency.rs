//! The simulator's latency model: what a turn costs, so benchmarks compare a WebSocket
//! continuation with a REST full resend on equal terms. All zero by default (tests run fast).
//!
//! A turn waits `prefill` (reading input it has not cached: `uncached_per_kib` per KiB, plus
//! `hydrate` when `previous_response_id` came from the persisted store rather than the socket's
//! memory), then `ttft`, then `per_token` before every further output token.
//!
//! A connection pays before its first request, once: `connect` (TCP and TLS handshakes) before
//! a newly accepted connection is read at all, so a REST client on a kept-alive connection pays
//! it on its first request only, and `upgrade` (the round trip of the WebSocket upgrade
//! request) before an upgrade is answered. A REST request's own round trip and a WebSocket
//! turn's are part of `ttft` alike; the upgrade is the one round trip a WebSocket client makes
//! that a REST client does not.
//!
//! # The `openai` profile
//! Calibrated to OpenAI's published figure for WebSocket mode: an agent loop of 20 tool calls
//! takes about 20 s over HTTP and about 14 s over WebSocket (up to ~40 % faster). The reference
//! loop is the simulator's own tool-loop script with a 200-byte user message and 1 KiB tool
//! outputs, the history resent in full over REST and only new items over WebSocket. Over its 21
//! turns it streams 1,039 tokens after the first of each turn and reads 311 KiB of input over
//! REST but 22 KiB over WebSocket, so the REST−WS gap fixes `uncached_per_kib` (6 s / 289 KiB ≈
//! 21 ms), and the WS total splits between `ttft` (350 ms, typical for a small tool call) and
//! `per_token` (6 ms ≈ 170 tokens/s). A unit test (`openai_profile_matches_published_figures`)
//! replays the loop through this model: 20.2 s REST, 14.1 s WebSocket. `hydrate` (150 ms) is
//! an estimate for loading a stored response, not a published figure.
//!
//! `connect` (40 ms) and `upgrade` (20 ms) are not published figures either: they count round
//! trips of 20 ms, what nearby cloud regions measure between each other (N. California–Oregon,
//! Ireland–Frankfurt), for a client near the API's servers. TCP's handshake costs one round
//! trip before the client may send (RFC 9293), a full TLS 1.3 handshake one more (RFC 8446; a
//! fresh process has no session to resume), and the WebSocket upgrade is an HTTP request and
//! its `101` (RFC 6455), one more. They are paid once per connection: the calibration loop
//! (one connection on each transport) counts them, 0.04 s over REST and 0.06 s over WebSocket.

use std::time::Duration;

/// Which latency figures to use (`simulator.latency.profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyProfile {
    None,
    OpenAi,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyModel {
    pub ttft: Duration,
    pub per_token: Duration,
    pub uncached_per_kib: Duration,
    pub hydrate: Duration,
    /// Before a newly accepted connection is served (TCP and TLS handshakes).
    pub connect: Duration,
    /// Before a WebSocket upgrade is answered (its request's round trip).
    pub upgrade: Duration,
}

impl LatencyModel {
    pub const NONE: Self = Self {
        ttft: Duration::ZERO,
        per_token: Duration::ZERO,
        uncached_per_kib: Duration::ZERO,
        hydrate: Duration::ZERO,
        connect: Duration::ZERO,
        upgrade: Duration::ZERO,
    };

    pub const OPENAI: Self = Self {
        ttft: Duration::from_millis(350),
        per_token: Duration::from_millis(6),
        uncached_per_kib: Duration::from_millis(21),
        hydrate: Duration::from_millis(150),
        connect: Duration::from_millis(40),
        upgrade: Duration::from_millis(20),
    };

    /// The model for `profile`; `custom` reads the six figures, given in milliseconds.
    pub fn from_profile(
        profile: LatencyProfile,
        custom_ms: [(&'static str, f64); 6],
    ) -> Result<Self, (&'static str, String)> {
        match profile {
            LatencyProfile::None => Ok(Self::NONE),
            LatencyProfile::OpenAi => Ok(Self::OPENAI),
            LatencyProfile::Custom => {
                let mut out = [Duration::ZERO; 6];
                for (slot, (key, ms)) in out.iter_mut().zip(custom_ms) {
                    *slot = Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| {
                        (
                            key,
                            format!("{ms} is not a non-negative number of milliseconds"),
                        )
                    })?;
                }
                let [ttft, per_token, uncached_per_kib, hydrate, connect, upgrade] = out;
                Ok(Self {
                    ttft,
                    per_token,
                    uncached_per_kib,
                    hydrate,
                    connect,
                    upgrade,
                })
            }
        }
    }

    /// Time to read a request's input before generation starts.
    pub fn prefill(&self, uncached_bytes: usize, hydrated: bool) -> Duration {
        let reading = self
            .uncached_per_kib
            .mul_f64(uncached_bytes as f64 / 1024.0);
        if hydrated {
            reading + self.hydrate
        } else {
            reading
        }
    }

    /// The whole modelled duration of a turn that emits `tokens` output tokens.
    pub fn turn(&self, uncached_bytes: usize, hydrated: bool, tokens: u32) -> Duration {
        self.prefill(uncached_bytes, hydrated)
            + self.ttft
            + self.per_token * tokens.saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Map, Value, json};

    use super::LatencyModel;
    use crate::simulator::model::{self, Settings};
    use crate::simulator::store::{ContextSummary, json_len};

    /// Modelled seconds of the reference loop (20 tool calls and the answer, 200-byte question,
    /// 1 KiB tool outputs, one connection): `(REST with the full history every turn, WebSocket
    /// continuation)`.
    fn reference_loop(model: &LatencyModel) -> (f64, f64) {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"tools": [{"type": "function", "name": "lookup"}]}))
                .unwrap();
        let settings = Settings {
            answer_words: 40,
            tool_calls: 20,
            parallel: 1,
            refuse: false,
        };
        let question = json!({"role": "user", "content": "x".repeat(180)});
        let mut history = vec![question.clone()];
        let mut new_items = vec![question];
        // One connection on each transport: REST's handshakes, WebSocket's and its upgrade.
        let (mut rest, mut ws) = (model.connect, model.connect + model.upgrade);
        loop {
            let mut summary = ContextSummary::default();
            summary.extend(&history);
            let plan = model::plan(&summary, &request, settings);
            let tokens = plan.output_tokens();
            let full: usize = history.iter().map(json_len).sum();
            let delta: usize = new_items.iter().map(json_len).sum();
            rest += model.turn(full, false, tokens);
            ws += model.turn(delta, false, tokens);
            let item = plan.items[0].done_item();
            if item["type"] != "function_call" {
                return (rest.as_secs_f64(), ws.as_secs_f64());
            }
            let output = json!({"type": "function_call_output", "call_id": item["call_id"], "output": "y".repeat(1024)});
            history.push(item);
            history.push(output.clone());
            new_items = vec![output];
        }
    }

    #[test]
    fn openai_profile_matches_published_figures() {
        let (rest, ws) = reference_loop(&LatencyModel::OPENAI);
        assert!(
            (rest - 20.0).abs() <= 2.0,
            "REST loop modelled at {rest:.2} s, published ≈ 20 s"
        );
        assert!(
            (ws - 14.0).abs() <= 1.4,
            "WebSocket loop modelled at {ws:.2} s, published ≈ 14 s"
        );
    }

    #[test]
    fn prefill_charges_uncached_kib_and_hydration() {
        let model = LatencyModel {
            uncached_per_kib: Duration::from_millis(10),
            hydrate: Duration::from_millis(7),
            ..LatencyModel::NONE
        };
        assert_eq!(model.prefill(2048, false), Duration::from_millis(20));
        assert_eq!(model.prefill(0, true), Duration::from_millis(7));
        assert_eq!(LatencyModel::NONE.turn(1 << 20, true, 100), Duration::ZERO);
    }
}
