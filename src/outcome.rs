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
    /// The upstream refused a new `stream_id` lane (`websocket_stream_limit_reached`).
    StreamLimit,
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

/// Which path a `POST /v1/chat/completions` took (the `x-wsbridge-route` header).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ChatRoute {
    /// Translated into a Responses turn over a pooled socket.
    Bridged,
    /// Sent to the upstream's `/v1/chat/completions` as it came.
    Passthrough,
}

impl ChatRoute {
    /// The `x-wsbridge-route` header value.
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Bridged => "chat-bridged",
            Self::Passthrough => "chat-passthrough",
        }
    }
}

/// Why a chat request was passed through instead of bridged: the configuration, the engine's
/// REST fallback, or the first thing in it without a faithful Responses equivalent.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ChatPassthrough {
    /// `chat.mode = "passthrough"`.
    Mode,
    /// The turn engine chose REST (frame too large, upgrade refused).
    Fallback,
    /// `n` > 1.
    Choices,
    /// `logprobs` / `top_logprobs`.
    Logprobs,
    /// `stop` sequences.
    Stop,
    LogitBias,
    /// `frequency_penalty` / `presence_penalty` other than 0.
    Penalties,
    Seed,
    /// `store: true` (stored chat completions are the chat API's own).
    Store,
    /// `audio`, audio `modalities`, an assistant message's `audio`.
    Audio,
    Prediction,
    WebSearch,
    /// Legacy `functions` beside `tools`, or a `function` message that answers no call.
    LegacyFunctions,
    /// A content part kind with no Responses equivalent (`input_audio`, …).
    Content,
    /// A tool or tool choice other than a function.
    Tools,
    /// An unknown field, or a known one without an equivalent (a message `name`).
    Field,
    /// `max_tokens` / `max_completion_tokens` below the Responses API's minimum
    /// `max_output_tokens` (16), which Chat Completions accepts.
    OutputLimit,
}

/// How a bridged chat turn ended, as its `finish_reason` (or a failure).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ChatFinish {
    Stop,
    ToolCalls,
    /// A legacy `functions` request's call.
    FunctionCall,
    Length,
    ContentFilter,
    /// The turn failed or broke: an error answer or an error chunk.
    Failed,
}

impl ChatFinish {
    /// The `finish_reason` value (`None` for a failure).
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Stop => Some("stop"),
            Self::ToolCalls => Some("tool_calls"),
            Self::FunctionCall => Some("function_call"),
            Self::Length => Some("length"),
            Self::ContentFilter => Some("content_filter"),
            Self::Failed => None,
        }
    }
}

/// Which way a relayed WebSocket frame went (`GET /v1/responses`, docs/architecture.md,
/// "WebSocket relay").
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RelayDirection {
    /// A client's frame, sent to the upstream.
    ClientToUpstream,
    /// An upstream event, sent to the client.
    UpstreamToClient,
}

/// What became of a relayed `response.create` naming a `store: false` response that only an
/// upstream socket gone since held.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RebuildOutcome {
    /// Sent with the conversation's full input instead of `previous_response_id`.
    Rebuilt,
    /// The conversation outgrew `relay.max_replay_bytes`: sent as it came (the upstream
    /// answers `previous_response_not_found`).
    TooLarge,
}

/// Why a relayed client socket moved to a fresh upstream socket.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RelaySwitch {
    /// The upstream socket reached `pool.max_age` between turns.
    MaxAge,
    /// The upstream socket closed or broke between turns (or before a turn's first event).
    Dropped,
    /// The upstream reported `websocket_connection_limit_reached`.
    LimitReached,
}
