//! Fault injection. Per request through `metadata.sim_fault` (a comma-separated list of
//! directives), for every Nth turn from config, and for WebSocket upgrades from config or at
//! run time (`SimulatorHandle::set_faults`, `POST /sim/faults`).
//!
//! Turn directives:
//! - `close_before_created`: drop the connection before any event;
//! - `close_mid_stream`: drop it in the middle of the output, no terminal event;
//! - `response_failed`: end with `response.failed` (`server_error`);
//! - `error:STATUS:CODE`: answer with a request-scoped error (WS `error` event, REST status);
//! - `stream_error:CODE`: after the first delta, a flat `error` event that ends the stream;
//! - `stall_before:MS`, `stall_within:MS`: pause before `response.created` / after the first delta;
//! - `keepalive:N[:MS]`: N `keepalive` events after `response.in_progress`, MS apart;
//! - `repeat_sequence`: the first delta is sent twice, with the same `sequence_number`;
//! - `late_event`: 20 ms after the terminal event, one more delta of the finished response
//!   (a straggler that reaches whatever the socket carries next);
//! - `close_after_turn`: WebSocket only, drop the connection (no close frame) right after the
//!   terminal event of a completed turn: a socket lost between turns.
//!
//! Socket faults: refused upgrades (`upgrade_status`, `upgrade_count`), sockets closed right
//! after the upgrade (`close_after_upgrade`), and sockets that go silent at their first ping
//! (`ignore_pings`).

use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// Configured faults (the `[simulator.faults]` table; also the body of `POST /sim/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Directives applied to every `turn_every`-th turn (e.g. `"close_mid_stream"`).
    pub turn: String,
    /// 0 disables `turn`.
    pub turn_every: u32,
    /// Refuse WebSocket upgrades with this HTTP status (0 accepts them).
    pub upgrade_status: u16,
    /// How many upgrades to refuse; 0 refuses all while `upgrade_status` is set.
    pub upgrade_count: u32,
    /// Close this many sockets right after the upgrade, before any frame.
    pub close_after_upgrade: u32,
    /// A hung upstream: a socket that receives a ping stops reading (so the ping is never
    /// answered) and sending, and keeps the TCP connection open for 30 s.
    pub ignore_pings: bool,
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        Directives::parse(&self.turn)?;
        if self.upgrade_status != 0 {
            StatusCode::from_u16(self.upgrade_status)
                .ok()
                .filter(|status| status.as_u16() >= 400)
                .ok_or_else(|| {
                    format!(
                        "upgrade_status {} is not an HTTP error status",
                        self.upgrade_status
                    )
                })?;
        }
        Ok(())
    }
}

/// What one turn should do wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub close_before_created: bool,
    pub close_mid_stream: bool,
    pub response_failed: bool,
    pub error: Option<(StatusCode, String)>,
    /// A flat `error` event after the first delta, ending the stream.
    pub stream_error: Option<String>,
    pub stall_before: Duration,
    pub stall_within: Duration,
    pub keepalives: u32,
    pub keepalive_interval: Duration,
    /// The first delta goes out twice (a repeated `sequence_number`).
    pub repeat_sequence: bool,
    /// A delta of this response after its terminal event.
    pub late_event: bool,
    /// WebSocket: the connection is dropped once the turn completed.
    pub close_after_turn: bool,
}

impl Directives {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self::default();
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            out.apply(directive)
                .map_err(|why| format!("bad fault directive `{directive}`: {why}"))?;
        }
        Ok(out)
    }

    fn apply(&mut self, directive: &str) -> Result<(), String> {
        let mut parts = directive.split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let millis = |arg: Option<&&str>| -> Result<Duration, String> {
            arg.ok_or("missing milliseconds")?
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| "milliseconds must be a whole number".to_owned())
        };
        match (name, args.as_slice()) {
            ("close_before_created", []) => self.close_before_created = true,
            ("close_mid_stream", []) => self.close_mid_stream = true,
            ("response_failed", []) => self.response_failed = true,
            ("repeat_sequence", []) => self.repeat_sequence = true,
            ("late_event", []) => self.late_event = true,
            ("close_after_turn", []) => self.close_after_turn = true,
            ("error", [status, code]) => {
                let status = status
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.as_u16() >= 400)
                    .ok_or("status must be an HTTP error status")?;
                self.error = Some((status, (*code).to_owned()));
            }
            ("stream_error", [code]) => self.stream_error = Some((*code).to_owned()),
            ("stall_before", [_]) => self.stall_before = millis(args.first())?,
            ("stall_within", [_]) => self.stall_within = millis(args.first())?,
            ("keepalive", [count, rest @ ..]) if rest.len() <= 1 => {
                self.keepalives = count
                    .parse()
                    .ok()
                    .filter(|n| *n <= super::turn::MAX_SCRIPTED)
                    .ok_or_else(|| {
                        format!(
                            "count must be a whole number up to {}",
                            super::turn::MAX_SCRIPTED
                        )
                    })?;
                if !rest.is_empty() {
                    self.keepalive_interval = millis(rest.first())?;
                }
            }
            _ => return Err("unknown directive or wrong number of arguments".into()),
        }
        Ok(())
    }

    /// Combines two sets, `other` winning where both set a value.
    pub fn merge(mut self, other: Self) -> Self {
        self.close_before_created |= other.close_before_created;
        self.close_mid_stream |= other.close_mid_stream;
        self.response_failed |= other.response_failed;
        self.repeat_sequence |= other.repeat_sequence;
        self.late_event |= other.late_event;
        self.close_after_turn |= other.close_after_turn;
        if other.error.is_some() {
            self.error = other.error;
        }
        if other.stream_error.is_some() {
            self.stream_error = other.stream_error;
        }
        self.stall_before = self.stall_before.max(other.stall_before);
        self.stall_within = self.stall_within.max(other.stall_within);
        if other.keepalives > 0 {
            self.keepalives = other.keepalives;
            self.keepalive_interval = other.keepalive_interval;
        }
        self
    }
}

/// Fault state shared by all connections.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    config: FaultConfig,
    turn: Directives,
    turns_seen: u64,
    upgrades_refused: u32,
    closes_after_upgrade: u32,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        let faults = Self::default();
        // Validated with the rest of the configuration.
        let _ = faults.set(config);
        faults
    }

    /// Replaces the configured faults and restarts their counters.
    pub fn set(&self, config: FaultConfig) -> Result<(), String> {
        config.validate()?;
        let turn = Directives::parse(&config.turn)?;
        *self.lock() = State {
            config,
            turn,
            ..State::default()
        };
        Ok(())
    }

    pub fn config(&self) -> FaultConfig {
        self.lock().config.clone()
    }

    /// The configured directives for the next turn (every `turn_every`-th turn).
    pub fn next_turn(&self) -> Directives {
        let mut state = self.lock();
        if state.config.turn_every == 0 {
            return Directives::default();
        }
        state.turns_seen += 1;
        if state
            .turns_seen
            .is_multiple_of(u64::from(state.config.turn_every))
        {
            state.turn.clone()
        } else {
            Directives::default()
        }
    }

    /// The status to refuse this upgrade with, if any.
    pub fn take_upgrade_refusal(&self) -> Option<StatusCode> {
        let mut state = self.lock();
        let status = StatusCode::from_u16(state.config.upgrade_status).ok()?;
        let limit = state.config.upgrade_count;
        if limit != 0 && state.upgrades_refused >= limit {
            return None;
        }
        state.upgrades_refused += 1;
        Some(status)
    }

    /// Whether to close this socket right after the upgrade.
    pub fn take_close_after_upgrade(&self) -> bool {
        let mut state = self.lock();
        if state.closes_after_upgrade < state.config.close_after_upgrade {
            state.closes_after_upgrade += 1;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (plain fields).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_directive() {
        let d = Directives::parse(
            "close_mid_stream, error:429:rate_limit_exceeded,stall_before:5,keepalive:3:10",
        )
        .unwrap();
        assert!(d.close_mid_stream);
        assert_eq!(
            d.error,
            Some((StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded".into()))
        );
        assert_eq!(d.stall_before, Duration::from_millis(5));
        assert_eq!(
            (d.keepalives, d.keepalive_interval),
            (3, Duration::from_millis(10))
        );
        assert!(
            Directives::parse("close_after_turn")
                .unwrap()
                .close_after_turn
        );
        assert!(Directives::parse("explode").is_err());
        assert!(Directives::parse("error:200:ok").is_err());
        assert!(
            Directives::parse("keepalive:4000000000").is_err(),
            "sizes are capped"
        );
    }

    #[test]
    fn upgrade_refusals_are_counted() {
        let faults = Faults::new(FaultConfig {
            upgrade_status: 503,
            upgrade_count: 2,
            ..FaultConfig::default()
        });
        assert_eq!(
            faults.take_upgrade_refusal(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            faults.take_upgrade_refusal(),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(faults.take_upgrade_refusal(), None);
    }

    #[test]
    fn every_nth_turn_gets_the_configured_fault() {
        let faults = Faults::new(FaultConfig {
            turn: "response_failed".into(),
            turn_every: 2,
            ..FaultConfig::default()
        });
        let hits: Vec<bool> = (0..4).map(|_| faults.next_turn().response_failed).collect();
        assert_eq!(hits, [false, true, false, true]);
    }
}
