//! Object IDs: 20 characters of lowercase base-32, from 100 random bits.
//!
//! The caller supplies the randomness so that this crate stays free of I/O
//! and the state machine never draws IDs itself.

/// Length of every object ID.
pub const ID_LEN: usize = 20;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// Builds an ID from 128 random bits (only 100 are used).
pub fn new_id(random: u128) -> String {
    let mut out = String::with_capacity(ID_LEN);
    let mut v = random;
    for _ in 0..ID_LEN {
        out.push(ALPHABET[(v & 31) as usize] as char);
        v >>= 5;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fixed_length_and_differ() {
        let a = new_id(1);
        let b = new_id(2);
        assert_eq!(a.len(), ID_LEN);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
