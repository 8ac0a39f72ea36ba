//! What this node hears from the other nodes now, as opposed to what the
//! replicated store last recorded about them.
//!
//! The store's node rows are written by the leader; without a quorum no
//! leader writes, and every row keeps saying `Ready` and `Reachable` for
//! nodes that died. So each node keeps [`Contacts`]: the last time each
//! other node was heard from. A node is heard when it calls this node's
//! cluster port (agent sessions, raft messages, probes) and when it
//! answers this node's probe: every manager probes every other manager
//! once a [`PROBE_EVERY`] ([`probe_managers`]).
//!
//! [`quorum_view`] turns those times into who is reachable and whether a
//! quorum of voters is; `info`, `node ls` and the metrics read it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_transport::Target;
use tokio_util::sync::CancellationToken;

use crate::member::Member;

/// How often a manager probes each other manager.
pub const PROBE_EVERY: Duration = Duration::from_millis(1000);
/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// A manager not heard from for this long is unreachable: three probes
/// missed.
pub const STALE: Duration = Duration::from_millis(3000);
/// The probe's path on the cluster port.
pub const PING_PATH: &str = "/cluster/v1/ping";

/// The last time each node (by node ID) was heard from.
#[derive(Debug, Clone, Default)]
pub struct Contacts(Arc<Mutex<HashMap<String, Instant>>>);

impl Contacts {
    pub fn new() -> Contacts {
        Contacts::default()
    }

    /// `node_id` was heard from just now.
    pub fn record(&self, node_id: &str) {
        let now = Instant::now();
        let mut heard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match heard.get_mut(node_id) {
            Some(at) => *at = now,
            None => {
                heard.insert(node_id.to_string(), now);
            }
        }
    }

    /// How long ago each node was last heard from.
    pub fn ages(&self) -> HashMap<String, Duration> {
        let now = Instant::now();
        let heard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        heard
            .iter()
            .map(|(id, at)| (id.clone(), now.saturating_duration_since(*at)))
            .collect()
    }
}

/// One manager as [`quorum_view`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerContact {
    pub raft_id: u64,
    /// How long ago it was last heard from; None: not since this node
    /// started.
    pub age: Option<Duration>,
}

impl ManagerContact {
    /// Heard from within [`STALE`].
    pub fn heard(&self) -> bool {
        self.age.is_some_and(|age| age < STALE)
    }
}

/// Who of the voters this node hears, and whether they make a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuorumView {
    /// Raft IDs heard within [`STALE`], this node's own included.
    pub heard: Vec<u64>,
    /// Whether more than half of the voters are heard.
    pub quorum: bool,
}

/// `voters` (raft IDs), of which `managers` says when each was heard;
/// `me` always hears itself. A voter without a row in `managers` (not in
/// the store yet) counts as not heard.
pub fn quorum_view(voters: &[u64], me: u64, managers: &[ManagerContact]) -> QuorumView {
    let heard_ids: BTreeSet<u64> = managers
        .iter()
        .filter(|m| m.heard())
        .map(|m| m.raft_id)
        .collect();
    let mut heard: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|id| *id == me || heard_ids.contains(id))
        .collect();
    heard.sort_unstable();
    heard.dedup();
    // A member that is not a voter (a manager not added yet) has no say.
    let quorum = !voters.is_empty() && heard.len() * 2 > voters.len();
    QuorumView { heard, quorum }
}

/// The line `info` and `node ls` lead with when there is no quorum.
pub fn no_quorum_warning(reachable: u64, managers: u64) -> String {
    format!(
        "NO QUORUM: {reachable} of {managers} managers reachable; writes fail; to recover, bring a manager back or run 'flotilla init --force-new-cluster' on this node"
    )
}

/// Every [`PROBE_EVERY`], asks each other manager of the store for
/// [`PING_PATH`] and records those that answer, until `stop`.
pub async fn probe_managers(member: Arc<Member>, own_addr: String, stop: CancellationToken) {
    let Some(view) = member.view() else { return };
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let targets: Vec<(String, String)> = {
            let state = view.read();
            state
                .nodes
                .values()
                .filter(|n| {
                    n.role == flotilla_types::NodeRole::Manager
                        && !n.addr.is_empty()
                        && n.addr != own_addr
                        && n.id != member.identity.node_id
                })
                .map(|n| (n.id.clone(), n.addr.clone()))
                .collect()
        };
        let mut probes = tokio::task::JoinSet::new();
        for (id, addr) in targets {
            let client = member.client.clone();
            probes.spawn(async move {
                let answered = client
                    .post::<_, serde_json::Value>(
                        Target::Manager,
                        &addr,
                        PING_PATH,
                        &(),
                        PROBE_TIMEOUT,
                    )
                    .await
                    .is_ok();
                (id, answered)
            });
        }
        let done = tokio::select! {
            _ = stop.cancelled() => return,
            done = probes.join_all() => done,
        };
        for (id, answered) in done {
            if answered {
                member.contacts.record(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(raft_id: u64, secs: Option<u64>) -> ManagerContact {
        ManagerContact {
            raft_id,
            age: secs.map(Duration::from_secs),
        }
    }

    #[test]
    fn two_of_three_heard_is_a_quorum_one_is_not() {
        let v = quorum_view(&[1, 2, 3], 1, &[m(2, Some(1)), m(3, Some(60))]);
        assert_eq!(v.heard, vec![1, 2]);
        assert!(v.quorum);
        let v = quorum_view(&[1, 2, 3], 1, &[m(2, Some(4)), m(3, None)]);
        assert_eq!(v.heard, vec![1]);
        assert!(!v.quorum);
    }

    #[test]
    fn a_lone_manager_is_its_own_quorum_and_learners_have_no_say() {
        assert!(quorum_view(&[7], 7, &[]).quorum);
        // 4 is heard but not a voter; 2 of 4 voters is not more than half.
        let v = quorum_view(&[1, 2, 3, 5], 1, &[m(2, Some(0)), m(4, Some(0))]);
        assert_eq!(v.heard, vec![1, 2]);
        assert!(!v.quorum);
        // No voters known (raft not initialised): no quorum.
        assert!(!quorum_view(&[], 1, &[]).quorum);
    }

    #[test]
    fn a_contact_just_under_stale_counts_and_at_stale_does_not() {
        let just = ManagerContact {
            raft_id: 2,
            age: Some(STALE - Duration::from_millis(1)),
        };
        let gone = ManagerContact {
            raft_id: 3,
            age: Some(STALE),
        };
        assert_eq!(quorum_view(&[1, 2, 3], 1, &[just, gone]).heard, vec![1, 2]);
    }

    #[test]
    fn a_recorded_node_has_an_age_and_others_none() {
        let c = Contacts::new();
        c.record("n1");
        c.record("n1");
        let ages = c.ages();
        assert!(ages["n1"] < STALE);
        assert!(!ages.contains_key("n2"));
    }

    #[test]
    fn the_warning_says_how_to_recover() {
        assert_eq!(
            no_quorum_warning(1, 3),
            "NO QUORUM: 1 of 3 managers reachable; writes fail; to recover, bring a manager back or run 'flotilla init --force-new-cluster' on this node"
        );
    }
}
