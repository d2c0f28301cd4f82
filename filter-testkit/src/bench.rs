//! What the benchmarks share: finding the namespaces and pins of killed earlier runs
//! (each run names them after its pid), and medians.

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

/// The median of `values` (the mean of the middle two for an even count); not empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
