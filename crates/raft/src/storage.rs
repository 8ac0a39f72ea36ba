//! The raft log and the state machine, both in one redb database.
//!
//! redb is synchronous; every call into it runs under
//! `tokio::task::block_in_place` so that it does not stall the async
//! workers that drive raft heartbeats.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::watch;

use flotilla_store::state::Recorded;
use flotilla_store::{Change, CommandResult, EntryError, State};

use crate::log_writer::{LogWriter, SyncHook, Write};
use crate::TypeConfig;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// The kept results of client requests (`State::requests`), one row each.
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const KEY_VOTE: &str = "vote";
pub(crate) const KEY_PURGED: &str = "last_purged";
pub(crate) const KEY_COMMITTED: &str = "committed";
const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_CLUSTER: &str = "cluster";
pub(crate) const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";

type SErr = StorageError<u64>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the raft store {path}: {source}")]
    Database {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("the raft store {path} is damaged: {reason}")]
    Corrupt { path: String, reason: String },
}

fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn any<E: std::error::Error + 'static>(e: E) -> AnyError {
    AnyError::new(&e)
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AnyError> {
    serde_json::to_vec(v).map_err(any)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    serde_json::from_slice(bytes).map_err(any)
}

/// The first bytes of a snapshot in the compressed format: an LZ4 frame of
/// the payload's JSON follows. Snapshots without it are plain JSON (the
/// format before), and are still read.
const SNAPSHOT_MAGIC: &[u8] = b"FLSNAP1\n";

/// A snapshot's bytes. The JSON of many tasks repeats the same keys and
/// specs, and LZ4 takes most of it away at several hundred MB/s; JSON stays
/// the encoding because serde's defaults keep old and new records readable.
fn encode_snapshot(payload: &SnapshotPayload) -> Result<Vec<u8>, AnyError> {
    use std::io::Write;
    let mut frame = lz4_flex::frame::FrameEncoder::new(SNAPSHOT_MAGIC.to_vec());
    serde_json::to_writer(&mut frame, payload).map_err(any)?;
    frame.flush().map_err(any)?;
    frame.finish().map_err(any)
}

/// Reads a snapshot in either format.
fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotPayload, AnyError> {
    use std::io::Read;
    match bytes.strip_prefix(SNAPSHOT_MAGIC) {
        Some(frame) => {
            let mut json = Vec::with_capacity(frame.len().saturating_mul(4));
            lz4_flex::frame::FrameDecoder::new(frame)
                .read_to_end(&mut json)
                .map_err(any)?;
            decode(&json)
        }
        None => decode(bytes),
    }
}

/// redb's page cache. Its default (1 GiB) let the cache of a store of many
/// tasks grow to several hundred MiB; every read of the state is served
/// from memory (`State`), so the cache only helps writes find their pages.
const CACHE_BYTES: usize = 32 << 20;

/// Opens (or creates) the redb file and returns the log store and the state
/// machine that share it.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine), OpenError> {
    let shown = path.display().to_string();
    let db = create_db(path)?;
    let corrupt = |reason: String| OpenError::Corrupt {
        path: shown.clone(),
        reason,
    };
    // Create every table up front so that read transactions never meet a
    // missing table.
    let txn = db.begin_write().map_err(|e| corrupt(e.to_string()))?;
    for def in NAMED_TABLES {
        txn.open_table(def).map_err(|e| corrupt(e.to_string()))?;
    }
    txn.open_table(LOG).map_err(|e| corrupt(e.to_string()))?;
    txn.commit().map_err(|e| corrupt(e.to_string()))?;

    let db = Arc::new(db);
    let loaded = load_state(&db).map_err(|e| corrupt(e.to_string()))?;
    let (applied_tx, _) = watch::channel(loaded.state.index);
    let installing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sm = StateMachine {
        installing: installing.clone(),
        db: db.clone(),
        shared: Arc::new(RwLock::new(loaded.state)),
        applied: applied_tx,
        stopped: Arc::new(RwLock::new(None)),
        last_applied: loaded.last_applied,
        membership: loaded.membership,
    };
    let writer = LogWriter::start(db.clone()).map_err(|e| corrupt(e.to_string()))?;
    let log = LogStore {
        installing,
        db,
        writer: Arc::new(writer),
        committed: Arc::new(std::sync::Mutex::new(None)),
    };
    Ok((log, sm))
}

/// Every table but the log, keyed by name.
const NAMED_TABLES: [TableDefinition<'static, &'static str, &'static [u8]>; 9] = [
    RAFT_META, SM_META, NODES, SERVICES, TASKS, NETWORKS, SECRETS, REQUESTS, SNAPSHOT,
];

/// Opens (or creates) the redb file with the store's cache size.
fn create_db(path: &Path) -> Result<Database, OpenError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|source| OpenError::Database {
            path: path.display().to_string(),
            source,
        })
}

/// Copies every row of table `def` from `read` into `write` (the table is
/// created there even if `read` has none).
fn copy_rows<K: redb::Key + 'static>(
    read: &redb::ReadTransaction,
    write: &redb::WriteTransaction,
    def: TableDefinition<'static, K, &'static [u8]>,
) -> Result<(), redb::Error> {
    let mut to = write.open_table(def)?;
    let Ok(from) = read.open_table(def) else {
        return Ok(());
    };
    for row in from.iter()? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Rewrites the store at `path` into a fresh file holding only its live
/// rows, and puts it in place of the old one (before raft opens it). The
/// old file's free pages keep what was deleted from it (a purged log
/// entry, an object's earlier version) until redb reuses them; the new
/// file never had those. Autolock uses it so that keys written in
/// plaintext before it was turned on leave the disk (the old file is
/// removed, as Swarm removes its old WAL files when it rotates the raft
/// key).
pub fn rewrite(path: &Path) -> Result<(), OpenError> {
    let shown = path.display().to_string();
    let corrupt = |reason: String| OpenError::Corrupt {
        path: shown.clone(),
        reason,
    };
    let fresh = path.with_extension("redb.rewrite");
    let _ = std::fs::remove_file(&fresh);
    {
        let old = create_db(path)?;
        let new = create_db(&fresh)?;
        let copy = || -> Result<(), redb::Error> {
            let read = old.begin_read()?;
            let mut write = new.begin_write()?;
            write.set_durability(Durability::Immediate)?;
            for def in NAMED_TABLES {
                copy_rows(&read, &write, def)?;
            }
            copy_rows(&read, &write, LOG)?;
            write.commit()?;
            Ok(())
        };
        copy().map_err(|e| corrupt(e.to_string()))?;
    }
    let io = |e: std::io::Error| corrupt(format!("cannot put the rewritten store in place: {e}"));
    std::fs::File::open(&fresh)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&fresh, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

struct Loaded {
    state: State,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

fn load_state(db: &Database) -> Result<Loaded, AnyError> {
    let txn = db.begin_read().map_err(any)?;
    let meta = txn.open_table(SM_META).map_err(any)?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, AnyError> {
        Ok(meta.get(key).map_err(any)?.map(|v| v.value().to_vec()))
    };
    let last_applied: Option<LogId<u64>> = match get(KEY_APPLIED)? {
        Some(b) => decode(&b)?,
        None => None,
    };
    let membership = match get(KEY_MEMBERSHIP)? {
        Some(b) => decode(&b)?,
        None => StoredMembership::default(),
    };
    let mut state = State {
        cluster: match get(KEY_CLUSTER)? {
            Some(b) => decode(&b)?,
            None => None,
        },
        index: last_applied.map(|l| l.index).unwrap_or(0),
        ..State::default()
    };
    for row in txn.open_table(NODES).map_err(any)?.iter().map_err(any)? {
        let (k, v) = row.map_err(any)?;
        state
            .nodes
            .insert(k.value().to_string(), decode(v.value())?);
    }
    for row in txn.open_table(SERVICES).map_err(any)?.iter().map_err(any)? {
        let (k, v) = row.map_err(any)?;
        state
            .services
            .insert(k.value().to_string(), decode(v.value())?);
    }
    for row in txn.open_table(TASKS).map_err(any)?.iter().map_err(any)? {
        let (k, v) = row.map_err(any)?;
        state
            .tasks
            .insert(k.value().to_string(), decode(v.value())?);
    }
    for row in txn.open_table(NETWORKS).map_err(any)?.iter().map_err(any)? {
        let (k, v) = row.map_err(any)?;
        state
            .networks
            .insert(k.value().to_string(), decode(v.value())?);
    }
    for row in txn.open_table(SECRETS).map_err(any)?.iter().map_err(any)? {
        let (k, v) = row.map_err(any)?;
        state
            .secrets
            .insert(k.value().to_string(), decode(v.value())?);
    }
    for row in txn.open_table(REQUESTS).map_err(any)?.iter().map_err(any)? {
        let (_, v) = row.map_err(any)?;
        state.requests.insert(decode::<Recorded>(v.value())?);
    }
    Ok(Loaded {
        state,
        last_applied,
        membership,
    })
}

/// The raft log and vote. Reads go to redb directly; every write goes
/// through the log writer thread ([`crate::log_writer`]), which commits
/// what queued up meanwhile with one fsync.
#[derive(Clone)]
pub struct LogStore {
    /// Set from `begin_receiving_snapshot` until `install_snapshot` is
    /// over: a purge then goes no further than the stored snapshot.
    installing: Arc<std::sync::atomic::AtomicBool>,
    db: Arc<Database>,
    writer: Arc<LogWriter>,
    /// The committed log id last handed to the writer, which saves it
    /// without anyone waiting; read back from here until it is written.
    #[allow(clippy::type_complexity)]
    committed: Arc<std::sync::Mutex<Option<Option<LogId<u64>>>>>,
}

impl LogStore {
    /// Calls `hook` before every durable commit of the log: a slow disk in
    /// tests.
    pub fn set_sync_hook(&self, hook: Arc<dyn SyncHook>) {
        self.writer.set_hook(hook);
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, AnyError> {
        run_blocking(|| {
            let txn = self.db.begin_read().map_err(any)?;
            let table = txn.open_table(RAFT_META).map_err(any)?;
            match table.get(key).map_err(any)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        run_blocking(|| -> Result<Vec<Entry<TypeConfig>>, AnyError> {
            let txn = self.db.begin_read().map_err(any)?;
            let log = txn.open_table(LOG).map_err(any)?;
            let mut out = Vec::new();
            for row in log.range::<u64>((start, end)).map_err(any)? {
                let (_, v) = row.map_err(any)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let purged: Option<LogId<u64>> = self
            .read_meta(KEY_PURGED)
            .map_err(StorageIOError::read_logs)?;
        let last = run_blocking(|| -> Result<Option<LogId<u64>>, AnyError> {
            let txn = self.db.begin_read().map_err(any)?;
            let log = txn.open_table(LOG).map_err(any)?;
            let last = log.last().map_err(any)?;
            let id = match last {
                Some((_, v)) => Some(decode::<Entry<TypeConfig>>(v.value())?.log_id),
                None => None,
            };
            Ok(id)
        })
        .map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let bytes = encode(vote).map_err(StorageIOError::write_vote)?;
        self.writer
            .write(
                Write::Meta {
                    key: KEY_VOTE,
                    bytes,
                },
                true,
            )
            .await
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.read_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        // Losing this on a crash only costs a later re-apply; the next
        // durable log commit persists it anyway. So nobody waits for it: a
        // heartbeat that moves the commit index is not held up by an fsync
        // under way.
        let bytes = encode(&committed).map_err(StorageIOError::write)?;
        if let Ok(mut c) = self.committed.lock() {
            *c = Some(committed);
        }
        self.writer
            .submit_detached(Write::Meta {
                key: KEY_COMMITTED,
                bytes,
            })
            .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        if let Some(c) = self.committed.lock().ok().and_then(|c| *c) {
            return Ok(c);
        }
        Ok(self
            .read_meta::<Option<LogId<u64>>>(KEY_COMMITTED)
            .map_err(StorageIOError::read)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((
                entry.log_id.index,
                encode(&entry).map_err(StorageIOError::write_logs)?,
            ));
        }
        // Answered once the entries are on disk (the writer commits them
        // with fsync, with whatever else queued up meanwhile): they are then
        // readable too, and only then is openraft told they are persisted.
        match self.writer.write(Write::Entries(rows), true).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let range = (Bound::Included(log_id.index), Bound::Unbounded);
        self.writer
            .write(Write::Remove { range }, true)
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        // openraft 0.9 purges a follower's log up to a received snapshot
        // in the same step as it hands the snapshot to the state machine
        // (`PurgeLog` waits for nothing): on disk before the install, a
        // crash in between left a log purged past the state machine and the
        // stored snapshot, and openraft panicked at every start. While an
        // install is under way the purge stops at the stored snapshot;
        // `install_snapshot` purges the rest in its own transaction.
        let clamp = self.installing.load(std::sync::atomic::Ordering::SeqCst);
        self.writer
            .write(
                Write::Purge {
                    upto: log_id,
                    clamp,
                },
                true,
            )
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

/// What a snapshot holds: the whole state plus raft's view of it.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    state: State,
}

/// Applies one log entry to `state` as the state machine does: a blank or
/// membership entry changes nothing but the index; a command applies
/// through [`State::apply_entry`] (request IDs, and the refusal of an
/// entry this version cannot read, which must stop the replay: never skip
/// it). Also for replaying a stored log elsewhere (force-new-cluster):
/// decode a stored row with [`decode_entry`].
pub fn apply_entry(
    state: &mut State,
    entry: &Entry<TypeConfig>,
) -> Result<(Vec<CommandResult>, Vec<Change>), EntryError> {
    match &entry.payload {
        EntryPayload::Normal(envelope) => state.apply_entry(entry.log_id.index, envelope),
        EntryPayload::Blank | EntryPayload::Membership(_) => {
            state.index = entry.log_id.index;
            Ok((Vec::new(), Vec::new()))
        }
    }
}

/// Decodes a row of the log table, written by this version or an older
/// one (whose commands are bare, format 1). An entry of a newer version
/// decodes too; [`apply_entry`] refuses it.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The state machine: the shared [`State`] plus its durable copy.
pub struct StateMachine {
    installing: Arc<std::sync::atomic::AtomicBool>,
    db: Arc<Database>,
    shared: Arc<RwLock<State>>,
    applied: watch::Sender<u64>,
    /// Why applying stopped (an entry this version cannot read), if it did.
    stopped: Arc<RwLock<Option<EntryError>>>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

impl StateMachine {
    /// The state that readers share; changed only by raft applies.
    pub fn shared(&self) -> Arc<RwLock<State>> {
        self.shared.clone()
    }

    /// Watch of the last applied raft index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Set when applying stopped at an entry this version cannot read.
    pub fn stopped(&self) -> Arc<RwLock<Option<EntryError>>> {
        self.stopped.clone()
    }

    /// The membership the state machine last applied.
    pub fn membership(&self) -> &StoredMembership<u64, BasicNode> {
        &self.membership
    }

    /// Writes changed objects and raft's bookkeeping in one transaction.
    fn persist(&self, changes: &BTreeSet<Change>, durability: Durability) -> Result<(), AnyError> {
        type Row = (
            TableDefinition<'static, &'static str, &'static [u8]>,
            String,
            Option<Vec<u8>>,
        );
        let mut rows: Vec<Row> = Vec::with_capacity(changes.len() + 3);
        {
            let state = self
                .shared
                .read()
                .map_err(|_| AnyError::error("state lock poisoned"))?;
            for change in changes {
                let row: Row = match change {
                    Change::Cluster => (
                        SM_META,
                        KEY_CLUSTER.to_string(),
                        Some(encode(&state.cluster)?),
                    ),
                    Change::Node(id) => (
                        NODES,
                        id.clone(),
                        state.nodes.get(id).map(encode).transpose()?,
                    ),
                    Change::Service(id) => (
                        SERVICES,
                        id.clone(),
                        state.services.get(id).map(encode).transpose()?,
                    ),
                    Change::Task(id) => (
                        TASKS,
                        id.clone(),
                        state.tasks.get(id).map(encode).transpose()?,
                    ),
                    Change::Network(id) => (
                        NETWORKS,
                        id.clone(),
                        state.networks.get(id).map(encode).transpose()?,
                    ),
                    Change::Secret(id) => (
                        SECRETS,
                        id.clone(),
                        state.secrets.get(id).map(encode).transpose()?,
                    ),
                    Change::Request(id) => (
                        REQUESTS,
                        id.clone(),
                        state.requests.get(id).map(encode).transpose()?,
                    ),
                };
                rows.push(row);
            }
        }
        rows.push((
            SM_META,
            KEY_APPLIED.into(),
            Some(encode(&self.last_applied)?),
        ));
        rows.push((
            SM_META,
            KEY_MEMBERSHIP.into(),
            Some(encode(&self.membership)?),
        ));
        run_blocking(|| {
            let mut txn = self.db.begin_write().map_err(any)?;
            txn.set_durability(durability).map_err(any)?;
            for (def, key, value) in &rows {
                let mut table = txn.open_table(*def).map_err(any)?;
                match value {
                    Some(v) => {
                        table.insert(key.as_str(), v.as_slice()).map_err(any)?;
                    }
                    None => {
                        table.remove(key.as_str()).map_err(any)?;
                    }
                }
            }
            txn.commit().map_err(any)
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SErr> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<crate::Response>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut changes = BTreeSet::new();
        let mut refused = None;
        let started = std::time::Instant::now();
        {
            let mut state = self.shared.write().map_err(|_| {
                StorageIOError::write_state_machine(AnyError::error("state lock poisoned"))
            })?;
            for entry in entries {
                match apply_entry(&mut state, &entry) {
                    Ok((result, changed)) => {
                        self.last_applied = Some(entry.log_id);
                        if let EntryPayload::Membership(m) = entry.payload {
                            self.membership = StoredMembership::new(Some(entry.log_id), m);
                        }
                        changes.extend(changed);
                        responses.push(result);
                    }
                    Err(e) => {
                        refused = Some((entry.log_id, e));
                        break;
                    }
                }
            }
        }
        // What applied before a refused entry is kept, so that a restart
        // resumes at the refused entry, and meets it again.
        let applied_in = started.elapsed();
        self.persist(&changes, Durability::None)
            .map_err(StorageIOError::write_state_machine)?;
        tracing::trace!(
            entries = responses.len(),
            commands = responses.iter().map(Vec::len).sum::<usize>(),
            changes = changes.len(),
            apply_ms = applied_in.as_secs_f64() * 1e3,
            persist_ms = (started.elapsed() - applied_in).as_secs_f64() * 1e3,
            "state machine applied"
        );
        let index = self.last_applied.map(|l| l.index).unwrap_or(0);
        self.applied.send_replace(index);
        if let Some((log_id, e)) = refused {
            // openraft stops its core on a storage error: this member
            // takes no more part in the group until it is upgraded.
            tracing::error!(error = %e, "stopped applying the raft log");
            if let Ok(mut stopped) = self.stopped.write() {
                *stopped = Some(e.clone());
            }
            return Err(StorageIOError::apply(log_id, AnyError::new(&e)).into());
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self.shared.read().map(|s| s.clone()).unwrap_or_default();
        SnapshotBuilder {
            db: self.db.clone(),
            state,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        self.installing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let result = self.install(meta, *snapshot);
        self.installing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        result
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        self.current_snapshot()
    }
}

// The error type is openraft's, as its trait methods that call these
// return it.
#[allow(clippy::result_large_err)]
impl StateMachine {
    fn install(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let payload = decode_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        let mut state = payload.state;
        state.index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let meta_bytes = encode(meta).map_err(StorageIOError::write_snapshot_no_sig)?;
        let result = run_blocking(|| -> Result<(), AnyError> {
            let mut txn = self.db.begin_write().map_err(any)?;
            txn.set_durability(Durability::Immediate).map_err(any)?;
            for def in [NODES, SERVICES, TASKS, NETWORKS, SECRETS, REQUESTS] {
                let mut t = txn.open_table(def).map_err(any)?;
                t.retain(|_, _| false).map_err(any)?;
            }
            {
                let mut nodes = txn.open_table(NODES).map_err(any)?;
                for (k, v) in &state.nodes {
                    nodes
                        .insert(k.as_str(), encode(v)?.as_slice())
                        .map_err(any)?;
                }
                let mut services = txn.open_table(SERVICES).map_err(any)?;
                for (k, v) in &state.services {
                    services
                        .insert(k.as_str(), encode(v)?.as_slice())
                        .map_err(any)?;
                }
                let mut tasks = txn.open_table(TASKS).map_err(any)?;
                for (k, v) in &state.tasks {
                    tasks
                        .insert(k.as_str(), encode(v)?.as_slice())
                        .map_err(any)?;
                }
                let mut networks = txn.open_table(NETWORKS).map_err(any)?;
                for (k, v) in &state.networks {
                    networks
                        .insert(k.as_str(), encode(v)?.as_slice())
                        .map_err(any)?;
                }
                let mut secrets = txn.open_table(SECRETS).map_err(any)?;
                for (k, v) in &state.secrets {
                    secrets
                        .insert(k.as_str(), encode(v)?.as_slice())
                        .map_err(any)?;
                }
                let mut requests = txn.open_table(REQUESTS).map_err(any)?;
                for r in state.requests.iter() {
                    requests
                        .insert(r.request.as_str(), encode(r)?.as_slice())
                        .map_err(any)?;
                }
                let mut sm = txn.open_table(SM_META).map_err(any)?;
                sm.insert(KEY_CLUSTER, encode(&state.cluster)?.as_slice())
                    .map_err(any)?;
                sm.insert(KEY_APPLIED, encode(&self.last_applied)?.as_slice())
                    .map_err(any)?;
                sm.insert(KEY_MEMBERSHIP, encode(&self.membership)?.as_slice())
                    .map_err(any)?;
                let mut snap = txn.open_table(SNAPSHOT).map_err(any)?;
                snap.insert(KEY_SNAP_META, meta_bytes.as_slice())
                    .map_err(any)?;
                snap.insert(KEY_SNAP_DATA, data.as_slice()).map_err(any)?;
                // The log up to the snapshot goes with it, in this
                // transaction (see `LogStore::purge`).
                if let Some(last) = meta.last_log_id {
                    let mut log = txn.open_table(LOG).map_err(any)?;
                    let mut raft_meta = txn.open_table(RAFT_META).map_err(any)?;
                    crate::log_writer::purge_in(&mut log, &mut raft_meta, last)
                        .map_err(AnyError::error)?;
                }
            }
            txn.commit().map_err(any)
        });
        result.map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        let index = state.index;
        if let Ok(mut shared) = self.shared.write() {
            *shared = state;
        }
        self.applied.send_replace(index);
        Ok(())
    }

    fn current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        run_blocking(|| -> Result<Option<Snapshot<TypeConfig>>, AnyError> {
            let txn = self.db.begin_read().map_err(any)?;
            let snap = txn.open_table(SNAPSHOT).map_err(any)?;
            let meta = snap.get(KEY_SNAP_META).map_err(any)?;
            let data = snap.get(KEY_SNAP_DATA).map_err(any)?;
            match (meta, data) {
                (Some(m), Some(d)) => Ok(Some(Snapshot {
                    meta: decode(m.value())?,
                    snapshot: Box::new(Cursor::new(d.value().to_vec())),
                })),
                _ => Ok(None),
            }
        })
        .map_err(|e| StorageIOError::read_snapshot(None, e).into())
    }
}

/// Builds a snapshot from a copy of the state taken when it was asked for.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: State,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let payload = SnapshotPayload {
            state: std::mem::take(&mut self.state),
        };
        let data = encode_snapshot(&payload).map_err(StorageIOError::write_snapshot_no_sig)?;
        let index = self.last_applied.map(|l| l.index).unwrap_or(0);
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: format!("{}-{}", index, data.len()),
        };
        let meta_bytes = encode(&meta).map_err(StorageIOError::write_snapshot_no_sig)?;
        // The state was copied when the build was asked for; a snapshot
        // installed from the leader since may be newer. The check is in the
        // write transaction, so that nothing slips in between.
        let kept = run_blocking(|| -> Result<Option<Snapshot<TypeConfig>>, AnyError> {
            let mut txn = self.db.begin_write().map_err(any)?;
            txn.set_durability(Durability::Immediate).map_err(any)?;
            let newer = {
                let mut snap = txn.open_table(SNAPSHOT).map_err(any)?;
                let stored: Option<SnapshotMeta<u64, BasicNode>> = snap
                    .get(KEY_SNAP_META)
                    .map_err(any)?
                    .map(|m| decode(m.value()))
                    .transpose()?;
                match stored {
                    Some(stored) if stored.last_log_id > meta.last_log_id => {
                        let data = snap
                            .get(KEY_SNAP_DATA)
                            .map_err(any)?
                            .map(|d| d.value().to_vec())
                            .unwrap_or_default();
                        Some(Snapshot {
                            meta: stored,
                            snapshot: Box::new(Cursor::new(data)),
                        })
                    }
                    _ => {
                        snap.insert(KEY_SNAP_META, meta_bytes.as_slice())
                            .map_err(any)?;
                        snap.insert(KEY_SNAP_DATA, data.as_slice()).map_err(any)?;
                        None
                    }
                }
            };
            txn.commit().map_err(any)?;
            Ok(newer)
        })
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))?;
        if kept.is_none() {
            tracing::info!(
                index,
                bytes = data.len(),
                tasks = payload.state.tasks.len(),
                "snapshot built"
            );
        }
        Ok(kept.unwrap_or(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

trait NoSig {
    fn write_snapshot_no_sig(e: AnyError) -> Self;
}

impl NoSig for StorageIOError<u64> {
    fn write_snapshot_no_sig(e: AnyError) -> Self {
        StorageIOError::write_snapshot(None, e)
    }
}

/// Writes `state` as the contents of a fresh store at `path`: the start of
/// a new raft group that keeps the old group's data
/// (`init --force-new-cluster`). The store is complete when this returns
/// (one durable transaction): the state, as if the group's first entry
/// (index 0, the one `initialize` writes) had been applied and purged,
/// with `raft_id` at `addr` as its only voter, and a snapshot of it, so
/// that managers that join later receive the state whole. Nothing else has
/// to happen at start: the only voter elects itself. Fails if `path`
/// exists.
pub fn seed(path: &Path, state: &State, raft_id: u64, addr: &str) -> Result<(), OpenError> {
    let shown = path.display().to_string();
    if path.exists() {
        return Err(OpenError::Corrupt {
            path: shown,
            reason: "refusing to seed over an existing store".into(),
        });
    }
    let (_log, mut sm) = open(path)?;
    let fail = |e: AnyError| OpenError::Corrupt {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let first = LogId::default();
    let voters = BTreeSet::from([raft_id]);
    let nodes = std::collections::BTreeMap::from([(raft_id, BasicNode::new(addr))]);
    sm.last_applied = Some(first);
    sm.membership =
        StoredMembership::new(Some(first), openraft::Membership::new(vec![voters], nodes));
    let mut state = state.clone();
    state.index = 0;
    let meta = SnapshotMeta {
        last_log_id: Some(first),
        last_membership: sm.membership.clone(),
        snapshot_id: "0-seed".to_string(),
    };
    let data = encode_snapshot(&SnapshotPayload {
        state: state.clone(),
    })
    .map_err(fail)?;
    let meta_bytes = encode(&meta).map_err(fail)?;
    let purged = encode(&first).map_err(fail)?;
    let committed = encode(&Some(first)).map_err(fail)?;
    {
        let mut shared = sm
            .shared
            .write()
            .map_err(|_| fail(AnyError::error("state lock poisoned")))?;
        *shared = state.clone();
    }
    run_blocking(|| -> Result<(), AnyError> {
        let mut txn = sm.db.begin_write().map_err(any)?;
        txn.set_durability(Durability::Immediate).map_err(any)?;
        {
            let mut snap = txn.open_table(SNAPSHOT).map_err(any)?;
            snap.insert(KEY_SNAP_META, meta_bytes.as_slice())
                .map_err(any)?;
            snap.insert(KEY_SNAP_DATA, data.as_slice()).map_err(any)?;
            let mut meta = txn.open_table(RAFT_META).map_err(any)?;
            meta.insert(KEY_PURGED, purged.as_slice()).map_err(any)?;
            meta.insert(KEY_COMMITTED, committed.as_slice())
                .map_err(any)?;
        }
        txn.commit().map_err(any)
    })
    .map_err(fail)?;
    let mut all: BTreeSet<Change> = BTreeSet::new();
    all.insert(Change::Cluster);
    all.extend(state.nodes.keys().cloned().map(Change::Node));
    all.extend(state.services.keys().cloned().map(Change::Service));
    all.extend(state.tasks.keys().cloned().map(Change::Task));
    all.extend(state.networks.keys().cloned().map(Change::Network));
    all.extend(state.secrets.keys().cloned().map(Change::Secret));
    sm.persist(&all, Durability::Immediate).map_err(fail)
}

/// What [`recovered_state`] found in a store.
#[derive(Debug)]
pub struct Recovered {
    /// The state machine's tables with every later log entry applied.
    pub state: State,
    /// How many log entries after the last applied one were applied.
    pub replayed: u64,
}

/// The state a store at `path` holds for a new raft group
/// (`init --force-new-cluster`): the state machine's tables, with every
/// entry of the local log after the last applied one applied on top, in
/// order. Those entries may have committed (this node acknowledged them),
/// so they are kept, as etcd's `--force-new-cluster` commits its whole log.
/// Fails if there is no store at `path` (it is never created here).
pub fn recovered_state(path: &Path) -> Result<Recovered, OpenError> {
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(OpenError::Corrupt {
            path: shown,
            reason: "there is no raft store to recover".into(),
        });
    }
    let (log, sm) = open(path)?;
    let mut state = match sm.shared.read() {
        Ok(s) => s.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let from = sm.last_applied.map(|l| l.index + 1).unwrap_or(0);
    let entries = read_log_from(&log.db, from).map_err(|e| OpenError::Corrupt {
        path: shown.clone(),
        reason: format!("cannot read the raft log: {e}"),
    })?;
    let mut replayed = 0;
    for entry in &entries {
        // Through the state machine's own apply: a refused command changes
        // nothing, as on every member; an entry this version cannot read
        // stops the recovery (skipping it would lose a write).
        let _applied = apply_entry(&mut state, entry).map_err(|e| OpenError::Corrupt {
            path: shown.clone(),
            reason: format!("cannot replay the raft log: {e}"),
        })?;
        replayed += 1;
    }
    Ok(Recovered { state, replayed })
}

/// Every log entry from index `from` on, in order.
fn read_log_from(db: &Database, from: u64) -> Result<Vec<Entry<TypeConfig>>, AnyError> {
    let txn = db.begin_read().map_err(any)?;
    let log = txn.open_table(LOG).map_err(any)?;
    let mut out = Vec::new();
    for row in log.range(from..).map_err(any)? {
        let (_, v) = row.map_err(any)?;
        out.push(decode_entry(v.value()).map_err(any)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::Command;
    use flotilla_types::{Cluster, Node, ServiceSpec};
    use openraft::CommittedLeaderId;

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(flotilla_store::Envelope::new(
                command,
                None,
                flotilla_store::FORMAT,
            )),
        }
    }

    fn manager(id: &str, raft_id: u64) -> Node {
        Node {
            id: id.into(),
            raft_id,
            name: id.into(),
            hostname: id.into(),
            role: flotilla_types::NodeRole::Manager,
            availability: flotilla_types::Availability::Active,
            labels: Default::default(),
            state: flotilla_types::NodeState::Ready,
            addr: String::new(),
            api_addr: String::new(),
            version: "test".into(),
            entry_format: 0,
            resources: Default::default(),
            platform: Default::default(),
            created_at: 1,
            last_seen: 1,
            overlay_error: None,
            engine_labels: Default::default(),
        }
    }

    fn service(id: &str) -> Command {
        Command::CreateService {
            id: id.into(),
            spec: ServiceSpec {
                name: format!("web-{id}"),
                task: flotilla_types::TaskTemplate {
                    command: vec!["sleep".into(), "1".into()],
                    ..Default::default()
                },
                ..ServiceSpec::default()
            },
            at: 1,
        }
    }

    /// Writes entries into the log without applying them, as a follower's
    /// log holds entries it acknowledged but has not applied yet.
    fn put_log(db: &Database, entries: &[Entry<TypeConfig>]) {
        let txn = db.begin_write().expect("write");
        {
            let mut log = txn.open_table(LOG).expect("log");
            for e in entries {
                let bytes = encode(e).expect("encode");
                log.insert(e.log_id.index, bytes.as_slice())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    /// A store whose state machine applied entries 1..=2 and whose log
    /// holds 1..=4.
    async fn store_with_unapplied_entries(path: &Path) {
        let (log, mut sm) = open(path).expect("open");
        let entries = vec![
            entry(
                1,
                Command::InitCluster {
                    cluster: Cluster::bare("c", 1),
                    node: manager("m1", 1),
                },
            ),
            entry(2, service("s1")),
            entry(3, service("s2")),
            entry(4, service("s3")),
        ];
        put_log(&log.db, &entries);
        sm.apply(entries[..2].to_vec()).await.expect("apply");
    }

    /// A purged log entry stays in the old file's free pages; the
    /// rewritten file holds the live rows only, and opens with the same
    /// state and log.
    #[tokio::test]
    async fn a_rewritten_store_keeps_its_rows_and_drops_what_was_purged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        store_with_unapplied_entries(&path).await;
        let marker = b"PLAINTEXT-KEY-MATERIAL-0123456789";
        {
            let (log, _sm) = open(&path).expect("open");
            let txn = log.db.begin_write().expect("write");
            {
                let mut t = txn.open_table(LOG).expect("log");
                let mut big = marker.repeat(2000);
                big.extend_from_slice(b"end");
                t.insert(99, big.as_slice()).expect("insert");
            }
            txn.commit().expect("commit");
            let txn = log.db.begin_write().expect("write");
            {
                let mut t = txn.open_table(LOG).expect("log");
                t.remove(99).expect("remove");
            }
            txn.commit().expect("commit");
        }
        let holds = |p: &Path| {
            let bytes = std::fs::read(p).expect("read");
            bytes.windows(marker.len()).any(|w| w == marker)
        };
        assert!(holds(&path), "the removed row is still in the old file");
        let log_rows = |db: &Database| -> Vec<u64> {
            let r = db.begin_read().expect("read");
            let t = r.open_table(LOG).expect("log");
            t.iter()
                .expect("iter")
                .map(|x| x.expect("row").0.value())
                .collect()
        };
        let (before_log, before_state) = {
            let (log, sm) = open(&path).expect("open");
            let state = sm.shared.read().expect("state").clone();
            (log_rows(&log.db), state)
        };
        rewrite(&path).expect("rewrite");
        assert!(!holds(&path), "the rewritten file has no trace of it");
        let (log, sm) = open(&path).expect("open again");
        let rows = log_rows(&log.db);
        assert_eq!(rows, before_log);
        assert_eq!(rows, vec![1, 2, 3, 4]);
        assert_eq!(*sm.shared.read().expect("state"), before_state);
        assert!(!path.with_extension("redb.rewrite").exists());
    }

    /// A store let go of can be opened again at once: the log writer's
    /// thread held the database a moment longer, and the recovery tests
    /// failed now and then with "Database already open" on a busy machine.
    #[test]
    fn a_store_dropped_opens_again_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        for i in 0..200 {
            let opened = open(&path);
            assert!(opened.is_ok(), "open {i}: {:?}", opened.err());
            drop(opened);
        }
    }

    /// openraft 0.9 purges a follower's log up to a received snapshot
    /// before the state machine has installed it. A crash in between left
    /// the log purged past the stored snapshot, and openraft refused every
    /// start (`purge_upto <= snapshot_last_log_id`). While an install is
    /// under way, the purge waits for it.
    #[tokio::test]
    async fn a_purge_during_a_snapshot_install_goes_no_further_than_the_stored_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        {
            let (mut log, mut sm) = open(&path).expect("open");
            let entries: Vec<_> = (1..=6)
                .map(|i| entry(i, service(&format!("s{i}"))))
                .collect();
            put_log(&log.db, &entries);
            let _receiving = sm.begin_receiving_snapshot().await.expect("begin");
            // The snapshot the leader sends covers up to 5; the purge for
            // it comes before the install, which never comes (a kill -9).
            let upto = LogId::new(CommittedLeaderId::new(1, 1), 5);
            log.purge(upto).await.expect("purge");
        }
        let (mut log, _sm) = open(&path).expect("open again");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(
            state.last_purged_log_id, None,
            "no snapshot is stored, so nothing may be purged yet"
        );
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
    }

    #[tokio::test]
    async fn recovery_keeps_log_entries_beyond_last_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        store_with_unapplied_entries(&path).await;
        let recovered = recovered_state(&path).expect("recover");
        let services: Vec<&str> = recovered
            .state
            .services
            .keys()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(services, ["s1", "s2", "s3"]);
        assert_eq!(recovered.replayed, 2);
        assert_eq!(recovered.state.index, 4);
    }

    #[tokio::test]
    async fn a_seeded_store_holds_its_state_a_snapshot_and_one_voter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old.redb");
        store_with_unapplied_entries(&old).await;
        let state = recovered_state(&old).expect("recover").state;
        let path = dir.path().join("raft.redb");
        seed(&path, &state, 7, "10.0.0.1:4280").expect("seed");
        assert!(
            seed(&path, &state, 7, "x").is_err(),
            "never seeds over a store"
        );
        let (mut log, mut sm) = open(&path).expect("open");
        let services = sm.shared().read().map(|s| s.services.len()).unwrap_or(0);
        assert_eq!(services, 3);
        let (applied, membership) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(LogId::default()));
        let voters: Vec<u64> = membership.membership().voter_ids().collect();
        assert_eq!(voters, [7]);
        let snap = sm
            .get_current_snapshot()
            .await
            .expect("snapshot")
            .expect("a snapshot exists");
        assert_eq!(snap.meta.last_log_id, Some(LogId::default()));
        let payload = decode_snapshot(snap.snapshot.get_ref()).expect("payload");
        assert_eq!(payload.state.services.len(), 3);
        let st = log.get_log_state().await.expect("log state");
        assert_eq!(st.last_purged_log_id, Some(LogId::default()));
        assert_eq!(st.last_log_id, Some(LogId::default()));
    }
}
