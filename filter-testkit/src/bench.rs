//! Shared by the benchmarks that build namespaces and pins named after their pid.

use std::path::Path;

/// Pids of earlier runs killed without a chance to clean up: the numbers that follow
/// `prefix` in the names of the entries of each `(directory, prefix)`, for processes
/// that no longer exist.
pub fn stale_runs(places: &[(&str, &str)]) -> Vec<u32> {
    let mut pids = Vec::new();
    for (dir, prefix) in places {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(pid) = digits.parse::<u32>() {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists());
    pids
}
