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

mod lanes;

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

use self::lanes::Lanes;
use super::Shared;
use super::stats::{self, Outcome, Transport};
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
    // The upgrade request's round trip (docs/architecture.md, "Simulator"), whatever the answer.
    let round_trip = shared.config.latency.upgrade;
    if !round_trip.is_zero() {
        tokio::time::sleep(round_trip).await;
    }
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
        let mut lanes = Lanes {
            senders: HashMap::new(),
            pending: 0,
            tx,
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            cancel: cancel.clone(),
        };
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
            if expired && lanes.pending == 0 {
                if !limit_sent {
                    let _ = sink.send(limit_reached()).await;
                }
                let _ = sink.send(close(1000, "connection limit reached")).await;
                break;
            }
            let reply = tokio::select! {
                () = cancel.cancelled() => {
                    let _ = sink.send(close(1001, "server shutting down")).await;
                    break;
                }
                () = &mut expiry, if !expired => {
                    expired = true;
                    None
                }
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(_))) if expired => {
                        limit_sent = true;
                        Some(limit_reached())
                    }
                    Some(Ok(Message::Text(frame))) => lanes.submit(self, frame.as_str()).map(text),
                    Some(Ok(Message::Binary(_))) => {
                        let error = OpenAiError::invalid_request("Binary frames are not supported; send response.create as a text frame.");
                        Some(text(error.ws_event(None)))
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(Message::Ping(_))) => {
                        if self.pinged(&cancel).await {
                            break;
                        }
                        None
                    }
                    Some(Ok(Message::Pong(_))) => None,
                },
                Some(outgoing) = rx.recv() => match outgoing {
                    Outgoing::Frame(frame) => Some(text(frame)),
                    Outgoing::Abort => break,
                    Outgoing::TurnDone => {
                        lanes.pending = lanes.pending.saturating_sub(1);
                        None
                    }
                },
            };
            if let Some(reply) = reply
                && sink.send(reply).await.is_err()
            {
                break;
            }
        }
        cancel.cancel();
    }

    /// Counts a ping; true when the `ignore_pings` fault hangs the socket, which then must be
    /// dropped. Otherwise the WebSocket layer answers the ping on the next read.
    async fn pinged(&self, cancel: &CancellationToken) -> bool {
        self.shared.stats.ping_received();
        if !self.shared.faults.config().ignore_pings {
            return false;
        }
        // Hung: read and write nothing (the queued pong goes out only on the next read or
        // write), then drop the connection. Not reading, it cannot see the peer close, so the
        // hang is bounded.
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(HUNG_SOCKET_LIFETIME) => {}
        }
        true
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
        let mut record = stats::record(
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
                if prepared.directives.close_after_turn {
                    let _ = tx.send(Outgoing::Abort).await;
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

fn text(text: String) -> Message {
    Message::Text(text.into())
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}
