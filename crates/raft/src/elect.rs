//! The election timer, drawn anew every term.
//!
//! openraft 0.9.25 draws a member's random election timeout once, when the
//! `Raft` is created (`EngineConfig::new` calls
//! `Config::new_rand_election_timeout`), and its tick compares against that
//! same figure for the life of the process (`RaftCore::handle_tick_election`).
//! Two survivors whose draws happen to be close split the vote in one term
//! and, with the same gap, in every term after it. So openraft's own timer
//! is switched off (`Config::enable_elect = false`) and this one asks for an
//! election (`Raft::trigger().elect()`) on openraft's rule but with a
//! timeout drawn again whenever the vote changes (a new term, a new
//! candidacy):
//!
//! - a voter that knows a leader (its vote is committed) waits openraft's
//!   leader lease (`election_timeout_max`, during which the other voters
//!   refuse any candidate) plus the drawn timeout after it last heard from
//!   the leader;
//! - a candidate whose election failed waits the drawn timeout;
//! - the only voter stands at once (no one else can refuse it);
//! - a member that saw a voter with a greater log than its own (in a vote
//!   answer, [`GreaterLog`]) waits twice `election_timeout_max` more before
//!   it stands again, as openraft's own timer does: candidates that cannot
//!   win would otherwise keep raising the term while the one that can is
//!   campaigning, and nobody wins (seen on a loaded machine: elections
//!   every 400-500 ms for seconds).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::Raft;

/// Set when a vote answer showed a log greater than this member's; the
/// raft network marks it, the timer takes it when it stands.
#[derive(Debug, Clone, Default)]
pub struct GreaterLog(Arc<AtomicBool>);

impl GreaterLog {
    pub fn mark(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// What the timer needs to know of this member, read from openraft's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub state: ServerState,
    pub voter: bool,
    pub sole_voter: bool,
    pub vote: openraft::Vote<u64>,
    /// Time since the vote last changed or was refreshed by the leader.
    pub since_vote: Option<Duration>,
    /// A voter answered with a greater log than this member's since it
    /// last stood.
    pub greater_log: bool,
}

/// The election timeouts: each term's timeout is drawn from
/// `min..max`; a follower of a known leader also waits `lease`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub min: Duration,
    pub max: Duration,
    pub lease: Duration,
}

/// Whether this member should stand for election now, given the timeout
/// drawn for its current vote.
pub fn due(seen: &Seen, drawn: Duration, t: &Timeouts) -> bool {
    if seen.state == ServerState::Leader || !seen.voter {
        return false;
    }
    if seen.sole_voter && seen.state != ServerState::Candidate {
        return true;
    }
    let mut wait = if seen.vote.is_committed() && !seen.sole_voter {
        t.lease + drawn
    } else {
        drawn
    };
    if seen.greater_log {
        wait += 2 * t.max;
    }
    seen.since_vote.is_none_or(|s| s >= wait)
}

/// A timeout drawn from `min..max` with `random`.
pub fn draw(t: &Timeouts, random: u64) -> Duration {
    let span = t.max.saturating_sub(t.min).as_millis() as u64;
    if span == 0 {
        return t.min;
    }
    t.min + Duration::from_millis(random % span)
}

fn random() -> u64 {
    // A freshly keyed SipHash of nothing: random enough for a timer, and
    // no dependency.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// How often the timer looks at openraft's state.
const CHECK: Duration = Duration::from_millis(25);

/// Runs the election timer of member `id` until openraft stops.
pub async fn run(raft: Raft, id: u64, greater_log: GreaterLog, t: Timeouts) {
    let mut drawn_for: Option<openraft::Vote<u64>> = None;
    let mut drawn = draw(&t, random());
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A leader never stands; skip asking the core.
        if raft.metrics().borrow().state == ServerState::Leader {
            continue;
        }
        let seen = raft
            .with_raft_state(move |st| {
                let m = st.membership_state.effective();
                let voters: Vec<u64> = m.voter_ids().collect();
                Seen {
                    state: st.server_state,
                    voter: voters.contains(&id),
                    sole_voter: voters == [id],
                    vote: *st.vote_ref(),
                    since_vote: st
                        .vote_last_modified()
                        .map(|at| Instant::now().saturating_duration_since(at)),
                    greater_log: false,
                }
            })
            .await;
        let Ok(mut seen) = seen else { return };
        seen.greater_log = greater_log.is_marked();
        if drawn_for != Some(seen.vote) {
            drawn = draw(&t, random());
            drawn_for = Some(seen.vote);
        }
        if due(&seen, drawn, &t) {
            tracing::info!(
                term = seen.vote.leader_id().term,
                timeout_ms = drawn.as_millis() as u64,
                greater_log_seen = seen.greater_log,
                "election timeout passed: standing for election"
            );
            greater_log.take();
            if raft.trigger().elect().await.is_err() {
                return;
            }
            // Draw again even if the vote did not change.
            drawn_for = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        min: Duration::from_millis(350),
        max: Duration::from_millis(500),
        lease: Duration::from_millis(500),
    };

    fn follower(since_ms: u64) -> Seen {
        let vote = openraft::Vote::new_committed(3, 1);
        Seen {
            state: ServerState::Follower,
            voter: true,
            sole_voter: false,
            vote,
            since_vote: Some(Duration::from_millis(since_ms)),
            greater_log: false,
        }
    }

    #[test]
    fn a_follower_of_a_leader_waits_the_lease_and_its_timeout() {
        let drawn = Duration::from_millis(400);
        assert!(!due(&follower(899), drawn, &T));
        assert!(due(&follower(900), drawn, &T));
    }

    #[test]
    fn a_failed_candidate_waits_only_its_timeout() {
        let seen = Seen {
            state: ServerState::Candidate,
            vote: openraft::Vote::new(4, 2),
            ..follower(399)
        };
        assert!(!due(&seen, Duration::from_millis(400), &T));
        assert!(due(
            &Seen {
                since_vote: Some(Duration::from_millis(400)),
                ..seen
            },
            Duration::from_millis(400),
            &T
        ));
    }

    #[test]
    fn a_member_that_saw_a_greater_log_waits_longer() {
        let drawn = Duration::from_millis(400);
        let seen = Seen {
            state: ServerState::Candidate,
            vote: openraft::Vote::new(4, 2),
            greater_log: true,
            ..follower(400)
        };
        assert!(!due(&seen, drawn, &T));
        // 400 ms drawn plus twice the 500 ms max.
        let later = Seen {
            since_vote: Some(Duration::from_millis(1400)),
            ..seen
        };
        assert!(due(&later, drawn, &T));
    }

    #[test]
    fn leaders_and_learners_never_stand_and_a_sole_voter_stands_at_once() {
        let long = Duration::from_millis(1);
        let leader = Seen {
            state: ServerState::Leader,
            ..follower(10_000)
        };
        assert!(!due(&leader, long, &T));
        let learner = Seen {
            voter: false,
            ..follower(10_000)
        };
        assert!(!due(&learner, long, &T));
        let alone = Seen {
            sole_voter: true,
            ..follower(0)
        };
        assert!(due(&alone, Duration::from_secs(10), &T));
    }

    #[test]
    fn every_draw_is_in_range_and_draws_differ() {
        let draws: Vec<Duration> = (0..50).map(|_| draw(&T, random())).collect();
        assert!(draws.iter().all(|d| *d >= T.min && *d < T.max));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        // 50 draws from 150 values: all equal has a chance of 150^-49.
        assert!(distinct.len() > 10, "{draws:?}");
    }
}
