//! The simulator's configuration: the `[simulator]` section as written (`RawSimulator`, its
//! defaults beside each field) and validated (`SimulatorConfig`). `config` embeds the raw
//! section in its file layout (so it gets environment names and unknown-key checks like any
//! other) and calls [`validate`]; nothing here knows about `config`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::faults::FaultConfig;
use super::latency::{LatencyModel, LatencyProfile};
use crate::protocol::key::KeyHeader;
use crate::setting::{Invalid, at_least_one, invalid, name_of, parse_addr};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSimulator {
    pub listen: String,
    /// Where the API is served: `/v1`, or `/openai/v1` as Azure OpenAI serves it.
    pub path_prefix: String,
    /// The header a key must come in: `authorization` (Bearer) or `api-key` (Azure).
    pub auth_header: KeyHeader,
    /// `name=value` pairs joined by `&` that every API request (upgrade or REST) must carry
    /// in its query, e.g. `api-version=preview` (empty: none).
    pub required_query: String,
    /// Keys the simulator accepts; empty accepts any non-empty key.
    pub accepted_keys: Vec<String>,
    /// Seconds a WebSocket may live before `websocket_connection_limit_reached`.
    pub max_connection_age_secs: u64,
    /// Words in a text answer (before the context digest).
    pub answer_words: u32,
    /// Function calls the tool-loop script makes before it answers.
    pub tool_calls: u32,
    /// Responses in flight per socket across all lanes.
    pub max_in_flight: u32,
    /// Distinct named `stream_id` lanes per socket.
    pub max_named_lanes: u32,
    /// Largest WebSocket message or REST body accepted, in bytes.
    pub max_frame_bytes: u64,
    /// `store=true` responses kept for hydration (oldest dropped first).
    pub store_capacity: u32,
    /// Per-turn records kept in the stats (totals are never dropped).
    pub stats_turn_capacity: u32,
    pub latency: RawLatency,
    pub faults: FaultConfig,
}

impl Default for RawSimulator {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9100".into(),
            path_prefix: "/v1".into(),
            auth_header: KeyHeader::Authorization,
            required_query: String::new(),
            accepted_keys: Vec::new(),
            max_connection_age_secs: 3600,
            answer_words: 12,
            tool_calls: 1,
            max_in_flight: 16,
            max_named_lanes: 32,
            max_frame_bytes: 64 << 20,
            store_capacity: 10_000,
            stats_turn_capacity: 10_000,
            latency: RawLatency::default(),
            faults: FaultConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLatency {
    /// `none` (all zero), `openai` (calibrated, see README) or `custom` (the keys below).
    pub profile: LatencyProfile,
    pub ttft_ms: f64,
    pub per_token_ms: f64,
    pub uncached_per_kib_ms: f64,
    pub hydrate_ms: f64,
    /// Before a new connection is served (TCP and TLS handshakes), once per connection.
    pub connect_ms: f64,
    /// Before a WebSocket upgrade is answered (its round trip).
    pub upgrade_ms: f64,
}

impl Default for RawLatency {
    fn default() -> Self {
        Self {
            profile: LatencyProfile::None,
            ttft_ms: 0.0,
            per_token_ms: 0.0,
            uncached_per_kib_ms: 0.0,
            hydrate_ms: 0.0,
            connect_ms: 0.0,
            upgrade_ms: 0.0,
        }
    }
}

/// Everything the simulator needs; tests build it with `SimulatorConfig::default()` and
/// adjust fields directly.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub listen: SocketAddr,
    pub path_prefix: String,
    pub auth_header: KeyHeader,
    /// `(name, value)` pairs every API request's query must hold.
    pub required_query: Vec<(String, String)>,
    pub accepted_keys: Vec<String>,
    pub max_connection_age: Duration,
    pub answer_words: u32,
    pub tool_calls: u32,
    pub max_in_flight: usize,
    pub max_named_lanes: usize,
    pub max_frame_bytes: usize,
    pub store_capacity: usize,
    pub stats_turn_capacity: usize,
    pub latency: LatencyModel,
    pub faults: FaultConfig,
}

impl Default for SimulatorConfig {
    /// The raw defaults, validated (one source of truth), on a free loopback port.
    fn default() -> Self {
        #[expect(
            clippy::expect_used,
            reason = "the built-in defaults are valid by construction; a test checks it"
        )]
        let config = validate(RawSimulator::default()).expect("default simulator config is valid");
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        }
    }
}

/// The `[simulator]` section, validated; an error names the key (`simulator.…`).
pub fn validate(raw: RawSimulator) -> Result<SimulatorConfig, Invalid> {
    let latency = validate_latency(&raw.latency)?;
    raw.faults
        .validate()
        .map_err(|message| invalid("simulator.faults", message))?;
    Ok(SimulatorConfig {
        listen: parse_addr("simulator.listen", &raw.listen)?,
        path_prefix: path_prefix(raw.path_prefix)?,
        auth_header: raw.auth_header,
        required_query: required_query(&raw.required_query)?,
        accepted_keys: raw.accepted_keys,
        max_connection_age: Duration::from_secs(at_least_one(
            "simulator.max_connection_age_secs",
            raw.max_connection_age_secs,
        )?),
        answer_words: raw.answer_words,
        tool_calls: raw.tool_calls,
        max_in_flight: at_least_one("simulator.max_in_flight", raw.max_in_flight.into())? as usize,
        max_named_lanes: raw.max_named_lanes as usize,
        max_frame_bytes: at_least_one("simulator.max_frame_bytes", raw.max_frame_bytes)? as usize,
        store_capacity: raw.store_capacity as usize,
        stats_turn_capacity: raw.stats_turn_capacity as usize,
        latency,
        faults: raw.faults,
    })
}

/// `simulator.path_prefix`: one or more `/segment`s, without a trailing `/`, outside `/sim`.
fn path_prefix(text: String) -> Result<String, Invalid> {
    let segments_ok = text.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        })
    });
    if !segments_ok || text == "/sim" || text.starts_with("/sim/") {
        return Err(invalid(
            "simulator.path_prefix",
            format!(
                "`{text}` must be a path such as /v1 or /openai/v1 (no trailing /, not under /sim)"
            ),
        ));
    }
    Ok(text)
}

/// `simulator.required_query`: `a=1&b=2` → `[(a, 1), (b, 2)]`.
fn required_query(text: &str) -> Result<Vec<(String, String)>, Invalid> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
            _ => Err(invalid(
                "simulator.required_query",
                format!("`{pair}` is not a name=value pair"),
            )),
        })
        .collect()
}

/// `[simulator.latency]`: a profile, and six figures that only count with `custom`.
fn validate_latency(raw: &RawLatency) -> Result<LatencyModel, Invalid> {
    let profile = raw.profile;
    let figures = [
        ("simulator.latency.ttft_ms", raw.ttft_ms),
        ("simulator.latency.per_token_ms", raw.per_token_ms),
        (
            "simulator.latency.uncached_per_kib_ms",
            raw.uncached_per_kib_ms,
        ),
        ("simulator.latency.hydrate_ms", raw.hydrate_ms),
        ("simulator.latency.connect_ms", raw.connect_ms),
        ("simulator.latency.upgrade_ms", raw.upgrade_ms),
    ];
    // Set under another profile the figures would silently do nothing, so that is an error
    // rather than a surprise in a benchmark.
    if profile != LatencyProfile::Custom
        && let Some((key, value)) = figures.iter().find(|(_, value)| *value != 0.0)
    {
        return Err(invalid(
            key,
            format!(
                "{value} has no effect with simulator.latency.profile = \"{}\": set the \
                 profile to \"custom\" to use your own figures, or remove the key",
                name_of(&profile)
            ),
        ));
    }
    LatencyModel::from_profile(profile, figures).map_err(|(key, message)| invalid(key, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_on_a_free_port() {
        let config = validate(RawSimulator::default()).unwrap();
        assert_eq!(config.listen.port(), 9100);
        assert_eq!(config.max_connection_age, Duration::from_secs(3600));
        assert_eq!(SimulatorConfig::default().listen.port(), 0);
    }

    #[test]
    fn latency_figures_count_only_with_the_custom_profile() {
        let mut raw = RawSimulator::default();
        raw.latency.per_token_ms = 4.0;
        let error = validate(raw.clone()).unwrap_err();
        assert_eq!(error.key, "simulator.latency.per_token_ms");
        assert!(
            error.message.starts_with(
                "4 has no effect with simulator.latency.profile = \"none\": set the profile to \
                 \"custom\""
            ),
            "{}",
            error.message
        );
        raw.latency.profile = LatencyProfile::Custom;
        raw.latency.connect_ms = 40.0;
        let config = validate(raw).unwrap();
        assert_eq!(config.latency.per_token, Duration::from_millis(4));
        assert_eq!(config.latency.connect, Duration::from_millis(40));
        let mut raw = RawSimulator::default();
        raw.latency.profile = LatencyProfile::OpenAi;
        raw.latency.upgrade_ms = 20.0;
        assert_eq!(
            validate(raw).unwrap_err().key,
            "simulator.latency.upgrade_ms"
        );
    }

    #[test]
    fn the_azure_shape_validates_and_bad_shapes_name_their_key() {
        let raw = RawSimulator {
            path_prefix: "/openai/v1".into(),
            required_query: "api-version=preview&x=".into(),
            ..RawSimulator::default()
        };
        let config = validate(raw).unwrap();
        assert_eq!(config.path_prefix, "/openai/v1");
        let pairs = [("api-version", "preview"), ("x", "")];
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(config.required_query, expected);
        for prefix in ["", "/", "v1", "/v1/", "/a//b", "/sim", "/sim/x", "/{id}"] {
            let raw = RawSimulator {
                path_prefix: prefix.into(),
                ..RawSimulator::default()
            };
            assert_eq!(
                validate(raw).unwrap_err().key,
                "simulator.path_prefix",
                "{prefix}"
            );
        }
        let raw = RawSimulator {
            required_query: "api-version".into(),
            ..RawSimulator::default()
        };
        assert_eq!(validate(raw).unwrap_err().key, "simulator.required_query");
    }

    #[test]
    fn bad_values_name_their_key() {
        let raw = RawSimulator {
            max_in_flight: 0,
            ..RawSimulator::default()
        };
        assert_eq!(validate(raw).unwrap_err().key, "simulator.max_in_flight");
        let mut raw = RawSimulator::default();
        raw.faults.upgrade_status = 200;
        let error = validate(raw).unwrap_err();
        assert_eq!(error.key, "simulator.faults");
        assert!(
            error.message.contains("not an HTTP error status"),
            "{error:?}"
        );
        let mut raw = RawSimulator::default();
        raw.latency.profile = LatencyProfile::Custom;
        raw.latency.ttft_ms = -1.0;
        assert_eq!(validate(raw).unwrap_err().key, "simulator.latency.ttft_ms");
    }
}
