//! The process driver: each task is a plain child process of the daemon.
//!
//! - The child leads its own process group, so that stopping a task reaches
//!   everything it spawned, and a task's leftovers are killed when its main
//!   process ends (as a container's are).
//! - stdin is `/dev/null`; stdout and stderr share one descriptor of the
//!   task log, opened `O_APPEND` so that the log janitor can truncate it
//!   under the running child.
//! - Environment: the daemon's own environment is inherited (a process
//!   driver task runs "as the daemon would run it": `PATH`, `HOME`, locale),
//!   minus the systemd variables that describe the daemon's own sockets and
//!   watchdog, then the task's variables on top. The program is looked up in
//!   the task's `PATH` if it sets one, else in the daemon's.
//! - The working directory is the daemon's.
//! - Adopted processes (after an agent restart) are not our children: their
//!   end is seen through a pidfd, or by polling `/proc` where pidfds are not
//!   available, and their exit status cannot be known.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::warn;

use crate::driver::{
    BoxFuture, Driver, DriverError, Exit, ExitFuture, Handle, StartSpec, Started, StopSignal,
};
use crate::procfs::{self, is_same_live_process, read_stat};

/// Variables of the daemon's environment that a task must not inherit: they
/// describe file descriptors and sockets that belong to the daemon.
const NOT_INHERITED: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// Used when neither the task nor the daemon has a `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How often an adopted process is checked when pidfds are unavailable.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

/// Runs each task as a child process in its own process group.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessDriver;

impl ProcessDriver {
    pub fn new() -> Self {
        ProcessDriver
    }
}

impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start(&self, spec: StartSpec) -> BoxFuture<'_, Result<Started, DriverError>> {
        // Spawning is a few syscalls (posix_spawn); no await is needed.
        Box::pin(async move { start_process(&spec) })
    }

    fn adopt(&self, handle: Handle) -> BoxFuture<'_, Result<Option<ExitFuture>, DriverError>> {
        Box::pin(async move { adopt_process(&handle) })
    }

    fn signal<'a>(
        &'a self,
        handle: &'a Handle,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let pid = handle.pid.ok_or(DriverError::BadPid(0))?;
            let signo = match signal {
                StopSignal::Terminate => libc::SIGTERM,
                StopSignal::Kill => libc::SIGKILL,
            };
            procfs::signal_group(pid, handle.start_time, signo)
                .map_err(|source| DriverError::Signal { pid, source })
        })
    }

    fn remove<'a>(&'a self, _handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }
}

fn start_process(spec: &StartSpec) -> Result<Started, DriverError> {
    let command = &spec.template.command;
    let program = command.first().ok_or(DriverError::EmptyCommand)?;
    let path_var = spec
        .env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let executable = lookup_executable(program, &path_var)?;

    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|source| DriverError::Prepare {
            path: spec.log_path.clone(),
            source,
        })?;
    let log_for_stderr = log.try_clone().map_err(|source| DriverError::Prepare {
        path: spec.log_path.clone(),
        source,
    })?;

    let mut cmd = tokio::process::Command::new(&executable);
    cmd.arg0(program)
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr)
        .process_group(0)
        // A dropped supervisor (agent crash, runtime shutdown) must leave the
        // task running so that the next agent can adopt it.
        .kill_on_drop(false);
    for name in NOT_INHERITED {
        cmd.env_remove(name);
    }
    cmd.envs(&spec.env);

    let mut child = cmd.spawn().map_err(|source| DriverError::Spawn {
        program: program.clone(),
        source,
    })?;
    let Some(pid) = child.id() else {
        // Only possible once the child was reaped, which nothing did yet.
        return Err(DriverError::Other("the child has no pid".into()));
    };
    // The child is unreaped, so its /proc entry exists even if it already
    // exited.
    let start_time = match read_stat(pid) {
        Ok(Some(stat)) => stat.start_time,
        Ok(None) => {
            return Err(DriverError::Other(format!(
                "process {pid} vanished before it could be recorded"
            )))
        }
        Err(e) => {
            // Without a start time the task could never be adopted safely.
            let _ = procfs::signal_group(pid, None, libc::SIGKILL);
            let _ = child.start_kill();
            return Err(e.into());
        }
    };

    let exit = Box::pin(async move {
        let ended = match child.wait().await {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Unknown,
            },
            Err(e) => {
                warn!(pid, error = %e, "cannot collect the exit status of a task process");
                Exit::Unknown
            }
        };
        kill_leftovers(pid);
        ended
    });
    Ok(Started {
        handle: Handle {
            pid: Some(pid),
            start_time: Some(start_time),
            id: None,
        },
        exit,
    })
}

fn adopt_process(handle: &Handle) -> Result<Option<ExitFuture>, DriverError> {
    let (Some(pid), Some(start_time)) = (handle.pid, handle.start_time) else {
        return Ok(None);
    };
    // Opening the pidfd before checking the start time pins the process we
    // check: if it is the right one, the pidfd watches that one and not a
    // successor that reuses the pid.
    let pidfd = match procfs::pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => {
            warn!(pid, error = %e, "pidfd_open failed; polling /proc instead");
            None
        }
    };
    if !is_same_live_process(pid, start_time)? {
        return Ok(None);
    }
    let exit = Box::pin(async move {
        wait_adopted(pid, start_time, pidfd).await;
        let exit = reap_if_ours(pid);
        kill_leftovers(pid);
        exit
    });
    Ok(Some(exit))
}

async fn wait_adopted(pid: u32, start_time: u64, pidfd: Option<std::os::fd::OwnedFd>) {
    if let Some(fd) = pidfd {
        // SAFETY: the OwnedFd moves into the AsyncFd, which is then its only
        // owner, so the descriptor stays open and unchanged while registered.
        match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(fd) => match fd.readable().await {
                Ok(_) => return,
                Err(e) => warn!(pid, error = %e, "cannot watch a pidfd; polling /proc instead"),
            },
            Err(e) => warn!(pid, error = %e, "cannot register a pidfd; polling /proc instead"),
        }
    }
    loop {
        match is_same_live_process(pid, start_time) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => warn!(pid, error = %e, "cannot check an adopted task process"),
        }
        tokio::time::sleep(ADOPTED_POLL).await;
    }
}

/// A daemon that re-executed itself (`init --force-new-cluster`) is still
/// the parent of the tasks it adopts: reap them, which also tells how they
/// ended. For any other adopted process this finds no child and says so.
fn reap_if_ours(pid: u32) -> Exit {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid on one pid with WNOHANG writes only to `status`; a pid
    // that is not our child makes it fail with ECHILD and changes nothing.
    let got = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if got != pid as libc::pid_t {
        return Exit::Unknown;
    }
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Unknown
    }
}

/// Once a task's main process has ended, whatever it left in its group is
/// killed, as a container's processes die with its main process.
fn kill_leftovers(pid: u32) {
    if let Err(e) = procfs::signal_group(pid, None, libc::SIGKILL) {
        warn!(pid, error = %e, "cannot kill what a task left behind");
    }
}

/// Finds `program` the way `execvp` would, so that a missing program is
/// reported with a clear message instead of a bare ENOENT.
fn lookup_executable(program: &str, path_var: &std::ffi::OsStr) -> Result<PathBuf, DriverError> {
    if program.is_empty() {
        return Err(DriverError::NotFound(program.to_string()));
    }
    if program.contains('/') {
        // An explicit path is run as given; spawn reports what is wrong.
        return Ok(PathBuf::from(program));
    }
    std::env::split_paths(path_var)
        // An empty PATH entry means the working directory to execvp; that
        // is a classic hazard and is not honoured here.
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| DriverError::NotFound(program.to_string()))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_in_path() {
        let path = OsString::from("/nonexistent::/bin:/usr/bin");
        let sh = lookup_executable("sh", &path).unwrap();
        assert!(sh.is_absolute());
        assert!(sh.ends_with("sh"));
    }

    #[test]
    fn reports_missing_programs_like_docker() {
        let err = lookup_executable("nosuchcmd", &OsString::from("/bin:/usr/bin")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "executable file not found in $PATH: \"nosuchcmd\""
        );
    }

    #[test]
    fn skips_files_that_are_not_executable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prog"), "#!/bin/sh\n").unwrap();
        let path = dir.path().as_os_str().to_owned();
        assert!(matches!(
            lookup_executable("prog", &path),
            Err(DriverError::NotFound(_))
        ));
    }

    #[test]
    fn explicit_paths_are_kept() {
        let p = lookup_executable("./x/y", &OsString::new()).unwrap();
        assert_eq!(p, PathBuf::from("./x/y"));
    }
}
