//! What every request under the API's path prefix passes before its handler (upgrade or
//! REST; `/sim/*` does not): it is recorded in the stats as the upstream received it
//! (credential values masked), and refused with a 400 when its query lacks a pair of
//! `simulator.required_query`, as Azure OpenAI refuses a request without its `api-version`
//! (docs/architecture.md, "Simulator").

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::stats::SeenRequest;
use super::{Shared, mask};
use crate::protocol::OpenAiError;
use crate::protocol::key::API_KEY;

pub(super) async fn gate(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let under_api = request
        .uri()
        .path()
        .strip_prefix(shared.config.path_prefix.as_str())
        .is_some_and(|rest| rest.starts_with('/'));
    if !under_api {
        return next.run(request).await;
    }
    let query = request.uri().query().unwrap_or_default();
    shared.stats.request_seen(seen(&request));
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .collect();
    let missing = shared
        .config
        .required_query
        .iter()
        .find(|(name, value)| !pairs.contains(&(name.as_str(), value.as_str())));
    if let Some((name, value)) = missing {
        let mut error = OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "This endpoint requires the query parameter {name}={value} \
                 (simulator.required_query)."
            ),
        );
        error.param = Some(name.clone());
        return error.into_response();
    }
    next.run(request).await
}

/// The request as the stats keep it: header names lower-cased, several values joined by
/// `, `, the key headers masked.
fn seen(request: &Request) -> SeenRequest {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in request.headers() {
        let text = String::from_utf8_lossy(value.as_bytes());
        let text = if *name == header::AUTHORIZATION {
            match text.strip_prefix("Bearer ") {
                Some(key) => format!("Bearer {}", mask(key.trim())),
                None => mask(&text),
            }
        } else if *name == API_KEY {
            mask(text.trim())
        } else {
            text.into_owned()
        };
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&text);
            })
            .or_insert(text);
    }
    SeenRequest {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
        headers,
    }
}
