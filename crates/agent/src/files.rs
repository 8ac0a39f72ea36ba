//! The files of a task's secrets and configs, written to memory only.
//!
//! Each agent keeps them under a root on a memory file system (tmpfs:
//! `/dev/shm`, else `$XDG_RUNTIME_DIR`), named after its state dir so
//! that a restarted agent finds what it wrote:
//! `ROOT/<task id>/secrets/<target>` and `ROOT/<task id>/configs/<path>`.
//! A process task is told the two directories (`FLOTILLA_SECRETS_DIR`,
//! `FLOTILLA_CONFIGS_DIR`); a container gets each file bound read-only at
//! its path (`/run/secrets/NAME`, a config's target). The files go when
//! the task's directory does ([`crate::record::remove_task_dir`]); a node
//! never writes them to its disk.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use flotilla_types::{SecretKind, TaskFile};

/// Why a task's files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(
        "no memory file system for secrets and configs: neither /dev/shm nor $XDG_RUNTIME_DIR is a tmpfs"
    )]
    NoTmpfs,
    #[error("cannot write {what} under {path}: {source}")]
    Write {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A file bound into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    pub source: PathBuf,
    pub target: String,
}

/// Where a task's files are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskFiles {
    pub secrets_dir: Option<PathBuf>,
    pub configs_dir: Option<PathBuf>,
    pub mounts: Vec<FileMount>,
}

impl TaskFiles {
    /// The task's environment entries that name the directories.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(d) = &self.secrets_dir {
            env.push(("FLOTILLA_SECRETS_DIR".into(), d.display().to_string()));
        }
        if let Some(d) = &self.configs_dir {
            env.push(("FLOTILLA_CONFIGS_DIR".into(), d.display().to_string()));
        }
        env
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Whether `path` is on a memory file system.
pub fn on_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        if libc::statfs(c.as_ptr(), &mut buf) != 0 {
            return false;
        }
        let kind = buf.f_type as i64;
        kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
    }
}

/// FNV-1a, for a root name that stays the same across builds.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The root of this agent's task files: on the first memory file system
/// found, named after `state_dir`.
pub fn root_for(state_dir: &Path) -> Result<PathBuf, FilesError> {
    let canonical = fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let name = format!(
        "flotilla-{:016x}",
        fnv(canonical.as_os_str().as_encoded_bytes())
    );
    let mut candidates = vec![PathBuf::from("/dev/shm")];
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(PathBuf::from(run));
    }
    candidates
        .into_iter()
        .find(|c| c.is_dir() && on_tmpfs(c))
        .map(|c| c.join(name))
        .ok_or(FilesError::NoTmpfs)
}

/// Writes `files` for task `task_id` under `root`, replacing what was
/// there; chowns each to its owner when `chown` (a root daemon).
pub fn write(
    root: &Path,
    task_id: &str,
    files: &[TaskFile],
    chown: bool,
) -> Result<TaskFiles, FilesError> {
    if !crate::record::valid_task_id(task_id) {
        return Err(FilesError::Invalid(format!("invalid task id {task_id:?}")));
    }
    let mut out = TaskFiles::default();
    if files.is_empty() {
        return Ok(out);
    }
    let task = root.join(task_id);
    let fail = |what: &str, path: &Path| {
        let (what, path) = (what.to_string(), path.to_path_buf());
        move |source| FilesError::Write { what, path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(fail("the files root", root))?;
    // Only the daemon lists the root; a container reaches its files
    // through its binds, a process task through its directories.
    fs::set_permissions(root, fs::Permissions::from_mode(0o711))
        .map_err(fail("the files root", root))?;
    match fs::remove_dir_all(&task) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(fail("the task's old files", &task)(e))
        }
        _ => {}
    }
    for f in files {
        let rel = Path::new(&f.rel);
        if f.rel.is_empty()
            || rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(FilesError::Invalid(format!(
                "{} path {:?} is not a plain relative path",
                f.kind, f.rel
            )));
        }
        let dir = match f.kind {
            SecretKind::Secret => task.join("secrets"),
            SecretKind::Config => task.join("configs"),
        };
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(fail("a directory", parent))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(fail(f.kind.noun(), &path))?;
        file.write_all(&f.data.0)
            .map_err(fail(f.kind.noun(), &path))?;
        if chown {
            std::os::unix::fs::chown(&path, Some(f.uid), Some(f.gid))
                .map_err(fail(f.kind.noun(), &path))?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))
            .map_err(fail(f.kind.noun(), &path))?;
        match f.kind {
            SecretKind::Secret => out.secrets_dir = Some(dir),
            SecretKind::Config => out.configs_dir = Some(dir),
        }
        out.mounts.push(FileMount {
            source: path,
            target: f.path.clone(),
        });
    }
    Ok(out)
}

/// Removes task `task_id`'s files under `root`; nothing there is fine.
pub fn remove(root: &Path, task_id: &str) -> io::Result<()> {
    if !crate::record::valid_task_id(task_id) {
        return Ok(());
    }
    match fs::remove_dir_all(root.join(task_id)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_types::SecretData;

    fn file(kind: SecretKind, rel: &str, path: &str, data: &[u8]) -> TaskFile {
        TaskFile {
            kind,
            path: path.into(),
            rel: rel.into(),
            uid: 0,
            gid: 0,
            mode: 0o440,
            data: SecretData(data.to_vec()),
            template: false,
        }
    }

    #[test]
    fn files_land_in_their_directories_with_their_mode_and_go_with_the_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let files = [
            file(SecretKind::Secret, "pw", "/run/secrets/pw", b"hunter2"),
            file(SecretKind::Config, "etc/app.conf", "/etc/app.conf", b"x=1"),
        ];
        let written = write(&root, "t1", &files, false).expect("write");
        let secrets = written.secrets_dir.clone().expect("secrets dir");
        assert_eq!(fs::read(secrets.join("pw")).expect("read"), b"hunter2");
        let mode = fs::metadata(secrets.join("pw"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o440);
        let configs = written.configs_dir.clone().expect("configs dir");
        assert_eq!(
            fs::read(configs.join("etc/app.conf")).expect("read"),
            b"x=1"
        );
        assert_eq!(written.mounts[0].target, "/run/secrets/pw");
        assert_eq!(written.mounts[1].source, configs.join("etc/app.conf"));
        let env = written.env();
        assert_eq!(env[0].0, "FLOTILLA_SECRETS_DIR");
        // Written again (a restart of the task): replaced, not refused.
        write(&root, "t1", &files, false).expect("again");
        remove(&root, "t1").expect("remove");
        assert!(!root.join("t1").exists());
        remove(&root, "t1").expect("twice is fine");
    }

    #[test]
    fn a_path_out_of_the_task_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = [file(SecretKind::Secret, "../x", "/run/secrets/../x", b"a")];
        let e = write(dir.path(), "t1", &bad, false).unwrap_err();
        assert!(e.to_string().contains("not a plain relative path"), "{e}");
        assert!(write(dir.path(), "../t", &[], false).is_err());
    }

    #[test]
    fn the_root_is_on_a_memory_file_system_and_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        match root_for(dir.path()) {
            Ok(root) => {
                assert!(on_tmpfs(root.parent().expect("parent")));
                assert_eq!(root_for(dir.path()).ok(), Some(root));
            }
            Err(e) => assert!(matches!(e, FilesError::NoTmpfs)),
        }
        assert!(!on_tmpfs(Path::new("/nonexistent/path")));
    }
}
