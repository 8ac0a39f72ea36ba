//! Join tokens: `FLT-1-<CA fingerprint>-<secret>`, like Swarm's
//! `SWMTKN-1-...`. The fingerprint lets a joining node check the manager's
//! CA before it sends the secret.

use std::fmt;
use std::str::FromStr;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid join token: expected FLT-1-<fingerprint>-<secret>")]
    Format,
    #[error("invalid join token: unsupported version {0}")]
    Version(String),
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the CA certificate, lowercase hex.
    pub ca_fingerprint: String,
    /// The secret that says worker or manager.
    pub secret: String,
}

const SECRET_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Whether two secrets are equal, in time that depends on their length
/// only: a caller who guesses cannot learn from how long a refusal takes
/// how many leading bytes were right. (Secrets have one fixed length, so
/// the length is no secret.)
pub fn secrets_match(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from ending the fold at the first difference.
    std::hint::black_box(diff) == 0
}

/// A new random secret: 26 base-32 characters (130 bits).
pub fn new_secret(random: [u8; 17]) -> String {
    let mut out = String::with_capacity(26);
    let mut bits: u32 = 0;
    let mut acc: u32 = 0;
    for b in random {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < 26 {
            bits -= 5;
            out.push(SECRET_ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FLT-1-{}-{}", self.ca_fingerprint, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(4, '-');
        let (Some(prefix), Some(version), Some(fp), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        if prefix != "FLT" {
            return Err(TokenError::Format);
        }
        if version != "1" {
            return Err(TokenError::Version(version.to_string()));
        }
        let hex = fp.len() == 64
            && fp
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let secret_ok = secret.len() == 26 && secret.bytes().all(|b| SECRET_ALPHABET.contains(&b));
        if !hex || !secret_ok {
            return Err(TokenError::Format);
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_string(),
            secret: secret.to_string(),
        })
    }
}
