//! `upstream.base_url`, parsed once at load time into [`BaseUrl`]: what the REST client, the
//! WebSocket connector, readiness and the start-up line all derive their URLs from.

use axum::http::Uri;
use axum::http::uri::{Authority, PathAndQuery};

/// An `http` or `https` URL with a host, an optional path prefix (`/v1`, `/openai/v1`) and no
/// query or fragment, kept without a trailing `/`. Shown (`Display`, `Debug`) without any
/// `user:password@`.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl {
    uri: Uri,
}

impl BaseUrl {
    /// Validates `text`; the error says what is wrong, for `upstream.base_url`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim_end_matches('/');
        if trimmed.contains('#') {
            return Err(format!("`{text}` must not have a fragment (`#…`)"));
        }
        let scheme_missing = || format!("`{text}` must be an http:// or https:// URL with a host");
        if !trimmed.contains("://") {
            return Err(scheme_missing());
        }
        let uri: Uri = trimmed
            .parse()
            .map_err(|_| format!("`{text}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.host().is_some_and(|host| !host.is_empty()) => {}
            Some("ws" | "wss") => {
                return Err(format!(
                    "`{text}` is a WebSocket URL: give the REST base URL (http:// or \
                     https://), the WebSocket URL is derived from it"
                ));
            }
            _ => return Err(scheme_missing()),
        }
        if uri.query().is_some() {
            return Err("must not have a query string".to_owned());
        }
        Ok(Self { uri })
    }

    /// `https://h/v1` → `wss://h/v1/responses` (`http` → `ws`).
    pub fn websocket_url(&self) -> String {
        let scheme = if self.is_https() { "wss" } else { "ws" };
        format!("{scheme}://{}{}/responses", self.authority(), self.prefix())
    }

    /// The REST URL for `path_and_query` under the base's path prefix: `/models?limit=2` on
    /// `https://h/v1` → `https://h/v1/models?limit=2`. `None` if it is not a valid path.
    pub fn rest(&self, path_and_query: &str) -> Option<Uri> {
        let mut target = format!("{}{path_and_query}", self.prefix());
        if !target.starts_with('/') {
            target.insert(0, '/');
        }
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(target.parse::<PathAndQuery>().ok()?);
        Uri::from_parts(parts).ok()
    }

    /// The host, without the brackets of an IPv6 literal.
    pub fn host(&self) -> &str {
        let host = self.uri.host().unwrap_or_default();
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The port, or the scheme's (443 for `https`, 80 for `http`).
    pub fn port(&self) -> u16 {
        self.uri
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// `https://` (so `wss://` for the WebSocket).
    pub fn is_https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    fn authority(&self) -> &str {
        self.uri.authority().map_or("", Authority::as_str)
    }

    /// The path prefix without a trailing `/`: `/v1`, or empty.
    fn prefix(&self) -> &str {
        self.uri.path().trim_end_matches('/')
    }
}

impl std::fmt::Display for BaseUrl {
    /// `https://host[:port]/prefix`, without `user:password@`, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authority = self.authority();
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let scheme = if self.is_https() { "https" } else { "http" };
        write!(f, "{scheme}://{host}{}", self.prefix())
    }
}

impl std::fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> BaseUrl {
        BaseUrl::parse(text).unwrap()
    }

    #[test]
    fn the_websocket_url_maps_the_scheme_and_appends_responses() {
        assert_eq!(
            url("https://api.openai.com/v1").websocket_url(),
            "wss://api.openai.com/v1/responses"
        );
        assert_eq!(
            url("http://127.0.0.1:9100/v1/").websocket_url(),
            "ws://127.0.0.1:9100/v1/responses"
        );
        assert_eq!(
            url("HTTPS://user:pw@h:8443").websocket_url(),
            "wss://user:pw@h:8443/responses"
        );
    }

    #[test]
    fn rest_urls_keep_the_path_prefix_and_the_query() {
        assert_eq!(
            url("https://api.openai.com/v1")
                .rest("/models?limit=2")
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/models?limit=2"
        );
        assert_eq!(
            url("http://10.0.0.1:81/openai/v1/")
                .rest("/responses/resp_1")
                .unwrap()
                .to_string(),
            "http://10.0.0.1:81/openai/v1/responses/resp_1"
        );
        assert_eq!(url("https://h").rest("").unwrap().to_string(), "https://h/");
        assert!(url("https://h/v1").rest("/a b").is_none());
    }

    #[test]
    fn host_and_port_default_by_scheme() {
        assert_eq!(
            (url("https://h/v1").host(), url("https://h/v1").port()),
            ("h", 443)
        );
        assert_eq!(url("http://h").port(), 80);
        let v6 = url("http://[::1]:9100/v1");
        assert_eq!((v6.host(), v6.port()), ("::1", 9100));
    }

    #[test]
    fn shown_without_credentials() {
        let base = url("https://user:hunter2@example.invalid/v1");
        assert_eq!(base.to_string(), "https://example.invalid/v1");
        assert_eq!(format!("{base:?}"), "BaseUrl(https://example.invalid/v1)");
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_reason() {
        for (text, reason) in [
            (
                "api.openai.com/v1",
                "must be an http:// or https:// URL with a host",
            ),
            (
                "ftp://h/v1",
                "must be an http:// or https:// URL with a host",
            ),
            ("http:///v1", "is not a URL"),
            ("wss://h/v1", "is a WebSocket URL"),
            ("https://h/v1?x=1", "must not have a query string"),
            ("https://h/v1#top", "must not have a fragment"),
            ("", "must be an http:// or https:// URL"),
        ] {
            let error = BaseUrl::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
