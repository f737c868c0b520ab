//! wsbridge: a drop-in reverse proxy that serves OpenAI's REST Responses API over pooled,
//! persistent upstream WebSockets (WebSocket mode), plus a faithful upstream simulator.
//!
//! ```text
//! SDK / agent / curl ──HTTP──▶ wsbridge ──persistent WSS──▶ api.openai.com/v1/responses
//!                                  │                       (or the built-in simulator)
//!                                  └── everything else: streamed HTTP pass-through
//! ```
//!
//! Modules:
//! - [`config`]: raw + validated configuration, environment overlay, defaults in one place;
//! - [`protocol`]: OpenAI error bodies, SSE framing, canonical conversation items;
//! - [`simulator`]: the upstream simulator (`wsbridge simulate`, and in-process for tests);
//! - [`telemetry`]: logging setup;
//! - [`health`]: the container health probe (`wsbridge health`);
//! - [`shutdown`]: turning process signals into a cancellation token.

pub mod config;
pub mod health;
pub mod ids;
pub mod protocol;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
