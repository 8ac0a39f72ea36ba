//! Secrets and configs through the real binary, on a manager and a worker
//! (loopback): a process task on the worker reads its secret and config
//! from files in memory; `inspect` shows no data; the plaintext is found
//! nowhere under either node's data dir; `secret rm` of one in use is
//! refused naming the service; `secret update` rolls the task onto the new
//! version; bad input is refused with one line.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_testkit::{cksum, files_holding, wait_until, Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn start_named(name: &str) -> Result<Daemon> {
    Daemon::start_with(bin(), "127.0.0.1:0", &["--name", name])
}

const SECRET: &str = "s3cr3t-hunter2-for-the-test";
const CONFIG: &str = "listen=8080 # the test's config";

fn base64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The log lines of service `name`, as `service logs` prints them.
fn logs(d: &Daemon, name: &str) -> String {
    d.cli(&["service", "logs", "--raw", name]).stdout
}

#[test]
fn a_task_reads_its_secret_and_config_and_the_data_is_stored_nowhere_in_clear() -> Result<()> {
    let m1 = start_named("m1")?;
    m1.ok(&["init"])?;
    let token = m1
        .ok(&["join-token", "worker", "-q"])?
        .stdout
        .trim()
        .to_string();
    let addr = m1.cluster_addr()?;
    let w1 = start_named("w1")?;
    w1.ok(&["join", "--token", &token, &addr])?;
    let files = tempfile::tempdir()?;
    let secret_file = files.path().join("pw.txt");
    std::fs::write(&secret_file, SECRET)?;
    let config_file = files.path().join("app.conf");
    std::fs::write(&config_file, CONFIG)?;
    let secret_path = secret_file.to_string_lossy().into_owned();
    let config_path = config_file.to_string_lossy().into_owned();
    m1.ok(&["secret", "create", "pw", &secret_path])?;
    m1.ok(&["config", "create", "app", &config_path])?;
    // Taken names are refused; a missing file too, with one line.
    let again = m1.cli(&["secret", "create", "pw", &secret_path]);
    assert!(
        again.code != 0 && again.stderr.contains("already exists"),
        "{}",
        again.stderr
    );
    let missing = m1.cli(&["secret", "create", "other", "/nonexistent/pw"]);
    assert!(
        missing.code != 0 && missing.stderr.contains("/nonexistent/pw"),
        "{}",
        missing.stderr
    );
    // The task prints the lengths and the first bytes' sum, never the data.
    let script = r#"wc -c < "$FLOTILLA_SECRETS_DIR/pw"; wc -c < "$FLOTILLA_CONFIGS_DIR/etc/app.conf"; cksum < "$FLOTILLA_SECRETS_DIR/pw"; exec sleep 100000"#;
    m1.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--constraint",
        "node.role==worker",
        "--stop-grace-period",
        "1s",
        "--secret",
        "pw",
        "--config",
        "source=app,target=/etc/app.conf,mode=0440",
        "-d",
        "--",
        "sh",
        "-c",
        script,
    ])?;
    let first = cksum(SECRET)?;
    wait_until(
        "the task to print what it read",
        Duration::from_secs(15),
        || {
            let out = logs(&m1, "web");
            Ok(out.contains(&first).then_some(()))
        },
    )?;
    let out = logs(&m1, "web");
    assert!(out.contains(&SECRET.len().to_string()), "{out}");
    assert!(out.contains(&CONFIG.len().to_string()), "{out}");
    // inspect shows no data, and names the service.
    let inspect = m1.ok(&["secret", "inspect", "pw"])?.stdout;
    assert!(!inspect.contains(SECRET) && !inspect.contains(&base64(SECRET.as_bytes())));
    assert!(inspect.contains("web"), "{inspect}");
    let svc = m1.ok(&["service", "inspect", "web"])?.stdout;
    assert!(!svc.contains(SECRET) && !svc.contains(&base64(SECRET.as_bytes())));
    // In use: refused, naming the service.
    let rm = m1.cli(&["secret", "rm", "pw"]);
    assert!(
        rm.code != 0 && rm.stderr.contains("in use by services web"),
        "{}",
        rm.stderr
    );
    // The plaintext (or its base64) is in neither node's data dir.
    for d in [&m1, &w1] {
        for needle in [
            SECRET.to_string(),
            base64(SECRET.as_bytes()),
            CONFIG.to_string(),
        ] {
            let found = files_holding(d.data_dir(), needle.as_bytes());
            if !found.is_empty() {
                bail!("{needle:?} is in the clear in {found:?}");
            }
        }
    }
    // A new version rolls the service onto it: a new task reads it.
    let rotated = "the-second-version-of-the-secret";
    std::fs::write(&secret_file, rotated)?;
    // Without -d it follows the service's rollout to its end.
    let out = m1.ok(&["secret", "update", "pw", &secret_path])?.stdout;
    assert!(out.contains("Service web converged"), "{out}");
    let second = cksum(rotated)?;
    wait_until(
        "the new task to read the new version",
        Duration::from_secs(20),
        || Ok(logs(&m1, "web").contains(&second).then_some(())),
    )?;
    let view = m1.ok(&["secret", "inspect", "pw"])?.stdout;
    assert!(
        view.contains("\"version\": 2") || view.contains("\"version\":2"),
        "{view}"
    );
    // Once the service is gone the secret can go, and the worker holds no
    // file of it any more.
    m1.ok(&["service", "rm", "web"])?;
    wait_until(
        "the secret to be removable",
        Duration::from_secs(10),
        || Ok((m1.cli(&["secret", "rm", "pw"]).code == 0).then_some(())),
    )?;
    let left = m1.ok(&["secret", "ls", "--format", "json"])?.json()?;
    assert_eq!(left.as_array().map(|a| a.len()), Some(0), "{left}");
    Ok(())
}

/// Issue 12, rotation without an outage: `secret update` on a 3-replica
/// service with a health check rolls its tasks one at a time, and at no
/// poll are fewer than 2 tasks ready; each task ends on the new version
/// (`service ps` shows it).
#[test]
fn a_secret_update_rolls_one_task_at_a_time_and_keeps_two_ready() -> Result<()> {
    let d = Daemon::start(bin())?;
    d.ok(&["init"])?;
    let files = tempfile::tempdir()?;
    let file = files.path().join("token");
    std::fs::write(&file, "version-one")?;
    let path = file.to_string_lossy().into_owned();
    d.ok(&["secret", "create", "token", &path])?;
    // Healthy once the task found its secret.
    let check = r#"test -s "$FLOTILLA_SECRETS_DIR/token""#;
    d.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "3",
        "--stop-grace-period",
        "1s",
        "--secret",
        "token",
        "--health-cmd",
        check,
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        "--update-monitor",
        "300ms",
        "--update-delay",
        "300ms",
        "--",
        "sleep",
        "100000",
    ])?;
    std::fs::write(&file, "version-two")?;
    // Detached, so that the test watches the rollout itself.
    d.ok(&["secret", "update", "-d", "token", &path])?;
    let mut least_ready = u64::MAX;
    let mut polls = 0;
    wait_until(
        "every task of api on version 2 and ready",
        Duration::from_secs(60),
        || {
            let view = d.service("api")?;
            let ready = view["replicas"]["ready"].as_u64().unwrap_or(0);
            least_ready = least_ready.min(ready);
            polls += 1;
            let tasks = d.tasks("api")?;
            let current: Vec<_> = tasks.iter().filter(|t| t["current"] == true).collect();
            let on_two = current
                .iter()
                .filter(|t| t["files"][0]["version"] == 2 && t["state"] == "running")
                .count();
            Ok((on_two == 3 && ready == 3).then_some(()))
        },
    )?;
    assert!(
        least_ready >= 2,
        "{least_ready} ready at one point of the rollout"
    );
    let ps = d.ok(&["service", "ps", "api"])?.stdout;
    assert!(ps.contains("token@2") && ps.contains("token@1"), "{ps}");
    Ok(())
}
