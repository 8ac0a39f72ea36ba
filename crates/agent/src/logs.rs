//! Task logs: one combined stdout+stderr file per task, kept under a size
//! cap by copy-and-truncate.
//!
//! The running child holds its log open with `O_APPEND`, so after the
//! janitor truncates the file the child's next write lands at the new end
//! (offset 0) and no descriptor has to be reopened. The price: lines written
//! between the copy and the truncation are lost. At most two generations
//! exist: `output.log` and `output.log.1`.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::record::task_dir;

/// Why a log could not be rotated.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("cannot rotate the task log {path}: {source}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The combined stdout and stderr of a task.
pub fn task_log_path(state_dir: &Path, task_id: &str) -> PathBuf {
    task_dir(state_dir, task_id).join("output.log")
}

/// Where the previous generation of a log goes.
pub fn rotated_log_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Moves the content of `log` to its `.1` file and empties it when it is
/// larger than `cap` bytes. A cap of 0 means no cap. Returns whether it
/// rotated.
pub fn rotate_if_over_cap(log: &Path, cap: u64) -> Result<bool, LogError> {
    let err = |source| LogError::Rotate {
        path: log.to_path_buf(),
        source,
    };
    if cap == 0 {
        return Ok(false);
    }
    let len = match fs::metadata(log) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    if len <= cap {
        return Ok(false);
    }
    let rotated = rotated_log_path(log);
    let mut tmp = rotated.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // Copy to a temporary name first so that a reader never sees a half
    // written `.1` file.
    fs::copy(log, &tmp).map_err(err)?;
    fs::rename(&tmp, &rotated).map_err(err)?;
    OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|f| f.set_len(0))
        .map_err(err)?;
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotates_only_over_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        fs::write(&log, "0123456789").unwrap();
        assert!(!rotate_if_over_cap(&log, 10).unwrap());
        assert!(!rotate_if_over_cap(&log, 0).unwrap());
        assert!(rotate_if_over_cap(&log, 5).unwrap());
        assert_eq!(
            fs::read_to_string(rotated_log_path(&log)).unwrap(),
            "0123456789"
        );
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert!(!rotate_if_over_cap(&dir.path().join("missing"), 1).unwrap());
    }

    #[test]
    fn log_path_is_under_the_task_dir() {
        let p = task_log_path(Path::new("/data/agent"), "abc");
        assert_eq!(p, PathBuf::from("/data/agent/tasks/abc/output.log"));
    }
}
