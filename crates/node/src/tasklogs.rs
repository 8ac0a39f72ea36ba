//! The logs of this node's tasks, for managers: `POST /cluster/v1/task-logs`
//! on the cluster port, on every node (a worker's agent holds its tasks'
//! logs). Only a manager's certificate may call it.
//!
//! Following is a long poll: the caller sends each task's offset in
//! `output.log` (none for a first read), the node answers at once when it
//! has lines, or after `wait_ms` with none; the answer carries the next
//! offsets. A log that shrank was rotated, and the rest of its previous
//! generation comes first (see [`flotilla_agent::read_log`]). Lines carry
//! the times of the agent's growth marks (see [`flotilla_agent::logs`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};

use flotilla_agent::{read_log, task_log_path, LogLine};
use flotilla_transport::Peer;

use crate::cluster::{body, manager_peer, ClusterError};

/// The endpoint's path.
pub const PATH: &str = "/cluster/v1/task-logs";

/// The longest long poll a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How much of one log a follow-up read returns at most.
const READ_BUDGET: u64 = 1 << 20;

/// How often a long poll looks at the files again.
const POLL: Duration = Duration::from_millis(200);

/// Which tasks to read, and from where.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskLogsRequest {
    pub tasks: Vec<TaskCursor>,
    /// First reads only: lines at or after this time (Unix ms).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Wait up to this long for a line when none is there (following);
    /// 0 answers at once.
    #[serde(default)]
    pub wait_ms: u64,
}

/// One task to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCursor {
    pub task_id: String,
    /// Where to go on in `output.log`; None for a first read (both
    /// generations, then `since_ms` and `tail`).
    #[serde(default)]
    pub offset: Option<u64>,
    /// First reads only: only the last N lines.
    #[serde(default)]
    pub tail: Option<u64>,
}

/// What a node has of the tasks asked for, in the order asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskLogsResponse {
    pub tasks: Vec<TaskLog>,
}

/// One task's lines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLog {
    pub task_id: String,
    pub lines: Vec<LogLine>,
    /// The offset to send next time.
    pub next: u64,
    /// Why the log could not be read; the other tasks are not affected.
    #[serde(default)]
    pub error: Option<String>,
}

impl TaskLog {
    /// A task whose log could not be read: no lines, its cursor where it
    /// was.
    fn failed(cursor: &TaskCursor, error: String) -> TaskLog {
        TaskLog {
            task_id: cursor.task_id.clone(),
            next: cursor.offset.unwrap_or(0),
            error: Some(error),
            ..TaskLog::default()
        }
    }
}

/// The endpoint's routes; `agent_dir` is where this node's agent keeps its
/// tasks.
pub fn router(agent_dir: PathBuf) -> Router {
    Router::new()
        .route(PATH, post(task_logs))
        .with_state(Arc::new(agent_dir))
}

async fn task_logs(
    State(agent_dir): State<Arc<PathBuf>>,
    Extension(peer): Extension<Peer>,
    req: Result<Json<TaskLogsRequest>, JsonRejection>,
) -> Result<Json<TaskLogsResponse>, ClusterError> {
    manager_peer(&peer)?;
    let req = body(req)?;
    if let Some(bad) = req
        .tasks
        .iter()
        .find(|t| !flotilla_agent::record::valid_task_id(&t.task_id))
    {
        return Err(ClusterError::BadRequest(format!(
            "invalid task id {:?}",
            bad.task_id
        )));
    }
    Ok(Json(serve(&agent_dir, req).await))
}

/// Answers a request from this node's files: at once when there is
/// something to say (lines, an error, a first read), else when a line
/// appears or the wait (at most [`MAX_WAIT`]) is over.
pub async fn serve(agent_dir: &Path, req: TaskLogsRequest) -> TaskLogsResponse {
    let wait = Duration::from_millis(req.wait_ms).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let first = req.tasks.iter().any(|t| t.offset.is_none());
    let req = Arc::new(req);
    let dir = Arc::new(agent_dir.to_path_buf());
    loop {
        let (r, d) = (req.clone(), dir.clone());
        let answer = tokio::task::spawn_blocking(move || read_once(&d, &r))
            .await
            .unwrap_or_else(|e| TaskLogsResponse {
                tasks: req
                    .tasks
                    .iter()
                    .map(|t| TaskLog::failed(t, format!("the log reader failed: {e}")))
                    .collect(),
            });
        let news = answer
            .tasks
            .iter()
            .any(|t| !t.lines.is_empty() || t.error.is_some());
        if first || news || tokio::time::Instant::now() + POLL > deadline {
            return answer;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One look at every task's log.
pub fn read_once(agent_dir: &Path, req: &TaskLogsRequest) -> TaskLogsResponse {
    let hold_partial = req.wait_ms > 0;
    let tasks = req
        .tasks
        .iter()
        .map(|t| {
            let log = task_log_path(agent_dir, &t.task_id);
            match read_log(&log, t.offset, READ_BUDGET, hold_partial) {
                Ok(mut read) => {
                    if t.offset.is_none() {
                        if let Some(since) = req.since_ms {
                            read.lines.retain(|l| l.ts_ms >= since);
                        }
                        if let Some(n) = t.tail {
                            flotilla_agent::logs::tail(&mut read.lines, n);
                        }
                    }
                    TaskLog {
                        task_id: t.task_id.clone(),
                        lines: read.lines,
                        next: read.next,
                        error: None,
                    }
                }
                Err(e) => TaskLog::failed(t, e.to_string()),
            }
        })
        .collect();
    TaskLogsResponse { tasks }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reads_apply_since_and_tail_and_follow_ups_wait() {
        let dir = tempfile::tempdir().unwrap();
        let log = task_log_path(dir.path(), "t1");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        let first = serve(
            dir.path(),
            TaskLogsRequest {
                tasks: vec![
                    TaskCursor {
                        task_id: "t1".into(),
                        offset: None,
                        tail: Some(2),
                    },
                    TaskCursor {
                        task_id: "never-ran".into(),
                        ..TaskCursor::default()
                    },
                ],
                since_ms: None,
                wait_ms: 5_000,
            },
        )
        .await;
        let texts: Vec<&str> = first.tasks[0]
            .lines
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        assert_eq!((texts, first.tasks[0].next), (vec!["b", "c"], 6));
        assert_eq!(
            first.tasks[1],
            TaskLog {
                task_id: "never-ran".into(),
                ..TaskLog::default()
            }
        );
        let future = read_once(
            dir.path(),
            &TaskLogsRequest {
                tasks: vec![TaskCursor {
                    task_id: "t1".into(),
                    ..TaskCursor::default()
                }],
                since_ms: Some(u64::MAX),
                wait_ms: 0,
            },
        );
        assert!(future.tasks[0].lines.is_empty(), "since filters");
        let started = tokio::time::Instant::now();
        let idle = serve(
            dir.path(),
            TaskLogsRequest {
                tasks: vec![TaskCursor {
                    task_id: "t1".into(),
                    offset: Some(6),
                    tail: None,
                }],
                since_ms: None,
                wait_ms: 500,
            },
        )
        .await;
        assert!(idle.tasks[0].lines.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
