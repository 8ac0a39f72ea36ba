//! `flotilla dev` with the README's example stack: it comes up, runs the
//! stack, and on Ctrl-C stops every task and removes its data dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use flotilla_testkit::{http_get, kill_marked, marked_pids, wait_until};

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_marked(&self.0);
    }
}

#[test]
fn dev_mode_runs_the_example_stack_and_cleans_up() -> Result<()> {
    let bin = Path::new(env!("CARGO_BIN_EXE_flotilla"));
    let stack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dev-stack.yml");
    let mark = format!("dev-{:016x}", rand_mark());
    let _cleanup = Cleanup(mark.clone());
    let mut child = Command::new(bin)
        .arg("dev")
        .arg(&stack)
        .env("FLOTILLA_TEST_MARK", &mark)
        .env_remove("FLOTILLA_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut data_dir: Option<PathBuf> = None;
    let mut printed = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                bail!("timed out waiting for dev mode to say it runs; it printed: {printed:?}");
            }
        };
        if let Some(d) = line.trim().strip_prefix("export FLOTILLA_DATA_DIR=") {
            data_dir = Some(PathBuf::from(d));
        }
        let done = line.contains("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let dir = data_dir.ok_or_else(|| anyhow!("no data dir printed: {printed:?}"))?;
    assert!(
        printed
            .iter()
            .any(|l| l.contains("flotilla service ps dev_web")),
        "{printed:?}"
    );
    // The dashboard's login, on a loopback client API port.
    assert!(
        printed
            .iter()
            .any(|l| l.trim().starts_with("https://127.0.0.1:")
                && l.contains("/ui/login?token=FLTUI-1-")),
        "{printed:?}"
    );
    let cli = |args: &[&str]| {
        Command::new(bin)
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .output()
    };
    wait_until("dev_web to run 3/3", Duration::from_secs(5), || {
        let out = cli(&["service", "ls"])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        Ok(text
            .lines()
            .any(|l| l.contains("dev_web") && l.contains("3/3"))
            .then_some(()))
    })?;
    // The printed curl reaches the replicas through the mesh, one after
    // another.
    let curl = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("curl http://"))
        .and_then(|rest| rest.split('/').next())
        .ok_or_else(|| anyhow!("no curl line printed: {printed:?}"))?
        .to_string();
    let answered = wait_until("the example to answer", Duration::from_secs(10), || {
        let mut tasks = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let Ok((200, body)) = http_get(&curl, "/", Duration::from_secs(2)) else {
                return Ok(None);
            };
            tasks.insert(
                body.split_whitespace()
                    .nth(3)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        Ok((tasks.len() == 3).then_some(tasks))
    })?;
    eprintln!("{curl} answered by {answered:?}");
    let logs = wait_until("the example to log", Duration::from_secs(5), || {
        let out = cli(&["service", "logs", "dev_web"])?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        Ok(text.contains("demo http server of slot").then_some(text))
    })?;
    assert!(logs.contains("GET / HTTP/1.0"), "{logs}");

    // Ctrl-C
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_until(
        "dev mode to exit after Ctrl-C",
        Duration::from_secs(15),
        || Ok(child.try_wait()?),
    )?;
    assert!(status.success(), "dev mode exited with {status}");
    let left: Vec<u32> = marked_pids(&mark);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        !dir.exists(),
        "the dev data dir {} is removed",
        dir.display()
    );
    Ok(())
}

fn rand_mark() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id())
}
