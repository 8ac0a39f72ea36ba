//! `flotilla backup` and `flotilla restore`: the file format is
//! [`flotilla_backup`]; the daemon makes the backup and restores it,
//! the CLI seals and opens the passphrase and writes the file.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use flotilla_api::model::RestoreRequest;
use flotilla_api::Client;
use flotilla_backup as backup;

/// How long `restore` waits for the restored manager to lead.
const RESTORE_WAIT: Duration = Duration::from_secs(60);

/// The first line of a file (a passphrase or an unlock key), trimmed.
fn first_line(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} from {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        bail!("{} holds no {what}", path.display());
    }
    Ok(line)
}

/// `flotilla backup -o FILE [--passphrase-file F]`.
pub async fn backup(client: &Client, out: &Path, passphrase_file: Option<&Path>) -> Result<()> {
    let passphrase = passphrase_file
        .map(|p| first_line(p, "passphrase"))
        .transpose()?;
    let view = client.backup().await?;
    let plain = view.backup.into_bytes();
    // Checked here too: what is written is what restore will accept.
    let made = backup::read(&plain, None).map_err(|e| anyhow!("the daemon's backup: {e}"))?;
    let bytes = match &passphrase {
        None => plain,
        Some(p) => backup::write(&made.state, made.header.created_at_ms, Some(p.as_bytes()))?,
    };
    backup::write_file(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let h = &made.header;
    println!(
        "Backup of cluster {} at raft index {} ({} service{}, {} secret{} and config{}) written to {} ({} bytes, {}).",
        h.cluster_id,
        h.index,
        h.services,
        if h.services == 1 { "" } else { "s" },
        h.secrets,
        if h.secrets == 1 { "" } else { "s" },
        if h.secrets == 1 { "" } else { "s" },
        out.display(),
        bytes.len(),
        if passphrase.is_some() {
            "encrypted with the passphrase"
        } else if made.state.cluster.as_ref().is_some_and(|c| c.autolock.is_some()) {
            "its keys sealed under the unlock key"
        } else {
            "not encrypted: it holds the cluster's CA key, keep it private or use --passphrase-file"
        }
    );
    Ok(())
}

/// `flotilla backup --schedule EVERY|off [--keep N] [--dir DIR]`.
pub async fn schedule(
    client: &Client,
    every: Option<&str>,
    keep: u32,
    dir: Option<&str>,
) -> Result<()> {
    let view = client
        .backup_schedule(&flotilla_api::model::BackupScheduleRequest {
            every: every.map(String::from),
            keep,
            dir: dir.map(String::from),
        })
        .await?;
    match (view.every_ms, view.dir) {
        (Some(ms), Some(dir)) => println!(
            "The leader writes a backup every {} into {dir} on its machine, keeping the newest {}.",
            flotilla_types::format_duration_ms(ms),
            view.keep
        ),
        _ => println!("Scheduled backups stopped (the files written stay)."),
    }
    Ok(())
}

/// `flotilla restore FILE [--passphrase-file F] [--unlock-key-file F]
/// [--advertise-addr A]`.
pub async fn restore(
    client: &Client,
    file: &Path,
    passphrase_file: Option<&Path>,
    unlock_key_file: Option<&Path>,
    advertise: Option<&str>,
) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let passphrase = passphrase_file
        .map(|p| first_line(p, "passphrase"))
        .transpose()?;
    let unlock_key = unlock_key_file
        .map(|p| first_line(p, "unlock key"))
        .transpose()?;
    let opened = backup::read(&bytes, passphrase.as_deref().map(str::as_bytes))
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    // The daemon takes the backup in the clear: sealed again without the
    // passphrase (the checksum anew), never written to disk so.
    let plain = if opened.header.encryption.is_some() {
        backup::write(&opened.state, opened.header.created_at_ms, None)?
    } else {
        bytes
    };
    let restored = client
        .restore(&RestoreRequest {
            backup: String::from_utf8(plain).context("the backup is not text")?,
            unlock_key,
            advertise_addr: advertise.map(String::from),
        })
        .await?;
    // The daemon restarts into the restored cluster: wait until it leads.
    let start = Instant::now();
    let info = loop {
        if let Ok(info) = client.info().await {
            if info.is_leader && info.cluster_id.as_deref() == Some(restored.cluster_id.as_str()) {
                break info;
            }
        }
        if start.elapsed() > RESTORE_WAIT {
            bail!(
                "restored, but the daemon did not come back as the cluster's leader within {}s; see its log",
                RESTORE_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "Restored cluster {} at raft index {} ({} services, {} secrets and configs) on node {}, now its only manager, under a new cluster epoch: the old managers cannot rejoin it.",
        restored.cluster_id, restored.index, restored.services, restored.secrets, info.node_name
    );
    if info.locked || info.autolock {
        println!(
            "Autolock is on: restarted managers need 'flotilla unlock' with the same unlock key."
        );
    }
    println!("Add managers with:  flotilla join-token manager");
    println!("Old workers rejoin after 'flotilla leave --force' with:  flotilla join-token worker");
    Ok(())
}
