//! A `flotilla daemon` on a fresh temporary data dir, started, initialised
//! and always cleaned up: dropping the guard SIGTERMs the daemon, SIGKILLs it
//! if it lingers, then kills every task process that still carries its mark.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::InitRequest;
use flotilla_api::Client;

use crate::procs::{self, MARK_VAR};

/// How long the daemon may take to answer on its socket after starting.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long the daemon may take to lead its one-node cluster after `init`.
const LEADER_DEADLINE: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after SIGTERM (it stops its tasks,
/// each within its stop grace period) before it is SIGKILLed.
const TERM_DEADLINE: Duration = Duration::from_secs(20);

/// A running, initialised daemon.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub mark: String,
    pub client: Client,
    log_path: PathBuf,
    // Dropped last: the daemon must be dead before its directory goes.
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `flotilla daemon` on a fresh data dir and runs `init`.
    pub async fn start(flotilla: &Path, label: &str) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-")
            .tempdir()
            .context("creating a temporary directory for the daemon")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("daemon.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating {}", log_path.display()))?;
        let mark = procs::new_mark(label);
        let child = Command::new(flotilla)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("daemon")
            .env(MARK_VAR, &mark)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start {} daemon", flotilla.display()))?;
        let pid = child.id();
        let client =
            Client::unix(data_dir.join("flotilla.sock")).with_timeout(Duration::from_secs(30));
        let mut daemon = Daemon {
            child: Some(child),
            pid,
            data_dir,
            mark,
            client,
            log_path,
            _dir: dir,
        };
        daemon.wait_ready().await.map_err(|e| daemon.with_log(e))?;
        daemon
            .client
            .init(&InitRequest::default())
            .await
            .map_err(|e| daemon.with_log(anyhow!("flotilla init: {e}")))?;
        daemon.wait_leader().await.map_err(|e| daemon.with_log(e))?;
        Ok(daemon)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("the daemon exited before serving its API ({status})");
                }
            }
            match self.client.info().await {
                Ok(_) => return Ok(()),
                Err(e) if start.elapsed() >= READY_DEADLINE => {
                    bail!(
                        "timed out after {READY_DEADLINE:?} waiting for the daemon to answer on {}: {e}",
                        self.client.socket().display()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn wait_leader(&self) -> Result<()> {
        let start = Instant::now();
        loop {
            let info = self.client.info().await;
            if let Ok(info) = &info {
                if info.is_leader {
                    return Ok(());
                }
            }
            if start.elapsed() >= LEADER_DEADLINE {
                bail!(
                    "timed out after {LEADER_DEADLINE:?} waiting for the daemon to lead its cluster after init (last info: {})",
                    match info {
                        Ok(i) => format!("is_leader={} leader={:?}", i.is_leader, i.leader),
                        Err(e) => e.to_string(),
                    }
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Adds the end of the daemon's log to an error.
    fn with_log(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = self.log_tail(10);
        if tail.is_empty() {
            e
        } else {
            e.context(format!("daemon log ({}):\n{tail}", self.log_path.display()))
        }
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Task processes (marked, not the daemon) alive now.
    pub fn task_pids(&self) -> Vec<u32> {
        procs::marked_pids(&self.mark, Some(self.pid))
    }

    /// Stops the daemon and its leftovers; returns what was left to kill.
    pub fn stop(mut self) -> Result<String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<String> {
        let mut notes = Vec::new();
        if let Some(mut child) = self.child.take() {
            procs::signal(self.pid, libc::SIGTERM);
            if !procs::wait_child(&mut child, TERM_DEADLINE) {
                notes.push(format!(
                    "daemon {} ignored SIGTERM for {TERM_DEADLINE:?}; SIGKILLed it",
                    self.pid
                ));
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let killed = procs::kill_marked(&self.mark, None, Duration::from_secs(10))?;
        if killed > 0 {
            notes.push(format!(
                "{killed} leftover task process(es) SIGKILLed after the daemon exited"
            ));
        }
        Ok(notes.join("; "))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            match self.shutdown() {
                Ok(notes) if !notes.is_empty() => eprintln!("cleanup: {notes}"),
                Ok(_) => {}
                Err(e) => eprintln!("cleanup failed: {e:#}"),
            }
        }
    }
}
