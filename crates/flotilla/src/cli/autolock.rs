//! Autolock from the command line, as Swarm's: `init --autolock`,
//! `cluster update --autolock=BOOL`, `unlock-key [--rotate]`, `unlock`.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context, Result};
use flotilla_api::Client;

/// What to tell the operator along with a new unlock key.
pub fn print_new_key(key: &str) {
    println!(
        "To unlock a manager after it restarts, run 'flotilla unlock' and give it this key:\n"
    );
    println!("    {key}\n");
    println!(
        "Keep it in a password manager: without it a restarted manager cannot rejoin the cluster."
    );
}

/// `flotilla unlock`: reads the key from stdin (prompting on a terminal).
pub async fn unlock(client: &Client) -> Result<()> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Unlock key: ");
        std::io::stderr().flush().ok();
    }
    let mut key = String::new();
    stdin
        .lock()
        .read_line(&mut key)
        .context("cannot read the unlock key from stdin")?;
    if key.trim().is_empty() {
        bail!("no unlock key given: pass it on stdin, e.g. 'flotilla unlock < key.txt'");
    }
    client.unlock(key.trim()).await?;
    println!("This manager is unlocked and rejoins the cluster.");
    Ok(())
}

/// `flotilla unlock-key [--rotate] [-q]`.
pub async fn unlock_key(client: &Client, rotate: bool, quiet: bool) -> Result<()> {
    let view = client.unlock_key(rotate).await?;
    let Some(key) = view.unlock_key else {
        bail!("autolock is off: turn it on with 'flotilla cluster update --autolock=true'");
    };
    if quiet {
        println!("{key}");
        return Ok(());
    }
    if rotate {
        println!("Rotated the unlock key. A manager that was down keeps working with the previous one until it rejoins.\n");
    }
    print_new_key(&key);
    Ok(())
}

/// `flotilla cluster update --autolock=BOOL`.
pub async fn update(client: &Client, autolock: Option<bool>) -> Result<()> {
    let Some(enabled) = autolock else {
        bail!("nothing to update: give --autolock=true or --autolock=false");
    };
    let view = client.set_autolock(enabled).await?;
    match view.unlock_key {
        Some(key) if view.autolock => {
            println!("Autolock is on.");
            print_new_key(&key);
        }
        _ => println!("Autolock is off: a restarted manager needs no unlock key."),
    }
    Ok(())
}
