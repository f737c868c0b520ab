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
//! - [`http`]: the proxy's routes ([`http::Proxy`], [`run`]): the bridged `POST /v1/responses`,
//!   pass-through for the rest, health, readiness and metrics;
//! - [`engine`]: the turn engine every front-end drives (plan, lease, send, recover before
//!   the first event, one end-of-turn rule);
//! - [`relay`]: client WebSockets on `GET /v1/responses` relayed over pooled upstream sockets,
//!   the connection limit hidden;
//! - [`upstream`]: upstream WebSockets and the per-credential pool;
//! - [`continuation`]: canonical item digests, heads, continuation frames;
//! - [`cluster`]: owner routing between replicas (forwarding, the signed internal hop);
//! - [`auth`]: resolving a request's upstream credential (passthrough or injected key);
//! - [`metrics`]: Prometheus metrics with enum labels;
//! - [`net`]: socket settings and TLS shared by the proxy and the simulator;
//! - [`outcome`]: what can happen to a socket or a turn (the metrics' label enums);
//! - [`config`]: raw + validated configuration, environment overlay, defaults in one place;
//! - [`setting`]: the validation error and checks every configuration section shares;
//! - [`protocol`]: OpenAI error bodies, SSE framing, canonical conversation items;
//! - [`simulator`]: the upstream simulator (`wsbridge simulate`, and in-process for tests);
//! - [`telemetry`]: logging setup;
//! - [`health`]: the container health probe (`wsbridge health`);
//! - [`shutdown`]: turning process signals into a cancellation token.

pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod continuation;
pub mod engine;
pub mod health;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod net;
pub mod outcome;
pub mod protocol;
pub mod relay;
pub mod setting;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
pub mod upstream;

pub use http::{Proxy, run};
