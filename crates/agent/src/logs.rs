//! Task logs: one combined stdout+stderr file per task, kept under a size
//! cap by copy-and-truncate, and the times at which its lines were written.
//!
//! The running child holds its log open with `O_APPEND`, so after the
//! janitor truncates the file the child's next write lands at the new end
//! (offset 0) and no descriptor has to be reopened. The price: lines written
//! between the copy and the truncation are lost. At most two generations
//! exist: `output.log` and `output.log.1`.
//!
//! # Times
//! A process task writes straight into the file, so nothing stamps its
//! lines. Instead the agent samples each running task's log once a tick
//! ([`mark_growth`]) and, when it grew, appends a mark `(length, mtime)` to
//! `output.log.marks`: every byte below `length` had been written by
//! `mtime`, the file's modification time at the sample. A line's time is the
//! time of the first mark at or past its end; bytes past the last mark take
//! the file's current modification time. So a line's time is the time of
//! the last write to the file before the sample that first saw it: never
//! earlier than the line was written, and at most one sampling period (the
//! agent's one-second tick) later (measured: 0 to 940 ms, 410 ms on
//! average, for a line every 130 ms; a few ms early at worst, as file times
//! come from the kernel's coarse clock). Lines written while the daemon was down
//! get the time of the last write before it came back. A rotation moves the
//! marks along with the content (`output.log.1.marks`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::task_dir;

/// Why a log could not be rotated, marked or read.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("cannot rotate the task log {path}: {source}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot record the growth of the task log {path}: {source}")]
    Mark {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the task log {path}: {source}")]
    Read {
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
    with_suffix(log, ".1")
}

/// The `(length, time)` marks of a log file.
pub fn marks_path(log: &Path) -> PathBuf {
    with_suffix(log, ".marks")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
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
    let meta = match fs::metadata(log) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    if meta.len() <= cap {
        return Ok(false);
    }
    let rotated = rotated_log_path(log);
    let tmp = with_suffix(&rotated, ".tmp");
    // Copy to a temporary name first so that a reader never sees a half
    // written `.1` file.
    let copied = fs::copy(log, &tmp).map_err(err)?;
    // Everything copied had been written by the time of this sample.
    append_mark(&marks_path(log), copied, mtime_ms(&meta)).map_err(err)?;
    fs::rename(&tmp, &rotated).map_err(err)?;
    match fs::rename(marks_path(log), marks_path(&rotated)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|f| f.set_len(0))
        .map_err(err)?;
    Ok(true)
}

/// Samples `log`: when it grew since its last mark, appends the mark
/// `(length, modification time)`. Returns whether it did.
pub fn mark_growth(log: &Path) -> Result<bool, LogError> {
    let marks = marks_path(log);
    let err = |source| LogError::Mark {
        path: marks.clone(),
        source,
    };
    let meta = match fs::metadata(log) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    let len = meta.len();
    match last_mark(&marks).map_err(err)? {
        Some((offset, _)) if offset == len => Ok(false),
        Some((offset, _)) if offset > len => {
            // Emptied behind our back (a crash in the middle of a
            // rotation): the old marks describe nothing any more.
            fs::write(&marks, format_mark(len, mtime_ms(&meta))).map_err(err)?;
            Ok(true)
        }
        None if len == 0 => Ok(false),
        _ => {
            append_mark(&marks, len, mtime_ms(&meta)).map_err(err)?;
            Ok(true)
        }
    }
}

fn format_mark(offset: u64, ts_ms: u64) -> String {
    format!("{offset} {ts_ms}\n")
}

fn append_mark(marks: &Path, offset: u64, ts_ms: u64) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(marks)?
        .write_all(format_mark(offset, ts_ms).as_bytes())
}

/// The last mark of a marks file, reading only its end.
fn last_mark(marks: &Path) -> io::Result<Option<(u64, u64)>> {
    let mut f = match File::open(marks) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64)))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    Ok(parse_marks(&tail).last().copied())
}

/// The marks that can date bytes past `start`: a follower reads only the
/// end of the marks file, the whole file only when that end does not reach
/// back to `start`.
fn marks_from(marks: &Path, start: u64) -> io::Result<Vec<(u64, u64)>> {
    const END: u64 = 64 * 1024;
    let mut f = match File::open(marks) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len > END && start > 0 {
        f.seek(SeekFrom::Start(len - END))?;
        let mut end = String::new();
        Read::by_ref(&mut f).take(END).read_to_string(&mut end)?;
        // The first line may be cut.
        let whole = end.split_once('\n').map_or("", |(_, rest)| rest);
        let found = parse_marks(whole);
        if found.first().is_some_and(|(offset, _)| *offset <= start) {
            return Ok(found);
        }
        f.seek(SeekFrom::Start(0))?;
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(parse_marks(&text))
}

/// Parses `offset ts_ms` lines; a torn or foreign line is skipped.
pub fn parse_marks(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let (offset, ts) = l.split_once(' ')?;
            Some((offset.parse().ok()?, ts.parse().ok()?))
        })
        .collect()
}

fn mtime_ms(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One line of a task's log (without its newline) and its time, in Unix
/// milliseconds (see the module docs for what the time means).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub ts_ms: u64,
    pub text: String,
}

/// What [`read_log`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogRead {
    pub lines: Vec<LogLine>,
    /// Where the next read of `output.log` starts.
    pub next: u64,
    /// The read stopped at its byte budget: more is there already.
    pub more: bool,
}

/// How long an unfinished last line is held back while following, waiting
/// for the rest of it.
pub const PARTIAL_GRACE: Duration = Duration::from_secs(1);

/// Reads the lines of `log` with their times. `from: None` reads both
/// generations whole; `Some(offset)` reads `output.log` from `offset` (a
/// log that shrank was rotated: the rest of `output.log.1` from `offset`
/// comes first), at most `max_bytes` of it. With `hold_partial`, an
/// unfinished last line written less than [`PARTIAL_GRACE`] ago is left for
/// the next read. A log that does not exist (yet) reads as empty.
pub fn read_log(
    log: &Path,
    from: Option<u64>,
    max_bytes: u64,
    hold_partial: bool,
) -> Result<LogRead, LogError> {
    let mut out = LogRead::default();
    let rotated = rotated_log_path(log);
    let start = match from {
        None => {
            if let Some(seg) = read_segment(&rotated, 0, u64::MAX)? {
                out.lines.extend(seg.lines(true).0);
            }
            0
        }
        Some(offset) => {
            let len = file_len(log)?;
            if len < offset {
                if let Some(seg) = read_segment(&rotated, offset, u64::MAX)? {
                    out.lines.extend(seg.lines(true).0);
                }
                0
            } else {
                offset
            }
        }
    };
    out.next = start;
    let budget = if from.is_some() { max_bytes } else { u64::MAX };
    if let Some(seg) = read_segment(log, start, budget)? {
        let fresh = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            .saturating_sub(seg.mtime_ms)
            < PARTIAL_GRACE.as_millis() as u64;
        out.more = seg.truncated;
        // A read cut by its budget ends mid-line: the line is finished by
        // the next read, unless it alone is longer than the budget.
        let emit_partial = if seg.truncated {
            !seg.bytes.contains(&b'\n')
        } else {
            !(hold_partial && fresh)
        };
        let (lines, consumed) = seg.lines(emit_partial);
        out.lines.extend(lines);
        out.next = start + consumed as u64;
    }
    // Times never go backwards within a task, whatever the clock did.
    let mut latest = 0;
    for line in &mut out.lines {
        latest = latest.max(line.ts_ms);
        line.ts_ms = latest;
    }
    Ok(out)
}

fn file_len(path: &Path) -> Result<u64, LogError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(LogError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Bytes of one log file from an offset, with what dates them.
struct Segment {
    start: u64,
    bytes: Vec<u8>,
    marks: Vec<(u64, u64)>,
    mtime_ms: u64,
    truncated: bool,
}

impl Segment {
    fn lines(&self, emit_partial: bool) -> (Vec<LogLine>, usize) {
        split_timed(
            &self.bytes,
            self.start,
            &self.marks,
            self.mtime_ms,
            emit_partial,
        )
    }
}

fn read_segment(path: &Path, start: u64, max: u64) -> Result<Option<Segment>, LogError> {
    let err = |source| LogError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    let meta = f.metadata().map_err(err)?;
    if meta.len() <= start {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(start)).map_err(err)?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes).map_err(err)?;
    let marks = marks_from(&marks_path(path), start).map_err(err)?;
    Ok(Some(Segment {
        start,
        truncated: start + (bytes.len() as u64) < meta.len(),
        bytes,
        marks,
        mtime_ms: mtime_ms(&meta),
    }))
}

/// Splits `bytes` (found at offset `base` of their file) into lines, each
/// with the time of the first mark at or past its end, or `fallback` past
/// the last mark. Without `emit_partial` an unfinished last line is left
/// out. Returns the lines and how many bytes they used.
pub fn split_timed(
    bytes: &[u8],
    base: u64,
    marks: &[(u64, u64)],
    fallback: u64,
    emit_partial: bool,
) -> (Vec<LogLine>, usize) {
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (end, next) = match bytes[pos..].iter().position(|b| *b == b'\n') {
            Some(i) => (pos + i, pos + i + 1),
            None if emit_partial => (bytes.len(), bytes.len()),
            None => break,
        };
        let line_end = base + next as u64;
        let i = marks.partition_point(|(offset, _)| *offset < line_end);
        let ts_ms = marks.get(i).map_or(fallback, |(_, ts)| *ts);
        lines.push(LogLine {
            ts_ms,
            text: String::from_utf8_lossy(&bytes[pos..end]).into_owned(),
        });
        pos = next;
    }
    (lines, pos)
}

/// The last `n` lines.
pub fn tail(lines: &mut Vec<LogLine>, n: u64) {
    let keep = usize::try_from(n).unwrap_or(usize::MAX);
    if lines.len() > keep {
        lines.drain(..lines.len() - keep);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, ms: u64) {
        let f = OpenOptions::new().append(true).open(path).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_millis(ms))
            .unwrap();
    }

    fn append(path: &Path, text: &str) {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

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
        assert_eq!(
            marks_path(&rotated_log_path(&p)),
            PathBuf::from("/data/agent/tasks/abc/output.log.1.marks")
        );
    }

    #[test]
    fn lines_take_the_time_of_the_first_mark_past_them() {
        let marks = [(4, 100), (10, 200)];
        let (lines, used) = split_timed(b"one\ntwo\nthree\nfo", 0, &marks, 300, false);
        let got: Vec<(u64, &str)> = lines.iter().map(|l| (l.ts_ms, l.text.as_str())).collect();
        assert_eq!(got, [(100, "one"), (200, "two"), (300, "three")]);
        assert_eq!(used, 14);
        let (lines, used) = split_timed(b"fo", 14, &marks, 300, true);
        assert_eq!((lines[0].text.as_str(), used), ("fo", 2));
        assert_eq!(parse_marks("4 100\ntorn\n10 2"), [(4, 100), (10, 2)]);
    }

    #[test]
    fn marks_follow_growth_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        assert!(!mark_growth(&log).unwrap());
        append(&log, "a\nb\n");
        set_mtime(&log, 1_000);
        assert!(mark_growth(&log).unwrap());
        assert!(!mark_growth(&log).unwrap(), "no growth, no mark");
        append(&log, "c\n");
        set_mtime(&log, 2_000);
        assert!(rotate_if_over_cap(&log, 5).unwrap());
        append(&log, "d\n");
        set_mtime(&log, 3_000);
        let all = read_log(&log, None, u64::MAX, false).unwrap();
        let got: Vec<(u64, &str)> = all
            .lines
            .iter()
            .map(|l| (l.ts_ms, l.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [(1_000, "a"), (1_000, "b"), (2_000, "c"), (3_000, "d")]
        );
        assert_eq!(all.next, 2);
        // A follower at offset 4 of the old generation gets the rest of it.
        let rest = read_log(&log, Some(4), 1 << 20, false).unwrap();
        let texts: Vec<&str> = rest.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["c", "d"]);
        assert_eq!(read_log(&log, Some(2), 1 << 20, false).unwrap().lines, []);
    }

    #[test]
    fn a_follower_reads_only_the_end_of_long_marks() {
        let dir = tempfile::tempdir().unwrap();
        let marks = dir.path().join("m");
        let text: String = (1..=10_000u64).map(|i| format_mark(i * 10, i)).collect();
        fs::write(&marks, &text).unwrap();
        let all = marks_from(&marks, 0).unwrap();
        assert_eq!(all.len(), 10_000);
        let late = marks_from(&marks, 99_000).unwrap();
        assert!(late.len() < 10_000 && late[0].0 <= 99_000, "{}", late.len());
        assert_eq!(late.last(), all.last());
        assert_eq!(marks_from(&marks, 5).unwrap().len(), 10_000);
    }

    #[test]
    fn a_fresh_partial_line_waits_when_following() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("output.log");
        append(&log, "whole\nhal");
        let held = read_log(&log, Some(0), 1 << 20, true).unwrap();
        assert_eq!((held.lines.len(), held.next), (1, 6));
        let shown = read_log(&log, Some(0), 1 << 20, false).unwrap();
        assert_eq!((shown.lines.len(), shown.next), (2, 9));
        let budget = read_log(&log, Some(0), 3, true).unwrap();
        assert!(budget.more);
        let missing = read_log(&dir.path().join("none"), None, 1, true).unwrap();
        assert_eq!(missing, LogRead::default());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let line = |t: &str| LogLine {
            ts_ms: 0,
            text: t.into(),
        };
        let mut lines = vec![line("a"), line("b"), line("c")];
        tail(&mut lines, 2);
        assert_eq!(lines, [line("b"), line("c")]);
        tail(&mut lines, 5);
        assert_eq!(lines.len(), 2);
        tail(&mut lines, 0);
        assert!(lines.is_empty());
    }
}
