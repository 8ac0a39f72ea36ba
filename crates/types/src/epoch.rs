//! The cluster epoch: which raft group of a cluster a member belongs to.
//!
//! `init` draws one (generation 1); `init --force-new-cluster` draws a new
//! one a generation up. The managers that the survivor removed still hold
//! valid certificates and the old group's store; raft messages and agent
//! sessions carry the sender's epoch so that the new group refuses them
//! (and workers never follow the old group back). A store written before
//! epochs existed holds none: [`Epoch::default`], generation 0, which its
//! members share.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A raft group of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// 1 at `init`, one more at each force-new-cluster; 0 for a group
    /// made before epochs existed.
    #[serde(default)]
    pub generation: u64,
    /// Random, drawn with the generation, so that two survivors forced
    /// apart from the same group do not share an epoch.
    #[serde(default)]
    pub id: String,
}

/// Why a message of another epoch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("refused: the sender is in cluster epoch {theirs}, this member in {mine}: a manager removed by 'init --force-new-cluster' is no longer part of this cluster")]
    OtherGroup { mine: Epoch, theirs: Epoch },
    #[error("refused: this manager is in cluster epoch {mine}, which 'init --force-new-cluster' replaced with {theirs}: it is no longer part of the cluster")]
    Superseded { mine: Epoch, theirs: Epoch },
    #[error("invalid cluster epoch {0:?} (expected GENERATION-ID)")]
    Invalid(String),
}

impl Epoch {
    /// The epoch of a new cluster, from a random ID the caller draws.
    pub fn first(id: String) -> Self {
        Epoch { generation: 1, id }
    }

    /// The epoch after this one, for a forced new group.
    pub fn next(&self, id: String) -> Self {
        Epoch {
            generation: self.generation + 1,
            id,
        }
    }

    /// A raft message from a member of `theirs` to one of `self`: only
    /// members of the same group talk.
    pub fn admits_peer(&self, theirs: &Epoch) -> Result<(), EpochError> {
        if self == theirs {
            return Ok(());
        }
        Err(EpochError::OtherGroup {
            mine: self.clone(),
            theirs: theirs.clone(),
        })
    }

    /// An agent of `theirs` opening a session with this (the
    /// dispatcher's) epoch. An agent that knows no epoch (older node.json
    /// or version) or an older generation is taken, and learns this one: a
    /// worker follows the survivor of a force-new-cluster. An agent that
    /// knows a newer generation means this manager's group was replaced:
    /// refused, so that the worker never goes back to it. Another group
    /// of the same generation is refused too.
    pub fn admits_agent(&self, theirs: &Epoch) -> Result<(), EpochError> {
        if self == theirs || *theirs == Epoch::default() || theirs.generation < self.generation {
            return Ok(());
        }
        if theirs.generation > self.generation {
            return Err(EpochError::Superseded {
                mine: self.clone(),
                theirs: theirs.clone(),
            });
        }
        Err(EpochError::OtherGroup {
            mine: self.clone(),
            theirs: theirs.clone(),
        })
    }
}

/// `GENERATION-ID`, as it goes in a query string (`none` for the default).
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Epoch::default() {
            return f.write_str("none");
        }
        write!(f, "{}-{}", self.generation, self.id)
    }
}

impl FromStr for Epoch {
    type Err = EpochError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s == "none" {
            return Ok(Epoch::default());
        }
        let invalid = || EpochError::Invalid(s.to_string());
        let (generation, id) = s.split_once('-').ok_or_else(invalid)?;
        let generation = generation.parse().map_err(|_| invalid())?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid());
        }
        Ok(Epoch {
            generation,
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(generation: u64, id: &str) -> Epoch {
        Epoch {
            generation,
            id: id.into(),
        }
    }

    #[test]
    fn raft_peers_must_share_the_epoch() {
        assert_eq!(e(1, "a").admits_peer(&e(1, "a")), Ok(()));
        // Members of a store from before epochs share the default.
        assert_eq!(Epoch::default().admits_peer(&Epoch::default()), Ok(()));
        let err = e(2, "b")
            .admits_peer(&e(1, "a"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("refused: the sender is in cluster epoch 1-a, this member in 2-b: a manager removed by 'init --force-new-cluster' is no longer part of this cluster")
        );
        // After a force-new-cluster of an old group, the removed managers
        // (no epoch) are refused too.
        assert!(e(1, "b").admits_peer(&Epoch::default()).is_err());
        assert!(Epoch::default().admits_peer(&e(1, "b")).is_err());
    }

    #[test]
    fn agents_follow_the_newer_group_and_never_go_back() {
        let old = e(1, "a");
        let new = old.next("b".into());
        assert_eq!(new, e(2, "b"));
        assert_eq!(new.admits_agent(&old), Ok(()), "a worker moves over");
        assert_eq!(
            new.admits_agent(&Epoch::default()),
            Ok(()),
            "older node.json"
        );
        assert!(matches!(
            old.admits_agent(&new),
            Err(EpochError::Superseded { .. })
        ));
        assert!(matches!(
            new.admits_agent(&e(2, "c")),
            Err(EpochError::OtherGroup { .. })
        ));
    }

    #[test]
    fn round_trips_as_text() {
        for epoch in [Epoch::default(), e(1, "abc"), e(12, "Z9")] {
            assert_eq!(epoch.to_string().parse::<Epoch>(), Ok(epoch));
        }
        assert_eq!("".parse::<Epoch>(), Ok(Epoch::default()));
        for bad in ["x", "1-", "a-b", "1-a&b"] {
            assert!(bad.parse::<Epoch>().is_err(), "{bad}");
        }
    }
}
