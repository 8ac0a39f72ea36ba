//! What the clients did and saw: one [`Op`] per call, the end state and the
//! sampled task snapshots. Serializable, so that a run can dump its history
//! next to its seed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Nanoseconds since the run began, from a monotonic clock.
pub type Time = u64;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// Create a service with `replicas` and, for a register, the label's
    /// first value.
    Create {
        service: String,
        replicas: u64,
        label: Option<String>,
    },
    /// Write the register label of `service` (an unconditional replace of
    /// its spec with only the label changed). Every write in a history
    /// writes a value no other write writes.
    WriteLabel { service: String, value: String },
    /// Set the replica count of `service`.
    Scale { service: String, replicas: u64 },
    /// Remove `service`.
    Remove { service: String },
    /// Read `service` (inspect).
    Read { service: String },
}

impl Call {
    /// The service the call is about.
    pub fn service(&self) -> &str {
        match self {
            Call::Create { service, .. }
            | Call::WriteLabel { service, .. }
            | Call::Scale { service, .. }
            | Call::Remove { service }
            | Call::Read { service } => service,
        }
    }
}

/// What a read saw of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The register label's value, if the service has it.
    pub label: Option<String>,
    pub replicas: u64,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A write was acknowledged.
    Ok,
    /// A read answered: the service as seen (None: not found), and the
    /// API's stale-read warning if it carried one.
    Read {
        seen: Option<Seen>,
        warning: Option<String>,
    },
    /// The call certainly did not take effect (the API refused it with a
    /// 4xx, or it never reached a daemon).
    Failed(String),
    /// It may have taken effect, now or later (timeout, broken connection,
    /// a 5xx after the request was sent).
    Unknown(String),
}

/// One client call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (thread) that made it.
    pub client: usize,
    pub call: Call,
    pub invoke: Time,
    pub complete: Time,
    pub outcome: Outcome,
}

/// The services at the end, from one linearizable list after healing.
pub type EndState = BTreeMap<String, Seen>;

/// One task in a `service ps` snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSample {
    pub id: String,
    pub slot: u64,
    pub desired_running: bool,
    pub node: Option<String>,
    pub state: String,
}

/// The tasks of one service as one read saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub at: Time,
    /// The manager that answered.
    pub source: String,
    pub service: String,
    pub tasks: Vec<TaskSample>,
}
