//! The leader lease: this member acts as leader only while a quorum has
//! acknowledged it within the lowest election timeout.
//!
//! openraft 0.9 never steps a leader down on its own: cut off from the
//! other voters it stays `ServerState::Leader` until it hears a higher vote,
//! which it cannot while cut off. Its metrics carry
//! `millis_since_quorum_ack`, the age of the newest quorum acknowledgement
//! (measured from when the leader *sent* the acknowledged AppendEntries)
//! at the moment the metrics were reported. The value does not age by
//! itself, and a core that stops reporting (stalled, or idle between ticks)
//! leaves it as it was; so the watcher here stamps each new report with the
//! time it saw it and ages it from there.
//!
//! Why the lowest election timeout is safe: a follower that accepted an
//! AppendEntries refuses any other candidate for openraft's leader lease
//! (`election_timeout_max`) after it, and only then starts counting its own
//! election timeout. No other leader can exist before the send time of the
//! last acknowledged heartbeat plus `election_timeout_max`; this member
//! stops acting `election_timeout_min` after that send time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

type Metrics = openraft::RaftMetrics<u64, openraft::BasicNode>;

/// What one metrics report says about this member's leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// openraft's state is Leader and it names this member leader.
    pub leader: bool,
    /// The term of the report.
    pub term: u64,
    /// This member is the only voter: no other leader can arise without a
    /// membership change that this leader itself would commit.
    pub sole_voter: bool,
    /// openraft's `millis_since_quorum_ack` at the time of the report.
    pub millis_since_quorum_ack: Option<u64>,
}

/// The lease as last observed: in which term, and when a quorum last
/// acknowledged this leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observed {
    pub term: u64,
    pub sole_voter: bool,
    pub acked_at: Option<Instant>,
}

/// What a report seen at `seen_at` tells of the lease.
pub fn observe(report: &Report, seen_at: Instant) -> Observed {
    let acked_at = if report.leader {
        report
            .millis_since_quorum_ack
            .and_then(|ms| seen_at.checked_sub(Duration::from_millis(ms)))
    } else {
        None
    };
    Observed {
        term: report.term,
        sole_voter: report.leader && report.sole_voter,
        acked_at,
    }
}

/// Whether the lease holds at `now` for a leader in `term`.
pub fn holds(observed: &Observed, term: u64, now: Instant, lease: Duration) -> bool {
    if observed.term != term {
        return false;
    }
    if observed.sole_voter {
        return true;
    }
    observed
        .acked_at
        .is_some_and(|t| now.saturating_duration_since(t) < lease)
}

/// When the lease lapses if no new acknowledgement comes; `None` when it
/// does not hold or never lapses (a sole voter).
pub fn expires_at(observed: &Observed, lease: Duration) -> Option<Instant> {
    if observed.sole_voter {
        return None;
    }
    observed.acked_at.map(|t| t + lease)
}

fn report_of(m: &Metrics) -> Report {
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    Report {
        leader: m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id),
        term: m.current_term,
        sole_voter: voters == [m.id],
        millis_since_quorum_ack: m.millis_since_quorum_ack,
    }
}

/// The lease of one member, kept up to date by [`Lease::watch`].
pub struct Lease {
    duration: Duration,
    observed: Mutex<Observed>,
    leading: watch::Sender<bool>,
}

impl Lease {
    pub fn new(duration: Duration) -> Arc<Lease> {
        Arc::new(Lease {
            duration,
            observed: Mutex::new(Observed::default()),
            leading: watch::channel(false).0,
        })
    }

    /// Whether this member, leader in `term` by openraft's metrics, still
    /// holds its lease now.
    pub fn holds(&self, term: u64) -> bool {
        let observed = match self.observed.lock() {
            Ok(o) => *o,
            Err(p) => *p.into_inner(),
        };
        holds(&observed, term, Instant::now(), self.duration)
    }

    /// A watch that is true while this member leads under its lease and
    /// changes when the lease lapses, even when no metrics change.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn set(&self, observed: Observed) {
        match self.observed.lock() {
            Ok(mut o) => *o = observed,
            Err(p) => *p.into_inner() = observed,
        }
    }

    /// Follows openraft's metrics until they end: stamps every report when
    /// it is seen, and wakes when the lease would lapse.
    pub async fn watch(self: Arc<Self>, raft: crate::Raft) {
        let mut metrics = raft.metrics();
        drop(raft);
        loop {
            let report = report_of(&metrics.borrow_and_update());
            let observed = observe(&report, Instant::now());
            self.set(observed);
            // Between two reports only time changes: republish when the
            // lease lapses, never restamp the same report.
            loop {
                let leading = holds(&observed, report.term, Instant::now(), self.duration);
                self.leading
                    .send_if_modified(|l| std::mem::replace(l, leading) != leading);
                let lapse = expires_at(&observed, self.duration).filter(|_| leading);
                let changed = match lapse {
                    // A report that came in by the lapse wins: it may renew.
                    Some(at) => tokio::select! {
                        biased;
                        r = metrics.changed() => Some(r),
                        _ = tokio::time::sleep_until(at) => None,
                    },
                    None => Some(metrics.changed().await),
                };
                match changed {
                    Some(Ok(())) => break,
                    Some(Err(_)) => {
                        self.set(Observed::default());
                        self.leading.send_replace(false);
                        return;
                    }
                    None if metrics.has_changed().unwrap_or(false) => break,
                    None => {
                        tracing::info!(
                            term = report.term,
                            lease_ms = self.duration.as_millis() as u64,
                            "leader lease lapsed: no quorum acknowledged this leader within the lease"
                        );
                        continue;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(300);

    fn leader(term: u64, ms: Option<u64>) -> Report {
        Report {
            leader: true,
            term,
            sole_voter: false,
            millis_since_quorum_ack: ms,
        }
    }

    #[test]
    fn a_recent_quorum_ack_holds_the_lease_until_the_lowest_election_timeout() {
        let seen = Instant::now();
        let o = observe(&leader(3, Some(100)), seen);
        assert!(holds(&o, 3, seen, LEASE));
        // Acked 100 ms before it was seen: 199 ms later still holds, 200 ms
        // later the 300 ms are up.
        assert!(holds(&o, 3, seen + Duration::from_millis(199), LEASE));
        assert!(!holds(&o, 3, seen + Duration::from_millis(200), LEASE));
        assert_eq!(
            expires_at(&o, LEASE),
            Some(seen + Duration::from_millis(200))
        );
    }

    #[test]
    fn an_old_ack_a_missing_ack_or_another_term_hold_nothing() {
        let seen = Instant::now() + Duration::from_secs(10);
        assert!(!holds(
            &observe(&leader(3, Some(300)), seen),
            3,
            seen,
            LEASE
        ));
        assert!(!holds(&observe(&leader(3, None), seen), 3, seen, LEASE));
        // A lease taken in term 3 says nothing about term 4.
        assert!(!holds(&observe(&leader(3, Some(0)), seen), 4, seen, LEASE));
        let follower = Report {
            leader: false,
            ..leader(3, Some(0))
        };
        assert!(!holds(&observe(&follower, seen), 3, seen, LEASE));
    }

    #[test]
    fn a_sole_voter_needs_no_acknowledgement() {
        let seen = Instant::now();
        let o = observe(
            &Report {
                sole_voter: true,
                ..leader(1, None)
            },
            seen,
        );
        assert!(holds(&o, 1, seen + Duration::from_secs(60), LEASE));
        assert_eq!(expires_at(&o, LEASE), None);
    }
}
