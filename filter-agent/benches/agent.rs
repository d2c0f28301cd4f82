//! The agent's own costs at 100,000 prefixes: time from start to enforcement, resident
//! memory, and the time and map operations for a one-prefix change. Run with
//! `cargo xtask bench-agent` (root). Uses a private network namespace with one veth pair.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

const PREFIXES: usize = 100_000;
const NETNS: &str = "fa-bench-agent";
const PIN_PATH: &str = "/sys/fs/bpf/filter-agent-bench";

fn sh(args: &[&str]) -> Result<()> {
    let status = Command::new(args[0]).args(&args[1..]).status()?;
    if !status.success() {
        bail!("{args:?} failed");
    }
    Ok(())
}

/// 100,000 prefixes: /24s of 100.64.0.0/10 and 10.0.0.0/8 in two block groups, /48s of
/// 2001:db8::/32 in an allow group, one group changed in the second policy.
fn policy(interface: &str, changed: bool) -> String {
    let mut text = String::from("version: 1\nports: [25]\nrelays: [203.0.113.25]\ngroups:\n");
    let v4 = PREFIXES * 8 / 10;
    let mut group = |name: &str, smtp: &str, prefixes: &mut dyn Iterator<Item = String>| {
        let _ = writeln!(text, "  - name: {name}\n    smtp: {smtp}\n    prefixes:");
        for p in prefixes {
            let _ = writeln!(text, "      - \"{p}\"");
        }
    };
    let first = if changed { 1 } else { 0 };
    group(
        "residential",
        "block",
        &mut (first..v4 / 2).map(|i| format!("100.{}.{}.0/24", 64 + i / 256, i % 256)),
    );
    group(
        "business",
        "block",
        &mut (0..v4 / 2).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)),
    );
    let extra = if changed {
        vec!["100.63.255.0/24".to_string()]
    } else {
        vec![]
    };
    group(
        "leased-line",
        "allow",
        &mut (0..PREFIXES - v4)
            .map(|i| format!("2001:db8:{:x}::/48", i))
            .chain(extra),
    );
    let _ = write!(
        text,
        "interfaces:\n  - name: {interface}\n    xdp_mode: native\n"
    );
    text
}

fn rss_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let _ = Command::new("ip")
        .args(["netns", "del", NETNS])
        .stderr(Stdio::null())
        .status();
    sh(&["ip", "netns", "add", NETNS])?;
    let result = measure(json);
    let _ = Command::new(env!("CARGO_BIN_EXE_filter-agent"))
        .args(["detach", "--pin-path", PIN_PATH])
        .output();
    let _ = Command::new("ip").args(["netns", "del", NETNS]).status();
    result
}

fn measure(json: bool) -> Result<()> {
    sh(&[
        "ip", "-n", NETNS, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
    ])?;
    sh(&["ip", "-n", NETNS, "link", "set", "bench0", "up"])?;
    sh(&["ip", "-n", NETNS, "link", "set", "bench1", "up"])?;
    let dir = std::env::temp_dir().join("filter-agent-bench-agent");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy("bench0", false))?;

    let started = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NETNS}"))
        .arg(env!("CARGO_BIN_EXE_filter-agent"))
        .args(["run", "--pin-path", PIN_PATH, "--policy"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| -> Result<String> {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .with_context(|| format!("waiting for {needle:?}"))?;
            if line.contains(needle) {
                return Ok(line);
            }
        }
    };
    wait_for("enforcing after")?;
    let first_enforcement = started.elapsed();
    let rss = rss_kib(pid, "VmRSS:")?;
    let peak = rss_kib(pid, "VmHWM:")?;

    // One prefix changed: residential loses 100.64.0.0/24, leased-line gains 100.63.255.0/24.
    let tmp = dir.join(".policy.yaml.tmp");
    std::fs::write(&tmp, policy("bench0", true))?;
    std::fs::rename(&tmp, &path)?;
    let changed_at = Instant::now();
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let summary = wait_for("generation=2")?;
    let reload = wait_for("reload done in")?;
    let one_change = changed_at.elapsed();
    let rss_after = rss_kib(pid, "VmRSS:")?;
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait()?;

    let field = |line: &str, key: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or("?")
            .to_string()
    };
    let ops = format!(
        "added={} removed={} changed={}",
        field(&summary, "added="),
        field(&summary, "removed="),
        field(&summary, "changed=")
    );
    let reload_ms = reload
        .rsplit("in ")
        .next()
        .unwrap_or("?")
        .trim_end_matches(" ms (parse, validate, sync)");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "prefixes": PREFIXES,
                "time_to_first_enforcement_ms": first_enforcement.as_millis(),
                "rss_kib_after_start": rss,
                "peak_rss_kib_at_start": peak,
                "rss_kib_after_reload": rss_after,
                "one_prefix_change_ms": one_change.as_millis(),
                "one_prefix_change_agent_reported_ms": reload_ms,
                "one_prefix_change_map_operations": ops,
            })
        );
    } else {
        println!("agent with {PREFIXES} prefixes (native XDP on a veth)");
        println!(
            "  time to first enforcement     {} ms (process start to attached and synced)",
            first_enforcement.as_millis()
        );
        println!(
            "  resident memory               {rss} KiB after start (peak {peak} KiB), {rss_after} KiB after a reload"
        );
        println!(
            "  one-prefix change             {} ms from SIGHUP to applied ({reload_ms} ms inside the agent: parse, validate, diff, apply)",
            one_change.as_millis()
        );
        println!("  map operations for it         {ops}");
    }
    Ok(())
}
