//! The OpenAI error shape, in its two wire forms: the REST body
//! `{"error":{message,type,param,code}}` and the WebSocket `error` event
//! `{"type":"error","status":N,"error":{type,code,message,param}}` (docs/protocol.md, "Errors").

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What an upstream error means to wsbridge, whatever form it came in. This is the one table
/// that classifies upstream errors (docs/protocol.md, "Errors"): by `code` where the upstream
/// sends one, and by status, `param` and wording where it does not (real servers send
/// `{"type":"error","status":400,"error":{"type":"invalid_request_error","message":"Invalid
/// `previous_response_id`."}}` with no code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The `previous_response_id` the request named cannot be resolved (expired, evicted, never
    /// stored). On a continuation wsbridge made, the full input is resent.
    PreviousResponseGone,
    /// The socket reached its connection time limit: retry on a new socket.
    ConnectionLimit,
    /// 429: rate limit or quota.
    RateLimited,
    /// 401/403: the key is not accepted.
    Unauthorized,
    /// 5xx: the upstream failed.
    ServerError,
    /// Any other client error: the request itself is wrong.
    BadRequest,
}

/// One request-scoped API error, as OpenAI would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    /// The HTTP status the same failure has over REST.
    pub status: StatusCode,
    /// `error.type`, e.g. `invalid_request_error`, `server_error`.
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl OpenAiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// 401 for a missing or unknown key, as api.openai.com words it.
    pub fn invalid_api_key(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 400 for a body that is not JSON.
    pub fn unparseable_json() -> Self {
        Self::invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
             using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
             sent was not valid JSON.)",
        )
    }

    pub fn previous_response_not_found(id: &str) -> Self {
        Self::invalid_request(format!("Previous response with id '{id}' not found."))
            .with_param("previous_response_id")
            .with_code("previous_response_not_found")
    }

    pub fn connection_limit_reached(minutes: u64) -> Self {
        Self::invalid_request(format!(
            "Responses websocket connection limit reached ({minutes} minutes). Create a new \
             websocket connection to continue."
        ))
        .with_code("websocket_connection_limit_reached")
    }

    /// An error for `status` and `code` with the `type` and wording OpenAI uses for that class.
    pub fn for_status(status: StatusCode, code: &str) -> Self {
        let (kind, message) = match status.as_u16() {
            429 => (
                "requests",
                "Rate limit reached for requests. Please try again in 1s.".to_owned(),
            ),
            500..=599 => (
                "server_error",
                "The server had an error while processing your request. Sorry about that!"
                    .to_owned(),
            ),
            _ => (
                "invalid_request_error",
                format!("Request failed with code {code}."),
            ),
        };
        Self::new(status, kind, message).with_code(code)
    }

    fn payload(&self) -> Value {
        json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        })
    }

    /// The REST body: `{"error":{"message","type","param","code"}}`.
    pub fn rest_body(&self) -> String {
        json!({ "error": self.payload() }).to_string()
    }

    /// The WebSocket `error` event, with `stream_id` when the error belongs to a named lane.
    pub fn ws_event(&self, stream_id: Option<&str>) -> String {
        let mut event = json!({
            "type": "error",
            "status": self.status.as_u16(),
            "error": {
                "type": self.kind,
                "code": self.code,
                "message": self.message,
                "param": self.param,
            },
        });
        if let (Some(id), Some(map)) = (stream_id, event.as_object_mut()) {
            map.insert("stream_id".into(), Value::from(id));
        }
        event.to_string()
    }

    /// Reads a WebSocket `error` event back into an error (the inverse of [`Self::ws_event`]),
    /// tolerating the optional fields. `None` when the value is not a nested error event.
    pub fn from_ws_event(event: &Value) -> Option<Self> {
        let error = event.get("error")?.as_object()?;
        let status = event
            .get("status")
            .or_else(|| event.get("status_code"))
            .and_then(Value::as_u64)
            .and_then(|s| u16::try_from(s).ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            // An error event is an error: a missing or non-error status reads as 500.
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
        let kind = match error.get("type").and_then(Value::as_str) {
            Some("server_error") => "server_error",
            Some("requests") => "requests",
            Some("tokens") => "tokens",
            _ if status.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        Some(Self {
            status,
            kind,
            message: text("message").unwrap_or_else(|| "An error occurred.".into()),
            param: text("param"),
            code: text("code"),
        })
    }
}

impl OpenAiError {
    /// The upstream error in a WebSocket `error` event, nested (`{"error":{…},"status":N}`) or
    /// flat (`{"type":"error","code":…,"message":…}`, the in-stream form).
    pub fn from_upstream_event(event: &Value) -> Self {
        if let Some(error) = Self::from_ws_event(event) {
            return error;
        }
        let code = event
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("server_error");
        let mut error = Self::for_status(status_for_code(code), code);
        if let Some(message) = event.get("message").and_then(Value::as_str) {
            error.message = message.to_owned();
        }
        error.param = event
            .get("param")
            .and_then(Value::as_str)
            .map(str::to_owned);
        error
    }

    /// The error of a `response.failed` event's `response.error` (`{code, message}`).
    pub fn from_failed_response(event: &Value) -> Self {
        let failure = &event["response"]["error"];
        let code = failure["code"].as_str().unwrap_or("server_error");
        let mut error = Self::for_status(status_for_code(code), code);
        if let Some(message) = failure["message"].as_str() {
            error.message = message.to_owned();
        }
        error
    }

    /// What this error means (see [`Meaning`]).
    pub fn meaning(&self) -> Meaning {
        let message = self.message.to_ascii_lowercase();
        match self.code.as_deref() {
            Some("previous_response_not_found") => return Meaning::PreviousResponseGone,
            Some("websocket_connection_limit_reached") => return Meaning::ConnectionLimit,
            Some("rate_limit_exceeded" | "insufficient_quota") => return Meaning::RateLimited,
            Some("invalid_api_key") => return Meaning::Unauthorized,
            _ => {}
        }
        let status = self.status.as_u16();
        let names_previous = self.param.as_deref() == Some("previous_response_id")
            || message.contains("previous_response_id")
            || message.contains("previous response");
        if matches!(status, 400 | 404 | 410) && names_previous {
            return Meaning::PreviousResponseGone;
        }
        if message.contains("websocket connection limit")
            || (message.contains("websocket") && message.contains("limit reached"))
        {
            return Meaning::ConnectionLimit;
        }
        match status {
            429 => Meaning::RateLimited,
            401 | 403 => Meaning::Unauthorized,
            500.. => Meaning::ServerError,
            _ if self.kind == "requests" || self.kind == "tokens" => Meaning::RateLimited,
            _ => Meaning::BadRequest,
        }
    }

    /// How long the upstream asked to wait, from its wording: "Please try again in 1s",
    /// "in 250ms", "in 1.5s", "in 6m30s", "in 1h2m".
    pub fn retry_after(&self) -> Option<Duration> {
        let lower = self.message.to_ascii_lowercase();
        let at = lower.find("try again in ")? + "try again in ".len();
        parse_go_duration(&lower[at..])
    }
}

/// Reads a Go-style duration (`1h2m3.5s`, `250ms`) at the start of `text`; `None` when none
/// is there.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0.0_f64;
    let mut rest = text;
    let mut any = false;
    loop {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            break;
        }
        let Ok(number) = rest[..digits].parse::<f64>() else {
            break;
        };
        let after = &rest[digits..];
        let (unit, scale) = if after.starts_with("ms") {
            ("ms", 0.001)
        } else if after.starts_with('h') {
            ("h", 3600.0)
        } else if after.starts_with('m') {
            ("m", 60.0)
        } else if after.starts_with('s') {
            ("s", 1.0)
        } else {
            break;
        };
        total += number * scale;
        any = true;
        rest = &after[unit.len()..];
    }
    (any && total.is_finite() && total < 86_400.0).then(|| Duration::from_secs_f64(total))
}

/// The REST status of a failure code reported inside a stream.
fn status_for_code(code: &str) -> StatusCode {
    match code {
        "rate_limit_exceeded" | "insufficient_quota" => StatusCode::TOO_MANY_REQUESTS,
        "invalid_prompt" | "invalid_request_error" | "previous_response_not_found" => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP headers an upstream `error` event carries for its REST twin: the retry and
/// rate-limit entries of its `error.headers` (or top-level `headers`) map, nothing else; and
/// for a 429 without them, `retry-after`/`retry-after-ms` from the message's "try again in".
pub fn upstream_error_headers(event: &Value, error: &OpenAiError) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let map = event
        .pointer("/error/headers")
        .or_else(|| event.get("headers"))
        .and_then(Value::as_object);
    for (name, value) in map.into_iter().flatten() {
        let name = name.to_ascii_lowercase();
        let allowed = matches!(
            name.as_str(),
            "retry-after" | "retry-after-ms" | "x-should-retry"
        ) || name.starts_with("x-ratelimit-");
        let value = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            _ => continue,
        };
        if !allowed {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    let has_retry =
        headers.contains_key(header::RETRY_AFTER) || headers.contains_key("retry-after-ms");
    if error.status == StatusCode::TOO_MANY_REQUESTS
        && !has_retry
        && let Some(wait) = error.retry_after()
    {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        headers.insert(
            HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    headers
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code.as_deref().unwrap_or(self.kind),
            self.message
        )
    }
}

impl std::error::Error for OpenAiError {}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            self.rest_body(),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"OpenAI API\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_body_always_has_all_four_keys() {
        let body: Value =
            serde_json::from_str(&OpenAiError::invalid_request("bad").rest_body()).unwrap();
        let error = body["error"].as_object().unwrap();
        for key in ["message", "type", "param", "code"] {
            assert!(error.contains_key(key), "missing {key}");
        }
        assert_eq!(error["param"], Value::Null);
    }

    fn error_event(text: &str) -> OpenAiError {
        OpenAiError::from_upstream_event(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn a_gone_previous_response_is_recognised_in_every_form_seen() {
        for text in [
            // The documented form.
            r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"previous_response_not_found","message":"Previous response with id 'resp_1' not found.","param":"previous_response_id"}}"#,
            // Codeless, as real servers answer.
            r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","message":"Invalid `previous_response_id`."}}"#,
            // Codeless with only the param.
            r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","message":"Not found.","param":"previous_response_id"}}"#,
            // No type, no status (G-OLD's example), and status_code.
            r#"{"type":"error","error":{"code":"previous_response_not_found","message":"gone"}}"#,
            r#"{"type":"error","status_code":404,"error":{"message":"Previous response 'resp_1' has expired."}}"#,
            // Flat in-stream form.
            r#"{"type":"error","code":"previous_response_not_found","message":"gone","param":null}"#,
        ] {
            assert_eq!(
                error_event(text).meaning(),
                Meaning::PreviousResponseGone,
                "{text}"
            );
        }
    }

    #[test]
    fn other_upstream_errors_keep_their_meaning() {
        let meaning = |text| error_event(text).meaning();
        assert_eq!(
            meaning(
                r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","code":"websocket_connection_limit_reached","message":"m"}}"#
            ),
            Meaning::ConnectionLimit
        );
        assert_eq!(
            meaning(
                r#"{"type":"error","status":400,"error":{"message":"Responses websocket connection limit reached (60 minutes)."}}"#
            ),
            Meaning::ConnectionLimit
        );
        assert_eq!(
            meaning(
                r#"{"type":"error","status":429,"error":{"type":"requests","message":"slow"}}"#
            ),
            Meaning::RateLimited
        );
        assert_eq!(
            meaning(
                r#"{"type":"error","status":400,"error":{"type":"invalid_request_error","message":"Unknown parameter: 'foo'.","param":"foo"}}"#
            ),
            Meaning::BadRequest
        );
        assert_eq!(
            meaning(r#"{"type":"error","code":"server_error","message":"boom"}"#),
            Meaning::ServerError
        );
        assert_eq!(
            meaning(r#"{"type":"error","status":401,"error":{"message":"bad key"}}"#),
            Meaning::Unauthorized
        );
    }

    #[test]
    fn retry_after_is_read_from_the_wording() {
        let wait = |message: &str| OpenAiError::invalid_request(message).retry_after();
        assert_eq!(
            wait("Rate limit reached. Please try again in 1s."),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            wait("Please try again in 250ms. Visit …"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            wait("Please try again in 1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            wait("Please try again in 6m30s."),
            Some(Duration::from_secs(390))
        );
        assert_eq!(wait("Please try again in a while"), None);
        assert_eq!(wait("no hint"), None);
    }

    #[test]
    fn a_429_gets_retry_after_from_its_headers_map_else_its_message() {
        let event: Value = serde_json::from_str(
            r#"{"type":"error","status":429,"error":{"type":"requests","code":"rate_limit_exceeded","message":"Please try again in 1.2s",
                "headers":{"retry-after":"2","x-ratelimit-remaining-requests":"0","content-length":"9","connection":"close"}}}"#,
        )
        .unwrap();
        let error = OpenAiError::from_upstream_event(&event);
        let headers = upstream_error_headers(&event, &error);
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        let event: Value = serde_json::from_str(
            r#"{"type":"error","status":429,"error":{"type":"requests","code":"rate_limit_exceeded","message":"Please try again in 1.2s"}}"#,
        )
        .unwrap();
        let error = OpenAiError::from_upstream_event(&event);
        let headers = upstream_error_headers(&event, &error);
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["retry-after-ms"], "1200");
    }

    #[test]
    fn flat_and_nested_upstream_errors_map_to_rest_statuses() {
        let nested = error_event(
            r#"{"type":"error","status":429,"error":{"type":"requests","code":"rate_limit_exceeded","message":"slow down","param":null}}"#,
        );
        assert_eq!(nested.status, StatusCode::TOO_MANY_REQUESTS);
        let flat = error_event(
            r#"{"type":"error","code":"server_error","message":"boom","param":null,"sequence_number":3}"#,
        );
        assert_eq!(flat.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(flat.message, "boom");
    }

    #[test]
    fn ws_event_round_trips_through_from_ws_event() {
        let original = OpenAiError::previous_response_not_found("resp_1");
        let event: Value = serde_json::from_str(&original.ws_event(Some("lane"))).unwrap();
        assert_eq!(event["stream_id"], "lane");
        assert_eq!(OpenAiError::from_ws_event(&event), Some(original));
    }
}
