//! What every configuration section shares: the error for one value that fails validation,
//! and the checks several sections make. A leaf: `config` validates its sections with it, and
//! the simulator validates its own section (`simulator::config`) with it, so the simulator
//! needs nothing from `config` (docs/architecture.md, "Module map").

use std::net::SocketAddr;
use std::time::Duration;

/// A value that failed validation: which key, and why. `config` adds where the value came
/// from (file, variable or flag) before a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The dotted key, e.g. `pool.max_sockets`.
    pub key: &'static str,
    pub message: String,
}

pub fn invalid(key: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        key,
        message: message.into(),
    }
}

pub fn at_least_one(key: &'static str, value: u64) -> Result<u64, Invalid> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(value)
    }
}

pub fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, Invalid> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"),
        )
    })
}

/// Deadlines are `now + duration`: every configured duration stays far from overflowing an
/// `Instant`.
pub fn within_ten_years(key: &'static str, duration: Duration) -> Result<Duration, Invalid> {
    const LIMIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    if duration > LIMIT {
        Err(invalid(key, "must be at most ten years"))
    } else {
        Ok(duration)
    }
}

/// How a unit enum variant is spelt in the configuration (its serde name, e.g. `json`).
pub fn name_of<T: serde::Serialize>(value: &T) -> String {
    match toml::Value::try_from(value) {
        Ok(toml::Value::String(name)) => name,
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_name_the_key_and_say_what_is_wrong() {
        assert_eq!(
            at_least_one("pool.max_sockets", 0),
            Err(invalid("pool.max_sockets", "must be at least 1"))
        );
        assert_eq!(at_least_one("pool.max_sockets", 3), Ok(3));
        let error = parse_addr("server.listen", "8080").unwrap_err();
        assert_eq!(error.key, "server.listen");
        assert!(error.message.starts_with("`8080` is not an address"));
        let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
        assert_eq!(within_ten_years("k", ten_years), Ok(ten_years));
        assert!(within_ten_years("k", ten_years + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn enum_names_are_their_serde_names() {
        #[derive(serde::Serialize)]
        #[serde(rename_all = "lowercase")]
        enum Profile {
            OpenAi,
        }
        assert_eq!(name_of(&Profile::OpenAi), "openai");
    }
}
