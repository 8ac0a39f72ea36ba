//! Linux process facts the process driver relies on: `/proc/<pid>/stat`,
//! pidfds and process-group signals.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use thiserror::Error;

/// Why a process fact could not be read.
#[derive(Debug, Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: &'static str },
}

/// The parts of `/proc/<pid>/stat` the agent needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead)...
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// A zombie has ended; only its parent has not collected it yet.
    pub fn has_ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub fn read_stat(pid: u32) -> Result<Option<ProcStat>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_stat(&text)
            .map(Some)
            .map_err(|reason| ProcError::Parse { path, reason }),
        // ESRCH shows up when the process ends between open and read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// The process `pid` exists, has not ended, and started at `start_time`
/// (so the pid was not reused by another process).
pub fn is_same_live_process(pid: u32, start_time: u64) -> Result<bool, ProcError> {
    Ok(read_stat(pid)?.is_some_and(|stat| !stat.has_ended() && stat.start_time == start_time))
}

fn parse_stat(text: &str) -> Result<ProcStat, &'static str> {
    // The command name (field 2) is in parentheses and may itself hold
    // spaces and parentheses, so fields are counted from the last ')'.
    let close = text.rfind(')').ok_or("no ')' after the command name")?;
    let mut fields = text[close + 1..].split_ascii_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or("no state field")?;
    // Field 3 was the state; field 22 is 18 further.
    let start_time = fields
        .nth(18)
        .ok_or("no start time field")?
        .parse()
        .map_err(|_| "start time is not a number")?;
    Ok(ProcStat { state, start_time })
}

/// Opens a pidfd for `pid` (Linux 5.3+). It becomes readable once the
/// process ends, whoever its parent is.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: pidfd_open takes a pid and flags, touches no memory of ours
    // and returns either a new file descriptor or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process group led by `pid`.
///
/// When the leader still exists but started at another time than
/// `start_time`, its pid was reused, which also means our group is gone
/// (Linux keeps a pid number reserved while it names a live group): nothing
/// is sent. When the leader is gone, members of its group may remain and
/// are signalled. A group that no longer exists is not an error.
pub fn signal_group(pid: u32, start_time: Option<u64>, signal: i32) -> io::Result<()> {
    // pid 0 and -1 mean "our own group" and "every process" to kill(2), and
    // 1 is init: none of them can be a task's group.
    let pgid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    if let Some(start_time) = start_time {
        match read_stat(pid) {
            Ok(Some(stat)) if stat.start_time != start_time => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    // SAFETY: kill(2) takes plain integers; a negative pid addresses the
    // process group, and pgid > 1 was checked above.
    let ret = unsafe { libc::kill(-pgid, signal) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";
        let stat = parse_stat(line);
        assert_eq!(
            stat,
            Ok(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
    }

    #[test]
    fn refuses_truncated_stat() {
        assert!(parse_stat("1 (x) S 1 2 3").is_err());
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        let stat = read_stat(me).unwrap().unwrap();
        assert!(!stat.has_ended());
        assert!(is_same_live_process(me, stat.start_time).unwrap());
        assert!(!is_same_live_process(me, stat.start_time + 1).unwrap());
    }

    #[test]
    fn refuses_dangerous_pids() {
        for pid in [0, 1, u32::MAX] {
            assert!(signal_group(pid, None, 0).is_err(), "{pid}");
        }
    }
}
