//! The scheduler's decision: which node each waiting task goes to.
//!
//! [`schedule`] is a pure function of the state. It looks only at tasks
//! that are waiting for a node (new or pending, desired running, no node);
//! global tasks never wait, since the orchestrator fixes their node.
//!
//! Each node goes through a pipeline of [`Filter`]s, as in swarmkit: a node
//! that fails a filter is counted against that filter and not checked
//! further, so that a task that fits nowhere gets a reason such as
//! `no suitable node (1 node not available for new tasks; 2 nodes not
//! matching constraint node.role==worker)`. Among the nodes that pass, the
//! task goes where its service has the fewest active tasks, then where the
//! cluster has the fewest, then to the lowest node ID.
//!
//! A task with placement preferences (`spread=node.labels.zone`) first
//! goes to the group of nodes (same value of the label; nodes without it
//! are a group of their own) where its service has the fewest active
//! tasks, level by level for several preferences, and only then by the
//! rule above ([`Spread`]). A service's limit of tasks per node is one
//! more filter ([`MaxReplicasFilter`]).

use std::collections::BTreeMap;

use flotilla_store::State;
use flotilla_types::{
    Availability, Constraint, DesiredState, Node, NodeState, PlacementPreference, Resources, Task,
    TaskState,
};

/// What the scheduler wants changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// `(task, node)` placements, in the order tasks were considered.
    pub assignments: Vec<(String, String)>,
    /// `(task, reason)` for tasks no node can take.
    pub unplaced: Vec<(String, String)>,
}

/// One test a node must pass to take a task.
pub trait Filter {
    /// Short name, for logs.
    fn name(&self) -> &'static str;
    /// Whether `node` may take the task this filter was made for.
    fn passes(&self, node: &Node) -> bool;
    /// Why `nodes` nodes (at least one) failed this filter.
    fn explain(&self, nodes: usize) -> String;
}

/// The node's agent is talking to the managers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadyFilter;

impl Filter for ReadyFilter {
    fn name(&self) -> &'static str {
        "ready"
    }
    fn passes(&self, node: &Node) -> bool {
        node.state == NodeState::Ready
    }
    fn explain(&self, nodes: usize) -> String {
        format!("{} not ready", count_nodes(nodes))
    }
}

/// The node takes new tasks: not paused, not drained.
#[derive(Debug, Clone, Copy, Default)]
pub struct AvailabilityFilter;

impl Filter for AvailabilityFilter {
    fn name(&self) -> &'static str {
        "availability"
    }
    fn passes(&self, node: &Node) -> bool {
        node.availability == Availability::Active
    }
    fn explain(&self, nodes: usize) -> String {
        format!("{} not available for new tasks", count_nodes(nodes))
    }
}

/// The node satisfies one placement constraint. A task gets one filter per
/// constraint, so that the reason names the constraint that ruled a node
/// out.
#[derive(Debug, Clone, Copy)]
pub struct ConstraintFilter<'a> {
    pub constraint: &'a Constraint,
}

impl Filter for ConstraintFilter<'_> {
    fn name(&self) -> &'static str {
        "constraint"
    }
    fn passes(&self, node: &Node) -> bool {
        self.constraint.matches(node)
    }
    fn explain(&self, nodes: usize) -> String {
        format!(
            "{} not matching constraint {}",
            count_nodes(nodes),
            self.constraint
        )
    }
}

/// `1 node`, `2 nodes`.
fn count_nodes(n: usize) -> String {
    if n == 1 {
        "1 node".to_string()
    } else {
        format!("{n} nodes")
    }
}

/// Passes nodes with room for the task's reservation: what the tasks
/// already placed there reserve plus this one's must fit in what the node
/// reported. A node that reported no capacity is not checked.
pub struct ResourceFilter<'a> {
    pub need: Resources,
    /// Reservations of the active tasks per node.
    pub reserved: &'a BTreeMap<&'a str, Resources>,
}

impl Filter for ResourceFilter<'_> {
    fn name(&self) -> &'static str {
        "resources"
    }

    fn passes(&self, node: &Node) -> bool {
        let have = self
            .reserved
            .get(node.id.as_str())
            .copied()
            .unwrap_or_default();
        let fits = |capacity: u64, used: u64, need: u64| {
            need == 0 || capacity == 0 || used.saturating_add(need) <= capacity
        };
        fits(
            node.resources.nano_cpus,
            have.nano_cpus,
            self.need.nano_cpus,
        ) && fits(
            node.resources.memory_bytes,
            have.memory_bytes,
            self.need.memory_bytes,
        )
    }

    fn explain(&self, nodes: usize) -> String {
        format!("insufficient resources on {}", count_nodes(nodes))
    }
}

/// Passes nodes that run no live task of the service: a service that
/// publishes a port in host mode takes that port on each node it runs on,
/// so two of its tasks never share a node.
pub struct HostPortFilter<'a> {
    pub service_id: &'a str,
    /// The host-mode ports, for the reason.
    pub ports: Vec<String>,
    /// Live tasks per (service, node).
    pub by_service: &'a BTreeMap<(&'a str, &'a str), usize>,
}

impl Filter for HostPortFilter<'_> {
    fn name(&self) -> &'static str {
        "host port"
    }

    fn passes(&self, node: &Node) -> bool {
        self.by_service
            .get(&(self.service_id, node.id.as_str()))
            .copied()
            .unwrap_or(0)
            == 0
    }

    fn explain(&self, nodes: usize) -> String {
        format!(
            "host-mode port {} already taken by a task of the service on {}",
            self.ports.join(", "),
            count_nodes(nodes)
        )
    }
}

/// Passes nodes that run fewer than `max` live tasks of the service
/// (`--replicas-max-per-node`).
pub struct MaxReplicasFilter<'a> {
    pub service_id: &'a str,
    pub max: u64,
    /// Live tasks per (service, node).
    pub by_service: &'a BTreeMap<(&'a str, &'a str), usize>,
}

impl Filter for MaxReplicasFilter<'_> {
    fn name(&self) -> &'static str {
        "max replicas per node"
    }

    fn passes(&self, node: &Node) -> bool {
        let have = self
            .by_service
            .get(&(self.service_id, node.id.as_str()))
            .copied()
            .unwrap_or(0);
        (have as u64) < self.max
    }

    fn explain(&self, nodes: usize) -> String {
        format!(
            "max replicas per node limit exceeded on {}: each runs {} {} of the service",
            count_nodes(nodes),
            self.max,
            if self.max == 1 { "task" } else { "tasks" }
        )
    }
}

/// The filters a node must pass to take `task`, in the order they are
/// checked. `reserved` is what the active tasks reserve per node, and
/// `by_service` how many live tasks each service has on each node.
pub fn pipeline<'a>(
    task: &'a Task,
    reserved: &'a BTreeMap<&'a str, Resources>,
    by_service: &'a BTreeMap<(&'a str, &'a str), usize>,
) -> Vec<Box<dyn Filter + 'a>> {
    let mut filters: Vec<Box<dyn Filter + 'a>> =
        vec![Box::new(ReadyFilter), Box::new(AvailabilityFilter)];
    for constraint in &task.spec.constraints {
        filters.push(Box::new(ConstraintFilter { constraint }));
    }
    let host_ports: Vec<String> = task
        .spec
        .ports
        .iter()
        .filter(|p| p.mode == flotilla_types::PublishMode::Host)
        .map(|p| match p.published {
            Some(n) => format!("{n}/{}", p.protocol.as_str()),
            None => format!("for {}/{}", p.target, p.protocol.as_str()),
        })
        .collect();
    if !host_ports.is_empty() {
        filters.push(Box::new(HostPortFilter {
            service_id: &task.service_id,
            ports: host_ports,
            by_service,
        }));
    }
    if task.spec.max_replicas_per_node > 0 {
        filters.push(Box::new(MaxReplicasFilter {
            service_id: &task.service_id,
            max: task.spec.max_replicas_per_node,
            by_service,
        }));
    }
    if !task.spec.networks.is_empty() {
        filters.push(Box::new(OverlayFilter));
    }
    let need = task.spec.resources.reservations;
    if !need.is_empty() {
        filters.push(Box::new(ResourceFilter { need, reserved }));
    }
    filters
}

/// The node can wire overlay networks (its agent said so, or did not say:
/// an older version), for a task on networks.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayFilter;

impl Filter for OverlayFilter {
    fn name(&self) -> &'static str {
        "overlay"
    }
    fn passes(&self, node: &Node) -> bool {
        node.overlay_error.is_none()
    }
    fn explain(&self, nodes: usize) -> String {
        format!("{} that cannot run overlay networks", count_nodes(nodes))
    }
}

/// Whether the scheduler should find a node for `task`.
pub fn is_waiting(task: &Task) -> bool {
    matches!(task.status.state, TaskState::New | TaskState::Pending)
        && task.desired_state == DesiredState::Running
        && task.node_id.is_none()
}

/// Places every waiting task, or says why it cannot be placed.
pub fn schedule(state: &State) -> Schedule {
    let mut load = Load::of(state);
    let mut waiting: Vec<&Task> = state.tasks.values().filter(|t| is_waiting(t)).collect();
    waiting.sort_by(|a, b| (&a.service_id, a.slot, &a.id).cmp(&(&b.service_id, b.slot, &b.id)));

    let mut out = Schedule::default();
    // Made at the first task that waits for addresses, once per round.
    let mut unaddressed: Option<crate::network::Unaddressed> = None;
    for task in waiting {
        // A task on networks is placed once it has its addresses, so that
        // no agent ever starts a half-wired task.
        if crate::network::needs_addresses(task) {
            let why = unaddressed.get_or_insert_with(|| crate::network::Unaddressed::of(state));
            out.unplaced.push((task.id.clone(), why.reason(task)));
            continue;
        }
        match place(state, &load, task) {
            Ok(node) => {
                load.add(&task.service_id, &node.id, task.spec.resources.reservations);
                out.assignments.push((task.id.clone(), node.id.clone()));
            }
            Err(reason) => out.unplaced.push((task.id.clone(), reason)),
        }
    }
    out
}

/// The `SetPendingReason` entries worth writing: those that change the
/// task's status. Rewriting an identical reason would bump the raft index
/// and wake the scheduler again, forever.
pub fn pending_reason_updates(state: &State, schedule: &Schedule) -> Vec<(String, String)> {
    schedule
        .unplaced
        .iter()
        .filter(|(task_id, reason)| {
            state.tasks.get(task_id).is_some_and(|t| {
                t.status.state != TaskState::Pending || t.status.message != *reason
            })
        })
        .cloned()
        .collect()
}

/// Active tasks per node: per service, and in all, and what they reserve.
#[derive(Debug, Default)]
struct Load<'a> {
    by_service: BTreeMap<(&'a str, &'a str), usize>,
    total: BTreeMap<&'a str, usize>,
    reserved: BTreeMap<&'a str, Resources>,
}

impl<'a> Load<'a> {
    fn of(state: &'a State) -> Self {
        let mut load = Load::default();
        for task in state.tasks.values() {
            if task.desired_state != DesiredState::Running || task.status.state.is_terminal() {
                continue;
            }
            if let Some(node) = &task.node_id {
                load.add(&task.service_id, node, task.spec.resources.reservations);
            }
        }
        load
    }

    fn add(&mut self, service: &'a str, node: &'a str, reservation: Resources) {
        *self.by_service.entry((service, node)).or_default() += 1;
        *self.total.entry(node).or_default() += 1;
        let r = self.reserved.entry(node).or_default();
        r.nano_cpus = r.nano_cpus.saturating_add(reservation.nano_cpus);
        r.memory_bytes = r.memory_bytes.saturating_add(reservation.memory_bytes);
    }

    fn rank(&self, service: &str, node: &'a str) -> (usize, usize, &'a str) {
        let of_service = self.by_service.get(&(service, node)).copied().unwrap_or(0);
        let total = self.total.get(node).copied().unwrap_or(0);
        (of_service, total, node)
    }
}

/// The groups of nodes a service's placement preferences make, with its
/// tasks counted in each, as Swarm's spread: at level `i` a node belongs
/// to the group of the values it has for the first `i + 1` preferences
/// (`None` where it has none). A new task goes to the group with the
/// fewest tasks at the first level, then at the next, and so on
/// ([`Spread::key`]); within the last, by the scheduler's usual rule.
///
/// Every live task of the service counts in the groups of its node,
/// whatever the node's state: tasks on a paused node are still in its
/// zone. The rebalancer reads the same counts, so that it never moves a
/// task the scheduler would put back.
#[derive(Debug)]
pub struct Spread<'a> {
    preferences: &'a [PlacementPreference],
    counts: BTreeMap<Vec<Option<&'a str>>, usize>,
}

impl<'a> Spread<'a> {
    /// No tasks counted yet.
    pub fn new(preferences: &'a [PlacementPreference]) -> Self {
        Spread {
            preferences,
            counts: BTreeMap::new(),
        }
    }

    /// The values `node` has for each preference, outermost first.
    pub fn path(&self, node: &'a Node) -> Vec<Option<&'a str>> {
        self.preferences.iter().map(|p| p.value_of(node)).collect()
    }

    /// Counts `tasks` more (or fewer, with `add` false) tasks on `node`.
    pub fn count(&mut self, node: &'a Node, tasks: usize, add: bool) {
        if tasks == 0 || self.preferences.is_empty() {
            return;
        }
        let path = self.path(node);
        for level in 1..=path.len() {
            let n = self.counts.entry(path[..level].to_vec()).or_default();
            *n = if add {
                n.saturating_add(tasks)
            } else {
                n.saturating_sub(tasks)
            };
        }
    }

    /// The tasks in each of `node`'s groups, outermost first: the lower,
    /// the better a place for a new task.
    pub fn key(&self, node: &'a Node) -> Vec<usize> {
        let path = self.path(node);
        (1..=path.len())
            .map(|level| self.counts.get(&path[..level]).copied().unwrap_or(0))
            .collect()
    }
}

/// The best node for `task`, or the reason there is none.
fn place<'s>(state: &'s State, load: &Load<'s>, task: &Task) -> Result<&'s Node, String> {
    let filters = pipeline(task, &load.reserved, &load.by_service);
    let mut failures = vec![0usize; filters.len()];
    let service = task.service_id.as_str();
    let spread = (!task.spec.preferences.is_empty()).then(|| {
        let mut spread = Spread::new(&task.spec.preferences);
        for node in state.nodes.values() {
            let tasks = load.by_service.get(&(service, node.id.as_str())).copied();
            spread.count(node, tasks.unwrap_or(0), true);
        }
        spread
    });
    let rank = |node: &'s Node| {
        let groups = spread.as_ref().map(|s| s.key(node)).unwrap_or_default();
        (groups, load.rank(service, &node.id))
    };
    let mut best: Option<(&Node, _)> = None;
    for node in state.nodes.values() {
        match filters.iter().position(|f| !f.passes(node)) {
            Some(i) => failures[i] += 1,
            None => {
                let r = rank(node);
                if best.as_ref().is_none_or(|(_, b)| r < *b) {
                    best = Some((node, r));
                }
            }
        }
    }
    if let Some((node, _)) = best {
        return Ok(node);
    }
    if state.nodes.is_empty() {
        return Err("no suitable node (no nodes in the cluster)".to_string());
    }
    let reasons: Vec<String> = filters
        .iter()
        .zip(&failures)
        .filter(|(_, n)| **n > 0)
        .map(|(f, n)| f.explain(*n))
        .collect();
    Err(format!("no suitable node ({})", reasons.join("; ")))
}

#[cfg(test)]
mod tests;
