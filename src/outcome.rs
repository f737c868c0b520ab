//! What can happen to a socket or a turn, as the pool, the engine and the continuation planner
//! report it and the metrics count it ([`crate::metrics`] derives its labels from these). A leaf
//! module: it imports nothing of the crate, so every layer can use it without an import cycle.

/// Why an upstream socket was closed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CloseReason {
    /// The upstream closed it (or the connection broke).
    ServerClosed,
    /// An unsolicited or answered `websocket_connection_limit_reached`.
    LimitReached,
    /// A ping went unanswered.
    PingTimeout,
    /// It reached `pool.max_age`.
    MaxAge,
    /// Idle beyond `pool.idle_timeout` with more than `pool.min_idle` idle sockets.
    IdleTimeout,
    /// The client went away mid-turn (closing stops generation upstream).
    ClientGone,
    /// A turn failed or timed out; the socket's state is unknown.
    TurnFailed,
    /// The upstream sent something the protocol does not allow (binary frame, bad event).
    ProtocolError,
    /// wsbridge is shutting down.
    Shutdown,
    /// It received a message larger than [`crate::upstream::socket::LARGE_MESSAGE_BYTES`]:
    /// closed after its turn so the read buffer that grew for it is freed.
    LargeMessage,
}

/// How a `POST /v1/responses` turn went upstream.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Continuation {
    /// Only the new items, with `previous_response_id`, on the socket holding the head.
    Continued,
    /// The client's input as given (a new conversation, or no idle head to extend).
    Fresh,
    /// The client chained with its own `previous_response_id` (sent as given).
    Explicit,
    /// A continuation the upstream could not resolve, resent in full before any output.
    Recovered,
}

/// Why a request was retried on another socket before its first event.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RecoveryCause {
    /// The socket closed before the first event.
    SocketClosed,
    /// Connecting failed or the upgrade was refused with a retryable status.
    ConnectFailed,
    /// The upstream answered `websocket_connection_limit_reached`.
    LimitReached,
    /// A continuation wsbridge made was `previous_response_not_found`: resent in full.
    PreviousResponseNotFound,
}

/// Why a `POST /v1/responses` went over REST instead of a WebSocket.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FallbackReason {
    /// `background: true` is not supported over WebSocket.
    Background,
    /// The `response.create` frame would exceed `upstream.max_frame_bytes`.
    FrameTooLarge,
    /// The upstream refused the upgrade with 426, 404 or 405 (now or within the cool-down).
    UpgradeRefused,
}
