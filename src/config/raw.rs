//! The file layout as written: one raw struct per section, each field's default written once,
//! beside it (`impl Default`). The default tree is also what names every environment variable
//! and what unknown keys are checked against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    AuthMode, ChatMode, KeyHeader, LogFormat, ReasoningPolicy, TlsRoots, UpstreamMode,
    UpstreamProfile,
};
use crate::simulator::config::RawSimulator;

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
    pub relay: RawRelay,
    pub cluster: RawCluster,
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
    /// Threads that run connections and turns; 0: one per CPU core.
    pub worker_threads: u64,
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
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    /// `remote` (talk to `base_url`) or `simulator` (run the simulator in-process).
    pub mode: UpstreamMode,
    /// REST base URL; the WebSocket URL is derived from it (`https` → `wss`). A query string
    /// (`?api-version=preview`) is kept on the WebSocket URL and on every REST URL.
    pub base_url: String,
    /// The server's connection limits: `auto` (from the host of `base_url`), `openai`,
    /// `azure`, `xai` or `vercel`.
    pub profile: UpstreamProfile,
    /// The header that carries the API key upstream: `authorization` (`Bearer`) or
    /// `api-key` (Azure OpenAI).
    pub auth_header: KeyHeader,
    /// Extra headers for every WebSocket handshake and every REST request upstream.
    pub headers: BTreeMap<String, String>,
    /// Connecting and upgrading one WebSocket, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Waiting for the first upstream event of a turn, in milliseconds (then 504).
    pub first_event_timeout_ms: u64,
    /// Upstream silence in the middle of a stream before it is failed, in seconds.
    pub stream_idle_timeout_secs: u64,
    /// Tries per request before the first event (a closed socket, a refused or failed
    /// connect, `websocket_connection_limit_reached`).
    pub max_attempts: u32,
    /// Largest `response.create` frame sent over a WebSocket; larger requests go over REST
    /// (0: from the profile).
    pub max_frame_bytes: u64,
    /// Largest upstream WebSocket message accepted, in bytes.
    pub max_message_bytes: u64,
    /// Seconds a credential stays on REST after the upstream refused the upgrade with
    /// 426, 404 or 405.
    pub rest_fallback_cooldown_secs: u64,
    /// Which CAs the upstream's certificate may chain to: `webpki` (Mozilla's, built in),
    /// `native` (the OS store; `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured) or `both`.
    pub tls_roots: TlsRoots,
    /// A PEM file of extra CAs trusted besides `tls_roots` (empty: none; a relative path is
    /// from the working directory).
    pub ca_file: String,
    /// Spread concurrent conversations of a credential over `stream_id` lanes of fewer
    /// sockets (for upstreams that support lanes).
    pub lanes: bool,
    /// The HTTP proxy upstream connections go through: empty reads the proxy variables
    /// (`HTTPS_PROXY`, `NO_PROXY`, …), `none` ignores them, else `http://[user:pass@]host:port`.
    pub proxy: String,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            mode: UpstreamMode::Remote,
            base_url: "https://api.openai.com/v1".into(),
            profile: UpstreamProfile::Auto,
            auth_header: KeyHeader::Authorization,
            headers: BTreeMap::new(),
            connect_timeout_ms: 10_000,
            first_event_timeout_ms: 120_000,
            stream_idle_timeout_secs: 600,
            max_attempts: 3,
            max_frame_bytes: 0,
            max_message_bytes: 64 << 20,
            rest_fallback_cooldown_secs: 300,
            tls_roots: TlsRoots::Both,
            ca_file: String::new(),
            lanes: false,
            proxy: String::new(),
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
    /// No turn starts on a socket older than this, in seconds (0: from the profile, 5
    /// minutes under the server's limit).
    pub max_age_secs: u64,
    /// Idle sockets beyond `min_idle` are closed after this many seconds (0: from the
    /// profile).
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
            max_age_secs: 0,
            idle_timeout_secs: 0,
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
    pub reasoning: ReasoningPolicy,
    /// Let `store: true` turns continue on any socket (the upstream loads them from its store)
    /// when the socket holding them is busy or gone.
    pub stored_on_any_socket: bool,
}

impl Default for RawContinuation {
    fn default() -> Self {
        Self {
            enabled: true,
            reasoning: ReasoningPolicy::Lenient,
            stored_on_any_socket: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawChat {
    /// `bridge` (Chat Completions requests become Responses turns over the pooled sockets when
    /// every field has a faithful equivalent) or `passthrough` (all go to the upstream's
    /// `/v1/chat/completions` as they came).
    pub mode: ChatMode,
}

/// Several replicas behind one load balancer (docs/architecture.md, "Cluster").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    /// Base URLs of every replica, this one included (`http://10.0.0.2:8080`); empty: no
    /// cluster.
    pub peers: Vec<String>,
    /// This replica's base URL, exactly as it appears in `peers`.
    #[serde(rename = "self")]
    pub self_url: String,
    /// Shared by every replica: signs the requests they forward to each other (at least 16
    /// bytes).
    pub secret: String,
    /// A request header (e.g. `session_id`) whose value, when present, picks the owner instead
    /// of the conversation's first items (empty: none).
    pub affinity_header: String,
    /// `NAME:PORT` whose addresses are the replicas (a headless Service), instead of `peers`.
    pub peers_dns: String,
    /// Seconds between resolutions of `peers_dns`.
    pub dns_refresh_secs: u64,
}

impl Default for RawCluster {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            self_url: String::new(),
            secret: String::new(),
            affinity_header: String::new(),
            peers_dns: String::new(),
            dns_refresh_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRelay {
    /// Per relayed client socket: the most bytes of conversation items kept to rebuild a
    /// `store: false` chain on a fresh upstream socket (0: never rebuild).
    pub max_replay_bytes: u64,
}

impl Default for RawRelay {
    fn default() -> Self {
        Self {
            max_replay_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// `passthrough` (clients send their own key) or `inject` (wsbridge adds one).
    pub mode: AuthMode,
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
            mode: AuthMode::Passthrough,
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
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `wsbridge=debug`; `RUST_LOG` wins when set.
    pub level: String,
    /// One line per answered request at info (target `wsbridge::access`).
    pub access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            access: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Config, Sources, env_names};

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
}
