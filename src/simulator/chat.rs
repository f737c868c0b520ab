//! `POST /v1/chat/completions`: Chat Completions served by the same scripted model, latency
//! model and turn faults as `/v1/responses` (docs/architecture.md, "Simulator"). The request
//! is checked and translated into a Responses request ([`request`], [`messages`]), played by
//! `turn::play` like a REST turn, and its events come out as `chat.completion.chunk` SSE or
//! a `chat.completion` ([`answer`]), so the same conversation gets the same answer on both
//! APIs and through wsbridge's translation.

mod answer;
mod messages;
mod request;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tokio::time::Instant;

use self::answer::{Chunker, Header};
use super::Shared;
use super::events::unix_now;
use super::rest::{self, BodySender, Discard};
use super::stats::{self, Outcome, Transport, TurnRecord};
use super::turn::{self, Sink};
use crate::protocol::{OpenAiError, request as body};

pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let key = match shared.authenticate(&headers) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(rejection) => {
            let limit = || format!("the limit is {} bytes", shared.config.max_frame_bytes);
            return match body::read(Err(rejection), limit) {
                Err(error) => error.into_response(),
                Ok(_) => StatusCode::BAD_REQUEST.into_response(),
            };
        }
    };
    // Every request that arrives is recorded with its raw body, bad ones included, so a test
    // can tell what reached the upstream.
    let mut record = stats::record(Transport::Chat, None, &key, &Map::new(), raw.len());
    let fail = |mut record: TurnRecord, error: OpenAiError| {
        record.error_code = error.code.clone();
        shared.stats.chat_turn(record, &raw);
        error.into_response()
    };
    let read = match body::read(Ok(raw.clone()), String::new) {
        Ok(read) => read,
        Err(error) => return fail(record, error),
    };
    record.model = read
        .fields
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    record.input_items = read
        .fields
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let chat = match request::read(&read.fields, read.stream) {
        Ok(chat) => chat,
        Err(error) => return fail(record, error),
    };
    let prepared = match turn::prepare(&shared, chat.responses.clone(), Transport::Chat, |_| None) {
        Ok(prepared) => prepared,
        Err(error) => return fail(record, error),
    };
    if let Some((status, code)) = &prepared.directives.error {
        return fail(record, OpenAiError::for_status(*status, code));
    }
    let header = Header::new(&chat, &prepared.model, unix_now());
    record.response_id = Some(header.id.clone());
    if read.stream {
        let chunker = Chunker::new(header, &chat);
        let sink = |tx| ChatSink { tx, chunker };
        return rest::stream_turn(&shared, prepared, sink, move |shared, outcome| {
            record.outcome = outcome;
            shared.stats.chat_turn(record, &raw);
        });
    }
    let played = turn::play(&shared, &prepared, &mut Discard, &shared.shutdown).await;
    record.outcome = played.outcome;
    shared.stats.chat_turn(record, &raw);
    let response = match played.outcome {
        Outcome::Completed | Outcome::Incomplete => rest::json(
            StatusCode::OK,
            &answer::completion(&header, &played.response),
        ),
        _ => rest::unfinished(&played),
    };
    rest::with_processing_time(response, started)
}

/// Writes a turn's events to the SSE body as chat chunks.
struct ChatSink {
    tx: BodySender,
    chunker: Chunker,
}

impl Sink for ChatSink {
    async fn send(&mut self, event: String) -> bool {
        for frame in self.chunker.frames(&event) {
            if self.tx.send(Ok(frame)).await.is_err() {
                return false;
            }
        }
        true
    }
}
