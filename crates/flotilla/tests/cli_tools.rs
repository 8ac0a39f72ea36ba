//! The tools around the binary: `version` names the commit, `completion`
//! and `man` are generated from the CLI's definition, and the daemon logs
//! JSON lines with `--log-format json`.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use flotilla_testkit::Daemon;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn run(args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(bin()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn version_completion_and_man_pages() -> Result<()> {
    let (code, text) = run(&["version"])?;
    assert_eq!(code, 0);
    assert!(
        text.starts_with(&format!("flotilla {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    // Built from a git checkout here and in CI: the commit is known.
    assert!(!text.contains("commit unknown"), "{text}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, text) = run(&["completion", shell])?;
        assert_eq!(code, 0, "{shell}");
        assert!(text.contains("restore"), "{shell}");
    }
    let (code, _) = run(&["completion", "tcsh"])?;
    assert_eq!(code, 2, "an unknown shell is a usage error");
    let dir = tempfile::tempdir()?;
    let (code, text) = run(&["man", &dir.path().to_string_lossy()])?;
    assert_eq!(code, 0, "{text}");
    let page = std::fs::read_to_string(dir.path().join("flotilla-node-ls.1"))?;
    assert!(page.contains(".TH"), "{page}");
    Ok(())
}

#[test]
fn the_daemon_logs_json_lines() -> Result<()> {
    let d = Daemon::start_with(bin(), "127.0.0.1:0", &["--log-format", "json"])?;
    d.ok(&["init"])?;
    let log = d.log_tail();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line}"))?;
        assert!(v.get("level").is_some(), "{line}");
    }
    Ok(())
}
