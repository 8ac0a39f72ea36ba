//! `service logs`: the output of a service's tasks, from every node.
//!
//! The manager that serves the call reads each task's log from the node
//! that runs it ([`crate::tasklogs`] on the cluster port; its own tasks
//! straight from its agent's files) and answers with JSON lines of
//! [`LogEvent`]s. Without `follow`, one round: every node at once, the lines
//! merged by time. With `follow`, one long-poll loop per node, each batch
//! sorted by time and sent as it comes (so lines of different nodes are in
//! time order within a poll, not across polls); tasks of the service that
//! appear later join from their first line. A task whose node cannot be
//! read is named in a [`LogEvent::Warning`] (once per failure, not once per
//! retry); the other tasks go on.

use std::collections::{BTreeMap, HashMap, HashSet};

use flotilla_api::model::{LogEntry, LogEvent, LogQuery, TaskLabel};
use flotilla_transport::TransportError;
use tokio::sync::mpsc;

use super::*;
use crate::tasklogs::{self, TaskCursor, TaskLogsRequest, TaskLogsResponse};

/// How long a follow poll waits on the node for a new line.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
/// Slack on top of the node's wait before a call counts as failed.
const CALL_SLACK: Duration = Duration::from_secs(5);
/// Pause before calling a node that failed again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How often a follow looks for new tasks of the service.
const NEW_TASKS_EVERY: Duration = Duration::from_secs(1);

/// A task whose log is wanted, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    label: TaskLabel,
    /// None when the store has no such node any more.
    node: Option<NodeRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeRef {
    id: String,
    addr: String,
    down: bool,
}

/// Reads a group of tasks' logs from one node.
struct Fetcher {
    client: flotilla_transport::ClusterClient,
    own_node: String,
    agent_dir: PathBuf,
}

impl Fetcher {
    async fn fetch(
        &self,
        node: &NodeRef,
        req: TaskLogsRequest,
    ) -> Result<TaskLogsResponse, TransportError> {
        if node.id == self.own_node {
            return Ok(tasklogs::serve(&self.agent_dir, req).await);
        }
        let timeout = Duration::from_millis(req.wait_ms) + CALL_SLACK;
        self.client
            .post(
                flotilla_transport::Target::Node,
                &node.addr,
                tasklogs::PATH,
                &req,
                timeout,
            )
            .await
    }
}

/// The service's tasks that were placed on a node, oldest first.
fn sources(m: &Mgr, service_id: &str) -> Vec<Source> {
    read(m, |s| {
        let mut tasks: Vec<_> = s
            .tasks_of(service_id)
            .filter(|t| t.node_id.is_some())
            .collect();
        tasks.sort_by_key(|t| (t.created_index, t.id.clone()));
        tasks
            .into_iter()
            .map(|t| {
                let node_id = t.node_id.clone().unwrap_or_default();
                let node = s.nodes.get(&node_id);
                let slot = if t.slot > 0 {
                    t.slot.to_string()
                } else {
                    node_id.clone()
                };
                Source {
                    label: TaskLabel {
                        service: t.service_name.clone(),
                        slot,
                        task_id: t.id.clone(),
                        node: node.map_or_else(|| node_id.clone(), |n| n.name.clone()),
                    },
                    node: node.map(|n| NodeRef {
                        id: n.id.clone(),
                        addr: n.addr.clone(),
                        down: n.state == flotilla_types::NodeState::Down,
                    }),
                }
            })
            .collect()
    })
}

/// `warning: cannot read the logs of task web.2.abc123 on node w1 (down): ...`
/// without the `warning: `, which the CLI adds.
fn warning(label: &TaskLabel, node: Option<&NodeRef>, reason: &str) -> String {
    let why = match node {
        None => "no longer in the cluster",
        Some(n) if n.down => "down",
        Some(_) => "unreachable",
    };
    format!(
        "cannot read the logs of task {} on node {} ({why}): {reason}",
        label.name(true),
        label.node
    )
}

/// Lines of several tasks in one order by time; lines of one time keep
/// their order (each task's lines are already in order).
pub(super) fn merge_by_time(batches: Vec<Vec<LogEntry>>) -> Vec<LogEntry> {
    let mut all: Vec<LogEntry> = batches.into_iter().flatten().collect();
    all.sort_by_key(|e| e.ts_ms);
    all
}

/// The events of one node's answer: warnings for tasks it could not read,
/// and lines. Advances `cursors`.
fn events_of(
    sources: &[Source],
    answer: TaskLogsResponse,
    cursors: &mut HashMap<String, u64>,
    warned: &mut HashSet<String>,
) -> (Vec<String>, Vec<LogEntry>) {
    let mut warnings = Vec::new();
    let mut lines = Vec::new();
    for log in answer.tasks {
        let Some(src) = sources.iter().find(|s| s.label.task_id == log.task_id) else {
            continue;
        };
        cursors.insert(log.task_id.clone(), log.next);
        match log.error {
            Some(e) => {
                if warned.insert(log.task_id.clone()) {
                    warnings.push(warning(&src.label, src.node.as_ref(), &e));
                }
            }
            None => {
                warned.remove(&log.task_id);
            }
        }
        lines.extend(log.lines.into_iter().map(|l| LogEntry {
            ts_ms: l.ts_ms,
            task: src.label.clone(),
            text: l.text,
        }));
    }
    (warnings, lines)
}

/// The sources of each node, by node ID.
type Groups = BTreeMap<String, (NodeRef, Vec<Source>)>;

/// Groups sources by node; those without a node come back apart.
fn by_node(sources: Vec<Source>) -> (Groups, Vec<Source>) {
    let mut groups = Groups::new();
    let mut lost = Vec::new();
    for src in sources {
        match src.node.clone() {
            Some(node) => groups
                .entry(node.id.clone())
                .or_insert_with(|| (node, Vec::new()))
                .1
                .push(src),
            None => lost.push(src),
        }
    }
    (groups, lost)
}

fn request(
    sources: &[Source],
    cursors: &HashMap<String, u64>,
    tail_of: impl Fn(&str) -> Option<u64>,
    since_ms: Option<u64>,
    wait: Duration,
) -> TaskLogsRequest {
    TaskLogsRequest {
        tasks: sources
            .iter()
            .map(|s| {
                let id = &s.label.task_id;
                let offset = cursors.get(id).copied();
                TaskCursor {
                    task_id: id.clone(),
                    offset,
                    tail: if offset.is_none() { tail_of(id) } else { None },
                }
            })
            .collect(),
        since_ms,
        wait_ms: wait.as_millis() as u64,
    }
}

fn encode(events: impl IntoIterator<Item = LogEvent>) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        if let Ok(bytes) = serde_json::to_vec(&event) {
            out.extend_from_slice(&bytes);
            out.push(b'\n');
        }
    }
    out
}

fn ndjson(body: Body) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )
        .into_response()
}

pub(super) async fn logs(
    State(ctx): Ctx,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let m = member(&ctx).await?;
    let service_id =
        read(&m, |s| s.service(&name).map(|svc| svc.id.clone())).ok_or_else(|| not_found(&name))?;
    let fetcher = Arc::new(Fetcher {
        client: m.member.client.clone(),
        own_node: m.member.identity.node_id.clone(),
        agent_dir: ctx.agent_dir(),
    });
    if !q.follow {
        let events = read_all(&fetcher, sources(&m, &service_id), &q).await;
        return Ok(ndjson(Body::from(encode(events))));
    }
    let (tx, rx) = mpsc::channel::<Vec<LogEvent>>(16);
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(follow(fetcher, m, service_id, q, tx, shutdown));
    let stream =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |events| {
            Ok::<_, std::io::Error>(encode(events))
        });
    Ok(ndjson(Body::from_stream(stream)))
}

/// One round over every node at once: warnings first, then the lines
/// merged by time.
async fn read_all(fetcher: &Arc<Fetcher>, sources: Vec<Source>, q: &LogQuery) -> Vec<LogEvent> {
    let (groups, lost) = by_node(sources);
    let mut warnings: Vec<String> = lost
        .iter()
        .map(|s| warning(&s.label, None, "its node was removed"))
        .collect();
    let mut calls = tokio::task::JoinSet::new();
    for (_, (node, group)) in groups {
        let fetcher = fetcher.clone();
        let req = request(
            &group,
            &HashMap::new(),
            |_| q.tail,
            q.since_ms,
            Duration::ZERO,
        );
        calls.spawn(async move {
            let answer = fetcher.fetch(&node, req).await;
            (node, group, answer)
        });
    }
    let mut batches = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let Ok((node, group, answer)) = joined else {
            continue;
        };
        match answer {
            Ok(answer) => {
                let (w, lines) =
                    events_of(&group, answer, &mut HashMap::new(), &mut HashSet::new());
                warnings.extend(w);
                batches.push(lines);
            }
            Err(e) => warnings.extend(
                group
                    .iter()
                    .map(|s| warning(&s.label, Some(&node), &e.to_string())),
            ),
        }
    }
    warnings.sort();
    warnings
        .into_iter()
        .map(LogEvent::Warning)
        .chain(merge_by_time(batches).into_iter().map(LogEvent::Line))
        .collect()
}

/// Follows the service: one loop per node, and a look for new tasks every
/// [`NEW_TASKS_EVERY`]. Ends when the client goes away or the node shuts
/// down.
async fn follow(
    fetcher: Arc<Fetcher>,
    m: Mgr,
    service_id: String,
    q: LogQuery,
    tx: mpsc::Sender<Vec<LogEvent>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Tasks there at the start get `tail`; later ones start at their
    // first line.
    let initial: Arc<HashSet<String>> = Arc::new(
        sources(&m, &service_id)
            .into_iter()
            .map(|s| s.label.task_id)
            .collect(),
    );
    let mut loops: HashMap<String, tokio::sync::watch::Sender<Vec<Source>>> = HashMap::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut lost_warned: HashSet<String> = HashSet::new();
    loop {
        let (groups, lost) = by_node(sources(&m, &service_id));
        let warnings: Vec<LogEvent> = lost
            .iter()
            .filter(|s| lost_warned.insert(s.label.task_id.clone()))
            .map(|s| LogEvent::Warning(warning(&s.label, None, "its node was removed")))
            .collect();
        if !warnings.is_empty() && tx.send(warnings).await.is_err() {
            return;
        }
        for (node_id, (node, group)) in groups {
            match loops.get(&node_id) {
                Some(w) => {
                    w.send_if_modified(|current| {
                        let changed = *current != group;
                        *current = group;
                        changed
                    });
                }
                None => {
                    let (w, r) = tokio::sync::watch::channel(group);
                    workers.spawn(follow_node(
                        fetcher.clone(),
                        node,
                        r,
                        q.clone(),
                        initial.clone(),
                        tx.clone(),
                    ));
                    loops.insert(node_id, w);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(NEW_TASKS_EVERY) => {}
        }
    }
}

/// Long-polls one node for its tasks of the service.
async fn follow_node(
    fetcher: Arc<Fetcher>,
    mut node: NodeRef,
    mut tasks: tokio::sync::watch::Receiver<Vec<Source>>,
    q: LogQuery,
    initial: Arc<HashSet<String>>,
    tx: mpsc::Sender<Vec<LogEvent>>,
) {
    let mut cursors: HashMap<String, u64> = HashMap::new();
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let group = tasks.borrow_and_update().clone();
        if let Some(n) = group.first().and_then(|s| s.node.clone()) {
            // The node's address or state may have changed.
            node = n;
        }
        let tail_of = |id: &str| if initial.contains(id) { q.tail } else { None };
        let req = request(&group, &cursors, tail_of, q.since_ms, FOLLOW_WAIT);
        let answer = tokio::select! {
            _ = tx.closed() => return,
            // A new task: ask again at once, with it (the dropped call
            // advanced no cursor, so nothing is lost).
            Ok(()) = tasks.changed() => continue,
            a = fetcher.fetch(&node, req) => a,
        };
        let events: Vec<LogEvent> = match answer {
            Ok(answer) => {
                let (warnings, lines) = events_of(&group, answer, &mut cursors, &mut warned);
                warnings
                    .into_iter()
                    .map(LogEvent::Warning)
                    .chain(merge_by_time(vec![lines]).into_iter().map(LogEvent::Line))
                    .collect()
            }
            Err(e) => {
                let events: Vec<LogEvent> = group
                    .iter()
                    .filter(|s| warned.insert(s.label.task_id.clone()))
                    .map(|s| LogEvent::Warning(warning(&s.label, Some(&node), &e.to_string())))
                    .collect();
                if !events.is_empty() && tx.send(events).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
                continue;
            }
        };
        if !events.is_empty() && tx.send(events).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(task: &str) -> TaskLabel {
        TaskLabel {
            service: "web".into(),
            slot: "1".into(),
            task_id: task.into(),
            node: "w1".into(),
        }
    }

    fn entry(ts_ms: u64, task: &str, text: &str) -> LogEntry {
        LogEntry {
            ts_ms,
            task: label(task),
            text: text.into(),
        }
    }

    #[test]
    fn merges_by_time_keeping_each_tasks_order() {
        let a = vec![
            entry(1, "a", "a1"),
            entry(5, "a", "a2"),
            entry(5, "a", "a3"),
        ];
        let b = vec![
            entry(2, "b", "b1"),
            entry(5, "b", "b2"),
            entry(9, "b", "b3"),
        ];
        let merged: Vec<String> = merge_by_time(vec![a, b])
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(merged, ["a1", "b1", "a2", "a3", "b2", "b3"]);
    }

    #[test]
    fn warnings_name_the_task_and_the_node_state() {
        let node = NodeRef {
            id: "n1".into(),
            addr: "127.0.0.2:1".into(),
            down: true,
        };
        let mut l = label("abcdefghijklmnop");
        l.slot = "2".into();
        assert_eq!(
            warning(&l, Some(&node), "connection refused"),
            "cannot read the logs of task web.2.abcdefghijkl on node w1 (down): connection refused"
        );
        assert!(warning(&l, None, "gone").contains("(no longer in the cluster)"));
    }

    #[test]
    fn follow_ups_carry_offsets_and_only_first_reads_tail() {
        let src = |id: &str| Source {
            label: label(id),
            node: None,
        };
        let cursors: HashMap<String, u64> = [("old".to_string(), 42)].into();
        let req = request(
            &[src("old"), src("new")],
            &cursors,
            |_| Some(3),
            None,
            FOLLOW_WAIT,
        );
        assert_eq!(
            req.tasks,
            [
                TaskCursor {
                    task_id: "old".into(),
                    offset: Some(42),
                    tail: None
                },
                TaskCursor {
                    task_id: "new".into(),
                    offset: None,
                    tail: Some(3)
                },
            ]
        );
        assert_eq!(req.wait_ms, 2_000);
    }
}
