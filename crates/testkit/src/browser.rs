//! A headless Chromium driven over the DevTools protocol, for tests of
//! the dashboard: it loads a page, evaluates script in it, waits for what
//! the page shows and takes screenshots. The protocol runs over a pipe
//! (`--remote-debugging-pipe`: Chromium reads commands from its fd 3 and
//! writes answers to its fd 4, each a JSON message ended by a NUL byte),
//! so no WebSocket client is needed. Chromium and everything it starts run
//! in a process group of their own, killed when the [`Browser`] drops.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// The Chromium binary: `FLOTILLA_CHROMIUM`, or the first of Debian's and
/// the usual names on `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    to: File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    Ok((fds[0], fds[1]))
}

impl Browser {
    /// Starts Chromium with a viewport of `width` by `height` and an empty
    /// page, certificate errors ignored (the dashboard is served with the
    /// cluster CA's certificate, which the browser does not know).
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        let bin = chromium().ok_or_else(|| {
            anyhow!("no Chromium found (install Debian's chromium: scripts/test-deps.sh does, or set FLOTILLA_CHROMIUM)")
        })?;
        let profile = tempfile::Builder::new()
            .prefix("flt-chromium-")
            .tempdir()
            .context("a Chromium profile dir")?;
        let (cmd_read, cmd_write) = pipe()?;
        let (ans_read, ans_write) = pipe()?;
        let mut command = Command::new(&bin);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--ignore-certificate-errors",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec: the
        // two pipe ends move to fds 3 and 4 (first above 10, so that
        // neither overwrites the other), and the child leads a process
        // group of its own.
        unsafe {
            command.pre_exec(move || {
                let r = libc::fcntl(cmd_read, libc::F_DUPFD, 10);
                let w = libc::fcntl(ans_write, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(r);
                libc::close(w);
                libc::setsid();
                Ok(())
            });
        }
        let spawned = command.spawn();
        // SAFETY: closing our copies of the child's ends; ours stay open.
        unsafe {
            libc::close(cmd_read);
            libc::close(ans_write);
        }
        let child = spawned.with_context(|| format!("starting {}", bin.display()))?;
        // SAFETY: each descriptor is ours alone from here on.
        let to = unsafe { File::from_raw_fd(cmd_write) };
        let mut answers = unsafe { File::from_raw_fd(ans_read) };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match answers.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&message[..end]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to,
            from: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or_else(|| anyhow!("Chromium made no target: {target}"))?
            .to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        b.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("Chromium gave no session: {attached}"))?
            .to_string();
        b.call("Page.enable", json!({}))?;
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        Ok(b)
    }

    /// Sends one command (to the page once attached) and waits for its
    /// answer.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .with_context(|| format!("sending {method} to Chromium"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.from.recv_timeout(left).map_err(|_| {
                anyhow!(
                    "Chromium did not answer {method} within {}s",
                    COMMAND_TIMEOUT.as_secs()
                )
            })?;
            if v["id"].as_u64() != Some(id) {
                continue; // an event, or the answer to an abandoned call
            }
            if let Some(e) = v.get("error") {
                bail!("Chromium refused {method}: {e}");
            }
            return Ok(v["result"].clone());
        }
    }

    /// Loads `url` in the page.
    pub fn goto(&mut self, url: &str) -> Result<()> {
        let r = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            bail!("Chromium could not load {url}: {e}");
        }
        Ok(())
    }

    /// The value of a script expression in the page (a promise is awaited).
    pub fn eval(&mut self, expression: &str) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {}", e["exception"]["description"]);
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `expression` is true in the page, evaluating it every
    /// 100 ms for at most `timeout`; says what it waited for otherwise.
    pub fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            match self.eval(expression) {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(v) => last = v,
                Err(e) => last = json!(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out after {:?} waiting for {what} ({expression} was {last})",
            timeout
        )
    }

    /// A PNG of the whole page (beyond the viewport), written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<Vec<u8>> {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")?
            .as_f64()
            .unwrap_or(800.0);
        let width = self
            .eval("Math.ceil(document.documentElement.scrollWidth)")?
            .as_f64()
            .unwrap_or(1280.0);
        let shot = self.call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
            }),
        )?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| anyhow!("Chromium sent no screenshot"))?;
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("the screenshot is not base64")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &png).with_context(|| format!("writing {}", path.display()))?;
        Ok(png)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: signalling the process group our child leads.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
