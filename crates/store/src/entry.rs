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
//! - **3**: adds the batch, `{"format": 3, "batch": [ENVELOPE, ...]}`:
//!   several client writes in one entry, applied in order, each with its
//!   own request ID and result, so that they share one append and one
//!   fsync on every member (see the raft crate's `batch` module).
//! - **4**: adds [`Command::AllocatePorts`].
//! - **5**: adds networks ([`Command::CreateNetwork`] and the other
//!   network commands) and service specs on networks.
//! - **6**: adds secrets and configs ([`Command::SetDataKey`],
//!   [`Command::CreateSecret`], [`Command::RemoveSecret`],
//!   [`Command::AddSecretVersion`]), service specs that use them, the
//!   job modes, and specs with placement preferences, a limit of tasks
//!   per node or `engine.labels` constraints.
//!
//! A new command, or a change that an older reader would apply
//! differently, takes a new format number; a field that older readers may
//! ignore (with `#[serde(default)]`) does not. An object with both
//! `format` and `command` at its top is an envelope, so no command has
//! fields of those names.
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

use serde::de::{DeserializeSeed, Error as _, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::Command;
use crate::state::State;

/// The newest entry format this version reads and writes.
pub const FORMAT: u32 = 8;
/// The first format with [`Body::Batch`].
pub const BATCH_FORMAT: u32 = 3;
/// The first format with [`Command::AllocatePorts`]: the allocator
/// proposes it only once [`writable_format`] reaches it.
pub const PORTS_FORMAT: u32 = 4;
/// The first format with networks: their commands, and service specs that
/// join networks or resolve by `dnsrr`.
pub const NETWORKS_FORMAT: u32 = 5;
/// The first format with secrets and configs.
pub const SECRETS_FORMAT: u32 = 6;
/// The first format with autolock ([`Command::SetAutolock`], and a
/// cluster made locked).
pub const AUTOLOCK_FORMAT: u32 = 7;
/// The first format with [`Command::SetBackupSchedule`].
pub const BACKUP_SCHEDULE_FORMAT: u32 = 8;
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
    /// Several envelopes (format [`BATCH_FORMAT`] on), applied in order
    /// at the entry's index, each answered on its own.
    Batch(Vec<Envelope>),
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

    /// Commands with their request IDs in one entry, in the order they
    /// apply: `items` (each a command and its request) in format `format`,
    /// which must be at least [`BATCH_FORMAT`] (see [`writable_format`]).
    pub fn batch(items: Vec<(Command, Option<RequestId>)>, format: u32) -> Envelope {
        let format = format.clamp(BATCH_FORMAT, FORMAT);
        Envelope {
            format,
            request: None,
            body: Body::Batch(
                items
                    .into_iter()
                    .map(|(command, request)| Envelope::new(command, request, format))
                    .collect(),
            ),
        }
    }

    /// The command, or why this version cannot apply the entry at `index`.
    /// A batch has no one command: see [`Envelope::items`].
    pub fn command(&self, index: u64) -> Result<&Command, EntryError> {
        match &self.body {
            Body::Known(c) => Ok(c),
            Body::Batch(_) => Err(self.unknown(index, "batch")),
            Body::Unknown { name, .. } => Err(self.unknown(index, name)),
        }
    }

    /// Every command of the entry at `index` with its request, in the
    /// order they apply (one, or a batch's), or why this version cannot
    /// apply the entry: then none of it applies.
    pub fn items(&self, index: u64) -> Result<Vec<(Option<&RequestId>, &Command)>, EntryError> {
        let mut out = Vec::new();
        self.collect(index, &mut out)?;
        Ok(out)
    }

    fn collect<'a>(
        &'a self,
        index: u64,
        out: &mut Vec<(Option<&'a RequestId>, &'a Command)>,
    ) -> Result<(), EntryError> {
        match &self.body {
            Body::Known(c) => out.push((self.request.as_ref(), c)),
            Body::Batch(_) if self.format > FORMAT || self.format < BATCH_FORMAT => {
                return Err(self.unknown(index, "batch"))
            }
            Body::Batch(items) => {
                for item in items {
                    item.collect(index, out)?;
                }
            }
            Body::Unknown { name, .. } => return Err(self.unknown(index, name)),
        }
        Ok(())
    }

    fn unknown(&self, index: u64, name: &str) -> EntryError {
        EntryError::Unknown {
            index,
            format: self.format,
            name: name.to_string(),
            needs: self.format.max(FORMAT + 1),
        }
    }

    /// How many commands the entry holds.
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Batch(items) => items.iter().map(Envelope::len).sum(),
            Body::Known(_) | Body::Unknown { .. } => 1,
        }
    }

    /// Never: an entry holds at least one command (an empty batch is
    /// never proposed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

#[derive(Serialize)]
struct Batched<'a> {
    format: u32,
    batch: &'a [Envelope],
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.body, self.format <= BARE_FORMAT) {
            (Body::Batch(items), _) => Batched {
                format: self.format,
                batch: items,
            }
            .serialize(s),
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

/// The `type` of every [`Command`] this version knows (checked against
/// the enum in a test).
pub const COMMAND_NAMES: [&str; 33] = [
    "init_cluster",
    "upsert_node",
    "refresh_node",
    "join_node",
    "rotate_join_secret",
    "update_node",
    "set_node_role",
    "remove_node",
    "node_seen",
    "set_node_state",
    "create_service",
    "update_service",
    "rollback_service",
    "set_update_status",
    "allocate_ports",
    "remove_service",
    "create_tasks",
    "set_desired_state",
    "assign_tasks",
    "set_pending_reason",
    "update_task_status",
    "delete_tasks",
    "create_network",
    "remove_network",
    "allocate_network",
    "allocate_vips",
    "allocate_task_addresses",
    "set_data_key",
    "create_secret",
    "remove_secret",
    "add_secret_version",
    "set_autolock",
    "set_backup_schedule",
];

// Entries are decoded in one pass, as the bare command was: the first key
// says whether it is a bare command (`type`, always first from serde) or
// an envelope, and the command's `type` whether this version knows it. A
// first pass into a `serde_json::Value` doubled the cost of every entry
// (a `CreateTasks` of 100 tasks, 58 KB, debug build: 4.3 ms bare, 8.2 ms
// through a Value; 1.7-2.1 ms both ways this way), and an AppendEntries
// has 80 ms.
impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EnvelopeVisitor)
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a raft entry: a command, or {format, request, command}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(A::Error::custom("an empty raft entry"));
        };
        if first == "type" {
            let name: String = map.next_value()?;
            return Ok(Envelope {
                format: BARE_FORMAT,
                request: None,
                body: body_of(BARE_FORMAT, name, map)?,
            });
        }
        if !["format", "request", "command", "batch"].contains(&first.as_str()) {
            // A bare command, but not as serde writes it (`type` first).
            let mut raw = serde_json::Map::new();
            let mut key = Some(first);
            while let Some(k) = key {
                raw.insert(k, map.next_value()?);
                key = map.next_key()?;
            }
            return Ok(Envelope {
                format: BARE_FORMAT,
                request: None,
                body: body_of_value(BARE_FORMAT, serde_json::Value::Object(raw)),
            });
        }
        let mut format = None;
        let mut request = None;
        let mut body = None;
        let mut early = None;
        let mut batch = None;
        let mut key = Some(first);
        while let Some(k) = key {
            match k.as_str() {
                "format" => format = Some(map.next_value::<u32>()?),
                "request" => request = map.next_value::<Option<RequestId>>()?,
                "command" => match format {
                    Some(format) => body = Some(map.next_value_seed(BodySeed { format })?),
                    // The command came before its format: decide later.
                    None => early = Some(map.next_value::<serde_json::Value>()?),
                },
                // Each item is an envelope with its own format.
                "batch" => batch = Some(map.next_value::<Vec<Envelope>>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            key = map.next_key::<String>()?;
        }
        let format = format.ok_or_else(|| A::Error::custom("a raft entry without a format"))?;
        let body = match (body, early, batch) {
            (Some(b), _, _) => b,
            (None, Some(raw), _) => body_of_value(format, raw),
            (None, None, Some(items)) => Body::Batch(items),
            (None, None, None) => return Err(A::Error::custom("a raft entry without a command")),
        };
        Ok(Envelope {
            format,
            request,
            body,
        })
    }
}

/// Decodes an envelope's command, knowing its format.
struct BodySeed {
    format: u32,
}

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Body;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = Body;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a command")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        match map.next_key::<String>()? {
            Some(k) if k == "type" => {
                let name: String = map.next_value()?;
                body_of(self.format, name, map)
            }
            first => {
                // Not as serde writes it: gather it and decide on the whole.
                let mut raw = serde_json::Map::new();
                let mut key = first;
                while let Some(k) = key {
                    raw.insert(k, map.next_value()?);
                    key = map.next_key()?;
                }
                Ok(body_of_value(self.format, serde_json::Value::Object(raw)))
            }
        }
    }
}

/// The command whose `type` (`name`) was just read from `map`: decoded
/// when this version knows it in `format`, else kept raw.
fn body_of<'de, A: MapAccess<'de>>(format: u32, name: String, map: A) -> Result<Body, A::Error> {
    if format <= FORMAT && COMMAND_NAMES.contains(&name.as_str()) {
        let tagged = Tagged {
            name: Some(name),
            tag_sent: false,
            map,
        };
        return Command::deserialize(tagged).map(Body::Known);
    }
    let mut raw = serde_json::Map::new();
    raw.insert("type".into(), serde_json::Value::String(name.clone()));
    let mut map = map;
    while let Some(k) = map.next_key::<String>()? {
        raw.insert(k, map.next_value()?);
    }
    Ok(Body::Unknown {
        name,
        raw: serde_json::Value::Object(raw),
    })
}

fn body_of_value(format: u32, raw: serde_json::Value) -> Body {
    let known = if format <= FORMAT {
        Command::deserialize(&raw).ok()
    } else {
        None
    };
    match known {
        Some(c) => Body::Known(c),
        None => Body::Unknown {
            name: raw
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("?")
                .to_string(),
            raw,
        },
    }
}

/// The rest of a command's map with its `type` put back in front, so that
/// the command's own (internally tagged) decoding reads it whole.
struct Tagged<A> {
    name: Option<String>,
    tag_sent: bool,
    map: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Tagged<A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Tagged<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.name.is_some() && !self.tag_sent {
            self.tag_sent = true;
            return seed.deserialize("type".into_deserializer()).map(Some);
        }
        self.map.next_key_seed(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.name.take() {
            Some(name) => seed.deserialize(name.into_deserializer()),
            None => self.map.next_value_seed(seed),
        }
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

    /// `COMMAND_NAMES` is every variant: serde lists them when it meets an
    /// unknown one.
    #[test]
    fn the_known_names_are_the_commands() {
        let e = serde_json::from_str::<Command>(r#"{"type":"nope"}"#).expect_err("unknown");
        let listed: Vec<String> = e
            .to_string()
            .split("expected one of ")
            .nth(1)
            .expect("a list")
            .split(", ")
            .map(|n| {
                n.trim_matches(|c: char| c == '`' || !c.is_ascii_graphic())
                    .to_string()
            })
            .map(|n| n.split('`').next().unwrap_or_default().to_string())
            .collect();
        assert_eq!(listed, COMMAND_NAMES, "{e}");
    }

    /// A bare command decodes whatever the order of its keys.
    #[test]
    fn key_order_does_not_matter() {
        let e: Envelope =
            serde_json::from_str(r#"{"at":3,"id":"s1","type":"remove_service"}"#).expect("decode");
        assert_eq!(e.command(1), Ok(&remove()));
        let e: Envelope = serde_json::from_str(
            r#"{"command":{"at":3,"type":"remove_service","id":"s1"},"request":"r","format":2}"#,
        )
        .expect("decode");
        assert_eq!(e, Envelope::new(remove(), Some("r".into()), 2));
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
            r#"{"format":8,"request":"r1","command":{"type":"remove_service","id":"s1","at":3}}"#
        );
        assert_eq!(serde_json::from_str::<Envelope>(&json).expect("decode"), e);
        // The bare format has no room for a request.
        assert_eq!(Envelope::new(remove(), Some("r1".into()), 1).request, None);
    }

    #[test]
    fn an_entry_of_a_future_version_decodes_but_cannot_be_applied() {
        let future =
            r#"{"format":9,"request":"r9","command":{"type":"create_volume","id":"v1","size":9}}"#;
        let e: Envelope = serde_json::from_str(future).expect("decode");
        assert_eq!(e.format, 9);
        let err = e.command(42).expect_err("unknown");
        assert_eq!(
            err,
            EntryError::Unknown {
                index: 42,
                format: 9,
                name: "create_volume".into(),
                needs: 9
            }
        );
        assert!(err
            .to_string()
            .contains("upgrade this manager to a version that reads format 9"));
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
            Err(EntryError::Unknown { needs: 9, .. })
        ));
        let bare: Envelope = serde_json::from_str(r#"{"type":"create_volume"}"#).expect("decode");
        assert!(matches!(
            bare.command(1),
            Err(EntryError::Unknown { format: 1, .. })
        ));
    }

    fn rename(id: &str) -> Command {
        Command::RemoveService {
            id: id.into(),
            at: 7,
        }
    }

    /// Format 3: several client writes in one entry, each with its own
    /// request, in order; an older format has no batch.
    #[test]
    fn a_batch_round_trips_and_lists_its_commands_in_order() {
        let e = Envelope::batch(
            vec![
                (rename("a"), Some("r1".into())),
                (rename("b"), None),
                (rename("c"), Some("r3".into())),
            ],
            FORMAT,
        );
        assert_eq!(e.len(), 3);
        let json = serde_json::to_string(&e).expect("encode");
        assert!(json.starts_with(r#"{"format":8,"batch":[{"format":8,"request":"r1","#));
        let back: Envelope = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, e);
        let items = back.items(9).expect("known");
        let listed: Vec<(Option<&str>, &Command)> = items
            .iter()
            .map(|(r, c)| (r.map(|r| r.as_str()), *c))
            .collect();
        assert_eq!(
            listed,
            vec![
                (Some("r1"), &rename("a")),
                (None, &rename("b")),
                (Some("r3"), &rename("c"))
            ]
        );
        assert!(back.command(9).is_err(), "a batch has no one command");
        // One entry of one command lists itself.
        let one = Envelope::new(rename("a"), Some("r".into()), FORMAT);
        assert_eq!(one.items(1).expect("known").len(), 1);
    }

    /// A batch with one command this version cannot read is refused
    /// whole, before any of it applies; so is a batch in a format that has
    /// none (an older writer never makes one).
    #[test]
    fn a_batch_with_an_unknown_command_is_refused_whole() {
        let future = r#"{"format":3,"batch":[
            {"format":3,"request":"r1","command":{"type":"remove_service","id":"a","at":7}},
            {"format":3,"request":"r2","command":{"type":"create_volume","id":"v1"}}]}"#;
        let e: Envelope = serde_json::from_str(future).expect("decode");
        assert_eq!(e.len(), 2);
        assert!(matches!(
            e.items(5),
            Err(EntryError::Unknown { index: 5, ref name, .. }) if name == "create_volume"
        ));
        let odd = r#"{"format":2,"batch":[
            {"format":2,"command":{"type":"remove_service","id":"a","at":7}}]}"#;
        let e: Envelope = serde_json::from_str(odd).expect("decode");
        assert!(matches!(
            e.items(5),
            Err(EntryError::Unknown { format: 2, .. })
        ));
        let newer = r#"{"format":9,"batch":[
            {"format":3,"command":{"type":"remove_service","id":"a","at":7}}]}"#;
        let e: Envelope = serde_json::from_str(newer).expect("decode");
        assert!(matches!(
            e.items(5),
            Err(EntryError::Unknown {
                format: 9,
                needs: 9,
                ..
            })
        ));
    }
}
