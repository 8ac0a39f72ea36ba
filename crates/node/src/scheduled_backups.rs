//! The leader's scheduled backups (`flotilla backup --schedule`): the file
//! format is [`flotilla_backup`]; this is the loop that writes them while
//! this manager leads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_backup::{created_of, due, file_name, to_prune, write, write_file};
use tokio_util::sync::CancellationToken;

/// How often the leader looks at the schedule.
const SCHEDULE_CHECK: Duration = Duration::from_millis(1000);

/// While this manager leads (until `stop`): the backups of the cluster's
/// schedule, written into its directory on this machine, the oldest beyond
/// `keep` removed. A failure is logged once until it changes, and tried
/// again at the next check.
pub async fn scheduled(view: flotilla_manager::StoreView, stop: CancellationToken) {
    let mut failing: Option<String> = None;
    loop {
        let schedule = view
            .read()
            .cluster
            .as_ref()
            .and_then(|c| c.backup_schedule.clone());
        if let Some(s) = schedule {
            match run_due(&view, &s, crate::now_ms()) {
                Ok(Some(path)) => {
                    tracing::info!(file = %path.display(), "wrote the scheduled backup");
                    failing = None;
                }
                Ok(None) => {}
                Err(e) => {
                    if failing.as_deref() != Some(e.as_str()) {
                        tracing::warn!(dir = %s.dir, error = %e, "cannot write the scheduled backup; trying again");
                        failing = Some(e);
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SCHEDULE_CHECK) => {}
        }
    }
}

/// One check of the schedule: the path written, if one was due.
fn run_due(
    view: &flotilla_manager::StoreView,
    s: &flotilla_types::BackupSchedule,
    now: u64,
) -> Result<Option<PathBuf>, String> {
    let dir = Path::new(&s.dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| created_of(n).is_some())
        .collect();
    let last = names.iter().filter_map(|n| created_of(n)).max();
    if !due(now, last, s.every_ms) {
        return Ok(None);
    }
    let state = view.read().clone();
    let bytes = write(&state, now, None).map_err(|e| e.to_string())?;
    let name = file_name(now, state.index);
    let path = dir.join(&name);
    write_file(&path, &bytes).map_err(|e| format!("writing {}: {e}", path.display()))?;
    names.push(name);
    for old in to_prune(&names, s.keep) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(Some(path))
}
