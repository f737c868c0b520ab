//! Raw sections → validated ones. Each check names its key; [`Config::load`] adds where the
//! value came from. The `[simulator]` section is validated by the simulator
//! (`simulator::config::validate`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::profile::{self, Explicit, Limits, Profile};
use super::raw::{RawAuth, RawConfig, RawContinuation, RawLog, RawPool, RawServer, RawUpstream};
use super::{
    AuthConfig, AuthMode, BaseUrl, ChatConfig, Config, ConfigSource, ContinuationConfig, LogConfig,
    PoolConfig, RelayConfig, Secret, ServerConfig, UpstreamConfig, UpstreamMode,
};
use crate::net::{CaBundle, ProxySetting, Trust};
use crate::setting::{Invalid, at_least_one, invalid, parse_addr, within_ten_years};

/// Every section, validated. `env` is where `auth.api_key_env` is looked up.
pub(super) fn validate(raw: RawConfig, env: &[(String, String)]) -> Result<Config, Invalid> {
    let server = server(raw.server)?;
    let mut upstream = upstream(raw.upstream, env)?;
    let pool = pool(raw.pool, upstream.profile.limits(), &mut upstream.explicit)?;
    Ok(Config {
        auth: auth(raw.auth, server.listen, env)?,
        server,
        upstream,
        pool,
        continuation: continuation(raw.continuation)?,
        chat: ChatConfig {
            mode: raw.chat.mode,
        },
        relay: RelayConfig {
            max_replay_bytes: usize::try_from(raw.relay.max_replay_bytes)
                .map_err(|_| invalid("relay.max_replay_bytes", "is too large"))?,
        },
        cluster: super::cluster::validate(raw.cluster)?,
        log: log(raw.log)?,
        simulator: crate::simulator::config::validate(raw.simulator)?,
        source: ConfigSource::default(),
    })
}

fn secs(key: &'static str, value: u64) -> Result<Duration, Invalid> {
    within_ten_years(key, Duration::from_secs(value))
}

fn millis(key: &'static str, value: u64) -> Result<Duration, Invalid> {
    within_ten_years(key, Duration::from_millis(value))
}

/// `None` for 0 (the feature is off), else the duration.
fn optional_secs(key: &'static str, value: u64) -> Result<Option<Duration>, Invalid> {
    Ok((value > 0).then_some(secs(key, value)?))
}

fn server(raw: RawServer) -> Result<ServerConfig, Invalid> {
    let listen = parse_addr("server.listen", &raw.listen)?;
    let bytes = raw.max_header_bytes;
    if !(1024..=1 << 20).contains(&bytes) {
        return Err(invalid(
            "server.max_header_bytes",
            "must be between 1024 and 1048576",
        ));
    }
    Ok(ServerConfig {
        listen,
        max_body_bytes: at_least_one("server.max_body_bytes", raw.max_body_bytes)? as usize,
        sse_keepalive: optional_secs("server.sse_keepalive_secs", raw.sse_keepalive_secs)?,
        shutdown_grace: secs("server.shutdown_grace_secs", raw.shutdown_grace_secs)?,
        max_connections: at_least_one("server.max_connections", raw.max_connections.into())?
            as usize,
        header_read_timeout: secs(
            "server.header_read_timeout_secs",
            at_least_one(
                "server.header_read_timeout_secs",
                raw.header_read_timeout_secs,
            )?,
        )?,
        max_header_bytes: bytes as usize,
        worker_threads: match raw.worker_threads {
            0 => None,
            1..=1024 => Some(raw.worker_threads as usize),
            _ => {
                return Err(invalid(
                    "server.worker_threads",
                    "must be between 0 (one per CPU core) and 1024",
                ));
            }
        },
    })
}

fn upstream(raw: RawUpstream, env: &[(String, String)]) -> Result<UpstreamConfig, Invalid> {
    let base_url =
        BaseUrl::parse(&raw.base_url).map_err(|why| invalid("upstream.base_url", why))?;
    let secure = base_url.is_https();
    let profile = Profile::resolve(raw.profile, base_url.host());
    let explicit = Explicit {
        max_frame_bytes: raw.max_frame_bytes > 0,
        ..Explicit::default()
    };
    let max_frame_bytes = match raw.max_frame_bytes {
        0 => profile::derived_max_frame_bytes(profile.limits()),
        set => usize::try_from(set).unwrap_or(usize::MAX),
    };
    let positive_millis = |key, value| millis(key, at_least_one(key, value)?);
    Ok(UpstreamConfig {
        mode: raw.mode,
        base_url,
        profile,
        explicit,
        auth_header: raw.auth_header,
        headers: super::headers::extra_headers(&raw.headers)?,
        connect_timeout: positive_millis("upstream.connect_timeout_ms", raw.connect_timeout_ms)?,
        first_event_timeout: positive_millis(
            "upstream.first_event_timeout_ms",
            raw.first_event_timeout_ms,
        )?,
        stream_idle_timeout: secs(
            "upstream.stream_idle_timeout_secs",
            at_least_one(
                "upstream.stream_idle_timeout_secs",
                raw.stream_idle_timeout_secs,
            )?,
        )?,
        max_attempts: at_least_one("upstream.max_attempts", raw.max_attempts.into())? as u32,
        max_frame_bytes,
        max_message_bytes: at_least_one("upstream.max_message_bytes", raw.max_message_bytes)?
            as usize,
        rest_fallback_cooldown: secs(
            "upstream.rest_fallback_cooldown_secs",
            raw.rest_fallback_cooldown_secs,
        )?,
        trust: Trust {
            roots: raw.tls_roots,
            ca_file: match raw.ca_file.as_str() {
                "" => None,
                path => Some(
                    CaBundle::read(Path::new(path))
                        .map_err(|why| invalid("upstream.ca_file", why))?,
                ),
            },
        },
        lanes: raw.lanes,
        // The in-process simulator is reached directly, whatever the proxy variables say.
        proxy: match raw.mode {
            UpstreamMode::Simulator => ProxySetting::Direct,
            UpstreamMode::Remote => ProxySetting::resolve(&raw.proxy, env, secure)
                .map_err(|why| invalid("upstream.proxy", why))?,
        },
    })
}

/// The pool section; `max_age_secs` and `idle_timeout_secs` at 0 are derived from the
/// upstream's `limits` (and `explicit` notes which were set).
fn pool(raw: RawPool, limits: Limits, explicit: &mut Explicit) -> Result<PoolConfig, Invalid> {
    explicit.max_age = raw.max_age_secs > 0;
    explicit.idle_timeout = raw.idle_timeout_secs > 0;
    Ok(PoolConfig {
        min_idle: raw.min_idle as usize,
        max_sockets: at_least_one("pool.max_sockets", raw.max_sockets.into())? as usize,
        max_age: match raw.max_age_secs {
            0 => profile::derived_max_age(limits),
            set => secs("pool.max_age_secs", set)?,
        },
        idle_timeout: match raw.idle_timeout_secs {
            0 => profile::derived_idle_timeout(limits),
            set => secs("pool.idle_timeout_secs", set)?,
        },
        ping_interval: optional_secs("pool.ping_interval_secs", raw.ping_interval_secs)?,
        checkout_timeout: millis("pool.checkout_timeout_ms", raw.checkout_timeout_ms)?,
    })
}

fn continuation(raw: RawContinuation) -> Result<ContinuationConfig, Invalid> {
    Ok(ContinuationConfig {
        enabled: raw.enabled,
        reasoning: raw.reasoning,
        stored_on_any_socket: raw.stored_on_any_socket,
    })
}

fn log(raw: RawLog) -> Result<LogConfig, Invalid> {
    Ok(LogConfig {
        format: raw.format,
        level: raw.level,
        access: raw.access,
    })
}

fn auth(raw: RawAuth, listen: SocketAddr, env: &[(String, String)]) -> Result<AuthConfig, Invalid> {
    match raw.mode {
        AuthMode::Passthrough => Ok(AuthConfig::Passthrough),
        AuthMode::Inject => inject(raw, listen, env),
    }
}

/// `auth.mode = "inject"`: the key must be set, and an open listener needs client tokens
/// (or an explicit `allow_open_relay`).
fn inject(
    raw: RawAuth,
    listen: SocketAddr,
    env: &[(String, String)],
) -> Result<AuthConfig, Invalid> {
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
        .map(Secret::new)
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
        api_key: Secret::new(api_key),
        client_tokens,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::load;
    use crate::config::{AuthConfig, ChatMode, Config, Sources};
    use crate::simulator::config::SimulatorConfig;

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

    #[test]
    fn tls_roots_default_to_both_and_a_bad_ca_file_is_refused_naming_key_and_path() {
        use crate::net::TlsRoots;
        assert_eq!(Config::default().upstream.trust.roots, TlsRoots::Both);
        let config = load("[upstream]\ntls_roots = \"webpki\"\n", &[]).unwrap();
        assert_eq!(config.upstream.trust.roots, TlsRoots::Webpki);
        let error = load("", &[("WSBRIDGE_UPSTREAM_TLS_ROOTS", "system")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("upstream.tls_roots"), "{error}");
        assert!(error.contains("`webpki`, `native`, `both`"), "{error}");

        let dir = std::env::temp_dir().join(format!("wsbridge-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "just some text, no PEM block\n").unwrap();
        let garbled = dir.join("garbled.pem");
        std::fs::write(
            &garbled,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, why) in [
            (&missing, "cannot read"),
            (&empty, "holds no certificate"),
            (&garbled, "certificate 1 in"),
        ] {
            let path = path.display().to_string();
            let error = load("", &[("WSBRIDGE_UPSTREAM_CA_FILE", &path)])
                .unwrap_err()
                .to_string();
            assert!(error.contains("upstream.ca_file"), "{error}");
            assert!(error.contains(&path), "{error}");
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn the_proxy_variables_are_read_unless_upstream_proxy_is_set_or_the_simulator_runs() {
        use crate::net::{ProxySetting, Route};
        let variables = [("HTTPS_PROXY", "http://u:p@proxy:3128")];
        let via_env = load("", &variables).unwrap().upstream.proxy;
        assert!(matches!(
            via_env.route(true, "api.openai.com", 443),
            Route::Tunnel(_)
        ));
        let none = load("[upstream]\nproxy = \"none\"\n", &variables).unwrap();
        assert_eq!(none.upstream.proxy, ProxySetting::Direct);
        let bad = [("ALL_PROXY", "socks5://s:1080")];
        let error = load("", &bad).unwrap_err().to_string();
        assert!(
            error.starts_with("invalid value for `upstream.proxy`"),
            "{error}"
        );
        let simulated = load("[upstream]\nmode = \"simulator\"\n", &bad).unwrap();
        assert_eq!(simulated.upstream.proxy, ProxySetting::Direct);
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
    fn relay_max_replay_bytes_defaults_to_16_mib_and_takes_its_variable() {
        assert_eq!(Config::default().relay.max_replay_bytes, 16 << 20);
        let config = load("", &[("WSBRIDGE_RELAY_MAX_REPLAY_BYTES", "4096")]).unwrap();
        assert_eq!(config.relay.max_replay_bytes, 4096);
        let error = load("[relay]\nmax_replay_bytes = -1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("relay.max_replay_bytes"), "{error}");
    }

    #[test]
    fn worker_threads_zero_means_one_per_core_and_a_count_is_kept() {
        assert_eq!(load("", &[]).unwrap().server.worker_threads, None);
        let one = load("", &[("WSBRIDGE_SERVER_WORKER_THREADS", "1")]).unwrap();
        assert_eq!(one.server.worker_threads, Some(1));
        let error = load("[server]\nworker_threads = 5000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`server.worker_threads`"), "{error}");
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
    fn zero_turns_keepalives_and_pings_off_and_long_durations_are_refused() {
        let config = load(
            "[server]\nsse_keepalive_secs = 0\n[pool]\nping_interval_secs = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.server.sse_keepalive, None);
        assert_eq!(config.pool.ping_interval, None);
        let error = load("", &[("WSBRIDGE_UPSTREAM_CONNECT_TIMEOUT_MS", "0")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid value for `upstream.connect_timeout_ms` (from environment variable \
             WSBRIDGE_UPSTREAM_CONNECT_TIMEOUT_MS): must be at least 1"
        );
        let error = load("[server]\nshutdown_grace_secs = 400000000\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`server.shutdown_grace_secs` (from config file ")
                && error.ends_with("must be at most ten years"),
            "{error}"
        );
    }

    #[test]
    fn the_base_url_is_parsed_once_and_refused_with_its_origin() {
        let config = load(
            "[upstream]\nbase_url = \"http://10.0.0.1:81/openai/v1/\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.upstream.base_url.websocket_url(),
            "ws://10.0.0.1:81/openai/v1/responses"
        );
        let error = Config::load(Sources {
            overrides: vec![crate::config::Override {
                flag: "--upstream",
                key: "upstream.base_url",
                value: "wss://api.openai.com/v1".into(),
            }],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with(
                "invalid value for `upstream.base_url` (from flag --upstream): \
                 `wss://api.openai.com/v1` is a WebSocket URL"
            ),
            "{error}"
        );
        let error = load("", &[("WSBRIDGE_UPSTREAM_BASE_URL", "https://h/v1#x")])
            .unwrap_err()
            .to_string();
        assert!(
            error
                .contains("WSBRIDGE_UPSTREAM_BASE_URL): `https://h/v1#x` must not have a fragment"),
            "{error}"
        );
    }

    #[test]
    fn inject_needs_its_key_and_client_tokens_off_loopback() {
        let inject = [
            ("WSBRIDGE_AUTH_MODE", "inject"),
            ("OPENAI_API_KEY", "sk-1 "),
        ];
        let config = load("", &inject).unwrap();
        let AuthConfig::Inject { api_key, .. } = config.auth else {
            panic!("inject mode");
        };
        assert_eq!(api_key.expose(), "sk-1");
        let error = load("", &inject[..1]).unwrap_err().to_string();
        assert!(error.contains("`OPENAI_API_KEY` is not set"), "{error}");
        let open = [
            inject[0],
            inject[1],
            ("WSBRIDGE_SERVER_LISTEN", "0.0.0.0:1"),
        ];
        let error = load("", &open).unwrap_err().to_string();
        assert!(error.contains("`auth.client_tokens`"), "{error}");
        assert!(!error.contains("sk-1"), "{error}");
    }
}
