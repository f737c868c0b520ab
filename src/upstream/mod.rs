//! The upstream side: WebSocket connections ([`socket`]) over a `transport` (TCP, TLS for
//! `wss://`; in unit tests also in-memory pipes) and the per-credential [`pool`] of them (the
//! TLS configuration is in [`crate::net`]; the WebSocket URL is derived from
//! `upstream.base_url` by `config::BaseUrl`), and the [`rest`] cool-down of credentials whose
//! upgrade was refused.

pub mod pool;
pub mod rest;
pub mod socket;
mod transport;
