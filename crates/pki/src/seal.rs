//! The cluster's data key and what it seals: secret and config data, kept
//! as ciphertext in the raft log, the state machine and snapshots.
//!
//! AES-256-GCM (ring) with a random 96-bit nonce per seal; the associated
//! data binds a blob to the object it belongs to. A keyed digest
//! (HMAC-SHA256) tells whether two blobs are equal without showing them.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Why data could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the cluster data key is not 32 bytes")]
    BadKey,
    #[error("no random numbers from the system")]
    Random,
    #[error("the sealed data does not open with the cluster data key (wrong key or damaged)")]
    Open,
}

/// Bytes of a data key.
pub const DATA_KEY_LEN: usize = 32;

/// A new random data key.
pub fn new_data_key() -> Result<Vec<u8>, SealError> {
    let mut key = vec![0u8; DATA_KEY_LEN];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| SealError::Random)?;
    Ok(key)
}

fn key_of(key: &[u8]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::BadKey)
}

/// Seals `plain` under `key`, bound to `aad`: returns (nonce, ciphertext
/// with its tag).
pub fn seal(key: &[u8], aad: &[u8], plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let key = key_of(key)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut data = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut data,
    )
    .map_err(|_| SealError::BadKey)?;
    Ok((nonce.to_vec(), data))
}

/// Opens what [`seal`] made with the same key and `aad`.
pub fn open(key: &[u8], aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    let key = key_of(key)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
    let mut data = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut data)
        .map_err(|_| SealError::Open)?;
    Ok(plain.to_vec())
}

/// HMAC-SHA256 of `data` under `key`, hex.
pub fn digest(key: &[u8], data: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&key, data);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals `plain` under `key` with a nonce the caller drew (one it must
/// record before sealing, as a backup's header does).
pub fn seal_with_nonce(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, SealError> {
    let key = key_of(key)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::BadKey)?;
    let mut data = plain.to_vec();
    key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut data)
        .map_err(|_| SealError::BadKey)?;
    Ok(data)
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` random bytes from the system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, SealError> {
    let mut out = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SealError::Random)?;
    Ok(out)
}

/// A data key from a passphrase: PBKDF2-HMAC-SHA256 with `salt` and
/// `iterations` (a backup's encryption, which records both).
pub fn passphrase_key(passphrase: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut key = vec![0u8; DATA_KEY_LEN];
    let rounds = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt,
        passphrase,
        &mut key,
    );
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key_and_binding() {
        let key = new_data_key().expect("key");
        let (nonce, sealed) = seal(&key, b"s1:1", b"hunter2").expect("seal");
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "ciphertext only"
        );
        assert_eq!(
            open(&key, b"s1:1", &nonce, &sealed).expect("open"),
            b"hunter2"
        );
        assert_eq!(open(&key, b"s2:1", &nonce, &sealed), Err(SealError::Open));
        let other = new_data_key().expect("key");
        assert_eq!(open(&other, b"s1:1", &nonce, &sealed), Err(SealError::Open));
        assert_eq!(seal(b"short", b"", b"x"), Err(SealError::BadKey));
        // A fresh nonce each time: the same data seals differently.
        let (again, _) = seal(&key, b"s1:1", b"hunter2").expect("seal");
        assert_ne!(nonce, again);
    }

    #[test]
    fn equal_data_has_an_equal_keyed_digest() {
        let key = new_data_key().expect("key");
        assert_eq!(digest(&key, b"a"), digest(&key, b"a"));
        assert_ne!(digest(&key, b"a"), digest(&key, b"b"));
        assert_ne!(
            digest(&key, b"a"),
            digest(&new_data_key().expect("key"), b"a")
        );
        assert_eq!(digest(&key, b"a").len(), 64);
    }
}
