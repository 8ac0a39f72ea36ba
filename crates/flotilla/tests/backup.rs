//! Backup and restore through the real binary (issue 13): a backup taken
//! on a follower of a running 3-manager cluster, every node destroyed, the
//! backup restored on a fresh node, two new managers joined: the services
//! run again with their specs unchanged and a task reads its secret's
//! content. Bad input (truncated, altered, wrong passphrase, a node
//! already in a cluster) is refused with one line and changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use flotilla_testkit::{cksum, one_line_error, wait_until, Daemon};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn start_named(name: &str) -> Result<Daemon> {
    Daemon::start_with(bin(), "127.0.0.1:0", &["--name", name])
}

fn joined(manager: &Daemon, name: &str, role: &str) -> Result<Daemon> {
    let d = start_named(name)?;
    d.join_cluster_of(manager, role)?;
    Ok(d)
}

const SECRET: &str = "backup-secret-content-7f3a";

/// Waits until service `reader` on `d` printed the cksum of [`SECRET`]:
/// its task opened the secret with the (restored) data key.
fn reader_read_the_secret(d: &Daemon, within: Duration) -> Result<()> {
    let want = cksum(SECRET)?;
    wait_until("the restored task to read its secret", within, || {
        let out = d.cli(&["service", "logs", "--raw", "reader"]).stdout;
        Ok(out.contains(&want).then_some(()))
    })
}
const SERVICES: [&str; 5] = ["web", "api", "db", "cache", "reader"];

/// Each service's spec, by name.
fn specs(d: &Daemon) -> Result<Vec<(String, Value)>> {
    SERVICES
        .iter()
        .map(|name| {
            let v = d.service(name)?;
            Ok((name.to_string(), v["spec"].clone()))
        })
        .collect()
}

fn running(d: &Daemon, name: &str) -> Result<usize> {
    Ok(d.tasks(name)?
        .iter()
        .filter(|t| t["current"] == true && t["state"] == "running")
        .count())
}

#[test]
fn a_backup_restored_on_a_new_node_runs_the_cluster_again() -> Result<()> {
    let files = tempfile::tempdir()?;
    let pass = files.path().join("pass");
    std::fs::write(&pass, "correct horse battery\n")?;
    let wrong = files.path().join("wrong");
    std::fs::write(&wrong, "not it\n")?;
    let secret_file = files.path().join("pw");
    std::fs::write(&secret_file, SECRET)?;
    let file = files.path().join("cluster.backup");
    let plain_file = files.path().join("plain.backup");
    let (before, file_s) = {
        let m1 = start_named("m1")?;
        m1.ok(&["init"])?;
        let m2 = joined(&m1, "m2", "manager")?;
        let m3 = joined(&m1, "m3", "manager")?;
        m1.ok(&["secret", "create", "pw", &secret_file.to_string_lossy()])?;
        for (i, name) in SERVICES.iter().enumerate() {
            let replicas = (1 + i % 3).to_string();
            let mut args = vec![
                "service",
                "create",
                "--name",
                name,
                "--replicas",
                &replicas,
                "--stop-grace-period",
                "1s",
                "--label",
                "tier=test",
            ];
            let script;
            if *name == "reader" {
                script = r#"cksum < "$FLOTILLA_SECRETS_DIR/pw"; exec sleep 100000"#.to_string();
                args.extend(["--secret", "pw", "-d", "--", "sh", "-c", &script]);
            } else {
                args.extend(["-d", "--", "sleep", "100000"]);
            }
            m1.ok(&args)?;
        }
        // Taken on a follower while the cluster runs.
        let file_s = file.to_string_lossy().into_owned();
        let plain_s = plain_file.to_string_lossy().into_owned();
        let out = m2.ok(&[
            "backup",
            "-o",
            &file_s,
            "--passphrase-file",
            &pass.to_string_lossy(),
        ])?;
        assert!(
            out.stdout.contains("5 services") && out.stdout.contains("encrypted"),
            "{}",
            out.stdout
        );
        m3.ok(&["backup", "-o", &plain_s])?;
        let before = specs(&m1)?;
        // A node in a cluster cannot restore.
        let refused = m1.cli(&[
            "restore",
            &file_s,
            "--passphrase-file",
            &pass.to_string_lossy(),
        ]);
        assert_ne!(refused.code, 0);
        assert!(
            one_line_error(&refused).contains("already in a cluster"),
            "{}",
            refused.stderr
        );
        (before, file_s)
        // Every node is destroyed here (killed, data dirs removed).
    };
    for f in [&file, &plain_file] {
        let mode = std::fs::metadata(f)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let sealed = std::fs::read(&file)?;
    assert!(!sealed.windows(11).any(|w| w == b"PRIVATE KEY"));
    assert!(!sealed.windows(5).any(|w| w == b"sleep"));
    let plain = std::fs::read(&plain_file)?;
    assert!(plain.windows(5).any(|w| w == b"sleep"));
    // Secrets are sealed under the cluster's data key in either file.
    for bytes in [&sealed, &plain] {
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    }

    let r1 = start_named("r1")?;
    // Bad input is refused with one line, and the node stays fresh.
    let truncated = files.path().join("truncated");
    std::fs::write(&truncated, &sealed[..sealed.len() - 100])?;
    let mut altered = plain.clone();
    let at = altered.len() - 3;
    altered[at] ^= 0x20;
    let altered_file = files.path().join("altered");
    std::fs::write(&altered_file, &altered)?;
    let pass_s = pass.to_string_lossy().into_owned();
    for (args, expect) in [
        (
            vec![
                "restore",
                truncated.to_str().unwrap_or_default(),
                "--passphrase-file",
                &pass_s,
            ],
            "the backup is truncated",
        ),
        (
            vec!["restore", altered_file.to_str().unwrap_or_default()],
            "checksum does not match",
        ),
        (
            vec![
                "restore",
                &file_s,
                "--passphrase-file",
                wrong.to_str().unwrap_or_default(),
            ],
            "wrong passphrase",
        ),
        (vec!["restore", &file_s], "this backup is encrypted"),
        (
            vec!["restore", "/nonexistent/backup"],
            "cannot read /nonexistent/backup",
        ),
    ] {
        let out = r1.cli(&args);
        assert_ne!(out.code, 0, "{args:?}");
        let line = one_line_error(&out);
        assert!(line.contains(expect), "{args:?}: {line}");
    }
    assert!(r1.ok(&["info", "--format", "json"])?.json()?["cluster_id"].is_null());

    let out = r1.ok(&["restore", &file_s, "--passphrase-file", &pass_s])?;
    assert!(out.stdout.contains("Restored cluster"), "{}", out.stdout);
    eprintln!("{}", out.stdout);
    let info = r1.ok(&["info", "--format", "json"])?.json()?;
    assert_eq!(info["is_leader"], true);
    assert_eq!(info["services"], 5);
    // The old managers are gone from the restored cluster.
    let nodes = r1.ok(&["node", "ls", "--format", "json"])?.json()?;
    let managers: Vec<&str> = nodes
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| n["role"] == "manager")
                .filter_map(|n| n["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(managers, ["r1"]);
    let r2 = joined(&r1, "r2", "manager")?;
    let r3 = joined(&r1, "r3", "manager")?;
    assert_eq!(specs(&r2)?, before, "specs unchanged");
    for (i, name) in SERVICES.iter().enumerate() {
        let want = 1 + i % 3;
        wait_until(
            &format!("{want} tasks of {name} running after the restore"),
            Duration::from_secs(30),
            || Ok((running(&r1, name)? == want).then_some(())),
        )?;
    }
    // The secret opens with the restored data key: the task read the
    // content the first cluster was given.
    reader_read_the_secret(&r1, Duration::from_secs(15))?;
    let info = r3.ok(&["info", "--format", "json"])?.json()?;
    assert_eq!(info["managers"], 3);
    drop(r2);
    Ok(())
}

/// The leader's scheduled backups: written every interval into the
/// directory, the newest `keep` kept, each one a backup that reads back;
/// a schedule that cannot run is refused with one line; `off` stops it.
#[test]
fn the_leader_writes_backups_on_a_schedule_and_keeps_the_newest() -> Result<()> {
    let m1 = start_named("m1")?;
    m1.ok(&["init"])?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().join("backups");
    let d_s = d.to_string_lossy().into_owned();
    for (args, expect) in [
        (vec!["backup", "--schedule", "1s"], "--schedule needs --dir"),
        (
            vec!["backup", "--schedule", "10ms", "--dir", &d_s],
            "at least 1s",
        ),
        (
            vec!["backup", "--schedule", "1h", "--dir", "relative/dir"],
            "an absolute path",
        ),
        (
            vec!["backup", "--schedule", "soon", "--dir", &d_s],
            "--schedule",
        ),
    ] {
        let out = m1.cli(&args);
        assert_ne!(out.code, 0, "{args:?}");
        assert!(
            one_line_error(&out).contains(expect),
            "{args:?}: {}",
            out.stderr
        );
    }
    let out = m1.ok(&["backup", "--schedule", "1s", "--keep", "2", "--dir", &d_s])?;
    assert!(out.stdout.contains("every 1s"), "{}", out.stdout);
    let info = m1.ok(&["info"])?.stdout;
    assert!(
        info.contains(&format!("Backups:       every 1s, keeping 2 in {d_s}")),
        "{info}"
    );
    let names = || -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(&d)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.ends_with(".fbk"))
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    let first = wait_until("two scheduled backups", Duration::from_secs(10), || {
        let n = names();
        Ok((n.len() == 2).then_some(n))
    })?;
    // A third comes and the oldest goes.
    wait_until(
        "the oldest scheduled backup to be replaced",
        Duration::from_secs(10),
        || {
            let n = names();
            assert!(n.len() <= 2, "{n:?}");
            Ok((n.len() == 2 && !n.contains(&first[0])).then_some(()))
        },
    )?;
    for name in names() {
        let path = d.join(&name);
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        let b = flotilla_backup::read(&std::fs::read(&path)?, None)?;
        assert!(b.state.cluster.is_some(), "{name}");
    }
    m1.ok(&["backup", "--schedule", "off"])?;
    let left = names();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(names(), left, "no backup after 'off'");
    Ok(())
}

/// A backup made under autolock holds the cluster's keys sealed: restoring
/// it needs the unlock key, a missing or wrong one is refused, and with the
/// right one the restored manager serves and its task reads its secret.
#[test]
fn a_backup_made_under_autolock_restores_only_with_its_unlock_key() -> Result<()> {
    let files = tempfile::tempdir()?;
    let secret_file = files.path().join("pw");
    std::fs::write(&secret_file, SECRET)?;
    let file = files.path().join("locked.backup");
    let key_file = files.path().join("key");
    let other_key = files.path().join("other");
    {
        let m1 = start_named("m1")?;
        m1.ok(&["init", "--autolock"])?;
        let key = m1.ok(&["unlock-key", "-q"])?.stdout.trim().to_string();
        std::fs::write(&key_file, format!("{key}\n"))?;
        m1.ok(&["secret", "create", "pw", &secret_file.to_string_lossy()])?;
        m1.ok(&[
            "service",
            "create",
            "--name",
            "reader",
            "--secret",
            "pw",
            "-d",
            "--",
            "sh",
            "-c",
            r#"cksum < "$FLOTILLA_SECRETS_DIR/pw"; exec sleep 100000"#,
        ])?;
        let out = m1.ok(&["backup", "-o", &file.to_string_lossy()])?;
        assert!(
            out.stdout.contains("sealed under the unlock key"),
            "{}",
            out.stdout
        );
        // Another cluster's key: well formed, wrong.
        let other = start_named("other")?;
        other.ok(&["init", "--autolock"])?;
        let wrong = other.ok(&["unlock-key", "-q"])?.stdout.trim().to_string();
        std::fs::write(&other_key, format!("{wrong}\n"))?;
    }
    let bytes = std::fs::read(&file)?;
    assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
    let r1 = start_named("r1")?;
    let file_s = file.to_string_lossy().into_owned();
    let missing = r1.cli(&["restore", &file_s]);
    assert_ne!(missing.code, 0);
    assert!(
        one_line_error(&missing).contains("made under autolock: give its unlock key"),
        "{}",
        missing.stderr
    );
    let wrong = r1.cli(&[
        "restore",
        &file_s,
        "--unlock-key-file",
        &other_key.to_string_lossy(),
    ]);
    assert_ne!(wrong.code, 0);
    assert!(
        one_line_error(&wrong).contains("does not open this backup's keys"),
        "{}",
        wrong.stderr
    );
    assert!(r1.ok(&["info", "--format", "json"])?.json()?["cluster_id"].is_null());
    r1.ok(&[
        "restore",
        &file_s,
        "--unlock-key-file",
        &key_file.to_string_lossy(),
    ])?;
    let info = r1.ok(&["info", "--format", "json"])?.json()?;
    assert_eq!(info["autolock"], true);
    assert_eq!(info["locked"], false, "{info}");
    reader_read_the_secret(&r1, Duration::from_secs(20))?;
    Ok(())
}

/// The old managers cannot rejoin a restored cluster by accident: the
/// backup is restored on a new node at the address of the old first
/// manager, the other old managers come back with their data, and the
/// restored manager refuses their group (an older epoch); they stop and
/// say why, and take no write.
#[test]
fn old_managers_that_come_back_are_refused_by_the_restored_cluster() -> Result<()> {
    let files = tempfile::tempdir()?;
    let file = files.path().join("cluster.backup");
    let file_s = file.to_string_lossy().into_owned();
    let port = flotilla_testkit::free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let (mut m2, mut m3) = {
        let m1 = Daemon::start_with(bin(), &listen, &["--name", "m1"])?;
        m1.ok(&["init"])?;
        let m2 = joined(&m1, "m2", "manager")?;
        let m3 = joined(&m1, "m3", "manager")?;
        m2.ok(&["backup", "-o", &file_s])?;
        (m2, m3)
        // m1's machine is gone with its data dir.
    };
    m2.kill9()?;
    m3.kill9()?;
    let r1 = Daemon::start_with(bin(), &listen, &["--name", "r1"])?;
    r1.ok(&["restore", &file_s])?;
    m2.restart()?;
    m3.restart()?;
    for old in [&m2, &m3] {
        wait_until(
            "an old manager to say that its group was replaced",
            Duration::from_secs(20),
            || {
                let info = old.ok(&["info", "--format", "json"])?.json()?;
                let warning = info["warning"].as_str().unwrap_or_default().to_string();
                Ok(warning.contains("'flotilla restore'").then_some(()))
            },
        )?;
    }
    let refused = m2.cli(&[
        "service", "create", "--name", "split", "-d", "--", "sleep", "1000",
    ]);
    assert_ne!(
        refused.code, 0,
        "an old manager took a write: {}",
        refused.stdout
    );
    let info = r1.ok(&["info", "--format", "json"])?.json()?;
    assert_eq!(info["is_leader"], true, "{info}");
    assert_eq!(info["managers"], 1, "{info}");
    r1.ok(&[
        "service", "create", "--name", "web", "-d", "--", "sleep", "1000",
    ])?;
    Ok(())
}
