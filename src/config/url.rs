//! `upstream.base_url`, parsed once at load time into [`BaseUrl`]: what the REST client, the
//! WebSocket connector, readiness and the start-up line all derive their URLs from.

use axum::http::Uri;
use axum::http::uri::{Authority, PathAndQuery};

/// An `http` or `https` URL with a host, an optional path prefix (`/v1`, `/openai/v1`), an
/// optional query (`api-version=preview`, kept on every URL derived from it) and no fragment,
/// kept without a trailing `/`. Shown (`Display`, `Debug`) without any `user:password@`.
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Without the query.
    uri: Uri,
    /// Without the `?`; `None` when absent or empty.
    query: Option<String>,
}

impl BaseUrl {
    /// Validates `text`; the error says what is wrong, for `upstream.base_url`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, query) = match text.split_once('?') {
            Some((path, query)) => (path, Some(query).filter(|q| !q.is_empty())),
            None => (text, None),
        };
        let trimmed = path.trim_end_matches('/');
        if text.contains('#') {
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
        if let Some(query) = query
            && format!("/?{query}").parse::<PathAndQuery>().is_err()
        {
            return Err(format!(
                "`{text}` has a query string that is not valid in a URL"
            ));
        }
        Ok(Self {
            uri,
            query: query.map(str::to_owned),
        })
    }

    /// `https://h/v1?q` → `wss://h/v1/responses?q` (`http` → `ws`).
    pub fn websocket_url(&self) -> String {
        self.websocket_url_at(self.authority())
    }

    /// [`BaseUrl::websocket_url`] without `user:password@`, for logs.
    pub fn websocket_url_shown(&self) -> String {
        self.websocket_url_at(self.host_and_port())
    }

    fn websocket_url_at(&self, authority: &str) -> String {
        let scheme = if self.is_https() { "wss" } else { "ws" };
        let query = self
            .query
            .as_deref()
            .map_or(String::new(), |q| format!("?{q}"));
        format!("{scheme}://{authority}{}/responses{query}", self.prefix())
    }

    /// The REST URL for `path_and_query` under the base's path prefix: `/models?limit=2` on
    /// `https://h/v1` → `https://h/v1/models?limit=2`. The base's query comes first; a
    /// parameter of the request that the base also has is dropped, so the upstream sees the
    /// configured value (one `api-version`, the same as on the WebSocket). `None` if it is not
    /// a valid path.
    pub fn rest(&self, path_and_query: &str) -> Option<Uri> {
        let (path, request_query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let query = merge_queries(self.query.as_deref(), request_query);
        let mut target = format!("{}{path}", self.prefix());
        if let Some(query) = query {
            target.push('?');
            target.push_str(&query);
        }
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

    /// The authority without `user:password@`.
    fn host_and_port(&self) -> &str {
        let authority = self.authority();
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host)
    }

    /// The path prefix without a trailing `/`: `/v1`, or empty.
    fn prefix(&self) -> &str {
        self.uri.path().trim_end_matches('/')
    }
}

/// `base` then those parameters of `request` whose names `base` does not have; `None` when
/// both are empty.
pub fn merge_queries(base: Option<&str>, request: Option<&str>) -> Option<String> {
    let name = |pair: &str| pair.split('=').next().unwrap_or_default().to_owned();
    let base: Vec<&str> = base.into_iter().flat_map(|q| q.split('&')).collect();
    let taken: Vec<String> = base.iter().map(|pair| name(pair)).collect();
    let pairs: Vec<&str> = base
        .iter()
        .copied()
        .chain(
            request
                .into_iter()
                .flat_map(|q| q.split('&'))
                .filter(|pair| !taken.contains(&name(pair))),
        )
        .filter(|pair| !pair.is_empty())
        .collect();
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

impl std::fmt::Display for BaseUrl {
    /// `https://host[:port]/prefix[?query]`, without `user:password@`, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.is_https() { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.host_and_port(), self.prefix())?;
        match &self.query {
            Some(query) => write!(f, "?{query}"),
            None => Ok(()),
        }
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
    fn the_query_is_kept_on_every_url_and_a_request_cannot_replace_it() {
        let azure = url("https://res.openai.azure.com/openai/v1/?api-version=preview");
        assert_eq!(
            azure.websocket_url(),
            "wss://res.openai.azure.com/openai/v1/responses?api-version=preview"
        );
        let rest = |path: &str| azure.rest(path).unwrap().to_string();
        assert_eq!(
            rest("/responses"),
            "https://res.openai.azure.com/openai/v1/responses?api-version=preview"
        );
        assert_eq!(
            rest("/models?limit=2&api-version=2024-10-21&after=m"),
            "https://res.openai.azure.com/openai/v1/models?api-version=preview&limit=2&after=m"
        );
        assert_eq!(rest("/models?"), rest("/models"));
        assert_eq!(
            azure.to_string(),
            "https://res.openai.azure.com/openai/v1?api-version=preview"
        );
        assert_eq!(url("https://h/v1?").websocket_url(), "wss://h/v1/responses");
        assert_eq!(azure.host(), "res.openai.azure.com");
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
        assert_eq!(
            base.websocket_url_shown(),
            "wss://example.invalid/v1/responses"
        );
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
            ("https://h/v1?a=<b>", "query string that is not valid"),
            ("https://h/v1#top", "must not have a fragment"),
            ("", "must be an http:// or https:// URL"),
        ] {
            let error = BaseUrl::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
