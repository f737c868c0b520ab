//! Who a request is for upstream: the [`Credential`] that keys the pool and is sent on every
//! upstream request, resolved from the client's headers by the configured [`Auth`] mode. A
//! client's key is read from `Authorization: Bearer` or, as Azure clients send it, `api-key`;
//! it goes upstream in the header `upstream.auth_header` names.
//!
//! Credentials are compared whole (never by a hash alone), so two credentials can never share
//! a socket. They are never printed: `Debug` shows a keyed fingerprint only.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{AuthConfig, Secret};
use crate::protocol::OpenAiError;
use crate::protocol::key::KeyHeader;

pub const OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
pub const OPENAI_PROJECT: HeaderName = HeaderName::from_static("openai-project");

/// The upstream identity of a request: the key header (`Authorization` or `api-key`) plus the
/// optional organization and project headers, exactly as they will be sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    header: KeyHeader,
    key: HeaderValue,
    organization: Option<HeaderValue>,
    project: Option<HeaderValue>,
}

impl Credential {
    /// `key` sent in `header`, with no organization or project.
    pub fn new(key: &str, header: KeyHeader) -> Option<Self> {
        let (_, key) = header.value(key)?;
        Some(Self {
            header,
            key,
            organization: None,
            project: None,
        })
    }

    /// `Authorization: Bearer <key>` with no organization or project.
    pub fn bearer(key: &str) -> Option<Self> {
        Self::new(key, KeyHeader::Authorization)
    }

    /// Writes this credential's headers into `headers`, replacing what was there (a key the
    /// client sent in the other header is removed).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(self.header.other().name());
        headers.insert(self.header.name(), self.key.clone());
        for (name, value) in [
            (OPENAI_ORGANIZATION, &self.organization),
            (OPENAI_PROJECT, &self.project),
        ] {
            match value {
                Some(value) => headers.insert(name, value.clone()),
                None => headers.remove(name),
            };
        }
    }

    /// A short, keyed, process-local fingerprint for logs: stable within one run, useless
    /// for recovering the key.
    pub fn fingerprint(&self) -> String {
        static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        format!(
            "{:08x}",
            KEYS.get_or_init(Default::default).hash_one(self) as u32
        )
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({})", self.fingerprint())
    }
}

/// The configured authentication mode, ready to resolve requests.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Each client's key, sent upstream in this header.
    Passthrough(KeyHeader),
    Inject {
        credential: Credential,
        client_tokens: Vec<Secret>,
    },
}

impl Auth {
    /// The mode of `config`, sending keys upstream in `header` (`upstream.auth_header`).
    pub fn from_config(config: &AuthConfig, header: KeyHeader) -> Result<Self, String> {
        Ok(match config {
            AuthConfig::Passthrough => Self::Passthrough(header),
            AuthConfig::Inject {
                api_key,
                client_tokens,
            } => Self::Inject {
                credential: Credential::new(api_key.expose(), header)
                    .ok_or("the injected API key is not a valid header value")?,
                client_tokens: client_tokens.clone(),
            },
        })
    }

    /// The credential fixed by configuration, if any (inject mode): its pool is pre-warmed.
    pub fn fixed(&self) -> Option<&Credential> {
        match self {
            Self::Passthrough(_) => None,
            Self::Inject { credential, .. } => Some(credential),
        }
    }

    /// The upstream credential for a request, or the 401 the client gets. The client's key
    /// (or client token) is its `Authorization: Bearer`, else its `api-key`.
    pub fn resolve(&self, headers: &HeaderMap) -> Result<Credential, OpenAiError> {
        let bearer = KeyHeader::Authorization
            .read(headers)
            .or_else(|| KeyHeader::ApiKey.read(headers));
        let org = headers.get(OPENAI_ORGANIZATION).cloned();
        let project = headers.get(OPENAI_PROJECT).cloned();
        match self {
            Self::Passthrough(header) => {
                let Some(key) = bearer else {
                    return Err(missing_key());
                };
                let mut credential = Credential::new(key, *header).ok_or_else(missing_key)?;
                credential.organization = org;
                credential.project = project;
                Ok(credential)
            }
            Self::Inject {
                credential,
                client_tokens,
            } => {
                if !client_tokens.is_empty() {
                    let presented = bearer.unwrap_or_default();
                    if !client_tokens
                        .iter()
                        .any(|token| constant_time_eq(token.expose(), presented))
                    {
                        return Err(OpenAiError::invalid_api_key(
                            "This wsbridge requires a client token: send `Authorization: Bearer \
                             <token>` (or `api-key: <token>`) with one of the tokens in its \
                             auth.client_tokens.",
                        ));
                    }
                }
                let mut credential = credential.clone();
                credential.organization = org;
                credential.project = project;
                Ok(credential)
            }
        }
    }
}

fn missing_key() -> OpenAiError {
    let mut error = OpenAiError::invalid_api_key(
        "You didn't provide an API key. You need to provide your API key in an Authorization header \
         using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    );
    error.code = None;
    error
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use axum::http::header;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn passthrough_keys_by_key_organization_and_project() {
        let auth = Auth::Passthrough(KeyHeader::Authorization);
        let a = auth
            .resolve(&headers(&[("authorization", "Bearer sk-a")]))
            .unwrap();
        let a_org = auth
            .resolve(&headers(&[
                ("authorization", "Bearer sk-a"),
                ("openai-organization", "org-1"),
            ]))
            .unwrap();
        let b = auth
            .resolve(&headers(&[("authorization", "Bearer sk-b")]))
            .unwrap();
        assert_ne!(a, b);
        assert_ne!(a, a_org);
        assert_eq!(
            a,
            auth.resolve(&headers(&[("authorization", "Bearer  sk-a ")]))
                .unwrap()
        );
        let missing = auth.resolve(&HeaderMap::new()).unwrap_err();
        assert_eq!(missing.status.as_u16(), 401);
    }

    #[test]
    fn inject_checks_client_tokens_and_sends_its_own_key() {
        let auth = Auth::Inject {
            credential: Credential::bearer("sk-upstream").unwrap(),
            client_tokens: vec![Secret::new("tok-1")],
        };
        let denied = auth
            .resolve(&headers(&[("authorization", "Bearer tok-2")]))
            .unwrap_err();
        assert_eq!(denied.status.as_u16(), 401);
        let credential = auth
            .resolve(&headers(&[("authorization", "Bearer tok-1")]))
            .unwrap();
        let mut out = HeaderMap::new();
        credential.apply(&mut out);
        assert_eq!(out[header::AUTHORIZATION], "Bearer sk-upstream");
    }

    #[test]
    fn a_key_in_either_header_goes_upstream_in_the_configured_one() {
        let azure = Auth::Passthrough(KeyHeader::ApiKey);
        for client in [("authorization", "Bearer az-1"), ("api-key", "az-1")] {
            let credential = azure.resolve(&headers(&[client])).unwrap();
            let mut out = headers(&[("authorization", "Bearer stale"), ("api-key", "stale")]);
            credential.apply(&mut out);
            assert_eq!(out["api-key"], "az-1", "{client:?}");
            assert!(!out.contains_key(header::AUTHORIZATION), "{client:?}");
        }
        let openai = Auth::Passthrough(KeyHeader::Authorization);
        let credential = openai.resolve(&headers(&[("api-key", "sk-2")])).unwrap();
        let mut out = headers(&[("api-key", "sk-2")]);
        credential.apply(&mut out);
        assert_eq!(out[header::AUTHORIZATION], "Bearer sk-2");
        assert!(!out.contains_key("api-key"));
        let injecting = Auth::Inject {
            credential: Credential::new("az-upstream", KeyHeader::ApiKey).unwrap(),
            client_tokens: vec![Secret::new("tok-1")],
        };
        let credential = injecting
            .resolve(&headers(&[("api-key", "tok-1")]))
            .unwrap();
        let mut out = HeaderMap::new();
        credential.apply(&mut out);
        assert_eq!(out["api-key"], "az-upstream");
    }

    #[test]
    fn debug_never_shows_the_key() {
        let credential = Credential::bearer("sk-very-secret").unwrap();
        assert!(!format!("{credential:?}").contains("secret"));
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
