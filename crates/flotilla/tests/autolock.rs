//! Autolock through the real binary (loopback daemons): a cluster made
//! locked keeps its keys, join secrets and secrets off every disk, and a
//! restarted manager waits for its key, refuses a wrong one, and rejoins
//! with the right one; a running cluster turns it on (new and promoted
//! managers get the key from a peer), rotates the key, and turns it off.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use flotilla_testkit::{files_holding, one_line_error, wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn start(name: &str) -> Result<Daemon> {
    Daemon::start_named(bin(), name, &[])
}

/// The unlock key printed in `out`.
fn key_in(out: &str) -> Result<String> {
    out.split_whitespace()
        .find(|w| w.starts_with("FLTKEY-1-"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no unlock key printed in {out:?}"))
}

/// The secret part of a join token (after its last '-').
fn token_secret(d: &Daemon, role: &str) -> Result<String> {
    let token = d.ok(&["join-token", role, "-q"])?.stdout.trim().to_string();
    token
        .rsplit('-')
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("odd token {token}"))
}

fn info(d: &Daemon) -> Result<serde_json::Value> {
    d.ok(&["info", "--format", "json"])?.json()
}

fn wait_locked(d: &Daemon) -> Result<()> {
    wait_until(
        "the restarted manager to wait locked",
        Duration::from_secs(20),
        || {
            let out = d.cli(&["info", "--format", "json"]);
            Ok((out.code == 0 && out.json()?["locked"] == true).then_some(()))
        },
    )
}

fn wait_manager(d: &Daemon, managers: u64) -> Result<()> {
    wait_until(
        "the manager to serve with every manager reachable",
        Duration::from_secs(30),
        || {
            let out = d.cli(&["info", "--format", "json"]);
            if out.code != 0 {
                return Ok(None);
            }
            let i = out.json()?;
            Ok((i["role"] == "manager"
                && i["managers"] == managers
                && i["managers_reachable"] == managers)
                .then_some(()))
        },
    )
}

/// `d`'s TLS key file as it is on disk (empty if unreadable).
fn node_key(d: &Daemon) -> String {
    std::fs::read_to_string(d.data_dir().join("certs").join("node.key")).unwrap_or_default()
}

/// Whether `d`'s TLS key on disk is sealed.
fn key_sealed(d: &Daemon) -> bool {
    let text = node_key(d);
    text.starts_with("FLOTILLA SEALED NODE KEY") && !text.contains("PRIVATE KEY")
}

/// Fails naming the files of `d`'s data dir that hold any of `needles`.
fn nowhere_in_clear(d: &Daemon, needles: &[&str]) -> Result<()> {
    for needle in needles {
        let found = files_holding(d.data_dir(), needle.as_bytes());
        if !found.is_empty() {
            bail!("{needle:?} is in the clear in {found:?}");
        }
    }
    Ok(())
}

const SECRET: &str = "autolock-test-secret-value-42";

fn cksum(data: &str) -> Result<String> {
    let mut child = std::process::Command::new("cksum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin.write_all(data.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_cluster_made_locked_keeps_its_keys_off_the_disk_and_waits_for_the_key_after_a_restart(
) -> Result<()> {
    let mut m1 = start("m1")?;
    let out = m1.ok(&["init", "--autolock"])?.stdout;
    let key = key_in(&out)?;
    assert_eq!(m1.ok(&["unlock-key", "-q"])?.stdout.trim(), key);
    assert_eq!(info(&m1)?["autolock"], true);
    let join_secret = token_secret(&m1, "manager")?;
    let files = tempfile::tempdir()?;
    let secret_file = files.path().join("pw");
    std::fs::write(&secret_file, SECRET)?;
    m1.ok(&["secret", "create", "pw", &secret_file.to_string_lossy()])?;
    m1.ok(&[
        "service",
        "create",
        "--name",
        "reader",
        "--secret",
        "pw",
        "--stop-grace-period",
        "1s",
        "-d",
        "--",
        "sh",
        "-c",
        r#"cksum < "$FLOTILLA_SECRETS_DIR/pw"; exec sleep 100000"#,
    ])?;
    let sum = cksum(SECRET)?;
    let printed = |d: &Daemon| {
        d.cli(&["service", "logs", "--raw", "reader"])
            .stdout
            .matches(&sum)
            .count()
    };
    wait_until(
        "the task to read its secret",
        Duration::from_secs(15),
        || Ok((printed(&m1) >= 1).then_some(())),
    )?;
    // No private key, join secret or secret in the clear, ever.
    nowhere_in_clear(&m1, &["PRIVATE KEY", &join_secret, SECRET])?;

    m1.restart()?;
    wait_locked(&m1)?;
    for args in [&["secret", "ls"][..], &["service", "ls"][..]] {
        let out = m1.cli(args);
        assert!(out.code != 0, "{args:?} answered while locked");
        assert!(one_line_error(&out).contains("locked"), "{}", out.stderr);
    }
    let zeros = format!("FLTKEY-1-{}", "0".repeat(64));
    let wrong = m1.cli_with_stdin(&["unlock"], &zeros);
    assert!(wrong.code != 0, "a wrong key unlocked it");
    assert!(
        one_line_error(&wrong).contains("invalid unlock key"),
        "{}",
        wrong.stderr
    );
    let garbled = m1.cli_with_stdin(&["unlock"], "not-a-key\n");
    assert!(
        garbled.code != 0 && one_line_error(&garbled).contains("not an unlock key"),
        "{}",
        garbled.stderr
    );
    assert_eq!(info(&m1)?["locked"], true, "still locked after wrong keys");
    m1.ok_with_stdin(&["unlock"], &format!("{key}\n"))?;
    wait_manager(&m1, 1)?;
    let again = m1.cli_with_stdin(&["unlock"], &key);
    assert!(
        one_line_error(&again).contains("not locked"),
        "{}",
        again.stderr
    );
    // The data key opens again: a new task reads the secret.
    m1.ok(&["service", "scale", "reader=2"])?;
    wait_until(
        "a second task to read the secret",
        Duration::from_secs(20),
        || Ok((printed(&m1) >= 2).then_some(())),
    )?;
    assert_eq!(token_secret(&m1, "manager")?, join_secret, "tokens survive");
    nowhere_in_clear(&m1, &["PRIVATE KEY", &join_secret, SECRET])?;
    // A restart in place (here force-new-cluster) hands the key to the
    // next run of the daemon: it comes back serving, not locked.
    m1.ok(&["init", "--force-new-cluster"])?;
    let after = info(&m1)?;
    assert_eq!(after["locked"], false, "{after}");
    assert_eq!(after["is_leader"], true, "{after}");
    assert!(key_sealed(&m1), "the key stays sealed on disk");
    assert!(m1.ok(&["secret", "ls"])?.stdout.contains("pw"));
    Ok(())
}

#[test]
fn a_running_cluster_turns_autolock_on_rotates_the_key_and_turns_it_off() -> Result<()> {
    let m1 = start("m1")?;
    m1.ok(&["init"])?;
    let addr = m1.cluster_addr()?;
    let manager_token = m1
        .ok(&["join-token", "manager", "-q"])?
        .stdout
        .trim()
        .to_string();
    let worker_token = m1
        .ok(&["join-token", "worker", "-q"])?
        .stdout
        .trim()
        .to_string();
    let mut m2 = start("m2")?;
    m2.ok(&["join", "--token", &manager_token, &addr])?;
    let mut m3 = start("m3")?;
    m3.ok(&["join", "--token", &manager_token, &addr])?;
    let w1 = start("w1")?;
    w1.ok(&["join", "--token", &worker_token, &addr])?;
    let join_secret = token_secret(&m1, "manager")?;

    let out = m1.ok(&["cluster", "update", "--autolock=true"])?.stdout;
    let k1 = key_in(&out)?;
    // Every manager seals its TLS key (m2 and m3 got the key from a
    // peer); the worker's is not locked, as in Swarm.
    wait_until(
        "every manager to seal its key",
        Duration::from_secs(20),
        || Ok([&m1, &m2, &m3].iter().all(|d| key_sealed(d)).then_some(())),
    )?;
    assert!(!key_sealed(&w1), "a worker's key is sealed");
    // A manager promoted under autolock gets the key and seals its own.
    m1.ok(&["node", "promote", "w1"])?;
    wait_until(
        "the promoted manager to seal its key",
        Duration::from_secs(30),
        || {
            let i = w1.cli(&["info", "--format", "json"]);
            Ok((i.code == 0 && i.json()?["role"] == "manager" && key_sealed(&w1)).then_some(()))
        },
    )?;

    // A restarted manager waits; the cluster goes on without it.
    m2.restart()?;
    wait_locked(&m2)?;
    m1.ok(&[
        "service", "create", "--name", "idle", "-d", "--", "sleep", "100000",
    ])?;
    let wrong = m2.cli_with_stdin(&["unlock"], &format!("FLTKEY-1-{}", "a".repeat(64)));
    assert!(
        wrong.code != 0 && one_line_error(&wrong).contains("invalid unlock key"),
        "{}",
        wrong.stderr
    );
    assert_eq!(info(&m2)?["locked"], true);
    m2.ok_with_stdin(&["unlock"], &k1)?;
    wait_manager(&m2, 4)?;
    // It caught up, and its store file was rewritten at the start: what
    // the log held before autolock (keys in plaintext) is gone from it.
    wait_until(
        "m2 to see the service made while it was locked",
        Duration::from_secs(15),
        || {
            let out = m2.cli(&["service", "ls"]);
            Ok((out.code == 0 && out.stdout.contains("idle")).then_some(()))
        },
    )?;
    nowhere_in_clear(&m2, &["PRIVATE KEY", &join_secret])?;

    // A rotation: the running managers learn the new key and seal anew.
    let before = node_key(&m3);
    let k2 = m1
        .ok(&["unlock-key", "--rotate", "-q"])?
        .stdout
        .trim()
        .to_string();
    assert_ne!(k1, k2);
    wait_until(
        "m3 to seal its key under the new one",
        Duration::from_secs(20),
        || Ok((key_sealed(&m3) && node_key(&m3) != before).then_some(())),
    )?;
    m3.restart()?;
    wait_locked(&m3)?;
    let old = m3.cli_with_stdin(&["unlock"], &k1);
    assert!(
        old.code != 0 && one_line_error(&old).contains("invalid unlock key"),
        "{}",
        old.stderr
    );
    m3.ok_with_stdin(&["unlock"], &k2)?;
    wait_manager(&m3, 4)?;
    assert_eq!(m3.ok(&["unlock-key", "-q"])?.stdout.trim(), k2);

    // Off: keys back in the clear on disk, and a restart needs no key.
    let out = m1.ok(&["cluster", "update", "--autolock=false"])?.stdout;
    assert!(out.contains("Autolock is off"), "{out}");
    wait_until(
        "m2 to write its key in the clear",
        Duration::from_secs(20),
        || Ok((!key_sealed(&m2) && node_key(&m2).contains("PRIVATE KEY")).then_some(())),
    )?;
    m2.restart()?;
    wait_manager(&m2, 4)?;
    assert_eq!(info(&m2)?["autolock"], false);
    let shown = m1.cli(&["unlock-key"]);
    assert!(
        shown.code != 0 && one_line_error(&shown).contains("autolock is off"),
        "{}",
        shown.stderr
    );
    Ok(())
}
