//! The results of the last client requests, by request ID, so that a
//! proposal retried after a lost answer (a connection reset, a 503, a
//! leader change) applies once and answers what the first one did.
//!
//! The window is bounded by count and evicts the oldest by raft index, so
//! every replica keeps the same entries; it is part of the snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Change;
use crate::command::CommandResult;
use crate::entry::RequestId;

/// How many request results are kept. A write is retried within its
/// write budget (1.5 s) and only client writes carry a request ID, so a
/// duplicate older than this many client writes is not expected.
pub const REQUEST_WINDOW: usize = 4096;

/// One kept result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub request: RequestId,
    /// The raft index it was applied at.
    pub index: u64,
    /// Its place among the commands of that entry (a batch's; 0 for an
    /// entry of one command, and in rows written before batches).
    #[serde(default)]
    pub slot: u32,
    pub result: CommandResult,
}

/// The window of request results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<Recorded>", into = "Vec<Recorded>")]
pub struct Requests {
    by_index: BTreeMap<(u64, u32), Recorded>,
    by_id: BTreeMap<RequestId, (u64, u32)>,
}

impl From<Vec<Recorded>> for Requests {
    fn from(rows: Vec<Recorded>) -> Self {
        let mut r = Requests::default();
        for row in rows {
            r.insert(row);
        }
        r
    }
}

impl From<Requests> for Vec<Recorded> {
    fn from(r: Requests) -> Self {
        r.by_index.into_values().collect()
    }
}

impl Requests {
    /// The result kept for `request`, if it was applied in the window.
    pub fn get(&self, request: &str) -> Option<&Recorded> {
        self.by_id.get(request).and_then(|i| self.by_index.get(i))
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }

    /// Every kept result, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Recorded> {
        self.by_index.values()
    }

    /// Adds a row as loaded from storage (no eviction, no change).
    pub fn insert(&mut self, row: Recorded) {
        let at = (row.index, row.slot);
        self.by_id.insert(row.request.clone(), at);
        self.by_index.insert(at, row);
    }

    /// Keeps `result` for `request` applied at `(index, slot)`, and
    /// forgets the oldest beyond [`REQUEST_WINDOW`]; `changes` gets every
    /// row written.
    pub(super) fn record(
        &mut self,
        request: &str,
        (index, slot): (u64, u32),
        result: &CommandResult,
        changes: &mut Vec<Change>,
    ) {
        self.insert(Recorded {
            request: request.to_string(),
            index,
            slot,
            result: result.clone(),
        });
        changes.push(Change::Request(request.to_string()));
        while self.by_index.len() > REQUEST_WINDOW {
            let Some((_, old)) = self.by_index.pop_first() else {
                break;
            };
            self.by_id.remove(&old.request);
            changes.push(Change::Request(old.request));
        }
    }
}
