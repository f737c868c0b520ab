//! Reading a `POST /v1/responses` body as OpenAI's REST API does: the same checks, and the
//! same error answers, for the proxy and the simulator.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::OpenAiError;

/// A request body read and checked: the JSON object (unknown fields kept, in order), its
/// `stream` flag and the body's size in bytes.
#[derive(Debug)]
pub struct ResponsesRequest {
    pub fields: Map<String, Value>,
    pub stream: bool,
    pub bytes: Bytes,
}

/// Reads a body that axum collected (or refused, e.g. over the size limit). `limit` names the
/// limit in the 413 message.
pub fn read(
    body: Result<Bytes, BytesRejection>,
    limit: impl FnOnce() -> String,
) -> Result<ResponsesRequest, OpenAiError> {
    let bytes = match body {
        Ok(bytes) => bytes,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(OpenAiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("Request body too large: {}.", limit()),
            ));
        }
        Err(rejection) => return Err(OpenAiError::invalid_request(rejection.body_text())),
    };
    let fields: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(OpenAiError::invalid_request(
                "The request body must be a JSON object.",
            ));
        }
        Err(_) => return Err(OpenAiError::unparseable_json()),
    };
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(_) => {
            return Err(OpenAiError::invalid_request(
                "Invalid type for 'stream': expected a boolean.",
            )
            .with_param("stream")
            .with_code("invalid_type"));
        }
    };
    Ok(ResponsesRequest {
        fields,
        stream,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<ResponsesRequest, OpenAiError> {
        read(Ok(Bytes::from(text.to_owned())), String::new)
    }

    #[test]
    fn a_json_object_is_read_with_its_stream_flag_and_field_order() {
        let request = read_text(r#"{"stream":true,"model":"m","zeta":1,"alpha":2}"#).unwrap();
        assert!(request.stream);
        let keys: Vec<&str> = request.fields.keys().map(String::as_str).collect();
        assert_eq!(keys, ["stream", "model", "zeta", "alpha"]);
        assert!(!read_text(r#"{"stream":null}"#).unwrap().stream);
    }

    #[test]
    fn bad_bodies_get_the_rest_apis_errors() {
        assert_eq!(
            read_text("{nope").unwrap_err(),
            OpenAiError::unparseable_json()
        );
        assert_eq!(
            read_text("[1]").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let stream = read_text(r#"{"stream":"yes"}"#).unwrap_err();
        assert_eq!(stream.param.as_deref(), Some("stream"));
    }
}
