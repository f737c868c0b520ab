//! `GET /v1/responses` upgraded to a WebSocket: the client's credential, then an upstream
//! socket of it, then the upgrade, handed to [`crate::relay`] (docs/architecture.md,
//! "WebSocket relay").
//!
//! A browser cannot set `Authorization` on a WebSocket, so the key may also come as the
//! subprotocol `openai-insecure-api-key.<key>`, offered beside `openai-beta.responses-v1`;
//! the answer then names `openai-beta.responses-v1` (a browser refuses an answer naming no
//! protocol it offered, and the key is never echoed).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::App;
use crate::protocol::OpenAiError;

/// The subprotocol prefix that carries an API key.
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";
/// The subprotocol a browser client offers beside the key, echoed when offered.
const BETA_PROTOCOL: &str = "openai-beta.responses-v1";

/// Checks the client's credential (inject mode: its client token) before any upstream socket is
/// touched, takes an upstream socket, and answers `101`; or answers why not, as OpenAI would
/// (401, the upstream's own refusal, 429 when every socket of the key is busy …).
pub(super) async fn upgrade(app: Arc<App>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let offered = protocols(&parts.headers);
    let credential = match app
        .auth
        .resolve(&with_protocol_key(&parts.headers, &offered))
    {
        Ok(credential) => credential,
        Err(error) => return error.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return OpenAiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("Invalid WebSocket upgrade on GET /v1/responses: {rejection}."),
            )
            .into_response();
        }
    };
    let query = parts.uri.query().map(str::to_owned);
    let upstream = match app.relay.open(&credential, query.as_deref()).await {
        Ok(upstream) => upstream,
        Err(error) => return error.into_response(),
    };
    let limit = app.config.server.max_body_bytes;
    let mut upgrade = upgrade.max_message_size(limit).max_frame_size(limit);
    if offered.iter().any(|protocol| protocol == BETA_PROTOCOL) {
        upgrade = upgrade.protocols([BETA_PROTOCOL]);
    }
    let relay = app.relay.clone();
    let tracked = relay.track();
    upgrade.on_upgrade(move |socket| async move {
        relay.serve(socket, credential, query, upstream).await;
        drop(tracked);
    })
}

/// True for a request asking to upgrade to a WebSocket.
pub(super) fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// The subprotocols offered (`Sec-WebSocket-Protocol`, comma-separated, any number of headers).
fn protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|protocol| protocol.trim().to_owned())
        .filter(|protocol| !protocol.is_empty())
        .collect()
}

/// The headers credentials are resolved from: with a subprotocol key and no `Authorization`,
/// that key as a bearer token (in inject mode, it is the client token).
fn with_protocol_key(headers: &HeaderMap, offered: &[String]) -> HeaderMap {
    let mut headers = headers.clone();
    let key = offered
        .iter()
        .find_map(|protocol| protocol.strip_prefix(KEY_PROTOCOL));
    if let Some(key) = key
        && !headers.contains_key(header::AUTHORIZATION)
        && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {key}"))
    {
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn the_key_comes_from_a_subprotocol_when_there_is_no_authorization_header() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("openai-insecure-api-key.sk-abc, openai-beta.responses-v1"),
        );
        let offered = protocols(&headers);
        assert_eq!(offered, ["openai-insecure-api-key.sk-abc", BETA_PROTOCOL]);
        let resolved = with_protocol_key(&headers, &offered);
        assert_eq!(resolved[header::AUTHORIZATION], "Bearer sk-abc");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-own"),
        );
        let resolved = with_protocol_key(&headers, &offered);
        assert_eq!(
            resolved[header::AUTHORIZATION],
            "Bearer sk-own",
            "the header wins"
        );
    }
}
