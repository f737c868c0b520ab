//! A socket's lanes (docs/protocol.md, "Client events"): each client frame is checked,
//! then queued on its lane (`stream_id`, or the default lane), whose task plays its turns in
//! order.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Connection, Job, Lane, Outgoing};
use crate::protocol::OpenAiError;

/// A socket's lanes: the queue of each, and how many accepted turns have not finished.
pub(super) struct Lanes {
    pub(super) senders: HashMap<Lane, mpsc::UnboundedSender<Job>>,
    pub(super) pending: usize,
    pub(super) tx: mpsc::Sender<Outgoing>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) cancel: CancellationToken,
}

impl Lanes {
    /// Queues a client frame on its lane (starting the lane's task if it is new); returns
    /// the error event to send instead when the frame is refused.
    pub(super) fn submit(&mut self, connection: &Arc<Connection>, frame: &str) -> Option<String> {
        let (lane, job) = match accept(frame) {
            Ok(accepted) => accepted,
            Err(error) => return Some(error),
        };
        let sender = match self.senders.get(&lane) {
            Some(sender) => sender.clone(),
            None => {
                let max = connection.shared.config.max_named_lanes;
                let named = self.senders.keys().filter(|lane| lane.is_some()).count();
                if lane.is_some() && named >= max {
                    return Some(stream_limit(max).ws_event(lane.as_deref()));
                }
                let (sender, jobs) = mpsc::unbounded_channel();
                let task = connection.clone().lane(
                    lane.clone(),
                    jobs,
                    self.tx.clone(),
                    self.permits.clone(),
                    self.cancel.clone(),
                );
                connection.shared.tasks.spawn(task);
                self.senders.insert(lane, sender.clone());
                sender
            }
        };
        self.pending += 1;
        let _ = sender.send(job);
        None
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
