//! The CLI of secrets and configs through the real binary, without a
//! daemon: what it refuses before it asks one (a missing file, a file over
//! the limit, a bad name, a bad `--secret` or `--config-add`), each as a
//! one-line error and a non-zero exit.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use flotilla_testkit::{one_line_error, CliOutput};
use flotilla_types::MAX_SECRET_BYTES;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// Runs `flotilla --data-dir DIR ARGS...` (no daemon there) with `stdin`.
fn run(dir: &Path, args: &[&str], stdin: &[u8]) -> Result<CliOutput> {
    let mut child = Command::new(bin())
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run flotilla")?;
    if let Some(mut input) = child.stdin.take() {
        // The CLI may stop reading at the limit: a broken pipe is fine.
        let _ = input.write_all(stdin);
    }
    let out = child.wait_with_output()?;
    Ok(CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The one-line error of a command that must fail before the daemon is
/// asked.
fn refused(dir: &Path, args: &[&str], stdin: &[u8]) -> Result<String> {
    let out = run(dir, args, stdin)?;
    let err = one_line_error(&out);
    assert!(
        !err.contains("cannot reach the flotilla daemon"),
        "{args:?} reached for the daemon: {err}"
    );
    assert!(out.stdout.is_empty(), "{args:?} printed {}", out.stdout);
    Ok(err)
}

#[test]
fn secret_and_config_create_refuse_bad_input_before_the_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let missing = d.join("nope.txt");
    let missing = missing.to_string_lossy();
    let err = refused(d, &["secret", "create", "db_pass", &missing], b"")?;
    assert_eq!(
        err,
        format!("Error: cannot read secret file {missing}: No such file or directory (os error 2)")
    );

    let big = d.join("big.bin");
    std::fs::write(&big, vec![b'x'; MAX_SECRET_BYTES + 1])?;
    let big = big.to_string_lossy();
    let err = refused(d, &["config", "create", "app", &big], b"")?;
    assert_eq!(
        err,
        format!("Error: {big} is over the limit of a config: at most 512000 bytes (500 KB)")
    );
    let err = refused(
        d,
        &["secret", "create", "db_pass", "-"],
        &vec![b'x'; MAX_SECRET_BYTES * 2],
    )?;
    assert_eq!(
        err,
        "Error: stdin is over the limit of a secret: at most 512000 bytes (500 KB)"
    );
    let err = refused(d, &["secret", "create", "db_pass", "-"], b"")?;
    assert_eq!(err, "Error: stdin is empty: a secret needs data");

    let ok = d.join("pw.txt");
    std::fs::write(&ok, b"hunter2")?;
    let ok = ok.to_string_lossy();
    let err = refused(d, &["secret", "create", "", &ok], b"")?;
    assert_eq!(err, "Error: secret: invalid name: the name is empty");
    let err = refused(d, &["secret", "create", "db pass", &ok], b"")?;
    assert!(err.contains("only letters, digits"), "{err}");

    // With good input it goes on to the daemon (there is none here).
    let out = run(d, &["secret", "create", "db_pass", &ok], b"")?;
    assert!(
        one_line_error(&out).contains("cannot reach the flotilla daemon"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn bad_secret_and_config_references_are_refused_before_the_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let err = refused(
        d,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--secret",
            "source=db_pass,target=../etc/shadow",
            "--",
            "true",
        ],
        b"",
    )?;
    assert_eq!(
        err,
        "Error: --secret: secret db_pass: target \"../etc/shadow\" must not contain '.' or '..'"
    );
    let err = refused(
        d,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--config",
            "source=app,colour=red",
            "--",
            "true",
        ],
        b"",
    )?;
    assert_eq!(err, "Error: unknown --config field \"colour\"");
    let err = refused(
        d,
        &["service", "update", "--secret-add", "target=pw", "web"],
        b"",
    )?;
    assert_eq!(err, "Error: --secret-add \"target=pw\" names no source");
    let err = refused(
        d,
        &[
            "service",
            "update",
            "--config-add",
            "source=app,mode=999",
            "web",
        ],
        b"",
    )?;
    assert_eq!(
        err,
        "Error: --config-add: invalid file mode \"999\": expected octal, like 0440"
    );
    Ok(())
}
