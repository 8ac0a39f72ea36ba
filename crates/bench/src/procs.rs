//! Processes as /proc shows them: resident memory, the bench's environment
//! mark, signals, bounded waits, and facts about the machine.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The environment variable that marks the daemon and, through inheritance,
/// every task it starts, so that leftovers can be found and killed.
pub const MARK_VAR: &str = "FLOTILLA_BENCH_MARK";

/// A mark unique to this run and daemon.
pub fn new_mark(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{label}-{}-{nanos:x}", std::process::id())
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS in {path} (process exited or is a zombie?)"))
}

/// KiB to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every live process whose environment holds `MARK_VAR=mark`, except
/// `exclude`. Zombies have an empty environ and so never match.
pub fn marked_pids(mark: &str, exclude: Option<u32>) -> Vec<u32> {
    let needle = format!("{MARK_VAR}={mark}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if Some(pid) == exclude || pid == std::process::id() {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// SIGKILLs every marked process (but `exclude`) until none is left or
/// `deadline` passes. Returns how many were killed; fails naming the
/// survivors.
pub fn kill_marked(mark: &str, exclude: Option<u32>, deadline: Duration) -> Result<usize> {
    let start = Instant::now();
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let pids = marked_pids(mark, exclude);
        if pids.is_empty() {
            return Ok(killed.len());
        }
        if start.elapsed() >= deadline {
            bail!(
                "{} process(es) with {MARK_VAR}={mark} still alive after {deadline:?} of SIGKILL: {pids:?}",
                pids.len()
            );
        }
        for pid in pids {
            signal(pid, libc::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child to exit, up to `deadline`. True if it exited.
pub fn wait_child(child: &mut Child, deadline: Duration) -> bool {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return false,
        }
        if start.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion (blocking), killing it after `deadline`.
/// For cleanup paths, which may run in `Drop`.
pub fn run_blocking(program: &str, args: &[&str], deadline: Duration) -> Result<Output> {
    let what = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    if !wait_child(&mut child, deadline) {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{what} did not finish within {deadline:?}; killed it");
    }
    child
        .wait_with_output()
        .with_context(|| format!("collecting the output of {what}"))
}

/// The first pid of a program, by name (`pidof`).
pub fn pidof(name: &str) -> Result<u32> {
    let out = run_blocking("pidof", &["-s", name], Duration::from_secs(5))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no process named {name} (pidof found none)"))
}

/// Facts about the machine the figures were taken on.
pub fn machine_facts() -> Vec<(&'static str, String)> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".to_string());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    vec![
        ("nproc", nproc),
        ("cpu", cpu),
        ("memory", mem),
        ("kernel", read("/proc/sys/kernel/osrelease")),
        ("load average at start", read("/proc/loadavg")),
    ]
}

/// True if `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
