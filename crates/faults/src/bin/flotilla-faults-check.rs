//! Checks a history the fault suite wrote (`/tmp/flotilla-faults-SEED.json`)
//! again: `flotilla-faults-check FILE`. Exits 1 when it finds violations.

use std::process::ExitCode;

use flotilla_faults::{EndState, Op, Snapshot};

#[derive(serde::Deserialize)]
struct Dump {
    seed: u64,
    setup: EndState,
    end: EndState,
    ops: Vec<Op>,
    snapshots: Vec<Snapshot>,
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: flotilla-faults-check FILE (a history the fault suite wrote)");
        return ExitCode::from(2);
    };
    let dump: Dump = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let report = flotilla_faults::check(&dump.ops, &dump.setup, &dump.end, &dump.snapshots);
    println!("seed {}: {} ops: {report}", dump.seed, dump.ops.len());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
