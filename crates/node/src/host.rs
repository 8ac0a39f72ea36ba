//! What this machine offers tasks: its CPUs and memory, reported when the
//! node joins so that the scheduler can honour reservations.

use flotilla_types::Resources;

/// CPUs the process may use and the machine's total memory; zero where
/// they cannot be read (then reservations are not checked on this node).
pub fn resources() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_bytes(&text))
        .unwrap_or(0);
    Resources {
        nano_cpus: cpus.saturating_mul(1_000_000_000),
        memory_bytes: memory,
    }
}

/// `MemTotal:  24576000 kB` in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total() {
        let text = "MemTotal:       24576000 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(text), Some(24_576_000 * 1024));
        assert_eq!(mem_total_bytes("nothing here"), None);
        let r = resources();
        assert!(r.nano_cpus >= 1_000_000_000);
        assert!(r.memory_bytes > 0);
    }
}
