//! Configuration: `config.toml` < environment (`WSBRIDGE_*`) < command line
//! (docs/architecture.md, "Configuration").
//!
//! - [`raw`]: the file layout, one raw struct per section with its defaults;
//! - `sources`: the file, the variables and the flags merged into one tree that remembers
//!   where each key came from ([`Origin`]), and every key's variable name ([`env_names`]);
//! - `diagnose`: unknown keys ("did you mean"), values of the wrong type, unknown variables;
//! - `url`: `upstream.base_url` as a [`BaseUrl`];
//! - [`profile`]: upstream profiles (connection limits by host) and the settings derived
//!   from them; `headers`: `upstream.headers`;
//! - `validate`: raw sections → the typed sections below (the `[simulator]` section is the
//!   simulator's own: `simulator::config`).
//!
//! The environment is passed in, never read here, so tests never touch the process
//! environment. Unknown file keys are errors; unknown `WSBRIDGE_*` variables are warnings in
//! [`ConfigSource::warnings`], for `main` to log once logging is set up (which itself depends
//! on the configuration).

mod cluster;
mod diagnose;
mod error;
mod headers;
pub mod profile;
pub mod raw;
mod sources;
mod url;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use crate::continuation::ReasoningPolicy;
pub use crate::net::TlsRoots;
use crate::net::{ProxySetting, Trust};
pub use crate::protocol::key::KeyHeader;
use crate::simulator::config::SimulatorConfig;
pub use error::{ConfigError, Origin};
pub use profile::{Profile, UpstreamProfile};
pub use raw::RawConfig;
pub use sources::env_names;
pub use url::{BaseUrl, merge_queries};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub pool: PoolConfig,
    pub auth: AuthConfig,
    pub continuation: ContinuationConfig,
    pub chat: ChatConfig,
    pub relay: RelayConfig,
    /// `None` unless `cluster.peers` is set.
    pub cluster: Option<ClusterConfig>,
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
        validate::validate(RawConfig::default(), &[]).expect("default config is valid")
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
    /// `None`: one per CPU core (tokio's default).
    pub worker_threads: Option<usize>,
}

/// `upstream.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    Remote,
    Simulator,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub mode: UpstreamMode,
    /// Parsed and validated once, at load time.
    pub base_url: BaseUrl,
    /// The profile in force (`upstream.profile`, `auto` resolved by the host).
    pub profile: Profile,
    /// Which of the settings a profile derives were set instead.
    pub explicit: profile::Explicit,
    /// The header the API key goes upstream in.
    pub auth_header: KeyHeader,
    /// `upstream.headers`, for every handshake and REST request.
    pub headers: HeaderMap,
    pub connect_timeout: Duration,
    pub first_event_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_attempts: u32,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub rest_fallback_cooldown: Duration,
    /// `tls_roots` and the certificates of `ca_file`, read at load time.
    pub trust: Trust,
    /// HTTP conversations share sockets over `stream_id` lanes (docs/architecture.md, "Lanes").
    pub lanes: bool,
    /// `upstream.proxy`, or the proxy variables when it is empty.
    pub proxy: ProxySetting,
}

#[derive(Debug, Clone)]
pub struct ContinuationConfig {
    pub enabled: bool,
    pub reasoning: ReasoningPolicy,
    pub stored_on_any_socket: bool,
}

/// `chat.mode`: how `POST /v1/chat/completions` is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatMode {
    /// Translated into Responses turns when it can be done faithfully, else passed through.
    #[default]
    Bridge,
    /// Always passed through to the upstream's `/v1/chat/completions`.
    Passthrough,
}

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub mode: ChatMode,
}

/// `[relay]`: client sockets on `GET /v1/responses` relayed over pooled upstream sockets.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The most bytes of a conversation's items one client socket keeps to rebuild a
    /// `store: false` chain on a fresh upstream socket; 0 never rebuilds.
    pub max_replay_bytes: usize,
}

/// `[cluster]`: this replica and its peers (docs/architecture.md, "Cluster").
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Every replica's base URL (`http://host:port`, no trailing slash), this one included;
    /// empty with `dns`.
    pub peers: Vec<String>,
    /// This replica's base URL (one of `peers`; `http://IP:PORT` with `dns`).
    pub self_url: String,
    pub secret: Secret,
    /// `cluster.affinity_header`, lowercase.
    pub affinity_header: Option<axum::http::HeaderName>,
    /// `cluster.peers_dns`: the replicas are what this name resolves to.
    pub dns: Option<PeersDns>,
}

/// `cluster.peers_dns` and `cluster.dns_refresh_secs`.
#[derive(Debug, Clone)]
pub struct PeersDns {
    pub host: String,
    pub port: u16,
    /// Between two resolutions.
    pub every: Duration,
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

/// `{}` shows a configuration enum as the configuration spells it (`json`, `inject`).
macro_rules! display_by_name {
    ($($name:ty),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&crate::setting::name_of(self))
            }
        }
    )*};
}

display_by_name!(
    UpstreamMode,
    LogFormat,
    AuthMode,
    ReasoningPolicy,
    ChatMode,
    TlsRoots,
    UpstreamProfile,
    KeyHeader
);

/// `auth.mode`; the validated form, with the key and tokens, is [`AuthConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Passthrough,
    Inject,
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

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Where a configuration comes from.
#[derive(Debug, Default)]
pub struct Sources {
    /// A config file to read; `None` means built-in defaults only.
    pub file: Option<PathBuf>,
    /// `(name, value)` pairs of the environment; only `WSBRIDGE_*` names, `auth.api_key_env`'s
    /// variable and the proxy variables (`HTTPS_PROXY`, `NO_PROXY`, …) are read.
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
        let merged = sources::Merged::read(&sources)?;
        let raw = diagnose::deserialize(&merged)?;
        let mut config = validate::validate(raw, &sources.env).map_err(|invalid| {
            let origin = merged.origin_of(invalid.key);
            ConfigError::invalid(invalid, origin)
        })?;
        config.source = merged.source;
        Ok(config)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{Config, ConfigError, Sources};

    /// Loads `file_text` as a config file, with `env` as the environment.
    pub(crate) fn load(file_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("wsbridge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // One file per call: tests run in parallel.
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let path = dir.join(format!("{}.toml", CALLS.fetch_add(1, Ordering::Relaxed)));
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
}
