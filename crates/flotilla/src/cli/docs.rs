//! What is generated from the CLI's definition: shell completions
//! (`flotilla completion bash|zsh|fish`) and man pages (`flotilla man
//! DIR`), so that neither can drift from the commands.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::options::{Cli, Shell};

/// Writes the completion script of `shell` to `out`.
pub fn completion(shell: Shell, out: &mut dyn std::io::Write) -> Result<()> {
    let mut cmd = Cli::command();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    // Generated into memory first: clap_complete panics when its writer
    // fails, as stdout does when the reader (`| head`) goes away.
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut cmd, "flotilla", &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write the completion script")
        }
        _ => Ok(()),
    }
}

/// Writes `flotilla.1` and one page per subcommand, nested ones named
/// `flotilla-service-create.1`, into `dir` (made if missing). Returns how
/// many were written.
pub fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_page(&cmd, "flotilla", dir, &mut written)?;
    println!("Wrote {written} man pages to {}", dir.display());
    Ok(())
}

fn write_page(cmd: &clap::Command, name: &str, dir: &Path, written: &mut usize) -> Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .render(&mut buf)
        .with_context(|| format!("rendering {name}.1"))?;
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_page(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_commands_in_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completion(shell, &mut out).expect("completion");
            let text = String::from_utf8(out).expect("utf8");
            for word in ["service", "backup", "restore", "node"] {
                assert!(text.contains(word), "{shell:?} lacks {word}");
            }
        }
    }

    #[test]
    fn a_man_page_per_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        man_pages(dir.path()).expect("man pages");
        for page in [
            "flotilla.1",
            "flotilla-service-create.1",
            "flotilla-backup.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
            assert!(text.contains(".TH"), "{page} is a man page");
        }
        let create =
            std::fs::read_to_string(dir.path().join("flotilla-service-create.1")).expect("read");
        assert!(create.contains("replicas"), "{create}");
    }
}
