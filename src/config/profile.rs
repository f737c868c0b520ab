//! Upstream profiles: what an upstream's server does to connections (how long it lets a
//! WebSocket live, how long it lets one sit idle, the largest frame it takes), by upstream,
//! and the pool settings derived from them (docs/architecture.md, "Upstream profiles").
//!
//! `upstream.profile = "auto"` picks the profile from the host of `upstream.base_url`; any
//! other name forces one. `pool.max_age_secs`, `pool.idle_timeout_secs` and
//! `upstream.max_frame_bytes` at 0 (their defaults) are derived from the profile; set, they
//! win.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const MINUTE: Duration = Duration::from_secs(60);

/// `upstream.profile`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProfile {
    /// From the host of `upstream.base_url`.
    #[default]
    Auto,
    /// api.openai.com, and any host not known to be another.
    Openai,
    /// Azure OpenAI: `*.openai.azure.com`, `*.cognitiveservices.azure.com`.
    Azure,
    /// xAI: `api.x.ai`.
    Xai,
    /// Vercel's AI Gateway: `ai-gateway.vercel.sh`.
    Vercel,
}

/// What an upstream's server does to WebSockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The server ends a connection this long after it opened.
    pub connection_age: Duration,
    /// The server closes a connection idle this long (`None`: not known to).
    pub idle_timeout: Option<Duration>,
    /// The largest frame the server takes (`None`: not known).
    pub max_frame_bytes: Option<usize>,
}

/// The profile in force and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Never `Auto`.
    pub name: UpstreamProfile,
    /// `Some(host)` when `auto` chose it from the host; `None` when set.
    pub from_host: Option<String>,
}

impl Profile {
    /// `setting` resolved against `host` (`auto` → by host, unknown hosts → `openai`).
    pub fn resolve(setting: UpstreamProfile, host: &str) -> Self {
        match setting {
            UpstreamProfile::Auto => Self {
                name: UpstreamProfile::for_host(host),
                from_host: Some(host.to_owned()),
            },
            name => Self {
                name,
                from_host: None,
            },
        }
    }

    pub fn limits(&self) -> Limits {
        self.name.limits()
    }
}

impl UpstreamProfile {
    /// The profile of a host: case-insensitive, a trailing `.` ignored; anything unknown
    /// (a gateway, a local server, the simulator) gets OpenAI's.
    pub fn for_host(host: &str) -> Self {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let under = |domain: &str| host.ends_with(&format!(".{domain}"));
        match host.as_str() {
            "api.x.ai" => Self::Xai,
            "ai-gateway.vercel.sh" => Self::Vercel,
            _ if under("openai.azure.com") || under("cognitiveservices.azure.com") => Self::Azure,
            _ => Self::Openai,
        }
    }

    /// The limits each upstream documents (docs/protocol.md, "Upstream profiles").
    pub fn limits(self) -> Limits {
        let age = |minutes| MINUTE * minutes;
        match self {
            Self::Auto | Self::Openai | Self::Azure => Limits {
                connection_age: age(60),
                idle_timeout: None,
                max_frame_bytes: None,
            },
            Self::Xai => Limits {
                connection_age: age(25),
                idle_timeout: None,
                max_frame_bytes: None,
            },
            Self::Vercel => Limits {
                connection_age: age(13),
                idle_timeout: Some(age(5)),
                max_frame_bytes: Some(4 << 20),
            },
        }
    }
}

/// `pool.max_age` when not set: 5 minutes under the server's limit, so a turn started just
/// before has 5 minutes to finish, but never less than half of it.
pub fn derived_max_age(limits: Limits) -> Duration {
    let age = limits.connection_age;
    age.saturating_sub(MINUTE * 5).max(age / 2)
}

/// `pool.idle_timeout` when not set: 5 minutes, or a minute under the server's idle
/// timeout when it has one, so wsbridge closes a spare socket before the server does.
pub fn derived_idle_timeout(limits: Limits) -> Duration {
    let ours = MINUTE * 5;
    match limits.idle_timeout {
        Some(theirs) => ours.min(theirs.saturating_sub(MINUTE).max(theirs / 2)),
        None => ours,
    }
}

/// `upstream.max_frame_bytes` when not set: the server's limit, else 16 MiB.
pub fn derived_max_frame_bytes(limits: Limits) -> usize {
    limits.max_frame_bytes.unwrap_or(16 << 20)
}

/// Which of the settings a profile derives were set instead (non-zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explicit {
    pub max_age: bool,
    pub idle_timeout: bool,
    pub max_frame_bytes: bool,
}

impl super::Config {
    /// The profile in force and the settings it governs, each marked `derived` or `set`:
    /// `vercel (host ai-gateway.vercel.sh): pool.max_age_secs=480 derived, …`, for the
    /// start-up line.
    pub fn limits_summary(&self) -> String {
        let profile = &self.upstream.profile;
        let name = crate::setting::name_of(&profile.name);
        let chosen = match &profile.from_host {
            Some(host) => format!("{name} (host {host})"),
            None => format!("{name} (set)"),
        };
        let how = |set: bool| if set { "set" } else { "derived" };
        let explicit = self.upstream.explicit;
        format!(
            "{chosen}: pool.max_age_secs={} {}, pool.idle_timeout_secs={} {}, \
             upstream.max_frame_bytes={} {}",
            self.pool.max_age.as_secs(),
            how(explicit.max_age),
            self.pool.idle_timeout.as_secs(),
            how(explicit.idle_timeout),
            self.upstream.max_frame_bytes,
            how(explicit.max_frame_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_pick_their_profiles_and_anything_else_is_openai() {
        for (host, profile) in [
            ("api.openai.com", UpstreamProfile::Openai),
            ("my-res.openai.azure.com", UpstreamProfile::Azure),
            ("My-Res.OpenAI.Azure.com.", UpstreamProfile::Azure),
            ("my-res.cognitiveservices.azure.com", UpstreamProfile::Azure),
            ("openai.azure.com.evil.example", UpstreamProfile::Openai),
            ("api.x.ai", UpstreamProfile::Xai),
            ("ai-gateway.vercel.sh", UpstreamProfile::Vercel),
            ("127.0.0.1", UpstreamProfile::Openai),
            ("gateway.internal", UpstreamProfile::Openai),
        ] {
            assert_eq!(UpstreamProfile::for_host(host), profile, "{host}");
        }
        let chosen = Profile::resolve(UpstreamProfile::Auto, "api.x.ai");
        assert_eq!(chosen.name, UpstreamProfile::Xai);
        assert_eq!(chosen.from_host.as_deref(), Some("api.x.ai"));
        let forced = Profile::resolve(UpstreamProfile::Vercel, "127.0.0.1");
        assert_eq!(
            (forced.name, forced.from_host),
            (UpstreamProfile::Vercel, None)
        );
    }

    #[test]
    fn pool_settings_keep_a_margin_under_each_servers_limits() {
        let minutes = |d: Duration| d.as_secs() / 60;
        let secs = |d: Duration| d.as_secs();
        let rows = [
            (UpstreamProfile::Openai, 55, 300, 16 << 20),
            (UpstreamProfile::Azure, 55, 300, 16 << 20),
            (UpstreamProfile::Xai, 20, 300, 16 << 20),
            (UpstreamProfile::Vercel, 8, 240, 4 << 20),
        ];
        for (profile, max_age, idle, frame) in rows {
            let limits = profile.limits();
            assert_eq!(minutes(derived_max_age(limits)), max_age, "{profile:?}");
            assert_eq!(secs(derived_idle_timeout(limits)), idle, "{profile:?}");
            assert_eq!(derived_max_frame_bytes(limits), frame, "{profile:?}");
            assert!(derived_max_age(limits) < limits.connection_age);
        }
        let short = Limits {
            connection_age: MINUTE * 6,
            idle_timeout: Some(Duration::from_secs(90)),
            max_frame_bytes: None,
        };
        assert_eq!(derived_max_age(short), MINUTE * 3);
        assert_eq!(derived_idle_timeout(short), Duration::from_secs(45));
    }

    #[test]
    fn loading_derives_unset_settings_from_the_profile_and_keeps_set_ones() {
        use crate::config::testing::load;
        let vercel = load(
            "[upstream]\nbase_url = \"https://ai-gateway.vercel.sh/v1\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(vercel.upstream.profile.name, UpstreamProfile::Vercel);
        assert_eq!(vercel.pool.max_age, MINUTE * 8);
        assert_eq!(vercel.pool.idle_timeout, MINUTE * 4);
        assert_eq!(vercel.upstream.max_frame_bytes, 4 << 20);
        assert_eq!(vercel.upstream.explicit, Explicit::default());

        let forced = load(
            "[upstream]\nprofile = \"xai\"\n[pool]\nidle_timeout_secs = 30\n",
            &[("WSBRIDGE_UPSTREAM_MAX_FRAME_BYTES", "1000")],
        )
        .unwrap();
        assert_eq!(forced.upstream.profile.from_host, None);
        assert_eq!(forced.pool.max_age, MINUTE * 20);
        assert_eq!(forced.pool.idle_timeout, Duration::from_secs(30));
        assert_eq!(forced.upstream.max_frame_bytes, 1000);
        let explicit = forced.upstream.explicit;
        assert!(!explicit.max_age && explicit.idle_timeout && explicit.max_frame_bytes);
        assert_eq!(
            forced.limits_summary(),
            "xai (set): pool.max_age_secs=1200 derived, pool.idle_timeout_secs=30 set, \
             upstream.max_frame_bytes=1000 set"
        );
        assert!(
            vercel
                .limits_summary()
                .starts_with("vercel (host ai-gateway.vercel.sh): pool.max_age_secs=480 derived")
        );

        let error = load("", &[("WSBRIDGE_UPSTREAM_PROFILE", "azure-openai")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`upstream.profile`")
                && error.contains("`auto`, `openai`, `azure`, `xai`, `vercel`"),
            "{error}"
        );
    }
}
