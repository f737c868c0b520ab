//! Which request header carries the API key: OpenAI's `Authorization: Bearer <key>`, or
//! Azure OpenAI's `api-key: <key>` (docs/protocol.md, "Upstream profiles"). Shared by the
//! proxy (what it sends upstream, what it accepts from clients) and the simulator (what it
//! requires).

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::{Deserialize, Serialize};

/// Azure's key header.
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// `upstream.auth_header` and `simulator.auth_header`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    #[default]
    Authorization,
    /// `api-key: <key>`.
    ApiKey,
}

impl KeyHeader {
    /// The key this header carries in `headers`, trimmed; `None` when absent or empty.
    pub fn read(self, headers: &HeaderMap) -> Option<&str> {
        let value = match self {
            Self::Authorization => headers
                .get(header::AUTHORIZATION)?
                .to_str()
                .ok()?
                .strip_prefix("Bearer ")?,
            Self::ApiKey => headers.get(API_KEY)?.to_str().ok()?,
        };
        Some(value.trim()).filter(|key| !key.is_empty())
    }

    /// The header and value that send `key` this way (marked sensitive, so never logged).
    pub fn value(self, key: &str) -> Option<(HeaderName, HeaderValue)> {
        let (name, text) = match self {
            Self::Authorization => (header::AUTHORIZATION, format!("Bearer {key}")),
            Self::ApiKey => (API_KEY, key.to_owned()),
        };
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }

    /// The other way, whose header must not also reach the upstream.
    pub fn other(self) -> Self {
        match self {
            Self::Authorization => Self::ApiKey,
            Self::ApiKey => Self::Authorization,
        }
    }

    pub fn name(self) -> HeaderName {
        match self {
            Self::Authorization => header::AUTHORIZATION,
            Self::ApiKey => API_KEY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_way_reads_only_its_own_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  sk-a "),
        );
        headers.insert(API_KEY, HeaderValue::from_static("az-b"));
        assert_eq!(KeyHeader::Authorization.read(&headers), Some("sk-a"));
        assert_eq!(KeyHeader::ApiKey.read(&headers), Some("az-b"));
        headers.insert(API_KEY, HeaderValue::from_static(" "));
        assert_eq!(KeyHeader::ApiKey.read(&headers), None);
        let (name, value) = KeyHeader::ApiKey.value("az-b").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("api-key", "az-b")
        );
        assert!(value.is_sensitive());
        assert_eq!(KeyHeader::ApiKey.other(), KeyHeader::Authorization);
    }
}
