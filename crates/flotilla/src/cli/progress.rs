//! Waiting, with progress: a rolling update followed slot by slot until it
//! completes, pauses or rolls back, and a service waited for until its
//! tasks are ready. Every wait has a deadline and says what it waited for.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use flotilla_api::model::{ServiceView, TaskView};
use flotilla_api::Client;
use flotilla_types::{format_duration_ms, UpdateState};
use flotilla_types::{Health, TaskState};

/// Follows a rolling update (or rollback) until it completes, pauses or
/// rolls back, printing the state of every slot whenever it changes.
pub(crate) async fn follow_update(
    client: &Client,
    name: &str,
    rollback: bool,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let service = client.service(name).await?;
        let tasks = client.tasks(name).await?;
        let progress = update_progress(&service, &tasks);
        if progress != last {
            print!("{progress}");
            last = progress;
        }
        let state = service.update_status.as_ref().map(|u| u.state);
        let message = service
            .update_status
            .as_ref()
            .map(|u| u.message.clone())
            .unwrap_or_default();
        match state {
            Some(UpdateState::Completed) if !rollback => {
                println!("verify: Service {name} converged");
                return Ok(());
            }
            Some(UpdateState::RollbackCompleted) if rollback => {
                println!("rollback: {message}");
                println!("verify: Service {name} converged");
                return Ok(());
            }
            Some(UpdateState::RollbackCompleted) => {
                bail!("service {name}: update rolled back: {message}")
            }
            Some(UpdateState::Paused | UpdateState::RollbackPaused) => {
                bail!("service {name}: update paused: {message}")
            }
            // A rollback the orchestrator started: follow it to its end.
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} following the update of service {name} (state: {}); it goes on in the background: see 'flotilla service ps {name}'",
                format_duration_ms(timeout.as_millis() as u64),
                state.map(|s| s.as_str()).unwrap_or("none"),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The progress block of an update: one line overall, one per slot.
pub fn update_progress(service: &ServiceView, tasks: &[TaskView]) -> String {
    let mut current: Vec<&TaskView> = tasks.iter().filter(|t| t.current).collect();
    current.sort_by(|a, b| {
        (a.slot, &a.node_id, std::cmp::Reverse(a.created_at)).cmp(&(
            b.slot,
            &b.node_id,
            std::cmp::Reverse(b.created_at),
        ))
    });
    // start-first keeps an old task beside the new one: show the newest.
    current
        .dedup_by(|b, a| a.slot == b.slot && a.slot != 0 || a.node_id == b.node_id && a.slot == 0);
    let total = current.len();
    let done = current
        .iter()
        .filter(|t| {
            t.up_to_date
                && t.state == TaskState::Running
                && t.health.is_none_or(|h| h == Health::Healthy)
        })
        .count();
    let state = service
        .update_status
        .as_ref()
        .map(|u| u.state.as_str())
        .unwrap_or("none");
    let mut out = format!("{state}: {done} out of {total} tasks\n");
    for (i, t) in current.iter().enumerate() {
        let health = t.health.map(|h| format!(" ({h})")).unwrap_or_default();
        let old = if t.up_to_date { "" } else { ", previous spec" };
        out.push_str(&format!("{}/{total}: {}{health}{old}\n", i + 1, t.state));
    }
    out
}

/// Waits until every named service runs its desired tasks.
pub(crate) async fn wait_converged(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<ServiceView> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = client.service(name).await?;
        // A job is done when every slot completed.
        if let Some(done) = s.replicas.completed {
            if done == s.replicas.desired {
                return Ok(s);
            }
        } else if s.replicas.ready == s.replicas.desired && s.replicas.running == s.replicas.desired
        {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            if let Some(done) = s.replicas.completed {
                bail!(
                    "timed out after {}s waiting for job {name} to complete {} tasks ({done} completed, {} running; see 'flotilla service ps {name}')",
                    timeout.as_secs(),
                    s.replicas.desired,
                    s.replicas.running
                );
            }
            let healthy = match s.replicas.healthy {
                Some(h) => format!(", {h} healthy"),
                None => String::new(),
            };
            bail!(
                "timed out after {}s waiting for service {name} to run {} tasks ({} running{healthy}; see 'flotilla service ps {name}')",
                timeout.as_secs(),
                s.replicas.desired,
                s.replicas.running
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::tests::tv;
    use flotilla_types::{Health, ServiceSpec};

    #[test]
    fn progress_shows_the_newest_task_of_each_slot() {
        let mut old = tv("o1", 1, true, 1);
        old.up_to_date = false;
        let mut new = tv("n1", 1, true, 5);
        new.state = TaskState::Starting;
        new.health = Some(Health::Starting);
        let mut done = tv("n2", 2, true, 4);
        done.health = Some(Health::Healthy);
        let mut stale = tv("o3", 3, true, 1);
        stale.up_to_date = false;
        let service: ServiceView = serde_json::from_value(serde_json::json!({
            "id": "s", "name": "web", "mode": "replicated",
            "replicas": {"running": 3, "desired": 3},
            "command": "", "spec": serde_json::to_value(ServiceSpec::default()).unwrap(),
            "version": 1, "created_at": 0, "updated_at": 0,
            "update_status": {"state": "updating", "started_at": 0, "message": ""}
        }))
        .unwrap();
        let text = update_progress(&service, &[old, new, done, stale]);
        assert_eq!(
            text,
            "updating: 1 out of 3 tasks\n1/3: starting (starting)\n2/3: running (healthy)\n3/3: running, previous spec\n"
        );
    }
}
