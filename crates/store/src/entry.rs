//! The raft log entry's envelope: which format a [`Command`] is written
//! in, the request it answers (for retries), and the rule for an entry
//! this version cannot read.
//!
//! # Formats
//! - **1**: a bare [`Command`], as every version before the envelope wrote
//!   it. Still read, and still written while some manager reads only it.
//! - **2**: `{"format": 2, "request": ID, "command": COMMAND}`; adds the
//!   request ID (see [`crate::state::Requests`]) and
//!   [`Command::RefreshNode`].
//!
//! A new command, or a change that an older reader would apply
//! differently, takes a new format number; a field that older readers may
//! ignore (with `#[serde(default)]`) does not.
//!
//! # Unknown entries
//! A replica never skips an entry: skipping it would make it diverge from
//! the others for good. An entry of a format newer than [`FORMAT`], or of a
//! known format with a command this version does not know, still decodes
//! (as [`Body::Unknown`], kept as it came, so that the log stores and
//! sends it on unchanged), but [`crate::State::apply_entry`] refuses it
//! with [`EntryError::Unknown`] before anything changes. The raft crate
//! then stops applying (see its `storage` module). A leader keeps that
//! from happening in a rolling upgrade: it writes an entry in a format
//! only once every manager's record announces it reads it
//! ([`writable_format`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::Command;
use crate::state::State;

/// The newest entry format this version reads and writes.
pub const FORMAT: u32 = 2;
/// The format of a bare [`Command`], before the envelope.
pub const BARE_FORMAT: u32 = 1;

/// Names one call of a client's write, kept across its retries, so that a
/// retried proposal applies once.
pub type RequestId = String;

/// One raft log entry's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The format it was written in.
    pub format: u32,
    /// The client's request, when the proposer named one (format 2 on).
    pub request: Option<RequestId>,
    pub body: Body,
}

/// What an entry carries.
// Known is the entry of every day; boxing it would cost an allocation per
// entry for the sake of one that should never come.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Known(Command),
    /// A command this version cannot read, kept as it came.
    Unknown {
        /// Its `type`, or `?` when it has none.
        name: String,
        raw: serde_json::Value,
    },
}

/// Why an entry cannot be applied here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error(
        "raft entry {index} holds command '{name}' of entry format {format}, which this \
         version (reads formats up to {FORMAT}) cannot apply: it stopped applying the log \
         rather than skip the entry; upgrade this manager to a version that reads format \
         {needs}"
    )]
    Unknown {
        index: u64,
        format: u32,
        name: String,
        /// The format a version must read to apply it.
        needs: u32,
    },
}

impl Envelope {
    /// A command in the newest format the cluster reads (`format`, see
    /// [`writable_format`]); the request ID is dropped in the bare format,
    /// which has no room for it.
    pub fn new(command: Command, request: Option<RequestId>, format: u32) -> Envelope {
        let format = format.clamp(BARE_FORMAT, FORMAT);
        Envelope {
            format,
            request: request.filter(|_| format > BARE_FORMAT),
            body: Body::Known(command),
        }
    }

    /// The command, or why this version cannot apply the entry at `index`.
    pub fn command(&self, index: u64) -> Result<&Command, EntryError> {
        match &self.body {
            Body::Known(c) => Ok(c),
            Body::Unknown { name, .. } => Err(EntryError::Unknown {
                index,
                format: self.format,
                name: name.clone(),
                needs: self.format.max(FORMAT + 1),
            }),
        }
    }
}

/// The newest format every manager of `state` reads (a manager's record
/// says it; a record written before the envelope says 0, read as the bare
/// format), and at most [`FORMAT`]. A cluster with no manager yet (before
/// `init`) reads [`FORMAT`].
pub fn writable_format(state: &State) -> u32 {
    state
        .nodes
        .values()
        .filter(|n| n.role == flotilla_types::NodeRole::Manager)
        .map(|n| n.entry_format.max(BARE_FORMAT))
        .min()
        .unwrap_or(FORMAT)
        .min(FORMAT)
}

#[derive(Serialize)]
struct Wrapped<'a, C: Serialize> {
    format: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: &'a Option<RequestId>,
    command: &'a C,
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.body, self.format <= BARE_FORMAT) {
            (Body::Known(c), true) => c.serialize(s),
            (Body::Unknown { raw, .. }, true) => raw.serialize(s),
            (Body::Known(c), false) => Wrapped {
                format: self.format,
                request: &self.request,
                command: c,
            }
            .serialize(s),
            (Body::Unknown { raw, .. }, false) => Wrapped {
                format: self.format,
                request: &self.request,
                command: raw,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(d)?;
        let wrapped = value.get("format").is_some() && value.get("command").is_some();
        let (format, request, command) = if wrapped {
            let format = value
                .get("format")
                .and_then(|f| f.as_u64())
                .and_then(|f| u32::try_from(f).ok())
                .ok_or_else(|| D::Error::custom("an entry's format is not a number"))?;
            let request = match value.get("request") {
                None | Some(serde_json::Value::Null) => None,
                Some(r) => Some(
                    r.as_str()
                        .ok_or_else(|| D::Error::custom("an entry's request is not a string"))?
                        .to_string(),
                ),
            };
            (format, request, value["command"].take())
        } else {
            (BARE_FORMAT, None, value)
        };
        let known = if format <= FORMAT {
            Command::deserialize(&command).ok()
        } else {
            None
        };
        let body = match known {
            Some(c) => Body::Known(c),
            None => Body::Unknown {
                name: command
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("?")
                    .to_string(),
                raw: command,
            },
        };
        Ok(Envelope {
            format,
            request,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remove() -> Command {
        Command::RemoveService {
            id: "s1".into(),
            at: 3,
        }
    }

    #[test]
    fn a_bare_command_of_the_previous_version_still_reads() {
        let old = serde_json::to_string(&remove()).expect("encode");
        assert_eq!(old, r#"{"type":"remove_service","id":"s1","at":3}"#);
        let e: Envelope = serde_json::from_str(&old).expect("decode");
        assert_eq!(e, Envelope::new(remove(), None, BARE_FORMAT));
        assert_eq!(e.command(1), Ok(&remove()));
        // Written back as it was.
        assert_eq!(serde_json::to_string(&e).expect("encode"), old);
    }

    #[test]
    fn the_envelope_round_trips_with_its_request() {
        let e = Envelope::new(remove(), Some("r1".into()), FORMAT);
        let json = serde_json::to_string(&e).expect("encode");
        assert_eq!(
            json,
            r#"{"format":2,"request":"r1","command":{"type":"remove_service","id":"s1","at":3}}"#
        );
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("decode"), e);
        // The bare format has no room for a request.
        assert_eq!(Envelope::new(remove(), Some("r1".into()), 1).request, None);
    }

    #[test]
    fn an_entry_of_a_future_version_decodes_but_cannot_be_applied() {
        let future =
            r#"{"format":3,"request":"r9","command":{"type":"create_volume","id":"v1","size":9}}"#;
        let e: Envelope = serde_json::from_str(future).expect("decode");
        assert_eq!(e.format, 3);
        let err = e.command(42).expect_err("unknown");
        assert_eq!(
            err,
            EntryError::Unknown {
                index: 42,
                format: 3,
                name: "create_volume".into(),
                needs: 3
            }
        );
        assert!(err
            .to_string()
            .contains("upgrade this manager to a version that reads format 3"));
        // Kept as it came: stored and sent on unchanged.
        let again = serde_json::to_value(&e).expect("encode");
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(future).expect("json")
        );
        // A command unknown in a format this version reads (a build that
        // added it without a new format number) is refused the same way.
        let e: Envelope =
            serde_json::from_str(r#"{"format":2,"command":{"type":"create_volume"}}"#)
                .expect("decode");
        assert!(matches!(
            e.command(1),
            Err(EntryError::Unknown { needs: 3, .. })
        ));
        let bare: Envelope = serde_json::from_str(r#"{"type":"create_volume"}"#).expect("decode");
        assert!(matches!(
            bare.command(1),
            Err(EntryError::Unknown { format: 1, .. })
        ));
    }
}
