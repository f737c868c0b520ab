//! The OpenAI error shape, in its two wire forms: the REST body
//! `{"error":{message,type,param,code}}` and the WebSocket `error` event
//! `{"type":"error","status":N,"error":{type,code,message,param}}` (PROTOCOL.md §3.8a, §4.3).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

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

    #[test]
    fn ws_event_round_trips_through_from_ws_event() {
        let original = OpenAiError::previous_response_not_found("resp_1");
        let event: Value = serde_json::from_str(&original.ws_event(Some("lane"))).unwrap();
        assert_eq!(event["stream_id"], "lane");
        assert_eq!(OpenAiError::from_ws_event(&event), Some(original));
    }
}
