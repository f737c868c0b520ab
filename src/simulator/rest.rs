//! The REST transport: `POST /v1/responses` (SSE when `stream: true`, else the Response JSON),
//! `GET /v1/responses/{id}` for stored responses, `GET /v1/models` (SDKs and tools list models
//! before anything else), and the simulator's own `/sim/*` endpoints.

use std::sync::Arc;
use tokio::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use super::Shared;
use super::faults::FaultConfig;
use super::stats::{self, Outcome, Transport};
use super::turn::{self, Played, Prepared, Sink};
use crate::ids;
use crate::protocol::{OpenAiError, request, sse};

pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let key = match shared.authenticate(&headers) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let limit = || format!("the limit is {} bytes", shared.config.max_frame_bytes);
    let (request, stream, body) = match request::read(body, limit) {
        Ok(read) => (read.fields, read.stream, read.bytes),
        Err(error) => return error.into_response(),
    };

    let mut record = stats::record(Transport::Rest, None, &key, &request, body.len());
    let prepared = match turn::prepare(&shared, request, Transport::Rest, |_| None) {
        Ok(prepared) => prepared,
        Err(error) => {
            record.error_code = error.code.clone();
            shared.stats.turn(record);
            return error.into_response();
        }
    };
    record.hydrated = prepared.parent.is_some();
    record.response_id = Some(prepared.id.clone());
    if let Some((status, code)) = &prepared.directives.error {
        record.error_code = Some(code.clone());
        shared.stats.turn(record);
        return OpenAiError::for_status(*status, code).into_response();
    }
    if stream {
        return stream_turn(&shared, prepared, SseSink, move |shared, outcome| {
            record.outcome = outcome;
            shared.stats.turn(record);
        });
    }
    let played = turn::play(&shared, &prepared, &mut Discard, &shared.shutdown).await;
    record.outcome = played.outcome;
    shared.stats.turn(record);
    let response = match played.outcome {
        Outcome::Completed | Outcome::Incomplete => json(StatusCode::OK, &played.response),
        _ => unfinished(&played),
    };
    with_processing_time(response, started)
}

/// The queue a streaming turn's SSE body is read from.
pub(super) type BodySender = mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Plays `prepared` in a tracked task into the sink `sink` makes from the body's queue, and
/// answers at once with that SSE body; `done` gets the turn's outcome when it is over. A turn
/// that closes breaks the body off.
pub(super) fn stream_turn<S: Sink + Send + 'static>(
    shared: &Arc<Shared>,
    prepared: Prepared,
    sink: impl FnOnce(BodySender) -> S,
    done: impl FnOnce(&Shared, Outcome) + Send + 'static,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut sink = sink(tx.clone());
    let task_shared = shared.clone();
    shared.tasks.spawn(async move {
        let played = turn::play(&task_shared, &prepared, &mut sink, &task_shared.shutdown).await;
        if played.outcome == Outcome::Closed {
            drop_connection(&tx).await;
        }
        done(&task_shared, played.outcome);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// The answer to a non-streaming turn that did not finish: `response.failed` as a 500 with
/// its code and message, a closed turn as a body that breaks off.
pub(super) fn unfinished(played: &Played) -> Response {
    if played.outcome == Outcome::Failed {
        let error = &played.response["error"];
        let code = error["code"].as_str().unwrap_or("server_error");
        let mut failure = OpenAiError::for_status(StatusCode::INTERNAL_SERVER_ERROR, code);
        if let Some(message) = error["message"].as_str() {
            failure.message = message.to_owned();
        }
        return failure.into_response();
    }
    let dropped = futures_util::stream::once(async {
        Err::<Bytes, _>(std::io::Error::other("simulated connection drop"))
    });
    Body::from_stream(dropped).into_response()
}

/// Adds `openai-processing-ms`, as OpenAI's non-streaming answers carry it.
pub(super) fn with_processing_time(mut response: Response, started: Instant) -> Response {
    if let Ok(value) = HeaderValue::from_str(&started.elapsed().as_millis().to_string()) {
        response.headers_mut().insert("openai-processing-ms", value);
    }
    response
}

/// Breaks the body off (no terminal event, no clean end) after the events already sent.
///
/// hyper discards what it has buffered but not written when a body fails, so first wait until
/// it has taken every queued event and had a moment to flush them; a real connection drop
/// loses nothing that was already on the wire either.
/// A client that has stopped reading never drains the queue; give up waiting after a second.
async fn drop_connection(tx: &BodySender) {
    let drained = async {
        while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drained).await;
    let _ = tx
        .send(Err(std::io::Error::other("simulated connection drop")))
        .await;
}

struct SseSink(BodySender);

impl Sink for SseSink {
    async fn send(&mut self, event: String) -> bool {
        let kind = sse::event_type(&event).unwrap_or_default();
        self.0.send(Ok(sse::frame(&kind, &event))).await.is_ok()
    }
}

/// Plays a non-streaming turn: the events are not sent anywhere, only timed.
pub(super) struct Discard;

impl Sink for Discard {
    async fn send(&mut self, _event: String) -> bool {
        true
    }
}

pub(super) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = shared.authenticate(&headers) {
        return error.into_response();
    }
    match shared.store.get(&id) {
        Some(stored) => json(StatusCode::OK, &stored.response),
        None => OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Response with id '{id}' not found."),
        )
        .into_response(),
    }
}

/// The model the simulator advertises. It answers to any model name, so this is the one name
/// the listing offers (and the one README's examples use).
pub const MODEL: &str = "gpt-sim";

fn model_object(id: &str) -> Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "wsbridge-simulator"})
}

/// `GET /v1/models`: OpenAI's list shape, with [`MODEL`].
pub(super) async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(error) = shared.authenticate(&headers) {
        return error.into_response();
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"object": "list", "data": [model_object(MODEL)]}),
    )
}

/// `GET /v1/models/{id}`: any name, since the scripted model answers to any name.
pub(super) async fn model(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(error) = shared.authenticate(&headers) {
        return error.into_response();
    }
    json(StatusCode::OK, &model_object(&id))
}

pub(super) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &shared.stats.snapshot())
}

pub(super) async fn faults(State(shared): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, &shared.faults.config())
}

pub(super) async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let config: FaultConfig = match serde_json::from_slice(&body) {
        Ok(config) => config,
        Err(error) => {
            return OpenAiError::invalid_request(format!("Invalid fault config: {error}"))
                .into_response();
        }
    };
    match shared.faults.set(config) {
        Ok(()) => json(StatusCode::OK, &shared.faults.config()),
        Err(why) => OpenAiError::invalid_request(why).into_response(),
    }
}

pub(super) async fn not_found(method: Method, uri: Uri) -> Response {
    OpenAiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Invalid URL ({method} {})", uri.path()),
    )
    .into_response()
}

/// Headers every OpenAI response carries.
pub(super) async fn common_headers(mut response: Response) -> Response {
    // The upgrade answer carries no request id on the real API (docs/protocol.md, "Connection").
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&ids::new_id("req")) {
        headers.insert("x-request-id", id);
    }
    headers.insert("openai-version", HeaderValue::from_static("2020-10-01"));
    response
}

pub(super) fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => (status, [(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(error) => OpenAiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            error.to_string(),
        )
        .into_response(),
    }
}
