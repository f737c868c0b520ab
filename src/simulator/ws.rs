//! The WebSocket transport: `GET /v1/responses` upgraded, one task per socket.
//!
//! # Concurrency
//! The connection task owns the socket: it reads client frames, writes every outgoing frame
//! (so frames never interleave mid-message) and watches the connection age. Each lane
//! (`stream_id`, or the default lane) is a task that runs its turns in FIFO order; a semaphore
//! caps turns in flight across lanes (16 by default). Lanes send frames to the connection task
//! over a channel, so events of one lane stay in order while lanes interleave. The socket's
//! response cache (the latest response per lane) sits behind a mutex that is never held
//! across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Shared;
use super::stats::{Outcome, Transport};
use super::store::Stored;
use super::turn::{self, ParentSource, Sink};
use crate::protocol::OpenAiError;

/// How long a socket hung by the `ignore_pings` fault stays open before it is dropped.
const HUNG_SOCKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let key = match shared.authenticate(&headers) {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    if let Some(status) = shared.faults.take_upgrade_refusal() {
        shared.stats.upgrade_refused();
        let code = match status.as_u16() {
            401 => "invalid_api_key",
            426 => "upgrade_required",
            429 => "rate_limit_exceeded",
            _ if status.is_server_error() => "server_error",
            _ => "request_refused",
        };
        return OpenAiError::for_status(status, code).into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return OpenAiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("GET /v1/responses must be a WebSocket upgrade ({rejection}); use POST for REST."),
            )
            .into_response();
        }
    };
    let limit = shared.config.max_frame_bytes;
    let tasks = shared.tasks.clone();
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| tasks.track_future(Connection::open(shared, key).run(socket)))
}

/// A lane: `None` is the default lane, `Some(stream_id)` a named one.
type Lane = Option<String>;

/// What lanes ask the connection task to do.
enum Outgoing {
    Frame(String),
    /// Drop the socket now, without a close handshake (a fault, or a turn that closed).
    Abort,
    /// A queued turn finished (the socket may be idle now).
    TurnDone,
}

struct Job {
    body: Map<String, Value>,
    bytes: usize,
}

/// State of one socket shared with its lane tasks.
struct Connection {
    shared: Arc<Shared>,
    key: String,
    id: u64,
    /// The latest completed response of each lane: the only ones continuable for free.
    cache: Mutex<HashMap<Lane, Arc<Stored>>>,
}

impl Connection {
    fn open(shared: Arc<Shared>, key: String) -> Arc<Self> {
        let id = shared.stats.socket_opened(&key);
        Arc::new(Self {
            shared,
            key,
            id,
            cache: Mutex::default(),
        })
    }

    async fn run(self: Arc<Self>, socket: WebSocket) {
        let span = tracing::debug_span!("sim_socket", socket = self.id);
        async {
            if !self.shared.faults.take_close_after_upgrade() {
                self.serve(socket).await;
            }
            self.shared.stats.socket_closed(&self.key);
        }
        .instrument(span)
        .await;
    }

    async fn serve(self: &Arc<Self>, socket: WebSocket) {
        let config = &self.shared.config;
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(256);
        let cancel = self.shared.shutdown.child_token();
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let mut lanes: HashMap<Lane, mpsc::UnboundedSender<Job>> = HashMap::new();
        let text = |text: String| Message::Text(text.into());
        let close = |code: u16, reason: &str| {
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        };
        let mut pending = 0usize;
        let expiry = tokio::time::sleep(config.max_connection_age);
        tokio::pin!(expiry);
        // Past the age limit: no new turn starts; the socket closes once idle.
        let mut expired = false;
        let mut limit_sent = false;
        let limit_reached = || {
            let minutes = config.max_connection_age.as_secs().div_ceil(60).max(1);
            text(OpenAiError::connection_limit_reached(minutes).ws_event(None))
        };

        loop {
            if expired && pending == 0 {
                if !limit_sent {
                    let _ = sink.send(limit_reached()).await;
                }
                let _ = sink.send(close(1000, "connection limit reached")).await;
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    let _ = sink.send(close(1001, "server shutting down")).await;
                    break;
                }
                () = &mut expiry, if !expired => expired = true,
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(frame))) => {
                        if expired {
                            limit_sent = true;
                            if sink.send(limit_reached()).await.is_err() { break; }
                            continue;
                        }
                        let (lane, job) = match accept(frame.as_str()) {
                            Ok(accepted) => accepted,
                            Err(error) => {
                                if sink.send(text(error)).await.is_err() { break; }
                                continue;
                            }
                        };
                        let sender = match lanes.get(&lane) {
                            Some(sender) => sender.clone(),
                            None => {
                                let named = lanes.keys().filter(|lane| lane.is_some()).count();
                                if lane.is_some() && named >= config.max_named_lanes {
                                    let error = stream_limit(config.max_named_lanes).ws_event(lane.as_deref());
                                    if sink.send(text(error)).await.is_err() { break; }
                                    continue;
                                }
                                let (sender, jobs) = mpsc::unbounded_channel();
                                let lane_task = self.clone().lane(lane.clone(), jobs, tx.clone(), permits.clone(), cancel.clone());
                                self.shared.tasks.spawn(lane_task);
                                lanes.insert(lane, sender.clone());
                                sender
                            }
                        };
                        pending += 1;
                        let _ = sender.send(job);
                    }
                    Some(Ok(Message::Binary(_))) => {
                        let error = OpenAiError::invalid_request("Binary frames are not supported; send response.create as a text frame.");
                        if sink.send(text(error.ws_event(None))).await.is_err() { break; }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(Message::Ping(_))) => {
                        self.shared.stats.ping_received();
                        if self.shared.faults.config().ignore_pings {
                            // Hung: read and write nothing (the queued pong goes out only on the
                            // next read or write), then drop the connection. Not reading, it
                            // cannot see the peer close, so the hang is bounded.
                            tokio::select! {
                                () = cancel.cancelled() => {}
                                () = tokio::time::sleep(HUNG_SOCKET_LIFETIME) => {}
                            }
                            break;
                        }
                        // Otherwise the WebSocket layer answers it on the next read.
                    }
                    Some(Ok(Message::Pong(_))) => {}
                },
                Some(outgoing) = rx.recv() => match outgoing {
                    Outgoing::Frame(frame) => {
                        if sink.send(text(frame)).await.is_err() { break; }
                    }
                    Outgoing::Abort => break,
                    Outgoing::TurnDone => pending = pending.saturating_sub(1),
                },
            }
        }
        cancel.cancel();
    }

    /// Runs one lane's turns in order, each holding an in-flight permit.
    async fn lane(
        self: Arc<Self>,
        lane: Lane,
        mut jobs: mpsc::UnboundedReceiver<Job>,
        tx: mpsc::Sender<Outgoing>,
        permits: Arc<Semaphore>,
        cancel: CancellationToken,
    ) {
        loop {
            let job = tokio::select! {
                job = jobs.recv() => job,
                () = cancel.cancelled() => None,
            };
            let Some(job) = job else { return };
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit,
                () = cancel.cancelled() => return,
            };
            let Ok(_permit) = permit else { return };
            self.turn(&lane, job, &tx, &cancel).await;
            if tx.send(Outgoing::TurnDone).await.is_err() {
                return;
            }
        }
    }

    async fn turn(
        &self,
        lane: &Lane,
        job: Job,
        tx: &mpsc::Sender<Outgoing>,
        cancel: &CancellationToken,
    ) {
        let shared = &self.shared;
        let mut record = turn::record(
            Transport::Ws,
            Some(self.id),
            &self.key,
            &job.body,
            job.bytes,
        );
        let send_error = |error: OpenAiError| async move {
            let _ = tx
                .send(Outgoing::Frame(error.ws_event(lane.as_deref())))
                .await;
        };
        let prepared = turn::prepare(shared, job.body, Transport::Ws, |id| {
            self.lock_cache()
                .values()
                .find(|stored| stored.id == id)
                .cloned()
        });
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                if error.code.as_deref() != Some("previous_response_not_found")
                    && let Some(parent) = &record.previous_response_id
                {
                    self.evict(lane, parent);
                }
                record.error_code = error.code.clone();
                send_error(error).await;
                shared.stats.turn(record);
                return;
            }
        };
        let parent = prepared
            .parent
            .as_ref()
            .map(|(stored, source)| (stored.id.clone(), *source));
        record.continued = matches!(parent, Some((_, ParentSource::Socket)));
        record.hydrated = matches!(parent, Some((_, ParentSource::Store)));
        record.response_id = Some(prepared.id.clone());
        let evict_parent = || {
            if let Some((id, ParentSource::Socket)) = &parent {
                self.evict(lane, id);
            }
        };

        if let Some((status, code)) = &prepared.directives.error {
            evict_parent();
            record.error_code = Some(code.clone());
            send_error(OpenAiError::for_status(*status, code)).await;
            shared.stats.turn(record);
            return;
        }
        let mut sink = WsSink(tx.clone());
        let played = turn::play(shared, &prepared, &mut sink, cancel).await;
        match played.outcome {
            Outcome::Completed | Outcome::Incomplete => {
                if let Some(stored) = played.stored {
                    self.lock_cache().insert(lane.clone(), stored);
                }
            }
            Outcome::Failed => evict_parent(),
            Outcome::Closed | Outcome::Error => {
                let _ = tx.send(Outgoing::Abort).await;
            }
        }
        record.outcome = played.outcome;
        shared.stats.turn(record);
    }

    /// A continuation that failed drops its parent from this lane's memory (docs/protocol.md, "previous_response_id on a socket");
    /// a fork from another lane leaves that lane's response alone.
    fn evict(&self, lane: &Lane, parent: &str) {
        let mut cache = self.lock_cache();
        if cache.get(lane).is_some_and(|stored| stored.id == parent) {
            cache.remove(lane);
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<Lane, Arc<Stored>>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

struct WsSink(mpsc::Sender<Outgoing>);

impl Sink for WsSink {
    async fn send(&mut self, event: String) -> bool {
        self.0.send(Outgoing::Frame(event)).await.is_ok()
    }
}

/// Parses a client frame into a `response.create` job for a lane, or the error event to send.
fn accept(frame: &str) -> Result<(Lane, Job), String> {
    let value: Value = serde_json::from_str(frame).map_err(|error| {
        OpenAiError::invalid_request(format!("Invalid JSON in WebSocket message: {error}."))
            .with_code("invalid_json")
            .ws_event(None)
    })?;
    let Value::Object(mut body) = value else {
        return Err(
            OpenAiError::invalid_request("WebSocket messages must be JSON objects.")
                .with_code("invalid_json")
                .ws_event(None),
        );
    };
    match body.remove("type") {
        Some(Value::String(kind)) if kind == "response.create" => {}
        Some(Value::String(kind)) => {
            return Err(OpenAiError::invalid_request(format!(
                "Invalid value: '{kind}'. Supported values are: 'response.create'."
            ))
            .with_param("type")
            .with_code("invalid_value")
            .ws_event(None));
        }
        _ => {
            return Err(
                OpenAiError::invalid_request("Missing required parameter: 'type'.")
                    .with_param("type")
                    .with_code("missing_required_parameter")
                    .ws_event(None),
            );
        }
    }
    // `stream` is implicit on a socket; clients (Codex, the agents SDK) send it anyway.
    body.remove("stream");
    let lane = match body.get("stream_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if valid_stream_id(id) => Some(id.clone()),
        Some(_) => {
            return Err(OpenAiError::invalid_request(
                "Invalid 'stream_id': expected 1 to 256 characters of letters, digits, '_', '-' or '.'.",
            )
            .with_param("stream_id")
            .with_code("invalid_stream_id")
            .ws_event(None));
        }
    };
    Ok((
        lane,
        Job {
            body,
            bytes: frame.len(),
        },
    ))
}

fn valid_stream_id(id: &str) -> bool {
    (1..=256).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn stream_limit(max: usize) -> OpenAiError {
    OpenAiError::invalid_request(format!(
        "This WebSocket connection has reached its maximum number of distinct stream IDs ({max}). Reuse an \
         existing stream_id or open a new WebSocket connection."
    ))
    .with_param("stream_id")
    .with_code("websocket_stream_limit_reached")
}
