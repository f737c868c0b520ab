//! Configuration: `config.toml` < environment (`WSBRIDGE_*`) < command line.
//!
//! The file is parsed into raw structs whose defaults are written once, beside each field
//! (`impl Default`). Every key also has an environment name derived from its path — section,
//! sub-section and key joined by `_`, upper-cased, after `WSBRIDGE_` — found by walking the
//! default tree, so a new key gets its variable for free. Environment values are read as TOML
//! literals (`42`, `true`, `["a","b"]`) and fall back to plain strings. The merged tree is then
//! validated into the typed [`Config`]. The environment is passed in, never read here, so tests
//! never touch the process environment.
//!
//! Every key set by the file, a variable or a flag remembers that [`Origin`], so an error names
//! the key, where its value came from and what is accepted. Unknown file keys are errors;
//! unknown `WSBRIDGE_*` variables are warnings in [`ConfigSource::warnings`], for `main` to log
//! once logging is set up (which itself depends on the configuration).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::continuation::ReasoningPolicy;
use crate::simulator::faults::FaultConfig;
use crate::simulator::latency::{LatencyModel, LatencyProfile};

/// Everything that can be wrong with a configuration; `main` exits with status 64 on any.
/// Each names the key, where its value came from, and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown key `{key}` ({origin}); {known}")]
    Unknown {
        key: String,
        origin: Origin,
        known: String,
    },
    #[error("invalid value for `{key}` ({origin}): {value} is not {expected}")]
    Type {
        key: String,
        origin: Origin,
        value: String,
        expected: String,
    },
    #[error("invalid configuration: {0}")]
    Merged(String),
    #[error("invalid value for `{key}` ({origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: Origin,
        message: String,
    },
}

/// Where a key's value came from, for error messages and the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("the built-in default"),
            Origin::File(path) => write!(f, "from config file {}", path.display()),
            Origin::Env(name) => write!(f, "from environment variable {name}"),
            Origin::Flag(flag) => write!(f, "from flag {flag}"),
        }
    }
}

/// The raw file layout. Unknown keys are errors, so a typo never silently does nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub pool: RawPool,
    pub auth: RawAuth,
    pub continuation: RawContinuation,
    pub chat: RawChat,
    pub log: RawLog,
    pub simulator: RawSimulator,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// Address the proxy listens on.
    pub listen: String,
    /// Largest request body accepted, in bytes (larger → 413).
    pub max_body_bytes: u64,
    /// Seconds of upstream silence before an SSE comment keep-alive is written (0: never).
    pub sse_keepalive_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM / ctrl-c.
    pub shutdown_grace_secs: u64,
    /// Open client connections at most; further connections wait to be accepted.
    pub max_connections: u32,
    /// Seconds a client has to send a request's headers (also how long an idle keep-alive
    /// connection is kept).
    pub header_read_timeout_secs: u64,
    /// Largest request header block, in bytes (larger: 431).
    pub max_header_bytes: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 32 << 20,
            sse_keepalive_secs: 15,
            shutdown_grace_secs: 30,
            max_connections: 4096,
            header_read_timeout_secs: 30,
            max_header_bytes: 32 << 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    /// `remote` (talk to `base_url`) or `simulator` (run the simulator in-process).
    pub mode: String,
    /// REST base URL; the WebSocket URL is derived from it (`https` → `wss`).
    pub base_url: String,
    /// Connecting and upgrading one WebSocket, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Waiting for the first upstream event of a turn, in milliseconds (then 504).
    pub first_event_timeout_ms: u64,
    /// Upstream silence in the middle of a stream before it is failed, in seconds.
    pub stream_idle_timeout_secs: u64,
    /// Tries per request before the first event (a closed socket, a refused or failed
    /// connect, `websocket_connection_limit_reached`).
    pub max_attempts: u32,
    /// Largest `response.create` frame sent over a WebSocket; larger requests go over REST.
    pub max_frame_bytes: u64,
    /// Largest upstream WebSocket message accepted, in bytes.
    pub max_message_bytes: u64,
    /// Seconds a credential stays on REST after the upstream refused the upgrade with
    /// 426, 404 or 405.
    pub rest_fallback_cooldown_secs: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            mode: "remote".into(),
            base_url: "https://api.openai.com/v1".into(),
            connect_timeout_ms: 10_000,
            first_event_timeout_ms: 120_000,
            stream_idle_timeout_secs: 600,
            max_attempts: 3,
            max_frame_bytes: 16 << 20,
            max_message_bytes: 64 << 20,
            rest_fallback_cooldown_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPool {
    /// Empty sockets kept open per credential, ready for new conversations.
    pub min_idle: u32,
    /// Sockets per credential (so also turns in flight per credential).
    pub max_sockets: u32,
    /// No turn starts on a socket older than this, in seconds (OpenAI closes at 60 minutes).
    pub max_age_secs: u64,
    /// Idle sockets beyond `min_idle` are closed after this many seconds.
    pub idle_timeout_secs: u64,
    /// Seconds between WebSocket pings on an idle socket; a ping unanswered by the next one
    /// closes it (0: no pings).
    pub ping_interval_secs: u64,
    /// Waiting for a free socket when all are busy, in milliseconds (then 429).
    pub checkout_timeout_ms: u64,
}

impl Default for RawPool {
    fn default() -> Self {
        Self {
            min_idle: 1,
            max_sockets: 64,
            max_age_secs: 55 * 60,
            idle_timeout_secs: 300,
            ping_interval_secs: 30,
            checkout_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawContinuation {
    /// Turn full-history resends into `previous_response_id` + the new items.
    pub enabled: bool,
    /// `lenient` (a client that dropped reasoning items still continues) or `strict`.
    pub reasoning: String,
    /// Let `store: true` turns continue on any socket (the upstream loads them from its store)
    /// when the socket holding them is busy or gone.
    pub stored_on_any_socket: bool,
}

impl Default for RawContinuation {
    fn default() -> Self {
        Self {
            enabled: true,
            reasoning: "lenient".into(),
            stored_on_any_socket: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawChat {
    /// `bridge` (Chat Completions requests become Responses turns over the pooled sockets when
    /// every field has a faithful equivalent) or `passthrough` (all go to the upstream's
    /// `/v1/chat/completions` as they came).
    pub mode: String,
}

impl Default for RawChat {
    fn default() -> Self {
        Self {
            mode: "bridge".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// `passthrough` (clients send their own key) or `inject` (wsbridge adds one).
    pub mode: String,
    /// `inject`: the environment variable holding the upstream API key.
    pub api_key_env: String,
    /// `inject`: bearer tokens clients must present (empty: no client check).
    pub client_tokens: Vec<String>,
    /// `inject`: allow a non-loopback listen address with no client tokens.
    pub allow_open_relay: bool,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            mode: "passthrough".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            client_tokens: Vec::new(),
            allow_open_relay: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `wsbridge=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// One line per answered request at info (target `wsbridge::access`).
    pub access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            access: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSimulator {
    pub listen: String,
    /// Bearer keys the simulator accepts; empty accepts any non-empty key.
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
    pub profile: String,
    pub ttft_ms: f64,
    pub per_token_ms: f64,
    pub uncached_per_kib_ms: f64,
    pub hydrate_ms: f64,
}

impl Default for RawLatency {
    fn default() -> Self {
        Self {
            profile: "none".into(),
            ttft_ms: 0.0,
            per_token_ms: 0.0,
            uncached_per_kib_ms: 0.0,
            hydrate_ms: 0.0,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub pool: PoolConfig,
    pub auth: AuthConfig,
    pub continuation: ContinuationConfig,
    pub chat: ChatConfig,
    pub log: LogConfig,
    pub simulator: SimulatorConfig,
    /// Where this configuration came from, and what was ignored on the way.
    pub source: ConfigSource,
}

/// What [`Config::load`] read: for the start-up line, and warnings to log once logging runs
/// (the configuration decides how logging is set up, so it cannot log while it loads).
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    /// The `WSBRIDGE_*` variables that set a key.
    pub variables: Vec<String>,
    /// The command-line flags that set a key.
    pub flags: Vec<&'static str>,
    /// Things a user should know but that do not stop the start (unknown variables).
    pub warnings: Vec<String>,
}

impl std::fmt::Display for ConfigSource {
    /// `config.toml + WSBRIDGE_POOL_MAX_SOCKETS + --listen`, or `built-in defaults`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .file
            .iter()
            .map(|path| path.display().to_string())
            .chain(self.variables.iter().cloned())
            .chain(self.flags.iter().map(|flag| (*flag).to_owned()))
            .collect();
        if parts.is_empty() {
            f.write_str("built-in defaults")
        } else {
            write!(f, "defaults + {}", parts.join(" + "))
        }
    }
}

impl Default for Config {
    /// The built-in defaults (what `config.toml` shows).
    fn default() -> Self {
        #[expect(
            clippy::expect_used,
            reason = "the built-in defaults are valid by construction; a test checks it"
        )]
        validate(RawConfig::default(), &[]).expect("default config is valid")
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// `None`: no SSE comment keep-alives.
    pub sse_keepalive: Option<Duration>,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    Remote,
    Simulator,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub mode: UpstreamMode,
    /// Validated: `http` or `https`, no query; kept without a trailing `/`.
    pub base_url: String,
    pub connect_timeout: Duration,
    pub first_event_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_attempts: u32,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub rest_fallback_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct ContinuationConfig {
    pub enabled: bool,
    pub reasoning: ReasoningPolicy,
    pub stored_on_any_socket: bool,
}

/// How `POST /v1/chat/completions` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatMode {
    /// Translated into Responses turns when it can be done faithfully, else passed through.
    Bridge,
    /// Always passed through to the upstream's `/v1/chat/completions`.
    Passthrough,
}

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub mode: ChatMode,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub min_idle: usize,
    pub max_sockets: usize,
    pub max_age: Duration,
    pub idle_timeout: Duration,
    /// `None`: no pings.
    pub ping_interval: Option<Duration>,
    pub checkout_timeout: Duration,
}

/// A secret (an API key or client token): compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// The client's `Authorization`, `OpenAI-Organization` and `OpenAI-Project` go upstream.
    Passthrough,
    /// wsbridge sends `api_key`; clients must present one of `client_tokens` when any are set.
    Inject {
        api_key: Secret,
        client_tokens: Vec<Secret>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

/// Everything the simulator needs; tests build it with `SimulatorConfig::default()` and
/// adjust fields directly.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub listen: SocketAddr,
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
    fn default() -> Self {
        // The defaults are the raw defaults, validated: one source of truth.
        #[expect(
            clippy::expect_used,
            reason = "the built-in defaults are valid by construction; a test checks it"
        )]
        let config =
            validate_simulator(RawSimulator::default()).expect("default simulator config is valid");
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        }
    }
}

/// Where a configuration comes from.
#[derive(Debug, Default)]
pub struct Sources {
    /// A config file to read; `None` means built-in defaults only.
    pub file: Option<PathBuf>,
    /// `(name, value)` pairs of the environment; only `WSBRIDGE_*` names are read.
    pub env: Vec<(String, String)>,
    /// Command-line overrides, applied last.
    pub overrides: Vec<Override>,
}

/// One command-line flag that sets a key.
#[derive(Debug, Clone)]
pub struct Override {
    /// As the user typed it, e.g. `--listen`.
    pub flag: &'static str,
    /// The dotted key it sets, e.g. `server.listen`.
    pub key: &'static str,
    pub value: String,
}

impl Config {
    /// Reads, merges and validates a configuration. Unknown `WSBRIDGE_*` variables do not stop
    /// it (other tools share the prefix, e.g. `WSBRIDGE_BIN` in `scripts/test`): they are
    /// returned in `source.warnings`. Unknown keys in the file are errors.
    pub fn load(sources: Sources) -> Result<Self, ConfigError> {
        let mut origins: BTreeMap<String, Origin> = BTreeMap::new();
        let mut source = ConfigSource {
            file: sources.file.clone(),
            ..ConfigSource::default()
        };
        let mut tree = match &sources.file {
            Some(path) => {
                let table = read_file(path)?;
                for key in leaf_keys(&table) {
                    origins.insert(key, Origin::File(path.clone()));
                }
                table
            }
            None => toml::Table::new(),
        };
        let names = env_names();
        for (name, value) in &sources.env {
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            match names.get(name) {
                Some(path) => {
                    set_path(&mut tree, path, literal_for(path, value));
                    origins.insert(path.join("."), Origin::Env(name.clone()));
                    source.variables.push(name.clone());
                }
                None => source.warnings.push(unknown_variable(name, &names)),
            }
        }
        for flag in &sources.overrides {
            let path: Vec<String> = flag.key.split('.').map(str::to_owned).collect();
            set_path(&mut tree, &path, literal_for(&path, &flag.value));
            origins.insert(flag.key.to_owned(), Origin::Flag(flag.flag));
            source.flags.push(flag.flag);
        }
        let origin_of = |key: &str| {
            origins
                .iter()
                .find(|(set, _)| set.as_str() == key || set.starts_with(&format!("{key}.")))
                .map_or(Origin::Default, |(_, origin)| origin.clone())
        };
        let raw: RawConfig = match toml::Value::Table(tree.clone()).try_into() {
            Ok(raw) => raw,
            Err(error) => {
                let error: toml::de::Error = error;
                return Err(find_bad_key(&tree, &origin_of)
                    .unwrap_or_else(|| ConfigError::Merged(error.message().to_owned())));
            }
        };
        let mut config = validate(raw, &sources.env).map_err(|error| match error {
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                key,
                origin: origin_of(key),
                message,
            },
            other => other,
        })?;
        config.source = source;
        Ok(config)
    }
}

/// The dotted path of every leaf (a value that is not a table) of `table`.
fn leaf_keys(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                out.extend(leaf_keys(inner).into_iter().map(|k| format!("{key}.{k}")));
            }
            _ => out.push(key.clone()),
        }
    }
    out
}

/// The warning for a `WSBRIDGE_*` variable that names no key, with the closest name.
fn unknown_variable(name: &str, names: &BTreeMap<String, Vec<String>>) -> String {
    let closest = names
        .keys()
        .map(|known| (edit_distance(name, known), known))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match closest {
        Some((_, known)) => {
            format!("ignoring unknown environment variable {name} (did you mean {known}?)")
        }
        None => format!(
            "ignoring unknown environment variable {name}: it names no configuration key \
             (config.toml lists every key's variable)"
        ),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

/// After the merged tree failed to deserialize: the first key that is unknown, or whose value
/// alone makes the defaults fail, as an error naming it, its origin and what is accepted.
fn find_bad_key(tree: &toml::Table, origin_of: &dyn Fn(&str) -> Origin) -> Option<ConfigError> {
    let toml::Value::Table(defaults) = toml::Value::try_from(RawConfig::default()).ok()? else {
        return None;
    };
    for key in leaf_keys(tree) {
        let path: Vec<&str> = key.split('.').collect();
        let value = lookup(tree, &path)?;
        let Some(default) = lookup(&defaults, &path) else {
            // The longest prefix that exists names the section whose keys are offered.
            let section = (0..path.len())
                .rev()
                .find_map(|n| match lookup(&defaults, &path[..n]) {
                    Some(toml::Value::Table(table)) => Some((n, table.clone())),
                    _ => None,
                })
                .or(Some((0, defaults.clone())));
            let known = section.map_or_else(String::new, |(n, table)| {
                let names: Vec<&str> = table.keys().map(String::as_str).collect();
                let closest = names
                    .iter()
                    .map(|name| (edit_distance(path[n], name), *name))
                    .min()
                    .filter(|(distance, _)| *distance <= 2);
                let hint = closest.map_or_else(String::new, |(_, name)| {
                    format!(
                        "did you mean `{}`? ",
                        [&path[..n], &[name]].concat().join(".")
                    )
                });
                if n == 0 {
                    format!("{hint}the sections are {}", names.join(", "))
                } else {
                    format!("{hint}[{}] has {}", path[..n].join("."), names.join(", "))
                }
            });
            return Some(ConfigError::Unknown {
                origin: origin_of(&key),
                key,
                known,
            });
        };
        let mut alone = defaults.clone();
        let owned: Vec<String> = path.iter().map(|part| (*part).to_owned()).collect();
        set_path(&mut alone, &owned, value.clone());
        let tried: Result<RawConfig, _> = toml::Value::Table(alone).try_into();
        if let Err(error) = tried {
            return Some(ConfigError::Type {
                origin: origin_of(&key),
                key,
                value: value.to_string(),
                expected: expected(default, error.message()),
            });
        }
    }
    None
}

fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        table = table.get(*key)?.as_table()?;
    }
    table.get(*last)
}

/// What a key accepts, in words, from its default's type and the deserializer's complaint.
fn expected(default: &toml::Value, message: &str) -> String {
    for (rust, words) in [
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
    ] {
        if message.contains(&format!("expected {rust}")) || message.contains(&format!("for {rust}"))
        {
            return words.to_owned();
        }
    }
    match default {
        toml::Value::Boolean(_) => "`true` or `false`".to_owned(),
        toml::Value::Float(_) | toml::Value::Integer(_) => "a number".to_owned(),
        toml::Value::Array(_) => "a list of strings, such as [\"a\", \"b\"]".to_owned(),
        toml::Value::String(_) => "a string".to_owned(),
        _ => message.to_owned(),
    }
}

const ENV_PREFIX: &str = "WSBRIDGE_";

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
}

/// Every leaf key of the default tree, by its environment variable name.
pub fn env_names() -> BTreeMap<String, Vec<String>> {
    fn walk(
        table: &toml::Table,
        prefix: &mut Vec<String>,
        out: &mut BTreeMap<String, Vec<String>>,
    ) {
        for (key, value) in table {
            prefix.push(key.clone());
            match value {
                toml::Value::Table(inner) => walk(inner, prefix, out),
                _ => {
                    let name = format!("{ENV_PREFIX}{}", prefix.join("_").to_uppercase());
                    out.insert(name, prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(defaults)) = toml::Value::try_from(RawConfig::default()) {
        walk(&defaults, &mut Vec::new(), &mut out);
    }
    out
}

/// A value from the environment or the command line for the key at `path`. A string key
/// takes the text as it is (`WSBRIDGE_AUTH_API_KEY_ENV=123` is the name "123", not a number)
/// unless it is a quoted TOML string; other keys read it as a TOML literal.
fn literal_for(path: &[String], text: &str) -> toml::Value {
    let value = literal(text);
    let string_key = toml::Value::try_from(RawConfig::default())
        .ok()
        .and_then(|defaults| {
            let defaults = defaults.as_table()?.clone();
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            lookup(&defaults, &path).map(toml::Value::is_str)
        })
        .unwrap_or(false);
    if string_key && !value.is_str() {
        toml::Value::String(text.to_owned())
    } else {
        value
    }
}

/// A value from the environment or the command line: a TOML literal, else a string.
fn literal(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = tree;
    for key in parents {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(inner) = entry else {
            return;
        };
        table = inner;
    }
    table.insert(last.clone(), value);
}

/// An invalid value; [`Config::load`] fills in where it came from.
fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: Origin::Default,
        message: message.into(),
    }
}

fn at_least_one(key: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(value)
    }
}

fn validate(raw: RawConfig, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let config = validate_fields(raw, env)?;
    // Deadlines are `now + duration`: keep every duration far from overflowing an Instant.
    const LIMIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    let server = &config.server;
    let upstream = &config.upstream;
    let pool = &config.pool;
    for (key, duration) in [
        (
            "server.sse_keepalive_secs",
            server.sse_keepalive.unwrap_or_default(),
        ),
        ("server.shutdown_grace_secs", server.shutdown_grace),
        (
            "server.header_read_timeout_secs",
            server.header_read_timeout,
        ),
        ("upstream.connect_timeout_ms", upstream.connect_timeout),
        (
            "upstream.first_event_timeout_ms",
            upstream.first_event_timeout,
        ),
        (
            "upstream.stream_idle_timeout_secs",
            upstream.stream_idle_timeout,
        ),
        (
            "upstream.rest_fallback_cooldown_secs",
            upstream.rest_fallback_cooldown,
        ),
        ("pool.max_age_secs", pool.max_age),
        ("pool.idle_timeout_secs", pool.idle_timeout),
        (
            "pool.ping_interval_secs",
            pool.ping_interval.unwrap_or_default(),
        ),
        ("pool.checkout_timeout_ms", pool.checkout_timeout),
    ] {
        if duration > LIMIT {
            return Err(invalid(key, "must be at most ten years"));
        }
    }
    Ok(config)
}

fn validate_fields(raw: RawConfig, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let listen = parse_addr("server.listen", &raw.server.listen)?;
    let secs = Duration::from_secs;
    let millis = Duration::from_millis;
    Ok(Config {
        server: ServerConfig {
            listen,
            max_body_bytes: at_least_one("server.max_body_bytes", raw.server.max_body_bytes)?
                as usize,
            sse_keepalive: (raw.server.sse_keepalive_secs > 0)
                .then(|| secs(raw.server.sse_keepalive_secs)),
            shutdown_grace: secs(raw.server.shutdown_grace_secs),
            max_connections: at_least_one(
                "server.max_connections",
                raw.server.max_connections.into(),
            )? as usize,
            header_read_timeout: secs(at_least_one(
                "server.header_read_timeout_secs",
                raw.server.header_read_timeout_secs,
            )?),
            max_header_bytes: {
                let bytes = raw.server.max_header_bytes;
                if !(1024..=1 << 20).contains(&bytes) {
                    return Err(invalid(
                        "server.max_header_bytes",
                        "must be between 1024 and 1048576",
                    ));
                }
                bytes as usize
            },
        },
        upstream: validate_upstream(raw.upstream)?,
        pool: PoolConfig {
            min_idle: raw.pool.min_idle as usize,
            max_sockets: at_least_one("pool.max_sockets", raw.pool.max_sockets.into())? as usize,
            max_age: secs(at_least_one("pool.max_age_secs", raw.pool.max_age_secs)?),
            idle_timeout: secs(at_least_one(
                "pool.idle_timeout_secs",
                raw.pool.idle_timeout_secs,
            )?),
            ping_interval: (raw.pool.ping_interval_secs > 0)
                .then(|| secs(raw.pool.ping_interval_secs)),
            checkout_timeout: millis(raw.pool.checkout_timeout_ms),
        },
        auth: validate_auth(raw.auth, listen, env)?,
        continuation: ContinuationConfig {
            enabled: raw.continuation.enabled,
            reasoning: match raw.continuation.reasoning.as_str() {
                "lenient" => ReasoningPolicy::Lenient,
                "strict" => ReasoningPolicy::Strict,
                other => {
                    return Err(invalid(
                        "continuation.reasoning",
                        format!("`{other}` (expected `lenient` or `strict`)"),
                    ));
                }
            },
            stored_on_any_socket: raw.continuation.stored_on_any_socket,
        },
        chat: ChatConfig {
            mode: match raw.chat.mode.as_str() {
                "bridge" => ChatMode::Bridge,
                "passthrough" => ChatMode::Passthrough,
                other => {
                    return Err(invalid(
                        "chat.mode",
                        format!("`{other}` (expected `bridge` or `passthrough`)"),
                    ));
                }
            },
        },
        log: LogConfig {
            format: match raw.log.format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "log.format",
                        format!("`{other}` (expected `text` or `json`)"),
                    ));
                }
            },
            level: raw.log.level,
            access: raw.log.access,
        },
        simulator: validate_simulator(raw.simulator)?,
        source: ConfigSource::default(),
    })
}

fn validate_upstream(raw: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let mode = match raw.mode.as_str() {
        "remote" => UpstreamMode::Remote,
        "simulator" => UpstreamMode::Simulator,
        other => {
            return Err(invalid(
                "upstream.mode",
                format!("`{other}` (expected `remote` or `simulator`)"),
            ));
        }
    };
    let base_url = raw.base_url.trim_end_matches('/').to_owned();
    let uri: axum::http::Uri = base_url
        .parse()
        .map_err(|_| invalid("upstream.base_url", format!("`{base_url}` is not a URL")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(invalid(
            "upstream.base_url",
            format!("`{base_url}` must be an http:// or https:// URL with a host"),
        ));
    }
    if uri.query().is_some() {
        return Err(invalid("upstream.base_url", "must not have a query string"));
    }
    let millis = |key, value| at_least_one(key, value).map(Duration::from_millis);
    Ok(UpstreamConfig {
        mode,
        base_url,
        connect_timeout: millis("upstream.connect_timeout_ms", raw.connect_timeout_ms)?,
        first_event_timeout: millis(
            "upstream.first_event_timeout_ms",
            raw.first_event_timeout_ms,
        )?,
        stream_idle_timeout: Duration::from_secs(at_least_one(
            "upstream.stream_idle_timeout_secs",
            raw.stream_idle_timeout_secs,
        )?),
        max_attempts: at_least_one("upstream.max_attempts", raw.max_attempts.into())? as u32,
        max_frame_bytes: at_least_one("upstream.max_frame_bytes", raw.max_frame_bytes)? as usize,
        max_message_bytes: at_least_one("upstream.max_message_bytes", raw.max_message_bytes)?
            as usize,
        rest_fallback_cooldown: Duration::from_secs(raw.rest_fallback_cooldown_secs),
    })
}

fn validate_auth(
    raw: RawAuth,
    listen: SocketAddr,
    env: &[(String, String)],
) -> Result<AuthConfig, ConfigError> {
    match raw.mode.as_str() {
        "passthrough" => Ok(AuthConfig::Passthrough),
        "inject" => {
            let api_key = env
                .iter()
                .rev()
                .find(|(name, _)| *name == raw.api_key_env)
                .map(|(_, value)| value.trim())
                .filter(|value| !value.is_empty())
                .ok_or_else(|| {
                    invalid(
                        "auth.api_key_env",
                        format!(
                            "auth.mode is `inject` but the environment variable `{}` is not set",
                            raw.api_key_env
                        ),
                    )
                })?;
            let client_tokens: Vec<Secret> = raw
                .client_tokens
                .into_iter()
                .filter(|token| !token.is_empty())
                .map(Secret)
                .collect();
            if client_tokens.is_empty() && !listen.ip().is_loopback() && !raw.allow_open_relay {
                return Err(invalid(
                    "auth.client_tokens",
                    format!(
                        "refusing to inject an API key for anyone who can reach {listen}: set \
                         auth.client_tokens, listen on a loopback address, or set \
                         auth.allow_open_relay = true"
                    ),
                ));
            }
            Ok(AuthConfig::Inject {
                api_key: Secret(api_key.to_owned()),
                client_tokens,
            })
        }
        other => Err(invalid(
            "auth.mode",
            format!("`{other}` (expected `passthrough` or `inject`)"),
        )),
    }
}

fn validate_simulator(raw: RawSimulator) -> Result<SimulatorConfig, ConfigError> {
    let positive = at_least_one;
    let profile = match raw.latency.profile.as_str() {
        "none" => LatencyProfile::None,
        "openai" => LatencyProfile::OpenAi,
        "custom" => LatencyProfile::Custom,
        other => {
            return Err(invalid(
                "simulator.latency.profile",
                format!("`{other}` (expected `none`, `openai` or `custom`)"),
            ));
        }
    };
    let figures = [
        ("simulator.latency.ttft_ms", raw.latency.ttft_ms),
        ("simulator.latency.per_token_ms", raw.latency.per_token_ms),
        (
            "simulator.latency.uncached_per_kib_ms",
            raw.latency.uncached_per_kib_ms,
        ),
        ("simulator.latency.hydrate_ms", raw.latency.hydrate_ms),
    ];
    // The four figures only count with `custom`; set under another profile they would silently
    // do nothing, so that is an error rather than a surprise in a benchmark.
    if profile != LatencyProfile::Custom
        && let Some((key, value)) = figures.iter().find(|(_, value)| *value != 0.0)
    {
        return Err(invalid(
            key,
            format!(
                "{value} has no effect with simulator.latency.profile = \"{}\": set the \
                 profile to \"custom\" to use your own figures, or remove the key",
                raw.latency.profile
            ),
        ));
    }
    let latency = LatencyModel::from_profile(profile, figures)
        .map_err(|(key, message)| invalid(key, message))?;
    raw.faults
        .validate()
        .map_err(|message| invalid("simulator.faults", message))?;
    Ok(SimulatorConfig {
        listen: parse_addr("simulator.listen", &raw.listen)?,
        accepted_keys: raw.accepted_keys,
        max_connection_age: Duration::from_secs(positive(
            "simulator.max_connection_age_secs",
            raw.max_connection_age_secs,
        )?),
        answer_words: raw.answer_words,
        tool_calls: raw.tool_calls,
        max_in_flight: positive("simulator.max_in_flight", raw.max_in_flight.into())? as usize,
        max_named_lanes: raw.max_named_lanes as usize,
        max_frame_bytes: positive("simulator.max_frame_bytes", raw.max_frame_bytes)? as usize,
        store_capacity: raw.store_capacity as usize,
        stats_turn_capacity: raw.stats_turn_capacity as usize,
        latency,
        faults: raw.faults,
    })
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("wsbridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{:x}.toml", file_text.len() * 31 + env.len()));
        std::fs::write(&path, file_text).unwrap();
        Config::load(Sources {
            file: Some(path),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            overrides: Vec::new(),
        })
    }

    #[test]
    fn shipped_config_toml_parses_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let shipped: RawConfig = toml::from_str(&text).unwrap();
        let shipped = toml::Value::try_from(shipped).unwrap();
        let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
        assert_eq!(
            shipped, defaults,
            "config.toml must show every default as it is"
        );
        Config::load(Sources {
            file: Some(path),
            ..Sources::default()
        })
        .unwrap();
    }

    #[test]
    fn shipped_config_toml_documents_every_key() {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
                .unwrap();
        for name in env_names().keys() {
            assert!(
                text.contains(name.as_str()),
                "config.toml does not mention {name}"
            );
        }
    }

    #[test]
    fn environment_overrides_file_and_reads_toml_literals() {
        let config = load(
            "[simulator]\ntool_calls = 3\n",
            &[
                ("WSBRIDGE_SIMULATOR_TOOL_CALLS", "7"),
                ("WSBRIDGE_SIMULATOR_ACCEPTED_KEYS", r#"["sk-a","sk-b"]"#),
                ("WSBRIDGE_SERVER_LISTEN", "0.0.0.0:9"),
                ("WSBRIDGE_SIMULATOR_LATENCY_TTFT_MS", "12.5"),
                ("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.simulator.tool_calls, 7);
        assert_eq!(config.simulator.accepted_keys, ["sk-a", "sk-b"]);
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:9");
        assert_eq!(config.simulator.latency.ttft, Duration::from_micros(12_500));
    }

    #[test]
    fn chat_mode_is_bridge_by_default_and_names_what_it_accepts() {
        assert_eq!(Config::default().chat.mode, ChatMode::Bridge);
        let config = load("[chat]\nmode = \"passthrough\"\n", &[]).unwrap();
        assert_eq!(config.chat.mode, ChatMode::Passthrough);
        let error = load("", &[("WSBRIDGE_CHAT_MODE", "relay")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("chat.mode"), "{error}");
        assert!(error.contains("`bridge` or `passthrough`"), "{error}");
    }

    #[test]
    fn command_line_overrides_environment() {
        let config = Config::load(Sources {
            file: None,
            env: vec![("WSBRIDGE_SERVER_LISTEN".into(), "127.0.0.1:1".into())],
            overrides: vec![Override {
                flag: "--listen",
                key: "server.listen",
                value: "127.0.0.1:2".into(),
            }],
        })
        .unwrap();
        assert_eq!(config.server.listen.port(), 2);
        assert_eq!(
            config.source.to_string(),
            "defaults + WSBRIDGE_SERVER_LISTEN + --listen"
        );
    }

    #[test]
    fn a_bad_value_names_the_key_its_source_and_what_is_accepted() {
        let error = load("", &[("WSBRIDGE_POOL_MAX_SOCKETS", "abc")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid value for `pool.max_sockets` (from environment variable \
             WSBRIDGE_POOL_MAX_SOCKETS): \"abc\" is not a whole number from 0 to 4294967295"
        );
        let error = load("[pool]\nmin_idle = -1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`pool.min_idle` (from config file "),
            "{error}"
        );
        assert!(
            error.contains("-1 is not a whole number from 0 to"),
            "{error}"
        );
        let error = load("", &[("WSBRIDGE_CONTINUATION_ENABLED", "yes")])
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with("\"yes\" is not `true` or `false`"),
            "{error}"
        );
        let error = Config::load(Sources {
            overrides: vec![Override {
                flag: "--listen",
                key: "server.listen",
                value: "nowhere".into(),
            }],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("invalid value for `server.listen` (from flag --listen): `nowhere`"),
            "{error}"
        );
    }

    #[test]
    fn string_keys_take_variable_text_as_it_is() {
        let config = load(
            "",
            &[
                ("WSBRIDGE_LOG_LEVEL", "1"),
                ("WSBRIDGE_SIMULATOR_LISTEN", "\"127.0.0.1:7\""),
            ],
        )
        .unwrap();
        assert_eq!(config.log.level, "1");
        assert_eq!(config.simulator.listen.port(), 7);
        let error = load("", &[("WSBRIDGE_SERVER_LISTEN", "8080")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "(from environment variable WSBRIDGE_SERVER_LISTEN): `8080` is not an address"
            ),
            "{error}"
        );
    }

    #[test]
    fn unknown_variables_are_warnings_with_the_closest_name() {
        let config = load("", &[("WSBRIDGE_POOL_MAX_SOCKET", "4")]).unwrap();
        assert_eq!(
            config.source.warnings,
            [
                "ignoring unknown environment variable WSBRIDGE_POOL_MAX_SOCKET (did you mean \
              WSBRIDGE_POOL_MAX_SOCKETS?)"
            ]
        );
        assert_eq!(config.pool.max_sockets, 64);
    }

    #[test]
    fn latency_figures_without_the_custom_profile_are_an_error() {
        let error = load("[simulator.latency]\nttft_ms = 300\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`simulator.latency.ttft_ms`"), "{error}");
        assert!(error.contains("set the profile to \"custom\""), "{error}");
        let config = load(
            "[simulator.latency]\nttft_ms = 300\n",
            &[("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom")],
        )
        .unwrap();
        assert_eq!(config.simulator.latency.ttft, Duration::from_millis(300));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let error = load("[simulator]\ntool_cals = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("unknown key `simulator.tool_cals` (from config file "),
            "{error}"
        );
        assert!(
            error.contains("did you mean `simulator.tool_calls`? [simulator] has accepted_keys, "),
            "{error}"
        );
        let error = load("[server]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.listen"), "{error}");
        let error = load("[simulator.latency]\nprofile = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("simulator.latency.profile"), "{error}");
        let error = load("[pool]\nmax_age_secs = 9223372036854775807\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("pool.max_age_secs"), "{error}");
    }

    #[test]
    fn defaults_validate() {
        let config = Config::load(Sources::default()).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.simulator.max_connection_age,
            Duration::from_secs(3600)
        );
        assert_eq!(SimulatorConfig::default().listen.port(), 0);
    }
}
