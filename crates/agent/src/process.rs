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
//! - The working directory is the template's `working_dir` (which must
//!   exist on the node), else the daemon's.
//! - `user` (`USER[:GROUP]`, names from the node's `/etc/passwd` and
//!   `/etc/group`) is set in the child, after it entered its namespaces,
//!   when the daemon runs as root; a daemon that is not root runs a task
//!   only as itself. Health probes run as the daemon does.
//! - A stop sends the template's `stop_signal` (SIGTERM when none) to the
//!   group, then SIGKILL after the grace period.
//! - Adopted processes (after an agent restart) are not our children: their
//!   end is seen through a pidfd, or by polling `/proc` where pidfds are not
//!   available, and their exit status cannot be known.
//! - Health probes: `Shell` runs `/bin/sh -c command`, `Exec` runs its argv,
//!   each in its own process group with the environment the task's main
//!   process started with (read from `/proc/<pid>/environ`, so that it
//!   needs no state in the driver and works for adopted tasks too; the
//!   daemon's environment if that cannot be read) and the daemon's working
//!   directory; the group is killed at the timeout. Exit 0 is healthy;
//!   anything else is "exit code N: <first line of output>". `Http` and
//!   `Tcp` probe `127.0.0.1:port`.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_types::HealthTest;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tracing::warn;

use crate::driver::{
    BoxFuture, Driver, DriverError, Exit, ExitFuture, Handle, Probe, StartSpec, Started, StopSignal,
};
use crate::health::{http_probe, tcp_probe, timed_out};
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

/// How much of a probe's stdout and of its stderr is kept (Docker keeps
/// 4 KiB of a probe's output).
const PROBE_OUTPUT_MAX: usize = 4096;

/// The shell of `HealthTest::Shell`, as Docker's `CMD-SHELL`.
const SHELL: &str = "/bin/sh";

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
                StopSignal::Terminate => handle.stop_signal.unwrap_or(libc::SIGTERM),
                StopSignal::Kill => libc::SIGKILL,
            };
            procfs::signal_group(pid, handle.start_time, signo)
                .map_err(|source| DriverError::Signal { pid, source })
        })
    }

    fn remove<'a>(&'a self, _handle: &'a Handle) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async { Ok(()) })
    }

    fn probe<'a>(
        &'a self,
        handle: &'a Handle,
        test: &'a HealthTest,
        timeout: Duration,
    ) -> BoxFuture<'a, Probe> {
        Box::pin(async move {
            // A task in its own namespace listens at its address there,
            // which the node reaches through the network's bridge.
            let host = handle
                .netns
                .as_ref()
                .map(|n| n.addr)
                .unwrap_or(Ipv4Addr::LOCALHOST);
            let local = |port: u16| SocketAddr::from((host, port));
            match test {
                HealthTest::Shell { command } => {
                    let argv = [SHELL.to_string(), "-c".to_string(), command.clone()];
                    command_probe(handle, &argv, timeout).await
                }
                HealthTest::Exec { argv } => command_probe(handle, argv, timeout).await,
                HealthTest::Http { port, path } => http_probe(local(*port), path, timeout).await,
                HealthTest::Tcp { port } => tcp_probe(local(*port), timeout).await,
                HealthTest::None | HealthTest::Image => {
                    Probe::Unhealthy(format!("no probe to run for {test:?}"))
                }
            }
        })
    }
}

/// The environment a probe of the task runs with: the one its main process
/// started with, else the daemon's (minus what tasks never inherit).
fn probe_env(handle: &Handle) -> Vec<(OsString, OsString)> {
    let task_env = match (handle.pid, handle.start_time) {
        (Some(pid), Some(start_time)) => std::fs::read(format!("/proc/{pid}/environ"))
            .ok()
            // Read first, checked after: a reused pid must not lend its
            // environment.
            .filter(|_| is_same_live_process(pid, start_time).unwrap_or(false)),
        _ => None,
    };
    match task_env {
        Some(raw) => raw
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let eq = kv.iter().position(|b| *b == b'=')?;
                Some((
                    OsString::from_vec(kv[..eq].to_vec()),
                    OsString::from_vec(kv[eq + 1..].to_vec()),
                ))
            })
            .collect(),
        None => std::env::vars_os()
            .filter(|(k, _)| !NOT_INHERITED.iter().any(|n| k == n))
            .collect(),
    }
}

/// Runs `argv` as a health probe of the task behind `handle`.
async fn command_probe(handle: &Handle, argv: &[String], timeout: Duration) -> Probe {
    let Some(program) = argv.first() else {
        return Probe::Unhealthy("the health check command is empty".to_string());
    };
    let env = probe_env(handle);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from(DEFAULT_PATH));
    let executable = match lookup_executable(program, &path_var) {
        Ok(e) => e,
        Err(e) => return Probe::Unhealthy(e.to_string()),
    };
    let mut cmd = tokio::process::Command::new(&executable);
    if handle.netns.is_some() {
        // The probe sees what the task sees: its network and its mounts
        // (its resolver configuration).
        let pid = handle.pid.unwrap_or(0);
        let opened = ["net", "mnt"].map(|ns| std::fs::File::open(format!("/proc/{pid}/ns/{ns}")));
        let [Ok(net), Ok(mnt)] = opened else {
            return Probe::Unhealthy(format!("cannot enter the namespaces of task process {pid}"));
        };
        enter_namespaces(
            &mut cmd,
            vec![(net, libc::CLONE_NEWNET), (mnt, libc::CLONE_NEWNS)],
            Vec::new(),
        );
    }
    cmd.arg0(program)
        .args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Probe::Unhealthy(format!("cannot run {program:?}: {e}")),
    };
    let Some(pid) = child.id() else {
        return Probe::Unhealthy("the probe has no pid".to_string());
    };
    // Kills the probe's group if the probe is abandoned (timeout, or the
    // supervisor dropped it to stop the task); disarmed once it was reaped.
    let mut group = GroupGuard(Some(pid));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut status = None;
    {
        let read_out = collect(stdout, &mut out);
        let read_err = collect(stderr, &mut err);
        tokio::pin!(read_out, read_err);
        let (mut out_done, mut err_done) = (false, false);
        while status.is_none() || !out_done || !err_done {
            tokio::select! {
                waited = child.wait(), if status.is_none() => {
                    status = Some(waited);
                    // Whatever it left in its group would keep the pipes
                    // open; it dies with the probe, as a task's leftovers do.
                    // The group outlives its reaped leader only while it
                    // has members, so the id names no other group.
                    group.0 = None;
                    let _ = procfs::signal_group(pid, None, libc::SIGKILL);
                }
                () = &mut read_out, if !out_done => out_done = true,
                () = &mut read_err, if !err_done => err_done = true,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let status = match status {
        None => return Probe::Unhealthy(timed_out(timeout)),
        Some(Err(e)) => return Probe::Unhealthy(format!("cannot wait for the probe: {e}")),
        Some(Ok(status)) => status,
    };
    if status.success() {
        return Probe::Healthy;
    }
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "failed".to_string(),
    };
    match first_line(&out).or_else(|| first_line(&err)) {
        Some(line) => Probe::Unhealthy(format!("{what}: {line}")),
        None => Probe::Unhealthy(what),
    }
}

/// Kills a probe's process group when dropped while armed.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // The leader is not reaped yet, so the group is still ours.
            let _ = procfs::signal_group(pid, None, libc::SIGKILL);
        }
    }
}

/// Reads a pipe to its end, keeping the first [`PROBE_OUTPUT_MAX`] bytes;
/// the rest is read and dropped so that the probe never blocks on a full
/// pipe.
async fn collect(pipe: Option<impl AsyncRead + Unpin>, into: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let keep = n.min(PROBE_OUTPUT_MAX.saturating_sub(into.len()));
                into.extend_from_slice(&buf[..keep]);
            }
        }
    }
}

/// The first non-blank line of a probe's output, trimmed.
fn first_line(output: &[u8]) -> Option<String> {
    String::from_utf8_lossy(output)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
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
    if let Some(netns) = &spec.netns {
        let file = std::fs::File::open(&netns.path).map_err(|source| DriverError::Prepare {
            path: netns.path.clone(),
            source,
        })?;
        let mut binds = vec![(netns.resolv_conf.clone(), PathBuf::from("/etc/resolv.conf"))];
        // In its own mount namespace a task finds its secrets where a
        // container does, at /run/secrets (an empty directory on the node,
        // made once, that only the task's namespace mounts over).
        if let Some(dir) = &spec.files.secrets_dir {
            let at = PathBuf::from("/run/secrets");
            std::fs::create_dir_all(&at).map_err(|source| DriverError::Prepare {
                path: at.clone(),
                source,
            })?;
            binds.push((dir.clone(), at));
        }
        enter_namespaces(&mut cmd, vec![(file, libc::CLONE_NEWNET)], binds);
    }
    if let Some(dir) = &spec.template.working_dir {
        if !Path::new(dir).is_dir() {
            return Err(DriverError::Other(format!(
                "working directory {dir} is not a directory on this node"
            )));
        }
        cmd.current_dir(dir);
    }
    // Before the user changes: raising a hard limit needs root.
    set_limits(&mut cmd, &spec.template.ulimits)?;
    if let Some(user) = &spec.template.user {
        // After the namespaces: entering them needs the daemon's rights.
        run_as(&mut cmd, user)?;
    }

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
            netns: spec.netns.as_ref().map(|n| {
                Box::new(crate::driver::NetnsHandle {
                    name: n.name.clone(),
                    addr: n.addr,
                    networks: n.networks.clone(),
                })
            }),
            stop_signal: spec
                .template
                .stop_signal
                .as_deref()
                .and_then(flotilla_types::parse_signal),
        },
        exit,
        ports: spec.ports.clone(),
    })
}

/// Makes the child enter each namespace of `namespaces` (open
/// descriptors, kept until the child has them) and, with `binds`, a mount
/// namespace of its own in which each source is bound over its target
/// (`/etc/resolv.conf`, `/run/secrets`; mounts made there do not reach the
/// node).
fn enter_namespaces(
    cmd: &mut tokio::process::Command,
    namespaces: Vec<(std::fs::File, libc::c_int)>,
    binds: Vec<(PathBuf, PathBuf)>,
) {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let binds: Vec<(std::ffi::CString, std::ffi::CString)> = binds
        .iter()
        .filter_map(|(from, to)| {
            Some((
                std::ffi::CString::new(from.as_os_str().as_bytes()).ok()?,
                std::ffi::CString::new(to.as_os_str().as_bytes()).ok()?,
            ))
        })
        .collect();
    let root = c"/";
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls (setns, unshare, mount) on descriptors and
    // strings prepared before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (file, kind) in &namespaces {
                if libc::setns(file.as_raw_fd(), *kind) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if binds.is_empty() {
                return Ok(());
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let none = std::ptr::null();
            if libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (from, to) in &binds {
                if libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Makes the child run as `user` (`USER[:GROUP]`): its groups, then its
/// group, then its user, as the last step before exec. A daemon that is
/// not root can only run a task as itself.
fn run_as(cmd: &mut tokio::process::Command, user: &str) -> Result<(), DriverError> {
    let ids = crate::users::resolve_on_node(user)
        .map_err(|e| DriverError::Other(format!("user {user}: {e}")))?;
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        if ids.uid == euid && ids.gid == egid {
            return Ok(());
        }
        return Err(DriverError::Other(format!(
            "user {user}: the daemon runs as uid {euid}, not root, and runs tasks only as itself"
        )));
    }
    let groups: Vec<libc::gid_t> = ids.groups.clone();
    let (uid, gid) = (ids.uid, ids.gid);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes system calls (setgroups, setgid, setuid) on values prepared
    // before the fork; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The type setrlimit takes its resource as (glibc has its own).
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// The `RLIMIT_*` resource of a Docker limit name.
fn resource_of(name: &str) -> Option<Resource> {
    Some(match name {
        "as" => libc::RLIMIT_AS,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// Makes the child set each of `limits` (`ulimits`; -1 is unlimited)
/// before it runs: a limit the daemon may not set fails the start.
fn set_limits(
    cmd: &mut tokio::process::Command,
    limits: &[flotilla_types::Ulimit],
) -> Result<(), DriverError> {
    if limits.is_empty() {
        return Ok(());
    }
    let value = |v: i64| {
        if v < 0 {
            libc::RLIM_INFINITY
        } else {
            v as libc::rlim_t
        }
    };
    let mut prepared = Vec::with_capacity(limits.len());
    for l in limits {
        let resource = resource_of(&l.name)
            .ok_or_else(|| DriverError::Other(format!("unknown ulimit {:?}", l.name)))?;
        let limit = libc::rlimit {
            rlim_cur: value(l.soft),
            rlim_max: value(l.hard),
        };
        prepared.push((resource, limit));
    }
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setrlimit on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, limit) in &prepared {
                if libc::setrlimit(*resource, limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
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

    fn own_handle() -> Handle {
        let pid = std::process::id();
        Handle {
            pid: Some(pid),
            start_time: read_stat(pid).unwrap().map(|s| s.start_time),
            id: None,
            netns: None,
            stop_signal: None,
        }
    }

    fn shell(command: &str) -> HealthTest {
        HealthTest::Shell {
            command: command.to_string(),
        }
    }

    #[tokio::test]
    async fn shell_probes_report_the_exit_code_and_first_line() {
        let d = ProcessDriver;
        let h = own_handle();
        let t = Duration::from_secs(5);
        assert_eq!(d.probe(&h, &shell("true"), t).await, Probe::Healthy);
        assert_eq!(
            d.probe(&h, &shell("echo; echo not ready; echo more; exit 3"), t)
                .await,
            Probe::Unhealthy("exit code 3: not ready".into())
        );
        assert_eq!(
            d.probe(&h, &shell("echo to stderr >&2; exit 1"), t).await,
            Probe::Unhealthy("exit code 1: to stderr".into())
        );
        assert_eq!(
            d.probe(&h, &shell("exit 2"), t).await,
            Probe::Unhealthy("exit code 2".into())
        );
    }

    #[tokio::test]
    async fn probes_run_with_the_tasks_environment() {
        // This test process stands in for the task: the probe sees its
        // environment as it was at exec time.
        let home = std::env::var("HOME").unwrap_or_default();
        let d = ProcessDriver;
        let cmd = shell(&format!("test \"$HOME\" = '{home}'"));
        assert_eq!(
            d.probe(&own_handle(), &cmd, Duration::from_secs(5)).await,
            Probe::Healthy
        );
    }

    #[tokio::test]
    async fn exec_probes_run_without_a_shell() {
        let d = ProcessDriver;
        let h = own_handle();
        let t = Duration::from_secs(5);
        let exec = |argv: &[&str]| HealthTest::Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(d.probe(&h, &exec(&["true"]), t).await, Probe::Healthy);
        // No shell: `$X` and `;` are plain arguments.
        assert_eq!(
            d.probe(&h, &exec(&["sh", "-c", "exit 4", "$X;"]), t).await,
            Probe::Unhealthy("exit code 4".into())
        );
        assert_eq!(
            d.probe(&h, &exec(&["nosuchprobe"]), t).await,
            Probe::Unhealthy("executable file not found in $PATH: \"nosuchprobe\"".into())
        );
    }

    #[tokio::test]
    async fn slow_probes_are_killed_at_the_timeout() {
        let d = ProcessDriver;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("pid");
        let cmd = shell(&format!("sleep 30 & echo $! > {}; wait", marker.display()));
        let started = std::time::Instant::now();
        assert_eq!(
            d.probe(&own_handle(), &cmd, Duration::from_millis(300))
                .await,
            Probe::Unhealthy("probe timed out after 300 ms".into())
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        let sleep: u32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The whole group was killed, the shell's sleep too.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while read_stat(sleep).unwrap().is_some_and(|s| !s.has_ended()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the probe's sleep survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn leftovers_of_a_finished_probe_do_not_hold_it() {
        let d = ProcessDriver;
        let started = std::time::Instant::now();
        assert_eq!(
            d.probe(
                &own_handle(),
                &shell("sleep 30 & exit 0"),
                Duration::from_secs(10)
            )
            .await,
            Probe::Healthy
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Task t1 of `template`, logging to `log`, on no network and with no
    /// ports or files.
    fn bare_spec(template: flotilla_types::TaskTemplate, log: PathBuf) -> StartSpec {
        StartSpec {
            task_id: "t1".into(),
            template,
            env: std::collections::BTreeMap::new(),
            log_path: log,
            ports: Vec::new(),
            netns: None,
            engine_networks: Vec::new(),
            resolv_conf: None,
            files: Default::default(),
        }
    }

    #[tokio::test]
    async fn ulimits_apply_to_processes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let template = flotilla_types::TaskTemplate {
            command: vec!["sh".into(), "-c".into(), "ulimit -Sn; ulimit -Hn".into()],
            ulimits: vec![flotilla_types::Ulimit {
                name: "nofile".into(),
                soft: 123,
                hard: 456,
            }],
            ..Default::default()
        };
        let spec = bare_spec(template, log.clone());
        let started = ProcessDriver.start(spec).await.unwrap();
        started.exit.await;
        let out = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, ["123", "456"], "{out}");
        assert_eq!(resource_of("nofile"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(resource_of("bogus"), None);
    }

    #[tokio::test]
    async fn working_dir_user_and_stop_signal_apply_to_processes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let template = flotilla_types::TaskTemplate {
            command: vec![
                "sh".into(),
                "-c".into(),
                "pwd; id -u; id -G; trap 'echo got-int; exit 7' INT; echo ready; \
                 while :; do sleep 0.1; done"
                    .into(),
            ],
            working_dir: Some("/tmp".into()),
            // As root the task becomes nobody; otherwise it stays itself.
            user: Some(if root {
                "65534:65534".into()
            } else {
                // SAFETY: as above.
                unsafe { format!("{}:{}", libc::geteuid(), libc::getegid()) }
            }),
            stop_signal: Some("SIGINT".into()),
            ..Default::default()
        };
        let spec = bare_spec(template, log.clone());
        let d = ProcessDriver;
        let started = d.start(spec).await.unwrap();
        assert_eq!(started.handle.stop_signal, Some(libc::SIGINT));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the task never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut exit = started.exit;
        let ended = d
            .stop(&started.handle, Duration::from_secs(10), &mut exit)
            .await
            .unwrap();
        // SIGINT, not SIGTERM: the trap ran.
        assert_eq!(ended, Exit::Code(7));
        let out = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "/tmp");
        if root {
            assert_eq!(lines[1], "65534");
            assert_eq!(lines[2], "65534");
        }
        assert!(out.contains("got-int"), "{out}");
    }

    #[tokio::test]
    async fn a_missing_working_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spec = bare_spec(
            flotilla_types::TaskTemplate {
                command: vec!["true".into()],
                working_dir: Some("/nonexistent/dir".into()),
                ..Default::default()
            },
            dir.path().join("out.log"),
        );
        let err = ProcessDriver.start(spec).await.unwrap_err().to_string();
        assert_eq!(
            err,
            "working directory /nonexistent/dir is not a directory on this node"
        );
    }

    #[test]
    fn explicit_paths_are_kept() {
        let p = lookup_executable("./x/y", &OsString::new()).unwrap();
        assert_eq!(p, PathBuf::from("./x/y"));
    }
}
