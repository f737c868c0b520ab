//! Chat Completions over the turn engine (docs/architecture.md, "Chat Completions"): a
//! `POST /v1/chat/completions` body becomes a Responses request ([`request`], [`messages`]),
//! and the turn's events come back as `chat.completion.chunk` objects ([`stream`]) or one
//! `chat.completion` ([`completion`]). Pure translation, no I/O: `http::chat` drives it.

pub mod completion;
pub mod legacy;
pub mod messages;
pub mod request;
pub mod stream;

#[cfg(test)]
mod tests;

pub use request::{Bridged, Verdict, translate};

/// A new `chatcmpl-…` id (`chatcmpl-` + 29 alphanumerics, as OpenAI's look).
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(38);
    id.push_str("chatcmpl-");
    let mut bits = 0u64;
    for i in 0..29 {
        if i % 10 == 0 {
            bits = crate::ids::random_u64();
        }
        id.push(char::from(ALPHABET[(bits % 62) as usize]));
        bits /= 62;
    }
    id
}
