//! The engine's outcomes that metrics count. A leaf module: the metrics import these enums and
//! derive their labels from them, while the engine imports the metrics.

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
