//! The raft log's writer: one thread that owns every write of the log
//! store (entries, vote, committed id, truncation, purge) and commits all
//! that queued up meanwhile in one redb transaction, so that they share one
//! fsync (group commit).
//!
//! Why a thread: redb is synchronous and its commit with
//! `Durability::Immediate` waits for the fsync. Run inside the raft core's
//! task (`block_in_place`), a slow disk held a tokio worker and the core
//! for the whole fsync even for writes that need none (the committed log
//! id, saved on every heartbeat that moves the commit index). Now the core
//! only awaits the writes that raft says must be durable before it goes on
//! (appended entries, the vote, truncation and purge), asynchronously, and
//! hands the committed id over without waiting.
//!
//! The rule that stays: nothing is acknowledged before it is durable. A
//! reply is sent only after the transaction holding the write has
//! committed, and a batch with any durable write commits with
//! `Durability::Immediate`.
//!
//! openraft 0.9 itself awaits every append's flush before it handles the
//! next message (`RaftCore::append_to_log`), so the core never has two
//! appends in flight: appends group with the other writes queued meanwhile,
//! not with each other. Grouping client writes needs several of them in one
//! entry (proposer batching), which is open (docs/store.md, defect 8).

use std::ops::Bound;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use redb::{Database, Durability};
use tokio::sync::oneshot;

use crate::storage::{KEY_PURGED, KEY_SNAP_META, LOG, RAFT_META, SNAPSHOT};
use openraft::LogId;
use redb::ReadableTable;

/// The most operations committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Called on the writer thread before each durable commit: a test's way to
/// make the disk slow, or to count how many writes shared one fsync.
pub trait SyncHook: Send + Sync {
    /// `ops` writes are about to be committed with one fsync.
    fn before_sync(&self, ops: usize);
}

/// Why a write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("the raft log writer has stopped")]
    Stopped,
    #[error("writing the raft log failed: {0}")]
    Redb(String),
}

/// One write of the log store.
#[derive(Debug)]
pub(crate) enum Write {
    /// Log entries, encoded, by index.
    Entries(Vec<(u64, Vec<u8>)>),
    /// A key of the raft meta table.
    Meta { key: &'static str, bytes: Vec<u8> },
    /// Purges the log up to `upto`; with `clamp`, no further than the
    /// stored snapshot (a snapshot install is under way).
    Purge { upto: LogId<u64>, clamp: bool },
    /// Removes log entries in a range (a truncation).
    Remove { range: (Bound<u64>, Bound<u64>) },
}

type Reply = oneshot::Sender<Result<(), WriteError>>;

struct Op {
    write: Write,
    durable: bool,
    reply: Option<Reply>,
}

type Hook = Arc<Mutex<Option<Arc<dyn SyncHook>>>>;

/// The handle of the writer thread. Dropping it ends the thread after it
/// wrote what is queued, and waits for that: the thread holds the
/// database, and the file is locked until it lets go (a store opened again
/// at once, as `init --force-new-cluster` does, failed with "Database
/// already open" when the thread was slower than the caller).
pub(crate) struct LogWriter {
    tx: Option<mpsc::Sender<Op>>,
    hook: Hook,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the raft log writer thread panicked");
            }
        }
    }
}

impl LogWriter {
    /// Starts the writer thread on `db`.
    pub(crate) fn start(db: Arc<Database>) -> Result<LogWriter, std::io::Error> {
        let (tx, rx) = mpsc::channel();
        let hook: Hook = Arc::new(Mutex::new(None));
        let thread_hook = hook.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run(&db, &rx, &thread_hook))?;
        Ok(LogWriter {
            tx: Some(tx),
            hook,
            thread: Some(thread),
        })
    }

    /// Installs a hook called before every durable commit.
    pub(crate) fn set_hook(&self, hook: Arc<dyn SyncHook>) {
        match self.hook.lock() {
            Ok(mut h) => *h = Some(hook),
            Err(p) => *p.into_inner() = Some(hook),
        }
    }

    /// Queues a write; the answer comes once it is committed (and, when
    /// `durable`, on disk).
    pub(crate) fn submit(
        &self,
        write: Write,
        durable: bool,
    ) -> oneshot::Receiver<Result<(), WriteError>> {
        let (reply, answer) = oneshot::channel();
        let op = Op {
            write,
            durable,
            reply: Some(reply),
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(op).map_err(|mpsc::SendError(op)| op),
            None => Err(op),
        };
        if let Err(op) = sent {
            if let Some(r) = op.reply {
                let _ = r.send(Err(WriteError::Stopped));
            }
        }
        answer
    }

    /// Queues a write nobody waits for (not durable on its own: the next
    /// durable commit carries it to disk).
    pub(crate) fn submit_detached(&self, write: Write) -> Result<(), WriteError> {
        self.tx
            .as_ref()
            .ok_or(WriteError::Stopped)?
            .send(Op {
                write,
                durable: false,
                reply: None,
            })
            .map_err(|_| WriteError::Stopped)
    }

    /// Queues a write and waits for it.
    pub(crate) async fn write(&self, write: Write, durable: bool) -> Result<(), WriteError> {
        self.submit(write, durable)
            .await
            .unwrap_or(Err(WriteError::Stopped))
    }
}

fn run(db: &Database, rx: &mpsc::Receiver<Op>, hook: &Hook) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|op| op.durable);
        if durable {
            let hook = match hook.lock() {
                Ok(h) => h.clone(),
                Err(p) => p.into_inner().clone(),
            };
            if let Some(h) = hook {
                h.before_sync(batch.len());
            }
        }
        let started = std::time::Instant::now();
        let result = commit(db, &batch, durable).map_err(WriteError::Redb);
        tracing::trace!(
            ops = batch.len(),
            durable,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "raft log commit"
        );
        if let Err(e) = &result {
            tracing::error!(error = %e, ops = batch.len(), "raft log write failed");
        }
        for op in batch {
            if let Some(reply) = op.reply {
                let _ = reply.send(result.clone());
            }
        }
    }
}

fn commit(db: &Database, batch: &[Op], durable: bool) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let mut txn = db.begin_write().map_err(|e| text(&e))?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability).map_err(|e| text(&e))?;
    {
        let mut log = txn.open_table(LOG).map_err(|e| text(&e))?;
        let mut meta = txn.open_table(RAFT_META).map_err(|e| text(&e))?;
        for op in batch {
            match &op.write {
                Write::Entries(rows) => {
                    for (index, bytes) in rows {
                        log.insert(*index, bytes.as_slice()).map_err(|e| text(&e))?;
                    }
                }
                Write::Meta { key, bytes } => {
                    meta.insert(*key, bytes.as_slice()).map_err(|e| text(&e))?;
                }
                Write::Purge { upto, clamp } => {
                    let upto = if *clamp {
                        let snap = txn.open_table(SNAPSHOT).map_err(|e| text(&e))?;
                        let stored = snap.get(KEY_SNAP_META).map_err(|e| text(&e))?;
                        let covered = match stored {
                            Some(v) => {
                                serde_json::from_slice::<
                                    openraft::SnapshotMeta<u64, openraft::BasicNode>,
                                >(v.value())
                                .map_err(|e| text(&e))?
                                .last_log_id
                            }
                            None => None,
                        };
                        // No further than the stored snapshot; nothing
                        // while none is stored.
                        covered.map(|c| c.min(*upto))
                    } else {
                        Some(*upto)
                    };
                    if let Some(upto) = upto {
                        purge_in(&mut log, &mut meta, upto)?;
                    }
                }
                Write::Remove { range } => {
                    log.retain_in(*range, |_, _| false).map_err(|e| text(&e))?;
                }
            }
        }
    }
    txn.commit().map_err(|e| text(&e))
}

/// Removes the log up to `upto` and records it as purged, unless the log
/// is purged that far already (the purge point never goes back).
pub(crate) fn purge_in(
    log: &mut redb::Table<u64, &[u8]>,
    meta: &mut redb::Table<&str, &[u8]>,
    upto: LogId<u64>,
) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let current: Option<LogId<u64>> = match meta.get(KEY_PURGED).map_err(|e| text(&e))? {
        Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| text(&e))?),
        None => None,
    };
    if current.is_some_and(|c| c >= upto) {
        return Ok(());
    }
    log.retain_in(..=upto.index, |_, _| false)
        .map_err(|e| text(&e))?;
    let bytes = serde_json::to_vec(&upto).map_err(|e| text(&e))?;
    meta.insert(KEY_PURGED, bytes.as_slice())
        .map_err(|e| text(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use redb::ReadableDatabase;

    /// A disk whose fsync takes `delay`; records each batch's size and when
    /// its (slow) sync was over.
    struct SlowDisk {
        delay: Duration,
        busy: AtomicBool,
        batches: Mutex<Vec<(usize, Instant)>>,
    }

    impl SyncHook for SlowDisk {
        fn before_sync(&self, ops: usize) {
            self.busy.store(true, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.batches
                .lock()
                .expect("lock")
                .push((ops, Instant::now()));
        }
    }

    fn store() -> (tempfile::TempDir, Arc<Database>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("raft.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(LOG).expect("log");
        txn.open_table(RAFT_META).expect("meta");
        txn.commit().expect("commit");
        (dir, Arc::new(db))
    }

    fn entry(index: u64) -> Write {
        Write::Entries(vec![(index, format!("entry {index}").into_bytes())])
    }

    #[tokio::test]
    async fn appends_queued_during_one_slow_fsync_share_the_next_one() {
        let (_dir, db) = store();
        let writer = LogWriter::start(db.clone()).expect("writer");
        let disk = Arc::new(SlowDisk {
            delay: Duration::from_millis(300),
            busy: AtomicBool::new(false),
            batches: Mutex::new(vec![]),
        });
        writer.set_hook(disk.clone());

        let first = writer.submit(entry(1), true);
        while !disk.busy.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The first fsync is under way: these nine queue up behind it.
        let rest: Vec<_> = (2..=10).map(|i| writer.submit(entry(i), true)).collect();
        let acked_first = {
            first.await.expect("reply").expect("write 1");
            Instant::now()
        };
        let mut acked_rest = Vec::new();
        for r in rest {
            r.await.expect("reply").expect("write");
            acked_rest.push(Instant::now());
        }

        let batches = disk.batches.lock().expect("lock").clone();
        let sizes: Vec<usize> = batches.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, vec![1, 9], "ten appends, two fsyncs");
        // Never acknowledged before its sync was over.
        assert!(acked_first >= batches[0].1);
        assert!(acked_rest.iter().all(|t| *t >= batches[1].1));
        // All ten are there.
        let txn = db.begin_read().expect("read");
        let log = txn.open_table(LOG).expect("log");
        assert_eq!(redb::ReadableTableMetadata::len(&log).expect("len"), 10);
    }
}
