//! Wire-level vocabulary shared by the proxy and the simulator: OpenAI error bodies, SSE
//! framing and the canonical form of conversation items. Nothing here does I/O.

pub mod error;
pub mod event;
pub mod items;
pub mod key;
pub mod request;
pub mod sse;

pub use error::OpenAiError;
