//! Container images for tests, built locally: no registry is reachable on
//! the machines that run the tests, so nothing can be pulled.
//!
//! [`busybox_image`] builds an image `FROM scratch` holding Debian's static
//! busybox (`busybox-static`) at `/bin/busybox`, with every applet linked
//! beside it (`/bin/sh`, `sleep`, `httpd`, `nc`, `wget`, ...) and a page at
//! `/www/index.html` for `httpd -h /www`. [`docker_available`] tells whether
//! an engine answers at all. Both use the `docker` CLI.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where Debian's `busybox-static` puts the binary.
const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// How long `docker info` may take before the engine counts as absent.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serialises builds within one test binary: tests run on threads and
/// often ask for the same tag at once.
static BUILD: Mutex<()> = Mutex::new(());

/// Why an image could not be built.
#[derive(Debug)]
pub enum ImageError {
    /// No static busybox on this machine.
    BusyboxMissing,
    /// The `docker` CLI is missing or the engine failed.
    Docker { what: String, detail: String },
    /// Preparing the build context failed.
    Io(std::io::Error),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::BusyboxMissing => write!(
                f,
                "no static busybox at {}: apt-get install busybox-static (scripts/test-deps.sh does)",
                BUSYBOX_PATHS.join(" or ")
            ),
            ImageError::Docker { what, detail } => write!(f, "{what}: {detail}"),
            ImageError::Io(e) => write!(f, "cannot prepare the image build context: {e}"),
        }
    }
}

impl std::error::Error for ImageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ImageError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for ImageError {
    fn from(e: std::io::Error) -> Self {
        ImageError::Io(e)
    }
}

/// True when a Docker Engine answers `docker info` within a few seconds.
pub fn docker_available() -> bool {
    let Ok(mut child) = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + INFO_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// The static busybox of this machine.
pub fn busybox_path() -> Result<PathBuf, ImageError> {
    BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(ImageError::BusyboxMissing)
}

/// Builds (once: an existing `tag` is reused) a busybox image `FROM scratch`
/// and returns its tag. `healthcheck` is the rest of a Dockerfile
/// `HEALTHCHECK` line, such as
/// `--interval=2s --timeout=1s --retries=2 CMD ["/bin/true"]`; a different
/// healthcheck needs a different tag. The image has no `CMD`: tasks give
/// their command.
pub fn busybox_image(tag: &str, healthcheck: Option<&str>) -> Result<String, ImageError> {
    // A poisoned lock only means another test panicked mid-build; the
    // engine's state is what counts, and it is checked again below.
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if image_exists(tag)? {
        return Ok(tag.to_string());
    }
    let busybox = busybox_path()?;
    let context = tempfile::tempdir()?;
    write_context(context.path(), &busybox, healthcheck)?;
    let out = Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(context.path())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Docker {
            what: "cannot run docker build".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ImageError::Docker {
            what: format!("docker build of {tag} failed"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(tag.to_string())
}

fn image_exists(tag: &str) -> Result<bool, ImageError> {
    let status = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", tag])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| ImageError::Docker {
            what: "cannot run docker image inspect".into(),
            detail: e.to_string(),
        })?;
    Ok(status.success())
}

/// `bin/` with busybox and a relative symlink per applet (COPY keeps
/// symlinks), `www/index.html`, `tmp/`, and the Dockerfile.
fn write_context(dir: &Path, busybox: &Path, healthcheck: Option<&str>) -> Result<(), ImageError> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(busybox, bin.join("busybox"))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| ImageError::Docker {
            what: "cannot run busybox --list".into(),
            detail: e.to_string(),
        })?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        std::os::unix::fs::symlink("busybox", bin.join(applet))?;
    }
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "flotilla test page\n")?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let mut dockerfile = String::from(
        "FROM scratch\nCOPY bin /bin\nCOPY www /www\nCOPY tmp /tmp\nENV PATH=/bin\n\
         LABEL com.flotilla.test-image=1\n",
    );
    if let Some(line) = healthcheck {
        dockerfile.push_str("HEALTHCHECK ");
        dockerfile.push_str(line);
        dockerfile.push('\n');
    }
    std::fs::write(dir.join("Dockerfile"), dockerfile)?;
    Ok(())
}
