//! The backup file: the whole replicated state at one raft index, with a
//! header that says what it is and a checksum over all of it, optionally
//! encrypted under a passphrase.
//!
//! Layout: one line of JSON (the [`Header`]), a newline, then
//! `payload_bytes` bytes of payload: the state as JSON, or that JSON sealed
//! with AES-256-GCM under a key drawn from the passphrase (PBKDF2-HMAC-
//! SHA256; salt, rounds and nonce in the header, the header bound as
//! associated data). `sha256` is the SHA-256 of the header written with an
//! empty `sha256`, the newline and the payload, so that a truncated or
//! altered file is refused before anything is read from it.
//!
//! The state inside is what the store holds: secrets stay sealed under the
//! cluster's data key; the CA key and join secrets are in it in the clear
//! unless autolock sealed them. Hence the file mode 0600 and the
//! passphrase.

use std::path::Path;

use flotilla_pki::seal;
use flotilla_store::State;
use serde::{Deserialize, Serialize};

/// The version of Flotilla that writes a backup (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The backup format this Flotilla writes, and the newest it reads.
pub const BACKUP_FORMAT: u32 = 1;
/// The first field of every backup's header.
pub const MAGIC: &str = "flotilla-backup";
/// PBKDF2 rounds for a new encrypted backup (OWASP's figure for
/// PBKDF2-HMAC-SHA256).
pub const PBKDF2_ROUNDS: u32 = 600_000;

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not a Flotilla backup (its first line is not a backup header)")]
    NotABackup,
    #[error("backup format {found} is newer than this Flotilla reads (up to {supported}); restore it with Flotilla {version} or newer")]
    NewerFormat {
        found: u32,
        supported: u32,
        version: String,
    },
    #[error("the backup's store format {found} is newer than this Flotilla's ({supported}); restore it with Flotilla {version} or newer")]
    NewerStore {
        found: u32,
        supported: u32,
        version: String,
    },
    #[error("the backup is truncated: {got} of {expected} payload bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("the backup's checksum does not match: the file was altered or damaged")]
    Checksum,
    #[error("this backup is encrypted: give its passphrase with --passphrase-file")]
    NeedsPassphrase,
    #[error("wrong passphrase for this backup")]
    WrongPassphrase,
    #[error("the passphrase is empty")]
    EmptyPassphrase,
    #[error("the backup's state cannot be read: {0}")]
    State(String),
    #[error("cannot seal the backup: {0}")]
    Seal(String),
}

/// How an encrypted backup's key is made from its passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `pbkdf2-hmac-sha256`.
    pub kdf: String,
    pub rounds: u32,
    pub salt: String,
    pub nonce: String,
}

/// The first line of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub magic: String,
    pub format: u32,
    pub cluster_id: String,
    /// The raft index the state is at.
    pub index: u64,
    pub created_at_ms: u64,
    /// The Flotilla that wrote it.
    pub flotilla_version: String,
    /// The store's entry format of that Flotilla ([`flotilla_store::FORMAT`]).
    pub store_format: u32,
    pub services: u64,
    pub secrets: u64,
    #[serde(default)]
    pub encryption: Option<Encryption>,
    pub payload_bytes: u64,
    /// See the module doc.
    pub sha256: String,
}

/// What a backup holds, read and checked.
#[derive(Debug, Clone)]
pub struct Backup {
    pub header: Header,
    pub state: State,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The header line as the checksum and the seal bind it: `sha256` empty.
fn bound(header: &Header) -> Result<Vec<u8>, BackupError> {
    let mut h = header.clone();
    h.sha256.clear();
    serde_json::to_vec(&h).map_err(|e| BackupError::Seal(e.to_string()))
}

fn checksum(header: &Header, payload: &[u8]) -> Result<String, BackupError> {
    let mut all = bound(header)?;
    all.push(b'\n');
    all.extend_from_slice(payload);
    Ok(seal::sha256_hex(&all))
}

/// A backup of `state`, made at `now_ms`; sealed under `passphrase` when
/// one is given.
pub fn write(
    state: &State,
    now_ms: u64,
    passphrase: Option<&[u8]>,
) -> Result<Vec<u8>, BackupError> {
    let json = serde_json::to_vec(state).map_err(|e| BackupError::State(e.to_string()))?;
    let mut header = Header {
        magic: MAGIC.to_string(),
        format: BACKUP_FORMAT,
        cluster_id: state
            .cluster
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default(),
        index: state.index,
        created_at_ms: now_ms,
        flotilla_version: VERSION.to_string(),
        store_format: flotilla_store::FORMAT,
        services: state.services.len() as u64,
        secrets: state.secrets.len() as u64,
        encryption: None,
        payload_bytes: 0,
        sha256: String::new(),
    };
    let payload = match passphrase {
        None => json,
        Some([]) => return Err(BackupError::EmptyPassphrase),
        Some(p) => {
            let seal_err = |e: seal::SealError| BackupError::Seal(e.to_string());
            let salt = seal::random_bytes(16).map_err(seal_err)?;
            let nonce = seal::random_bytes(12).map_err(seal_err)?;
            header.encryption = Some(Encryption {
                kdf: "pbkdf2-hmac-sha256".into(),
                rounds: PBKDF2_ROUNDS,
                salt: hex(&salt),
                nonce: hex(&nonce),
            });
            // The sealed size is known before sealing: the tag adds 16.
            header.payload_bytes = json.len() as u64 + 16;
            let key = seal::passphrase_key(p, &salt, PBKDF2_ROUNDS);
            seal::seal_with_nonce(&key, &nonce, &bound(&header)?, &json).map_err(seal_err)?
        }
    };
    header.payload_bytes = payload.len() as u64;
    header.sha256 = checksum(&header, &payload)?;
    let mut out = serde_json::to_vec(&header).map_err(|e| BackupError::Seal(e.to_string()))?;
    out.push(b'\n');
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads just the header, without checking the payload.
pub fn header(bytes: &[u8]) -> Result<Header, BackupError> {
    let end = bytes
        .iter()
        .take(64 * 1024)
        .position(|b| *b == b'\n')
        .ok_or(BackupError::NotABackup)?;
    let header: Header =
        serde_json::from_slice(&bytes[..end]).map_err(|_| BackupError::NotABackup)?;
    if header.magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    Ok(header)
}

/// Reads and checks a backup: its format, its length, its checksum, then
/// (encrypted) the passphrase, then the state.
pub fn read(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<Backup, BackupError> {
    let header = header(bytes)?;
    if header.format > BACKUP_FORMAT {
        return Err(BackupError::NewerFormat {
            found: header.format,
            supported: BACKUP_FORMAT,
            version: header.flotilla_version.clone(),
        });
    }
    let start = bytes
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| i + 1);
    let payload = &bytes[start..];
    if (payload.len() as u64) < header.payload_bytes {
        return Err(BackupError::Truncated {
            expected: header.payload_bytes,
            got: payload.len() as u64,
        });
    }
    if payload.len() as u64 != header.payload_bytes || checksum(&header, payload)? != header.sha256
    {
        return Err(BackupError::Checksum);
    }
    if header.store_format > flotilla_store::FORMAT {
        return Err(BackupError::NewerStore {
            found: header.store_format,
            supported: flotilla_store::FORMAT,
            version: header.flotilla_version.clone(),
        });
    }
    let json = match &header.encryption {
        None => payload.to_vec(),
        Some(enc) => {
            let passphrase = passphrase.ok_or(BackupError::NeedsPassphrase)?;
            let (Some(salt), Some(nonce)) = (unhex(&enc.salt), unhex(&enc.nonce)) else {
                return Err(BackupError::Checksum);
            };
            let key = seal::passphrase_key(passphrase, &salt, enc.rounds);
            seal::open(&key, &bound(&header)?, &nonce, payload)
                .map_err(|_| BackupError::WrongPassphrase)?
        }
    };
    let state: State =
        serde_json::from_slice(&json).map_err(|e| BackupError::State(e.to_string()))?;
    Ok(Backup { header, state })
}

/// Writes `bytes` to `path` with mode 0600, whole or not at all (a
/// temporary file beside it, synced, then renamed over it).
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The name of a scheduled backup made at `created_ms` at raft `index`;
/// names sort by time.
pub fn file_name(created_ms: u64, index: u64) -> String {
    format!("flotilla-backup-{created_ms:013}-{index}.fbk")
}

/// When the scheduled backup named `name` was made; None: not one.
pub fn created_of(name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix("flotilla-backup-")?
        .strip_suffix(".fbk")?;
    let (ms, index) = rest.split_once('-')?;
    index.parse::<u64>().ok()?;
    ms.parse().ok()
}

/// Whether a scheduled backup is due at `now` after the last at `last`.
pub fn due(now: u64, last: Option<u64>, every_ms: u64) -> bool {
    last.is_none_or(|l| now >= l.saturating_add(every_ms))
}

/// Which of the scheduled backups `names` go so that the newest `keep`
/// stay.
pub fn to_prune(names: &[String], keep: u32) -> Vec<String> {
    let mut ours: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| created_of(n).map(|t| (t, n)))
        .collect();
    ours.sort();
    let extra = ours.len().saturating_sub(keep as usize);
    ours.into_iter()
        .take(extra)
        .map(|(_, n)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::{Cluster, ServiceSpec, TaskTemplate};

    fn state() -> State {
        let mut s = State {
            cluster: Some(Cluster::bare("c1", 1)),
            ..State::default()
        };
        let _ = s.apply(
            1,
            &flotilla_store::Command::CreateService {
                id: "s1".into(),
                spec: ServiceSpec {
                    name: "web".into(),
                    task: TaskTemplate {
                        command: vec!["sleep".into(), "1".into()],
                        ..TaskTemplate::default()
                    },
                    ..ServiceSpec::default()
                },
                at: 1,
            },
        );
        s
    }

    #[test]
    fn a_plain_backup_reads_back_with_its_header() {
        let s = state();
        let bytes = write(&s, 42, None).expect("write");
        let b = read(&bytes, None).expect("read");
        assert_eq!(b.header.cluster_id, "c1");
        assert_eq!(b.header.index, s.index);
        assert_eq!(b.header.created_at_ms, 42);
        assert_eq!(b.header.services, 1);
        assert_eq!(b.state.services.len(), 1);
        assert_eq!(b.state.service("web").map(|x| x.id.as_str()), Some("s1"));
    }

    #[test]
    fn truncated_or_altered_backups_are_refused() {
        let bytes = write(&state(), 1, None).expect("write");
        let cut = &bytes[..bytes.len() - 10];
        assert!(matches!(
            read(cut, None),
            Err(BackupError::Truncated { .. })
        ));
        // One payload byte changed.
        let mut bad = bytes.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0x01;
        assert_eq!(read(&bad, None).err(), Some(BackupError::Checksum));
        // The header's index changed: the checksum covers it too.
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        let moved = text.replacen("\"index\":1,", "\"index\":9,", 1);
        assert_ne!(moved, text);
        assert_eq!(
            read(moved.as_bytes(), None).err(),
            Some(BackupError::Checksum)
        );
        assert_eq!(read(b"hello\n", None).err(), Some(BackupError::NotABackup));
        assert_eq!(read(b"", None).err(), Some(BackupError::NotABackup));
    }

    #[test]
    fn an_encrypted_backup_needs_its_passphrase_and_hides_the_state() {
        let bytes = write(&state(), 1, Some(b"correct horse")).expect("write");
        assert!(!bytes.windows(5).any(|w| w == b"sleep"), "ciphertext only");
        assert_eq!(read(&bytes, None).err(), Some(BackupError::NeedsPassphrase));
        assert_eq!(
            read(&bytes, Some(b"wrong")).err(),
            Some(BackupError::WrongPassphrase)
        );
        let b = read(&bytes, Some(b"correct horse")).expect("read");
        assert_eq!(b.state.services.len(), 1);
        assert_eq!(
            write(&state(), 1, Some(b"")).err(),
            Some(BackupError::EmptyPassphrase)
        );
    }

    #[test]
    fn scheduled_backups_are_due_after_their_interval_and_the_oldest_go() {
        assert!(due(10, None, 5));
        assert!(!due(14, Some(10), 5));
        assert!(due(15, Some(10), 5));
        let names: Vec<String> = [3, 1, 4, 2]
            .iter()
            .map(|t| file_name(*t, 7))
            .chain(["notes.txt".to_string()])
            .collect();
        assert_eq!(created_of(&names[0]), Some(3));
        assert_eq!(created_of("notes.txt"), None);
        assert_eq!(created_of("flotilla-backup-12-x.fbk"), None);
        assert_eq!(to_prune(&names, 2), vec![file_name(1, 7), file_name(2, 7)]);
        assert!(to_prune(&names, 9).is_empty());
    }

    /// A backup of an older Flotilla: its state lacks the tables and
    /// fields added since (networks, secrets, autolock); it reads, with
    /// those empty.
    #[test]
    fn a_backup_of_an_older_store_reads_with_defaults() {
        let old_state = r#"{"cluster":{"id":"c0","created_at":1,"ca_cert_pem":"","ca_key_pem":"","worker_secret":"","manager_secret":""},"nodes":{},"services":{},"tasks":{},"index":7}"#;
        let mut header = Header {
            magic: MAGIC.into(),
            format: 1,
            cluster_id: "c0".into(),
            index: 7,
            created_at_ms: 1,
            flotilla_version: "0.0.9".into(),
            store_format: 4,
            services: 0,
            secrets: 0,
            encryption: None,
            payload_bytes: old_state.len() as u64,
            sha256: String::new(),
        };
        header.sha256 = checksum(&header, old_state.as_bytes()).expect("checksum");
        let mut bytes = serde_json::to_vec(&header).expect("json");
        bytes.push(b'\n');
        bytes.extend_from_slice(old_state.as_bytes());
        let b = read(&bytes, None).expect("an older backup reads");
        assert_eq!(b.state.index, 7);
        assert!(b.state.networks.is_empty() && b.state.secrets.is_empty());
        assert!(b.state.cluster.is_some_and(|c| c.autolock.is_none()));
    }

    #[test]
    fn a_newer_format_is_refused_with_its_version_named() {
        let bytes = write(&state(), 1, None).expect("write");
        let mut h = header(&bytes).expect("header");
        let start = bytes.iter().position(|b| *b == b'\n').expect("newline") + 1;
        let payload = &bytes[start..];
        h.format = BACKUP_FORMAT + 1;
        h.flotilla_version = "9.0.0".into();
        h.sha256 = checksum(&h, payload).expect("checksum");
        let mut newer = serde_json::to_vec(&h).expect("json");
        newer.push(b'\n');
        newer.extend_from_slice(payload);
        let err = read(&newer, None).expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "backup format {} is newer than this Flotilla reads (up to {BACKUP_FORMAT}); restore it with Flotilla 9.0.0 or newer",
                BACKUP_FORMAT + 1
            )
        );
    }
}
