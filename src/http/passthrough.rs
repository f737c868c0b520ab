//! Everything that is not bridged goes to the upstream REST API as it came: method, path under
//! the base (whose own query is kept), query, headers (minus hop-by-hop ones, plus
//! `upstream.headers`, with the resolved credential) and body, all streamed both ways without
//! buffering. The REST fallback of `POST /v1/responses` uses the same path with the body it
//! already read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::BodyExt;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::App;
use crate::auth::Credential;
use crate::config::BaseUrl;
pub use crate::net::strip_hop_by_hop;
use crate::protocol::OpenAiError;

/// `any /v1/*`: forwards the request upstream.
pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let credential = match app.auth.resolve(&parts.headers) {
        Ok(credential) => credential,
        Err(error) => return error.into_response(),
    };
    forward(
        &app,
        parts.method,
        &parts.uri,
        parts.headers,
        &credential,
        body,
    )
    .await
}

/// Sends one request to the upstream REST API and streams its answer back.
pub async fn forward(
    app: &App,
    method: Method,
    uri: &Uri,
    mut headers: HeaderMap,
    credential: &Credential,
    body: Body,
) -> Response {
    let Some(target) = upstream_uri(&app.config.upstream.base_url, uri) else {
        return OpenAiError::invalid_request(format!(
            "Invalid URL ({method} {}): wsbridge forwards only paths under /v1 without \
             dot-segments or encoded slashes.",
            uri.path()
        ))
        .into_response();
    };
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    for (name, value) in &app.config.upstream.headers {
        headers.insert(name, value.clone());
    }
    credential.apply(&mut headers);
    // A client body that breaks off or is malformed fails the upstream request too; this flag
    // tells that apart from an upstream failure (400, not 502).
    let client_body_failed = Arc::new(AtomicBool::new(false));
    let failed = client_body_failed.clone();
    let body = Body::new(body.map_err(move |error| {
        failed.store(true, Ordering::Relaxed);
        error
    }));
    let mut request = axum::http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = target;
    *request.headers_mut() = headers;
    match app.client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let is_event_stream = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("text/event-stream"));
            if is_event_stream {
                parts
                    .headers
                    .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) if client_body_failed.load(Ordering::Relaxed) => {
            tracing::info!(error = %error_chain(&error), "the client's request body was malformed");
            OpenAiError::invalid_request(
                "The request body could not be read (malformed or cut off chunked encoding).",
            )
            .into_response()
        }
        Err(error) => {
            // The cause (refused, DNS, an untrusted certificate) goes to the client too: it is
            // what a user needs to fix a setup, and it holds no secret.
            let cause = error_chain(&error);
            tracing::warn!(error = %cause, "upstream REST request failed");
            let mut response = OpenAiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                format!("wsbridge could not reach the upstream API ({cause}). Please retry."),
            )
            .with_code("upstream_unreachable")
            .into_response();
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("true"));
            response
        }
    }
}

pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The upstream URL for a proxy URL: `/v1/models?x=1` under base `https://h/v1` →
/// `https://h/v1/models?x=1`. `None` when the path is not under `/v1`, or could resolve
/// outside the upstream's base: a dot-segment (`.`, `..`, raw or percent-encoded in any case)
/// or an encoded `/` or `\` (which some servers decode before routing) anywhere in it.
fn upstream_uri(base: &BaseUrl, uri: &Uri) -> Option<Uri> {
    let path = uri.path();
    let rest = path.strip_prefix("/v1")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    if rest.split('/').any(leaves_its_directory) {
        return None;
    }
    match uri.query() {
        Some(query) => base.rest(&format!("{rest}?{query}")),
        None => base.rest(rest),
    }
}

/// True for a path segment that is `.` or `..` once percent-decoded, or that hides a path
/// separator (`%2F`, `%5C`, `\`).
fn leaves_its_directory(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return true;
    }
    let decoded = lower.replace("%2e", ".");
    decoded == "." || decoded == ".."
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_keeps_the_path_under_the_base_and_the_query() {
        let base = BaseUrl::parse("https://api.openai.com/v1").unwrap();
        let uri: Uri = "/v1/models?limit=2".parse().unwrap();
        assert_eq!(
            upstream_uri(&base, &uri).unwrap().to_string(),
            "https://api.openai.com/v1/models?limit=2"
        );
        let proxied = BaseUrl::parse("http://10.0.0.1:81/openai/v1/").unwrap();
        let uri: Uri = "/v1/responses/resp_1".parse().unwrap();
        assert_eq!(
            upstream_uri(&proxied, &uri).unwrap().to_string(),
            "http://10.0.0.1:81/openai/v1/responses/resp_1"
        );
        assert!(upstream_uri(&base, &"/v1x/models".parse().unwrap()).is_none());
        assert!(upstream_uri(&base, &"/other".parse().unwrap()).is_none());
    }

    #[test]
    fn no_path_leaves_the_upstream_base() {
        let base = BaseUrl::parse("http://10.0.0.1:81/openai/v1").unwrap();
        for path in [
            "/v1/../admin",
            "/v1/models/../../admin",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2E/%2E%2E/admin",
            "/v1/.%2e/admin",
            "/v1/%2e./admin",
            "/v1/./models",
            "/v1/models/%2e",
            "/v1/..",
            "/v1/models%2f..%2f..%2fadmin",
            "/v1/models%5C..%5Cadmin",
        ] {
            assert!(
                upstream_uri(&base, &path.parse().unwrap()).is_none(),
                "{path} must not be forwarded"
            );
        }
        for path in [
            "/v1/models/gpt-5.1",
            "/v1/files/file-..abc",
            "/v1/a...b",
            "/v1/models?q=../x",
        ] {
            assert!(
                upstream_uri(&base, &path.parse().unwrap()).is_some(),
                "{path}"
            );
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_with_those_named_in_connection() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-end-to-end"));
    }
}
