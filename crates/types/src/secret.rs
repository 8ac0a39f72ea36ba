//! Secrets and configs: named blobs a service's tasks get as files.
//!
//! Both have the same shape ([`Secret`], with a [`SecretKind`]); they
//! differ in where a task finds them (a secret under `/run/secrets`, a
//! config at its target path, `/NAME` by default) and in that a config's
//! data may be shown back. The data is kept sealed under the cluster's
//! data key ([`SealedData`]): the store, the raft log and snapshots hold
//! only ciphertext. A service's template names them by [`SecretRef`],
//! pinned to the version it was made with, so that a new version rolls
//! out as an update.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use crate::UnixMs;

/// The most data one secret or config holds, as Swarm's (500 KB).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// A secret or a config.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SecretKind {
    Secret,
    Config,
}

impl SecretKind {
    /// "secret" or "config", as messages say it.
    pub fn noun(self) -> &'static str {
        match self {
            SecretKind::Secret => "secret",
            SecretKind::Config => "config",
        }
    }

    /// Where a task finds the file when the reference names no target:
    /// `/run/secrets/NAME` for a secret, `/NAME` for a config.
    pub fn default_target(self, name: &str) -> String {
        match self {
            SecretKind::Secret => name.to_string(),
            SecretKind::Config => format!("/{name}"),
        }
    }

    /// The file mode a reference gets when it names none (Swarm's 0444).
    pub fn default_mode(self) -> u32 {
        0o444
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// What a client names and labels; the data goes beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `golang`: the data is a template, expanded for each task on its
    /// node (Swarm's placeholders, `{{ env "X" }}`, `{{ secret "T" }}`,
    /// `{{ config "T" }}`); none: the data as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_driver: Option<String>,
}

/// Bytes that must not be shown: `Debug` prints only their length, and
/// serde writes them as base64 (they travel only to the node that needs
/// them, over mutual TLS).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(pub Vec<u8>);

impl SecretData {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, not shown>", self.0.len())
    }
}

impl Serialize for SecretData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SecretData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(SecretData)
            .map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for SecretData {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("Bytes, base64"))
            .into()
    }
}

impl ToSchema for SecretData {}

/// Data sealed under the cluster's data key (AES-256-GCM): a 96-bit nonce
/// and the ciphertext with its tag. What is sealed is bound to the
/// object's ID, kind and version (the associated data), so that a sealed
/// blob moved to another object does not open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedData {
    pub nonce: SecretData,
    pub ciphertext: SecretData,
}

/// One version of a secret's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    pub version: u64,
    pub created_at: UnixMs,
    /// Bytes of plaintext.
    pub size: u64,
    /// A keyed digest of the plaintext (HMAC-SHA256 under the data key,
    /// hex): equal data has an equal digest, and the digest tells nothing
    /// of the data without the key. A stack that names an existing secret
    /// reuses it only when the digests match.
    pub digest: String,
    pub data: SealedData,
}

/// A secret or config as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub id: String,
    pub kind: SecretKind,
    pub spec: SecretSpec,
    pub created_at: UnixMs,
    /// Every version still kept, oldest first; the last is the current.
    pub versions: Vec<SecretVersion>,
}

impl Secret {
    /// The current version.
    pub fn current(&self) -> Option<&SecretVersion> {
        self.versions.last()
    }

    /// Version `v`, if kept.
    pub fn version(&self, v: u64) -> Option<&SecretVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

/// A service's use of a secret or config: which one, where the task finds
/// it, with which owner and mode.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct SecretRef {
    /// The name (or ID) a client gave; the store keeps the name.
    pub source: String,
    /// The ID of what `source` named, filled in by the manager.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The version the task gets, filled in by the manager (the current
    /// one when the spec was written).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// For a secret: the file name under `/run/secrets` (or an absolute
    /// path); for a config: the path in the task (`/NAME` by default).
    pub target: String,
    #[serde(default = "root")]
    pub uid: String,
    #[serde(default = "root")]
    pub gid: String,
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn root() -> String {
    "0".into()
}

fn default_mode() -> u32 {
    0o444
}

impl SecretRef {
    /// A reference to `source` with the defaults of `kind`.
    pub fn to(kind: SecretKind, source: impl Into<String>) -> Self {
        let source = source.into();
        SecretRef {
            target: kind.default_target(&source),
            source,
            id: String::new(),
            version: 0,
            uid: root(),
            gid: root(),
            mode: kind.default_mode(),
        }
    }

    /// Parses `--secret`/`--config`: `NAME` or
    /// `source=NAME[,target=T][,uid=U][,gid=G][,mode=0440]` (`src` and
    /// `dst` as Docker accepts them too).
    pub fn parse(kind: SecretKind, text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("empty --{kind}"));
        }
        if !text.contains('=') {
            return Ok(SecretRef::to(kind, text));
        }
        let mut source = None;
        let mut target = None;
        let (mut uid, mut gid, mut mode) = (root(), root(), kind.default_mode());
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid --{kind} field {part:?}: expected key=value"))?;
            let value = value.trim();
            match key.trim() {
                "source" | "src" => source = Some(value.to_string()),
                "target" | "dst" | "destination" => target = Some(value.to_string()),
                "uid" => uid = value.to_string(),
                "gid" => gid = value.to_string(),
                "mode" => mode = parse_mode(value)?,
                other => return Err(format!("unknown --{kind} field {other:?}")),
            }
        }
        let source = source
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("--{kind} {text:?} names no source"))?;
        Ok(SecretRef {
            target: target.unwrap_or_else(|| kind.default_target(&source)),
            source,
            id: String::new(),
            version: 0,
            uid,
            gid,
            mode,
        })
    }

    /// The path the task sees: a secret's relative target is under
    /// `/run/secrets`.
    pub fn path_in_task(&self, kind: SecretKind) -> String {
        match kind {
            SecretKind::Secret if !self.target.starts_with('/') => {
                format!("/run/secrets/{}", self.target)
            }
            _ => self.target.clone(),
        }
    }

    /// The path relative to a task's own directory of such files
    /// (`FLOTILLA_SECRETS_DIR`, `FLOTILLA_CONFIGS_DIR`): the target
    /// without its leading `/` (and a secret's without `/run/secrets/`).
    pub fn path_in_dir(&self, kind: SecretKind) -> String {
        let path = self.path_in_task(kind);
        let path = match kind {
            SecretKind::Secret => path.strip_prefix("/run/secrets/").unwrap_or(&path),
            SecretKind::Config => &path,
        };
        path.trim_start_matches('/').to_string()
    }

    /// Checks the target: not empty, no `..`, no NUL, and for a uid/gid
    /// a number.
    pub fn check(&self, kind: SecretKind) -> Result<(), String> {
        let path = self.path_in_task(kind);
        if self.target.trim().is_empty() || path.ends_with('/') {
            return Err(format!("{kind} {}: empty target", self.source));
        }
        if path.split('/').any(|c| c == ".." || c == ".") || path.contains('\0') {
            return Err(format!(
                "{kind} {}: target {:?} must not contain '.' or '..'",
                self.source, self.target
            ));
        }
        for (what, v) in [("uid", &self.uid), ("gid", &self.gid)] {
            if v.parse::<u32>().is_err() {
                return Err(format!(
                    "{kind} {}: {what} {v:?} is not a number",
                    self.source
                ));
            }
        }
        if self.mode > 0o7777 {
            return Err(format!(
                "{kind} {}: mode {:o} is not a file mode",
                self.source, self.mode
            ));
        }
        Ok(())
    }
}

/// A file mode in octal (`0440`, `440`, `0o440`).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim_start_matches("0o");
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid file mode {text:?}: expected octal, like 0440"))
}

/// A file a task gets, as delivered to its node: where and how, with the
/// data in the clear (it goes to the node only while a task there uses
/// it, over mutual TLS, and is written to memory only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    pub kind: SecretKind,
    /// The path in a container.
    pub path: String,
    /// The path under the task's directory of such files.
    pub rel: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub data: SecretData,
    /// Whether the data is a template to expand for the task first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub template: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_references_parse_with_swarms_defaults() {
        let short = SecretRef::parse(SecretKind::Secret, "db_pass").expect("short");
        assert_eq!(short.target, "db_pass");
        assert_eq!(
            short.path_in_task(SecretKind::Secret),
            "/run/secrets/db_pass"
        );
        assert_eq!((short.uid.as_str(), short.mode), ("0", 0o444));
        let long = SecretRef::parse(
            SecretKind::Secret,
            "source=db_pass,target=pw,uid=1000,gid=1000,mode=0400",
        )
        .expect("long");
        assert_eq!(long.source, "db_pass");
        assert_eq!(long.path_in_task(SecretKind::Secret), "/run/secrets/pw");
        assert_eq!(
            (long.uid.as_str(), long.gid.as_str(), long.mode),
            ("1000", "1000", 0o400)
        );
        let config =
            SecretRef::parse(SecretKind::Config, "src=nginx,dst=/etc/nginx.conf").expect("config");
        assert_eq!(config.path_in_task(SecretKind::Config), "/etc/nginx.conf");
        assert_eq!(config.path_in_dir(SecretKind::Config), "etc/nginx.conf");
        assert_eq!(
            SecretRef::to(SecretKind::Config, "app").path_in_task(SecretKind::Config),
            "/app"
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (text, want) in [
            ("", "empty --secret"),
            ("target=x", "names no source"),
            ("source=a,colour=red", "unknown --secret field \"colour\""),
            ("source=a,mode=9", "invalid file mode"),
            ("source=a,oops", "expected key=value"),
        ] {
            let e = SecretRef::parse(SecretKind::Secret, text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let up =
            SecretRef::parse(SecretKind::Secret, "source=a,target=../etc/passwd").expect("parses");
        assert!(up.check(SecretKind::Secret).unwrap_err().contains(".."));
        let uid = SecretRef::parse(SecretKind::Secret, "source=a,uid=root").expect("parses");
        assert!(uid
            .check(SecretKind::Secret)
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn data_never_shows_in_debug_and_travels_as_base64() {
        let data = SecretData(b"hunter2".to_vec());
        assert_eq!(format!("{data:?}"), "<7 bytes, not shown>");
        let json = serde_json::to_string(&data).expect("json");
        assert_eq!(json, "\"aHVudGVyMg==\"");
        assert_eq!(
            serde_json::from_str::<SecretData>(&json).expect("back"),
            data
        );
    }
}
