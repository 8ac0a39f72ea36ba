//! `flotilla secret|config create|update|ls|inspect|rm`, as Docker's
//! `secret` and `config` commands (with `update`, which Swarm lacks: a new
//! version that the services using it roll onto): one piece of code for
//! both, by [`SecretKind`]. No command ever shows the data: the daemon's
//! views have none.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::{SecretCreate, SecretUpdate, SecretUpdated, SecretView};
use flotilla_api::Client;
use flotilla_types::{validate_name, SecretData, SecretKind, SecretSpec, MAX_SECRET_BYTES};

use super::options::{Format, SecretCommand};
use super::output::{ago, print_json, table};

/// Runs one `secret` or `config` command.
pub async fn secret(client: &Client, kind: SecretKind, command: &SecretCommand) -> Result<()> {
    match command {
        SecretCommand::Create {
            name,
            file,
            label,
            template_driver,
        } => {
            // Everything is checked and read before the daemon is asked.
            let mut create = create_request(kind, name, file, label, &mut std::io::stdin().lock())?;
            create.spec.template_driver = template_driver.clone();
            let created = client.create_secret(kind, &create).await?;
            println!("{}", created.id);
            Ok(())
        }
        SecretCommand::Update { name, file, detach } => {
            let update = SecretUpdate {
                data: read_data(kind, file, &mut std::io::stdin().lock())?,
            };
            let done = client.update_secret(kind, name, &update).await?;
            print!("{}", updated_text(&done));
            if *detach {
                return Ok(());
            }
            // As `service update` without -d: follow each rollout to its
            // end; a paused or rolled back one fails the command.
            for service in &done.rolled {
                super::progress::follow_update(
                    client,
                    service,
                    false,
                    std::time::Duration::from_secs(600),
                )
                .await?;
            }
            Ok(())
        }
        SecretCommand::Ls { quiet, format } => {
            let all = client.secrets(kind).await?;
            if *quiet {
                for s in &all {
                    println!("{}", s.id);
                }
                return Ok(());
            }
            if format.format == Format::Json {
                return print_json(&all);
            }
            print!("{}", secrets_table(&all));
            Ok(())
        }
        SecretCommand::Inspect { names, format } => {
            // As Docker's: what was found is shown, and a name that was
            // not fails the command afterwards.
            let mut found = Vec::new();
            let mut failed = Vec::new();
            for name in names {
                match client.secret(kind, name).await {
                    Ok(v) => found.push(v),
                    Err(e) => failed.push(anyhow::Error::from(e)),
                }
            }
            if *format == Format::Json {
                print_json(&found)?;
            } else {
                for v in &found {
                    print!("{}", inspect_text(v));
                }
            }
            all_or_last(failed)
        }
        SecretCommand::Rm { names } => {
            let mut failed = Vec::new();
            for name in names {
                match client.remove_secret(kind, name).await {
                    Ok(r) => println!("{}", r.name),
                    Err(e) => failed.push(anyhow::Error::from(e)),
                }
            }
            all_or_last(failed)
        }
    }
}

/// Every name was tried: the errors but the last go to stderr, the last
/// is the command's (so that one failure is one line, as elsewhere).
fn all_or_last(mut failed: Vec<anyhow::Error>) -> Result<()> {
    let Some(last) = failed.pop() else {
        return Ok(());
    };
    for e in failed {
        eprintln!("Error: {e}");
    }
    Err(last)
}

/// What `create NAME FILE|-` sends: the name checked, the labels parsed,
/// the data read from `file` (`-`: from `stdin`) and refused when empty or
/// over [`MAX_SECRET_BYTES`].
pub fn create_request(
    kind: SecretKind,
    name: &str,
    file: &str,
    labels: &[String],
    stdin: &mut dyn Read,
) -> Result<SecretCreate> {
    validate_name(name).map_err(|e| anyhow!("{kind}: {e}"))?;
    let mut spec = SecretSpec {
        name: name.to_string(),
        ..SecretSpec::default()
    };
    for l in labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("--label: invalid label {l:?}: expected KEY=VALUE");
        }
        spec.labels.insert(k.to_string(), v.to_string());
    }
    Ok(SecretCreate {
        spec,
        data: read_data(kind, file, stdin)?,
        reuse_identical: false,
    })
}

/// Reads the data of a secret or config from `file`, or from `stdin` for
/// `-`, never more than one byte over the limit.
pub fn read_data(kind: SecretKind, file: &str, stdin: &mut dyn Read) -> Result<SecretData> {
    let (what, reader): (String, Box<dyn Read + '_>) = if file == "-" {
        ("stdin".to_string(), Box::new(stdin))
    } else {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot read {kind} file {file}"))?;
        (file.to_string(), Box::new(f))
    };
    let mut data = Vec::new();
    reader
        .take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("cannot read {kind} file {what}"))?;
    if data.len() > MAX_SECRET_BYTES {
        bail!("{what} is over the limit of a {kind}: at most {MAX_SECRET_BYTES} bytes (500 KB)");
    }
    if data.is_empty() {
        bail!("{what} is empty: a {kind} needs data");
    }
    Ok(SecretData(data))
}

/// What `update` says: the version now, and the services rolling onto it.
pub fn updated_text(done: &SecretUpdated) -> String {
    let s = &done.secret;
    let mut out = format!("{} (version {})\n", s.name, s.version);
    if !done.rolled.is_empty() {
        out.push_str(&format!(
            "Rolling onto it: {} (follow with 'flotilla service ps')\n",
            done.rolled.join(", ")
        ));
    }
    out
}

/// A size as people read it: `512 B`, `1.5 KiB`, `2.0 MiB`.
pub fn size_text(bytes: u64) -> String {
    const KIB: u64 = 1024;
    match bytes {
        b if b < KIB => format!("{b} B"),
        b if b < KIB * KIB => format!("{:.1} KiB", b as f64 / KIB as f64),
        b => format!("{:.1} MiB", b as f64 / (KIB * KIB) as f64),
    }
}

/// `secret ls` and `config ls`: as Docker's, with the version and size.
pub fn secrets_table(all: &[SecretView]) -> String {
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.version.to_string(),
                size_text(s.size),
                s.services.len().to_string(),
                ago(s.created_at),
                ago(s.updated_at),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "VERSION", "SIZE", "SERVICES", "CREATED", "UPDATED",
        ],
        &rows,
    )
}

/// `secret inspect --format table`.
pub fn inspect_text(s: &SecretView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    line("ID:", s.id.clone());
    line("Name:", s.name.clone());
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line("Labels:", labels.join(", "));
    }
    line("Version:", s.version.to_string());
    line("Size:", format!("{} ({} bytes)", size_text(s.size), s.size));
    line("Created:", ago(s.created_at));
    line("Updated:", ago(s.updated_at));
    line(
        "Services:",
        if s.services.is_empty() {
            "none".to_string()
        } else {
            s.services.join(", ")
        },
    );
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, file: &str, labels: &[&str], stdin: &[u8]) -> Result<SecretCreate> {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        create_request(SecretKind::Secret, name, file, &labels, &mut &stdin[..])
    }

    fn error(r: Result<SecretCreate>) -> String {
        // As main prints it: the context, then its cause.
        let e = r.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn create_reads_a_file_or_stdin_with_labels() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pw.txt");
        std::fs::write(&path, b"hunter2").expect("write");
        let file = path.to_string_lossy().to_string();
        let c = create("db_pass", &file, &["team=db", "plain"], b"").expect("create");
        assert_eq!(c.spec.name, "db_pass");
        assert_eq!(c.data, SecretData(b"hunter2".to_vec()));
        assert_eq!(c.spec.labels.get("team").map(String::as_str), Some("db"));
        assert_eq!(c.spec.labels.get("plain").map(String::as_str), Some(""));
        assert!(!c.reuse_identical);
        let c = create("db_pass", "-", &[], b"from stdin").expect("stdin");
        assert_eq!(c.data, SecretData(b"from stdin".to_vec()));
        // Exactly the limit is allowed.
        let full = vec![b'x'; MAX_SECRET_BYTES];
        assert_eq!(
            create("big", "-", &[], &full).expect("full").data.0.len(),
            full.len()
        );
    }

    #[test]
    fn create_refuses_before_the_daemon_is_asked() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("nope.txt").to_string_lossy().to_string();
        let e = error(create("x", &missing, &[], b""));
        assert!(
            e.starts_with(&format!("cannot read secret file {missing}: ")),
            "{e}"
        );
        assert!(e.contains("No such file"), "{e}");

        let big = dir.path().join("big.bin");
        std::fs::write(&big, vec![0u8; MAX_SECRET_BYTES + 1]).expect("write");
        let big = big.to_string_lossy().to_string();
        let e = error(create("x", &big, &[], b""));
        assert_eq!(
            e,
            format!("{big} is over the limit of a secret: at most 512000 bytes (500 KB)")
        );
        let e = error(create("x", "-", &[], &vec![0u8; MAX_SECRET_BYTES * 3]));
        assert!(e.starts_with("stdin is over the limit"), "{e}");

        assert_eq!(
            error(create("x", "-", &[], b"")),
            "stdin is empty: a secret needs data"
        );
        assert_eq!(
            error(create("", "-", &[], b"data")),
            "secret: invalid name: the name is empty"
        );
        assert!(error(create("a b", "-", &[], b"data")).contains("only letters"));
        assert!(error(create("x", "-", &["=v"], b"data")).contains("--label"));
        let config = create_request(SecretKind::Config, "app", "-", &[], &mut &b""[..]);
        assert_eq!(error(config), "stdin is empty: a config needs data");
    }

    fn view(name: &str, size: u64, services: &[&str]) -> SecretView {
        SecretView {
            id: format!("id-{name}"),
            kind: SecretKind::Secret,
            name: name.into(),
            labels: [("team".to_string(), "db".to_string())].into(),
            created_at: 0,
            updated_at: 0,
            version: 2,
            size,
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tables_show_versions_and_sizes_never_data() {
        let t = secrets_table(&[view("db_pass", 7, &["web"]), view("tls", 3 << 10, &[])]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID"), "{t}");
        for want in ["VERSION", "SIZE", "SERVICES", "CREATED", "UPDATED"] {
            assert!(lines[0].contains(want), "{t}");
        }
        assert!(
            lines[1].contains("db_pass") && lines[1].contains("7 B"),
            "{t}"
        );
        assert!(lines[2].contains("3.0 KiB"), "{t}");
        let text = inspect_text(&view("db_pass", 7, &["web", "api"]));
        assert!(text.contains("Version:        2\n"), "{text}");
        assert!(text.contains("Services:       web, api\n"), "{text}");
        assert!(text.contains("Labels:         team=db\n"), "{text}");
        let mut done = SecretUpdated {
            secret: view("db_pass", 7, &["web", "api"]),
            rolled: vec!["web".into(), "api".into()],
        };
        assert_eq!(
            updated_text(&done),
            "db_pass (version 2)\nRolling onto it: web, api (follow with 'flotilla service ps')\n"
        );
        done.rolled.clear();
        assert_eq!(updated_text(&done), "db_pass (version 2)\n");
        assert_eq!(size_text(1023), "1023 B");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(size_text(2 << 20), "2.0 MiB");
    }
}
