//! Identifiers shaped like OpenAI's (`resp_` + 50 lowercase hex) and cheap non-cryptographic
//! randomness for them (uniqueness, not secrecy, is what matters there), plus secret keys from
//! the operating system for what must not be predictable.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
}

/// A random `u64` (xorshift64*, seeded per thread from the std hasher's random keys).
pub fn random_u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// 128 bits from the operating system's random source, for keys that must stay secret (the
/// continuation digest key). Falls back to the std hasher's OS-seeded keys if the source fails.
pub fn secret_key() -> (u64, u64) {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let state = RandomState::new();
        return (state.hash_one(1u8), state.hash_one(2u8));
    }
    let (low, high) = bytes.split_at(8);
    let word = |half: &[u8]| u64::from_le_bytes(half.try_into().unwrap_or_default());
    (word(low), word(high))
}

/// `prefix` + `_` + 50 random lowercase hex digits, e.g. `resp_0c3f…`.
pub fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 51);
    id.push_str(prefix);
    id.push('_');
    let mut left = 50;
    while left > 0 {
        let chunk = format!("{:016x}", random_u64());
        let take = left.min(16);
        id.push_str(&chunk[..take]);
        left -= take;
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_openai_shape_and_differ() {
        let a = super::new_id("resp");
        assert_eq!(a.len(), 55);
        assert!(
            a[5..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, super::new_id("resp"));
    }
}
