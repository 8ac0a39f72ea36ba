//! Task records: what the agent must remember about a task across its own
//! restarts, in `<state_dir>/tasks/<task_id>/state.json`.
//!
//! Records are replaced atomically (write a temporary file, rename it), so a
//! crash of the agent leaves either the old or the new record. They are not
//! fsynced: what survives an agent crash is the page cache, and a power loss
//! also ends every task, after which a missing or stale record only makes the
//! agent report the task as failed.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use flotilla_types::TaskStatus;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;

use crate::driver::Handle;

const RECORD_FILE: &str = "state.json";
const RECORD_TMP: &str = "state.json.tmp";

/// Why a record could not be written or read.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot write the task record {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode the record of task {task_id}: {source}")]
    Encode {
        task_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot list the task records in {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid task id {0:?}")]
    InvalidId(String),
}

/// The persisted state of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    /// [`crate::Driver::name`] of the driver that ran it.
    pub driver: String,
    /// Set once the workload started.
    #[serde(default)]
    pub handle: Option<Handle>,
    /// Kept so that an adopted task can be stopped with its own grace period
    /// even when the manager no longer lists it.
    pub stop_grace_period_ms: u64,
    /// The last status the agent observed.
    pub status: TaskStatus,
}

/// What the state directory held when the agent started.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<TaskRecord>,
    /// Task directories without a readable record.
    pub orphan_dirs: BTreeSet<String>,
}

/// The directory holding every task directory.
pub fn tasks_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tasks")
}

/// The directory of one task: its record and its log.
pub fn task_dir(state_dir: &Path, task_id: &str) -> PathBuf {
    tasks_dir(state_dir).join(task_id)
}

/// Task IDs become directory names, and directories of unknown tasks get
/// deleted: an ID must never be able to name anything outside `tasks/`.
pub fn valid_task_id(task_id: &str) -> bool {
    !task_id.is_empty()
        && task_id.len() <= 128
        && !task_id.starts_with('.')
        && task_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Replaces the record of `record.task_id`, creating its directory.
pub fn write_record(state_dir: &Path, record: &TaskRecord) -> Result<(), RecordError> {
    if !valid_task_id(&record.task_id) {
        return Err(RecordError::InvalidId(record.task_id.clone()));
    }
    let dir = task_dir(state_dir, &record.task_id);
    let path = dir.join(RECORD_FILE);
    let tmp = dir.join(RECORD_TMP);
    let bytes = serde_json::to_vec_pretty(record).map_err(|source| RecordError::Encode {
        task_id: record.task_id.clone(),
        source,
    })?;
    let write = || -> io::Result<()> {
        fs::create_dir_all(&dir)?;
        fs::write(&tmp, &bytes)?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|source| RecordError::Write { path, source })
}

/// Reads every task record. Unreadable records are logged and their
/// directories listed as orphans, so that one bad file cannot stop the
/// agent.
pub fn load_records(state_dir: &Path) -> Result<Loaded, RecordError> {
    let dir = tasks_dir(state_dir);
    let list_err = |source| RecordError::List {
        path: dir.clone(),
        source,
    };
    let mut loaded = Loaded::default();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(loaded),
        Err(e) => return Err(list_err(e)),
    };
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !valid_task_id(&name) || !entry.file_type().map_err(list_err)?.is_dir() {
            continue;
        }
        let path = entry.path().join(RECORD_FILE);
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<TaskRecord>(&bytes).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(record) if record.task_id == name => loaded.records.push(record),
            Ok(record) => {
                warn!(path = %path.display(), task_id = %record.task_id, "task record names another task; ignoring it");
                loaded.orphan_dirs.insert(name);
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "unreadable task record; ignoring it");
                loaded.orphan_dirs.insert(name);
            }
        }
    }
    loaded.records.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    Ok(loaded)
}

/// Deletes a task's directory (record and logs).
pub fn remove_task_dir(state_dir: &Path, task_id: &str) -> io::Result<()> {
    if !valid_task_id(task_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid task id",
        ));
    }
    if let Ok(root) = crate::files::root_for(state_dir) {
        crate::files::remove(&root, task_id)?;
    }
    match fs::remove_dir_all(task_dir(state_dir, task_id)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use flotilla_types::TaskState;

    use super::*;

    fn record(id: &str) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            driver: "process".into(),
            handle: Some(Handle {
                pid: Some(42),
                start_time: Some(7),
                id: None,
                netns: None,
                stop_signal: None,
            }),
            stop_grace_period_ms: 500,
            status: TaskStatus::new(TaskState::Running, 1, "started"),
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_become_orphans() {
        let dir = tempfile::tempdir().unwrap();
        write_record(dir.path(), &record("a1")).unwrap();
        write_record(dir.path(), &record("b2")).unwrap();
        fs::create_dir_all(task_dir(dir.path(), "c3")).unwrap();
        fs::write(task_dir(dir.path(), "c3").join(RECORD_FILE), "{not json").unwrap();
        fs::create_dir_all(task_dir(dir.path(), "d4")).unwrap();
        let loaded = load_records(dir.path()).unwrap();
        assert_eq!(loaded.records, vec![record("a1"), record("b2")]);
        assert_eq!(
            loaded.orphan_dirs.into_iter().collect::<Vec<_>>(),
            vec!["c3".to_string(), "d4".to_string()]
        );
        assert!(!task_dir(dir.path(), "a1").join(RECORD_TMP).exists());
    }

    #[test]
    fn refuses_ids_that_escape_the_tasks_dir() {
        for id in ["", ".", "..", "../x", "a/b", ".hidden", "a b"] {
            assert!(!valid_task_id(id), "{id:?}");
        }
        assert!(valid_task_id("0123abcdv"));
        let dir = tempfile::tempdir().unwrap();
        assert!(write_record(dir.path(), &record("../x")).is_err());
        assert!(remove_task_dir(dir.path(), "..").is_err());
    }
}
