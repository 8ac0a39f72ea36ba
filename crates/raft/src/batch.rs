//! The proposer's batcher: client writes that arrive while earlier ones
//! are being written go into one raft entry (format 3, a batch), so that
//! they share one append, one fsync on every member and one round of
//! replication.
//!
//! Why here: openraft 0.9 appends each `client_write` as its own entry and
//! its core awaits every append's fsync before it takes the next message
//! (see [`crate::log_writer`]), so 16 clients writing at once took 16
//! fsyncs in a row on the leader. Now every proposal goes through one
//! queue. A batch is taken from the queue when one of [`DEPTH`] write
//! slots is free: under no load that is at once (a single write waits for
//! nothing), under load the queue fills while the slots are busy and the
//! next batch takes all of it, up to [`MAX_ITEMS`] commands and
//! [`MAX_BYTES`] of encoded commands. With two slots, the leader appends
//! one batch while the followers append the one before. A batch that finds
//! fewer proposals than the recent ones held waits up to [`LINGER`] for
//! the rest of the wave ([`Wave`]).
//!
//! Each command of a batch applies on its own, in order, with its own
//! request ID and result ([`flotilla_store::State::apply_entry`]); a batch
//! is only written once every manager reads format 3
//! ([`flotilla_store::writable_format`]), before that every entry holds
//! one command. A bulk command (many tasks, assignments or statuses) is
//! large already and goes alone.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use flotilla_store::entry::BATCH_FORMAT;
use flotilla_store::{Command, CommandResult, Envelope, RequestId, State};

use crate::{Raft, RaftError};

/// How many entries the batcher has in flight at once.
pub const DEPTH: usize = 2;
/// The most commands in one entry.
pub const MAX_ITEMS: usize = 512;
/// The most bytes of encoded commands in one entry (a batch goes over it
/// by at most its last command): below the 128 KiB that the raft network
/// aims at per AppendEntries (`network::APPEND_TARGET_BYTES`), so that a
/// batch never is an entry too large to send within a heartbeat.
pub const MAX_BYTES: usize = flotilla_store::MAX_ENTRY_BYTES;
/// A bulk command of more items than this goes in an entry of its own.
pub const BULK_ALONE: usize = 16;
/// The longest a batch waits for the rest of a wave (see [`Wave`]).
pub const LINGER: Duration = Duration::from_millis(1);

/// What a proposal's caller gets: the command's result and the raft index
/// of its entry.
pub type Answer = Result<(CommandResult, u64), RaftError>;

/// One queued command.
pub struct Proposal {
    pub command: Command,
    pub request: Option<RequestId>,
    /// Its encoded size, or `None` for one that goes alone.
    pub bytes: Option<usize>,
    pub reply: oneshot::Sender<Answer>,
}

impl Proposal {
    /// A proposal of `command`; a small one is measured for the batch's
    /// byte budget (here, in the caller's task, not the batcher's).
    pub fn new(
        command: Command,
        request: Option<RequestId>,
        reply: oneshot::Sender<Answer>,
    ) -> Proposal {
        let bytes = if command.bulk_len() > BULK_ALONE {
            None
        } else {
            serde_json::to_vec(&command).ok().map(|b| b.len())
        };
        Proposal {
            command,
            request,
            bytes,
            reply,
        }
    }
}

/// The limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub items: usize,
    pub bytes: usize,
}

/// Takes the next batch off the front of `queue`: proposals whose caller
/// still waits, in order, until a limit is reached; a proposal that goes
/// alone ends the batch (or is one by itself). Pure, for tests.
pub fn take(queue: &mut VecDeque<Proposal>, limits: Limits) -> Vec<Proposal> {
    let mut batch: Vec<Proposal> = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.front() {
        if next.reply.is_closed() {
            // Its caller gave up (a timeout): nobody waits for the answer,
            // and a retry, if any, is queued on its own.
            queue.pop_front();
            continue;
        }
        let alone = next.bytes.is_none();
        if !batch.is_empty() && (alone || batch.len() >= limits.items || bytes >= limits.bytes) {
            break;
        }
        bytes += next.bytes.unwrap_or(0);
        if let Some(p) = queue.pop_front() {
            batch.push(p);
        }
        if alone {
            break;
        }
    }
    batch
}

/// How many proposals the next batch may expect: the callers of a batch
/// write again soon after it is answered (a client's next write, an
/// agent's next report), so they come back in a wave. Without waiting for
/// it, the first of the wave to arrive went in an entry of its own and the
/// rest waited a whole entry behind it: at 64 clients the entries went 63,
/// 1, 63, 1, ... A batch that finds fewer than half of what the recent
/// ones held waits up to [`LINGER`] for more; under light load (batches of
/// one) it never waits. Pure, for tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Wave {
    expect: usize,
}

impl Wave {
    /// A batch of `taken` proposals went out: recent sizes, decayed.
    pub fn taken(&mut self, taken: usize) {
        self.expect = taken.max(self.expect * 3 / 4);
    }

    /// Whether a batch of `queued` proposals should wait for more.
    pub fn wait_for_more(&self, queued: usize) -> bool {
        queued * 2 < self.expect
    }
}

/// The handle callers queue proposals on.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Proposal>,
}

impl Batcher {
    /// Starts the batcher's task for `raft`, whose entries it writes in
    /// the newest format every manager of `state` reads; each entry may
    /// take `write_timeout` to apply.
    pub fn start(
        raft: Raft,
        state: Arc<RwLock<State>>,
        write_timeout: Duration,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(raft, state, rx, write_timeout));
        (Batcher { tx }, task)
    }

    /// Queues a proposal; `false` when the batcher has stopped.
    pub fn submit(&self, proposal: Proposal) -> bool {
        self.tx.send(proposal).is_ok()
    }
}

async fn run(
    raft: Raft,
    state: Arc<RwLock<State>>,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    write_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(DEPTH));
    let mut queue = VecDeque::new();
    let mut wave = Wave::default();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if queue.is_empty() {
            match rx.recv().await {
                Some(p) => queue.push_back(p),
                None => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            queue.push_back(p);
        }
        let format = {
            let state = match state.read() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            flotilla_store::writable_format(&state)
        };
        let limits = Limits {
            items: if format >= BATCH_FORMAT { MAX_ITEMS } else { 1 },
            bytes: MAX_BYTES,
        };
        if limits.items > 1 && wave.wait_for_more(queue.len()) {
            let until = tokio::time::Instant::now() + LINGER;
            while wave.wait_for_more(queue.len()) {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(p)) => queue.push_back(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let batch = take(&mut queue, limits);
        if batch.is_empty() {
            continue;
        }
        wave.taken(batch.len());
        let raft = raft.clone();
        tokio::spawn(async move {
            write(&raft, batch, format, write_timeout).await;
            drop(slot);
        });
    }
}

/// Writes one entry of `batch` and answers each of its callers.
async fn write(raft: &Raft, batch: Vec<Proposal>, format: u32, write_timeout: Duration) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for p in batch {
        replies.push(p.reply);
        items.push((p.command, p.request));
    }
    let entry = if items.len() == 1 {
        match items.pop() {
            Some((command, request)) => Envelope::new(command, request, format),
            None => return,
        }
    } else {
        Envelope::batch(items, format)
    };
    let n = replies.len();
    let started = std::time::Instant::now();
    let written = tokio::time::timeout(write_timeout, raft.client_write(entry)).await;
    tracing::trace!(
        commands = n,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "raft entry written"
    );
    let failed = match written {
        Err(_) => RaftError::Timeout(write_timeout),
        Ok(Ok(response)) if response.data.len() == n => {
            let index = response.log_id.index;
            for (reply, result) in replies.into_iter().zip(response.data) {
                let _ = reply.send(Ok((result, index)));
            }
            return;
        }
        Ok(Ok(response)) => RaftError::Other(format!(
            "raft entry {} of {n} commands answered {} results",
            response.log_id.index,
            response.data.len()
        )),
        Ok(Err(e)) => crate::node::write_error(e),
    };
    for reply in replies {
        let _ = reply.send(Err(copy(&failed)));
    }
}

/// The same failure for every caller of a batch (only the kinds that
/// [`write`] makes).
fn copy(e: &RaftError) -> RaftError {
    match e {
        RaftError::Timeout(t) => RaftError::Timeout(*t),
        RaftError::NotLeader { leader } => RaftError::NotLeader { leader: *leader },
        other => RaftError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(id: &str, bytes: Option<usize>) -> (Proposal, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        let p = Proposal {
            command: Command::RemoveService {
                id: id.into(),
                at: 1,
            },
            request: Some(format!("r-{id}")),
            bytes,
            reply,
        };
        (p, rx)
    }

    fn ids(batch: &[Proposal]) -> Vec<String> {
        batch
            .iter()
            .map(|p| match &p.command {
                Command::RemoveService { id, .. } => id.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    const LIMITS: Limits = Limits {
        items: 3,
        bytes: 100,
    };

    #[test]
    fn a_batch_takes_the_queue_in_order_up_to_its_limits() {
        let mut queue = VecDeque::new();
        let mut waiting = Vec::new();
        for i in 0..5 {
            let (p, rx) = proposal(&format!("s{i}"), Some(10));
            queue.push_back(p);
            waiting.push(rx);
        }
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["s0", "s1", "s2"]);
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["s3", "s4"]);
        assert!(take(&mut queue, LIMITS).is_empty());
        // Bytes: the batch stops once it holds the budget.
        for i in 0..3 {
            let (p, rx) = proposal(&format!("b{i}"), Some(60));
            queue.push_back(p);
            waiting.push(rx);
        }
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["b0", "b1"]);
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["b2"]);
    }

    #[test]
    fn a_bulk_command_goes_alone_and_abandoned_proposals_are_dropped() {
        let mut queue = VecDeque::new();
        let (a, _ra) = proposal("a", Some(1));
        let (bulk, _rb) = proposal("bulk", None);
        let (c, _rc) = proposal("c", Some(1));
        let (gone, rgone) = proposal("gone", Some(1));
        let (d, _rd) = proposal("d", Some(1));
        queue.extend([a, bulk, c, gone, d]);
        drop(rgone);
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["a"]);
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["bulk"]);
        assert_eq!(ids(&take(&mut queue, LIMITS)), ["c", "d"]);
    }

    #[test]
    fn a_batch_waits_for_the_wave_only_after_large_ones() {
        let mut wave = Wave::default();
        // One client: batches of one never wait.
        wave.taken(1);
        assert!(!wave.wait_for_more(1));
        // 64 clients: after a batch of 63, the first of the wave waits.
        wave.taken(63);
        assert!(wave.wait_for_more(1));
        assert!(wave.wait_for_more(31));
        assert!(!wave.wait_for_more(32));
        // The load falls: the expectation decays within a few batches.
        for _ in 0..12 {
            wave.taken(1);
        }
        assert!(!wave.wait_for_more(1));
    }

    #[test]
    fn before_every_manager_reads_batches_each_entry_holds_one() {
        let mut queue = VecDeque::new();
        let mut waiting = Vec::new();
        for i in 0..2 {
            let (p, rx) = proposal(&format!("s{i}"), Some(1));
            queue.push_back(p);
            waiting.push(rx);
        }
        let one = Limits {
            items: 1,
            bytes: MAX_BYTES,
        };
        assert_eq!(ids(&take(&mut queue, one)), ["s0"]);
        assert_eq!(ids(&take(&mut queue, one)), ["s1"]);
    }
}
