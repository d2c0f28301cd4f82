//! The agent's own costs: time from start to enforcement and peak resident memory at
//! 1,000 / 100,000 / 1,000,000 prefixes; time and map operations of a one-prefix change in
//! a 100,000-prefix policy (a file reload, an exemption, and `prefixes add` through the
//! control socket); replay throughput (frames per second through
//! `filter-agent replay`). Run with `cargo xtask bench-agent [--json] [--quick]` (root).
//!
//! The agent runs as its own process (the release binary) in a private network namespace
//! with one veth pair, attaching natively to one end, with its own pin path, control
//! socket and state file; everything is removed at the end, on error and on Ctrl-C, and a
//! later run removes what a killed one left.

use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use filter_testkit::{
    agent::{AgentOptions, AgentProcess},
    bench::{median, stale_runs},
    ip, netns, signals,
};
use serde::Serialize;

const AGENT: &str = env!("CARGO_BIN_EXE_filter-agent");
const NETNS_PREFIX: &str = "fa-bench-agent-";
const PIN_PREFIX: &str = "/sys/fs/bpf/filter-agent-bench-";

/// Policy sizes for start-up, runs of each (median), and the replay capture's frames.
struct Plan {
    sizes: &'static [(usize, usize)],
    change_prefixes: usize,
    changes: usize,
    replay_frames: usize,
    replay_runs: usize,
}

/// (prefixes, runs): 1,000,000 once, it takes a while.
const FULL: Plan = Plan {
    sizes: &[(1_000, 5), (100_000, 3), (1_000_000, 1)],
    change_prefixes: 100_000,
    changes: 10,
    replay_frames: 1_000_000,
    replay_runs: 3,
};
const QUICK: Plan = Plan {
    sizes: &[(1_000, 1), (100_000, 1)],
    change_prefixes: 100_000,
    changes: 2,
    replay_frames: 100_000,
    replay_runs: 1,
};

/// A policy of `size` prefixes: 80 % IPv4 /24s in two block groups, 20 % IPv6 /48s in an
/// allow group. `changed`: residential loses its first prefix and leased-line gains
/// 198.18.0.0/24 (one prefix moved: a delete and an insert).
fn policy(size: usize, interface: &str, changed: bool) -> String {
    let mut text = String::with_capacity(size * 28);
    text.push_str("version: 1\nports: [25]\nrelays: [203.0.113.25]\ngroups:\n");
    let v4 = size * 8 / 10;
    let v4_prefix = |i: usize| format!("{}.{}.{}.0/24", 1 + i / 65_536, (i / 256) % 256, i % 256);
    let v6_prefix = |i: usize| format!("2a00:{:x}:{:x}::/48", i / 65_536, i % 65_536);
    let mut group = |name: &str, smtp: &str, prefixes: &mut dyn Iterator<Item = String>| {
        let _ = writeln!(text, "  - name: {name}\n    smtp: {smtp}\n    prefixes:");
        for p in prefixes {
            let _ = writeln!(text, "      - \"{p}\"");
        }
    };
    let first = usize::from(changed);
    group("residential", "block", &mut (first..v4 / 2).map(v4_prefix));
    group("business", "block", &mut (v4 / 2..v4).map(v4_prefix));
    let extra = changed.then(|| "198.18.0.0/24".to_string());
    group(
        "leased-line",
        "allow",
        &mut (0..size - v4).map(v6_prefix).chain(extra),
    );
    let _ = write!(
        text,
        "interfaces:\n  - name: {interface}\n    xdp_mode: native\n"
    );
    text
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// The namespace, pin path, socket and files of this run; dropping it removes them.
struct Bench {
    pid: u32,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Result<Bench> {
        let bench = Bench {
            pid: std::process::id(),
            dir: tempfile::Builder::new()
                .prefix("filter-agent-bench-agent-")
                .tempdir()?,
        };
        let ns = bench.netns();
        ip::batch(None, &format!("netns add {ns}"))?;
        ip::batch(
            Some(&ns),
            "link add bench0 type veth peer name bench1\nlink set bench0 up\nlink set bench1 up\n",
        )?;
        Ok(bench)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn netns(&self) -> String {
        format!("{NETNS_PREFIX}{}", self.pid)
    }

    fn pin_path(&self) -> String {
        format!("{PIN_PREFIX}{}", self.pid)
    }

    fn socket(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    fn detach(pin_path: &str) {
        if Path::new(pin_path).exists() {
            let _ = Command::new(AGENT)
                .args(["detach", "--pin-path", pin_path])
                .stdin(Stdio::null())
                .output();
            let _ = std::fs::remove_dir(pin_path);
        }
    }

    fn remove(pid: u32) {
        Self::detach(&format!("{PIN_PREFIX}{pid}"));
        netns::delete(&format!("{NETNS_PREFIX}{pid}"));
    }

    /// Removes what runs killed without a chance to clean up left behind.
    fn remove_stale() {
        let places = [
            ("/run/netns", NETNS_PREFIX),
            ("/sys/fs/bpf", PIN_PREFIX.trim_start_matches("/sys/fs/bpf/")),
        ];
        for pid in stale_runs(&places) {
            eprintln!("removing the namespace and pins left by bench-agent run {pid}");
            Self::remove(pid);
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        Self::remove(self.pid);
    }
}

/// `filter-agent run` on `policy` in the bench's namespace, with its files.
fn start_agent(bench: &Bench, policy: &Path) -> Result<AgentProcess> {
    AgentProcess::spawn(&AgentOptions {
        binary: AGENT.into(),
        netns: netns::path(&bench.netns()),
        policy: Some(policy.to_owned()),
        pin_path: bench.pin_path().into(),
        socket: bench.socket(),
        state_dir: bench.dir().join("state"),
        args: Vec::new(),
        log_filter: Some("info"),
        env: Vec::new(),
        own_process_group: false,
    })
}

/// The agent's next log line that contains `needle`.
fn next_line(agent: &mut AgentProcess, needle: &str, timeout: Duration) -> Result<String> {
    agent.read_until(timeout, &format!("log {needle:?}"), |line| {
        line.contains(needle).then(|| line.to_owned())
    })
}

/// Waits until the agent watches its policy file: it sets up the watcher and then its
/// signal handlers just after logging "enforcing"; a SIGHUP handler means both are in.
fn wait_ready(agent: &AgentProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (libc::SIGHUP - 1)) != 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the agent did not install a SIGHUP handler within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long a stopping agent may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

#[derive(Serialize)]
struct Startup {
    prefixes: usize,
    runs: usize,
    /// Process start to the agent's "enforcing" line (attached and maps synced), median.
    time_to_enforcement_ms: f64,
    time_to_enforcement_min_ms: f64,
    time_to_enforcement_max_ms: f64,
    /// The agent's own figure, from its log line (median).
    agent_reported_ms: f64,
    /// VmHWM at enforcement, largest over the runs.
    peak_rss_kib: u64,
    /// VmRSS at enforcement, largest over the runs.
    rss_kib: u64,
    policy_file_bytes: usize,
}

#[derive(Serialize)]
struct Change {
    prefixes: usize,
    changes: usize,
    /// Policy file replaced to the agent's "reload done" line, median (min..max); includes
    /// the 300 ms the agent lets a burst of file events settle.
    time_ms: f64,
    time_min_ms: f64,
    time_max_ms: f64,
    /// The agent's own figure for parse, validate, diff and apply (median).
    agent_reported_ms: f64,
    /// Trie writes of each change: inserts + deletes + updates (+2 for a config switch).
    map_operations: usize,
    report: String,
    /// `filter-agent exemptions add` / `remove` of one prefix through the control socket
    /// (CLI process start to reply; the change is in the kernel when it returns), median.
    exemption_add_ms: f64,
    exemption_remove_ms: f64,
    /// `filter-agent prefixes add` of one prefix through the control socket (an IPAM's
    /// change: the CLI process's wall time from spawn to exit; the prefix is in the kernel,
    /// the drop-in and the history when it returns), median; and the agent's own figure.
    socket_change_ms: f64,
    socket_change_agent_ms: f64,
    /// VmHWM after the reloads, before the exemptions: peak memory over start and reloads.
    peak_rss_after_reloads_kib: u64,
    /// VmRSS then.
    rss_after_reloads_kib: u64,
    /// VmHWM after the changes: peak memory over start, reloads and exemptions.
    peak_rss_kib: u64,
}

#[derive(Serialize)]
struct Replay {
    frames: usize,
    runs: usize,
    /// Wall time of `filter-agent replay` over the capture, median.
    total_ms: f64,
    /// The same over a one-frame capture: start, policy, program load.
    startup_ms: f64,
    /// frames / total time.
    frames_per_second: f64,
    /// frames / (total - startup): the per-frame rate once loaded.
    frames_per_second_after_startup: f64,
}

#[derive(Serialize)]
struct Report {
    startup: Vec<Startup>,
    one_prefix_change: Change,
    replay: Replay,
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let plan = if std::env::args().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-agent needs root (namespaces, XDP)");
    }
    signals::install(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    Bench::remove_stale();
    let bench = Bench::new()?;
    let report = Report {
        startup: plan
            .sizes
            .iter()
            .map(|&(size, runs)| startup(&bench, size, runs))
            .collect::<Result<_>>()?,
        one_prefix_change: one_prefix_change(&bench, &plan)?,
        replay: replay(&bench, &plan)?,
    };
    drop(bench);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn startup(bench: &Bench, size: usize, runs: usize) -> Result<Startup> {
    let path = bench.dir().join(format!("policy-{size}.yaml"));
    let text = policy(size, "bench0", false);
    std::fs::write(&path, &text)?;
    let mut times = Vec::new();
    let mut reported = Vec::new();
    let (mut peak, mut rss) = (0, 0);
    for run in 0..runs {
        // Each run starts from nothing: no pinned maps to adopt.
        Bench::detach(&bench.pin_path());
        let mut agent = start_agent(bench, &path)?;
        let line = next_line(&mut agent, "enforcing after", Duration::from_secs(600))?;
        let elapsed = agent.started().elapsed();
        peak = peak.max(status_kib(agent.pid(), "VmHWM:")?);
        rss = rss.max(status_kib(agent.pid(), "VmRSS:")?);
        agent.stop(STOP_TIMEOUT)?;
        times.push(ms(elapsed));
        reported.push(
            line.split("enforcing after ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(f64::NAN),
        );
        eprintln!(
            "start with {size} prefixes, run {}/{runs}: enforcing after {:.0} ms, peak RSS {peak} KiB",
            run + 1,
            ms(elapsed)
        );
    }
    Bench::detach(&bench.pin_path());
    let (lo, hi) = times
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    Ok(Startup {
        prefixes: size,
        runs,
        time_to_enforcement_ms: median(&times),
        time_to_enforcement_min_ms: lo,
        time_to_enforcement_max_ms: hi,
        agent_reported_ms: median(&reported),
        peak_rss_kib: peak,
        rss_kib: rss,
        policy_file_bytes: text.len(),
    })
}

fn one_prefix_change(bench: &Bench, plan: &Plan) -> Result<Change> {
    let size = plan.change_prefixes;
    let path = bench.dir().join("policy-change.yaml");
    let texts = [policy(size, "bench0", false), policy(size, "bench0", true)];
    std::fs::write(&path, &texts[0])?;
    Bench::detach(&bench.pin_path());
    let mut agent = start_agent(bench, &path)?;
    next_line(&mut agent, "enforcing after", Duration::from_secs(600))?;
    wait_ready(&agent)?;
    let mut times = Vec::new();
    let mut reported = Vec::new();
    let mut summary = String::new();
    let mut operations = 0;
    for change in 0..plan.changes {
        // Alternate: move the prefix, then move it back; each is a one-prefix change. The
        // file is replaced as editors do (write, rename); the agent's watcher reloads it.
        let tmp = bench.dir().join(".policy-change.yaml.tmp");
        std::fs::write(&tmp, &texts[(change + 1) % 2])?;
        let replaced = Instant::now();
        std::fs::rename(&tmp, &path)?;
        summary = next_line(&mut agent, "generation=", Duration::from_secs(120))?;
        let done = next_line(&mut agent, "reload done in", Duration::from_secs(120))?;
        let elapsed = replaced.elapsed();
        times.push(ms(elapsed));
        reported.push(
            done.split("reload done in ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(f64::NAN),
        );
        let field = |key: &str| -> usize {
            summary
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let config = summary.contains("config_changed=true");
        operations =
            field("added=") + field("removed=") + field("changed=") + 2 * usize::from(config);
        eprintln!(
            "one-prefix change {}/{}: {:.1} ms, {operations} map operations",
            change + 1,
            plan.changes,
            ms(elapsed)
        );
    }
    let peak_after_reloads = status_kib(agent.pid(), "VmHWM:")?;
    let rss_after_reloads = status_kib(agent.pid(), "VmRSS:")?;
    // The abuse desk's one-prefix change: an exemption through the control socket, inside
    // residential's second /24 (the first is the one the changes move).
    let exemption = "1.0.1.128/25";
    let mut add_times = Vec::new();
    let mut remove_times = Vec::new();
    for round in 0..plan.changes {
        for (verb, times) in [("add", &mut add_times), ("remove", &mut remove_times)] {
            let mut cmd = Command::new(AGENT);
            cmd.args(["exemptions", verb, exemption, "--socket"])
                .arg(bench.socket());
            if verb == "add" {
                cmd.args(["--reason", "bench-agent"]);
            }
            let started = Instant::now();
            let out = cmd.stdin(Stdio::null()).output()?;
            let elapsed = started.elapsed();
            if !out.status.success() {
                bail!(
                    "filter-agent exemptions {verb} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            times.push(ms(elapsed));
            eprintln!(
                "exemption {verb} {}/{}: {:.1} ms",
                round + 1,
                plan.changes,
                ms(elapsed)
            );
        }
    }
    // An IPAM's one-prefix change: `prefixes add` into residential, then removed again
    // (a prefix in no group of the policy).
    let ipam = "198.19.0.0/24";
    let mut ipam_times = Vec::new();
    let mut ipam_agent = Vec::new();
    for round in 0..plan.changes {
        for verb in ["add", "remove"] {
            let mut cmd = Command::new(AGENT);
            cmd.args(["prefixes", verb]);
            if verb == "add" {
                cmd.args(["--group", "residential"]);
            }
            cmd.args([ipam, "--json", "--socket"]).arg(bench.socket());
            let started = Instant::now();
            let out = cmd.stdin(Stdio::null()).output()?;
            let elapsed = started.elapsed();
            if !out.status.success() {
                bail!(
                    "filter-agent prefixes {verb} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if verb == "add" {
                let reply: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                ipam_times.push(ms(elapsed));
                ipam_agent.push(reply["agent_ms"].as_f64().unwrap_or(f64::NAN));
                eprintln!(
                    "prefixes add {}/{}: {:.1} ms (agent {:.2} ms)",
                    round + 1,
                    plan.changes,
                    ms(elapsed),
                    ipam_agent[round]
                );
            }
        }
    }
    let peak = status_kib(agent.pid(), "VmHWM:")?;
    agent.stop(STOP_TIMEOUT)?;
    Bench::detach(&bench.pin_path());
    let report = summary
        .split_whitespace()
        .filter(|w| {
            ["added=", "removed=", "changed=", "config_changed="]
                .iter()
                .any(|k| w.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join(" ");
    let (lo, hi) = times
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
    Ok(Change {
        prefixes: size,
        changes: plan.changes,
        time_ms: median(&times),
        time_min_ms: lo,
        time_max_ms: hi,
        agent_reported_ms: median(&reported),
        map_operations: operations,
        report,
        exemption_add_ms: median(&add_times),
        exemption_remove_ms: median(&remove_times),
        socket_change_ms: median(&ipam_times),
        socket_change_agent_ms: median(&ipam_agent),
        peak_rss_after_reloads_kib: peak_after_reloads,
        rss_after_reloads_kib: rss_after_reloads,
        peak_rss_kib: peak,
    })
}

/// `filter-agent replay` of a capture of random frames (the differential test's mix:
/// every encapsulation, truncations, both families) against the corpus policy.
fn replay(bench: &Bench, plan: &Plan) -> Result<Replay> {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/policy.yaml");
    let mut rng = fastrand::Rng::with_seed(6);
    let capture = bench.dir().join("replay.pcap");
    let one = bench.dir().join("replay-one.pcap");
    let file = std::io::BufWriter::new(std::fs::File::create(&capture)?);
    let mut writer = filter_agent::capture::FrameWriter::new(file)?;
    let first = filter_testkit::random::random_frame(&mut rng);
    writer.write(&first)?;
    for _ in 1..plan.replay_frames {
        writer.write(&filter_testkit::random::random_frame(&mut rng))?;
    }
    writer.into_inner().flush()?;
    filter_agent::capture::write_pcap_to(std::fs::File::create(&one)?, &[first])?;
    let time = |path: &Path| -> Result<f64> {
        let started = Instant::now();
        let out = Command::new(AGENT)
            .args(["replay", "--policy"])
            .arg(&policy)
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            bail!(
                "filter-agent replay failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(ms(started.elapsed()))
    };
    let mut totals = Vec::new();
    let mut startups = Vec::new();
    for run in 0..plan.replay_runs {
        signals::check()?;
        startups.push(time(&one)?);
        totals.push(time(&capture)?);
        eprintln!(
            "replay {}/{}: {} frames in {:.0} ms (one frame: {:.0} ms)",
            run + 1,
            plan.replay_runs,
            plan.replay_frames,
            totals[run],
            startups[run]
        );
    }
    let total = median(&totals);
    let startup = median(&startups);
    let frames = plan.replay_frames as f64;
    Ok(Replay {
        frames: plan.replay_frames,
        runs: plan.replay_runs,
        total_ms: total,
        startup_ms: startup,
        frames_per_second: (frames / (total / 1e3)).round(),
        frames_per_second_after_startup: ((frames - 1.0) / ((total - startup).max(0.1) / 1e3))
            .round(),
    })
}

fn print_report(r: &Report) {
    println!("agent start-up (process start to attached and synced; native XDP on a veth)");
    println!(
        "  {:>9}  {:>4}  {:>16} {:>17}  {:>12}  {:>14}  {:>9}",
        "prefixes", "runs", "to enforcement", "(min..max)", "agent's own", "peak RSS", "policy"
    );
    for s in &r.startup {
        println!(
            "  {:>9}  {:>4}  {:>13.0} ms {:>17}  {:>9.0} ms  {:>10.1} MiB  {:>5.1} MB",
            s.prefixes,
            s.runs,
            s.time_to_enforcement_ms,
            format!(
                "({:.0}..{:.0})",
                s.time_to_enforcement_min_ms, s.time_to_enforcement_max_ms
            ),
            s.agent_reported_ms,
            s.peak_rss_kib as f64 / 1024.0,
            s.policy_file_bytes as f64 / 1e6
        );
    }
    let c = &r.one_prefix_change;
    println!(
        "\none-prefix change in a {}-prefix policy (file replaced to applied), {} changes",
        c.prefixes, c.changes
    );
    println!(
        "  {:.1} ms median ({:.1}..{:.1}), of which 300 ms the agent waits for file events to \
         settle;\n  {:.0} ms inside the agent (parse, validate, diff, apply)",
        c.time_ms, c.time_min_ms, c.time_max_ms, c.agent_reported_ms
    );
    println!(
        "  {} map operations ({}); after the {} reloads peak RSS {:.1} MiB, RSS {:.1} MiB",
        c.map_operations,
        c.report,
        c.changes,
        c.peak_rss_after_reloads_kib as f64 / 1024.0,
        c.rss_after_reloads_kib as f64 / 1024.0
    );
    println!(
        "  an exemption through the control socket instead: add {:.1} ms, remove {:.1} ms \
         (CLI start to reply, median); peak RSS {:.1} MiB after them",
        c.exemption_add_ms,
        c.exemption_remove_ms,
        c.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "  `filter-agent prefixes add` of one prefix (an IPAM's change) instead: {:.1} ms \
         (CLI spawn to exit, median), {:.2} ms inside the agent",
        c.socket_change_ms, c.socket_change_agent_ms
    );
    let p = &r.replay;
    println!(
        "\nreplay of {} random frames (filter-agent replay, real XDP program, corpus policy)",
        p.frames
    );
    println!(
        "  {:.0} ms total, {:.0} frames/s; start-up {:.0} ms, {:.0} frames/s after it",
        p.total_ms, p.frames_per_second, p.startup_ms, p.frames_per_second_after_startup
    );
}
