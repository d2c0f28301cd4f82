//! The lab demo: the real agent, attached to a real veth in a network-namespace lab,
//! filtering real TCP connections, and reloading its policy live.
//!
//! ```text
//! demo PATH_TO_filter-agent      (as root; `cargo xtask demo` builds both and runs this)
//! ```
//!
//! Builds the lab of `filter_testkit::lab` (customers -> router -> internet), starts
//! `filter-agent run` in the router namespace, connects from every customer type to a
//! remote MTA and to the ISP relay, and checks each outcome against what the policy says.
//! Then it edits the policy file live (an exemption, then an invalid edit the agent must
//! refuse) and checks again. Last, pppd's hook scripts report subscriber sessions: alice is
//! exempted by name and the exemption follows her reconnect to another address, while bob,
//! who gets her old address, stays blocked. Everything is torn down at the end, on error, and on Ctrl-C.
//!
//! Exit status: 0 every attempt matched the policy, 1 a mismatch or an error, 130 Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use filter_agent::{explain::explain, image::MapImage, policy};
use filter_testkit::{
    agent::{AgentOptions, AgentProcess},
    lab::{self, Customer, Lab, Listener, Ns, Outcome},
    signals::{self, interrupted},
};

const LAB_PREFIX: &str = "demo";
const PIN_PATH: &str = "/sys/fs/bpf/filter-agent-demo";
/// A SYN the filter drops gets no answer; this is how long an attempt waits for one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(30);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The exemption the demo grants live: residential customer .10 may send mail directly.
const EXEMPT_GROUP: &str = "residential-exempt-demo";
const EXEMPT_V4: &str = "100.64.0.10/32";
const EXEMPT_V6: &str = "2001:db8:1000::10/128";
/// The invalid edit: host bits set in an IPv4 prefix.
const INVALID_V4: &str = "100.64.0.10/24";

fn main() -> ExitCode {
    signals::install(&[libc::SIGINT, libc::SIGTERM]);
    let binary = match std::env::args_os().nth(1) {
        Some(path) if std::env::args_os().len() == 2 => PathBuf::from(path),
        _ => {
            eprintln!("usage: demo PATH_TO_filter-agent_BINARY   (as root)");
            return ExitCode::from(2);
        }
    };
    let binary = match std::path::absolute(&binary) {
        Ok(path) if path.is_file() => path,
        _ => {
            eprintln!("error: {} is not a file", binary.display());
            return ExitCode::FAILURE;
        }
    };

    heading("Lab");
    let lab = match Lab::with_prefix(LAB_PREFIX) {
        Ok(lab) => lab,
        Err(err) => {
            if let Some(signal) = interrupted() {
                eprintln!("\ninterrupted by signal {signal} while building the lab");
                return ExitCode::from(128 + signal as u8);
            }
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut agent: Option<Agent> = None;
    let dir = tempfile::Builder::new()
        .prefix("filter-agent-demo-")
        .tempdir();
    let result = match &dir {
        Ok(dir) => demo(&lab, &binary, dir.path(), &mut agent),
        Err(err) => Err(anyhow::anyhow!("creating the demo's directory: {err}")),
    };

    heading("Teardown");
    let (teardown, log) = teardown(&lab, &binary, agent.take());
    let namespaces: Vec<String> = Ns::ALL.iter().map(|&ns| lab.netns_name(ns)).collect();
    drop(lab);
    drop(dir);
    println!("  removed the lab namespaces ({})", namespaces.join(", "));

    if let Some(signal) = interrupted() {
        eprintln!("\ninterrupted by signal {signal}; everything torn down");
        return ExitCode::from(128 + signal as u8);
    }
    let failure = match (&result, &teardown) {
        (Err(err), _) => Some(format!("error: {err:#}")),
        (Ok(_), Err(err)) => Some(format!("error during teardown: {err:#}")),
        (Ok(mismatches), Ok(())) if *mismatches > 0 => Some(format!(
            "FAILED: {mismatches} attempt(s) did not do what the policy says"
        )),
        (Ok(_), Ok(())) => None,
    };
    match failure {
        None => {
            println!("\nEvery attempt did what the policy says.");
            ExitCode::SUCCESS
        }
        Some(message) => {
            eprintln!("\nThe agent's log:");
            for line in &log {
                eprintln!("  {line}");
            }
            eprintln!("\n{message}");
            ExitCode::FAILURE
        }
    }
}

/// Steps 1 to 5; returns the number of attempts that did not match the policy.
fn demo(lab: &Lab, binary: &Path, dir: &Path, agent_slot: &mut Option<Agent>) -> Result<usize> {
    let [customers, router, internet] = Ns::ALL.map(|ns| lab.netns_name(ns));
    println!(
        "  {customers} --veth-- {router} [XDP on {}] --veth-- {internet}",
        lab.router_customer_if()
    );
    signals::check()?;

    let policy_file = dir.join("lab.yaml");
    let base_yaml = lab.policy_yaml();
    let base = compile(&base_yaml)?;
    write_atomically(&policy_file, &base_yaml)?;
    println!(
        "  policy      {}  (policies/lab.yaml, for this lab)",
        policy_file.display()
    );

    let mut listeners: Vec<Listener> = Vec::new();
    for (ip, ports) in [
        (lab::REMOTE_V4, &[25, 465, 587][..]),
        (lab::REMOTE_V6, &[25, 465, 587]),
        (lab::RELAY_V4, &[25]),
        (lab::RELAY_V6, &[25]),
    ] {
        for &port in ports {
            listeners.push(lab.listen(SocketAddr::new(ip, port))?);
        }
    }
    println!(
        "  listening   remote MTA {} and {} on 25, 465, 587; relay {} and {} on 25",
        lab::REMOTE_V4,
        lab::REMOTE_V6,
        lab::RELAY_V4,
        lab::RELAY_V6
    );
    signals::check()?;

    heading("Agent");
    if Path::new(PIN_PATH).exists() {
        // Left by an earlier run that was killed: its links point at deleted veths.
        println!("  removing what a killed earlier run left under {PIN_PATH}:");
        run_detach(lab, binary).context("removing the pins of an earlier run")?;
    }
    let agent = agent_slot.insert(Agent::start(lab, binary, &policy_file)?);
    println!(
        "  $ nsenter --net={} {} run --policy {} --pin-path {PIN_PATH}",
        lab.netns_path(Ns::Router).display(),
        binary.display(),
        policy_file.display()
    );
    agent.wait_for(START_TIMEOUT, "start enforcing", |line| {
        line.contains(" enforcing after ").then_some(())
    })?;

    let (mut mismatches, mut connected) = (0, 0);
    let mut tally = |(m, c)| {
        mismatches += m;
        connected += c;
    };
    heading("Every customer type, IPv4 and IPv6, to the remote MTA and to the relay");
    tally(attempts(lab, &base, &lab::CUSTOMERS)?);

    heading(&format!(
        "Live edit: exempt residential {} and {}",
        lab::RESIDENTIAL.v4,
        lab::RESIDENTIAL.v6
    ));
    let exempt_yaml = add_group(
        &base_yaml,
        &format!(
            "  - name: {EXEMPT_GROUP}\n    smtp: allow\n    prefixes:\n      - {EXEMPT_V4}\n      - \"{EXEMPT_V6}\"\n"
        ),
    )?;
    let exempt = compile(&exempt_yaml)?;
    println!("  adding to groups: (written to a temporary file, renamed over the policy)");
    println!(
        "    - {{name: {EXEMPT_GROUP}, smtp: allow, prefixes: [{EXEMPT_V4}, \"{EXEMPT_V6}\"]}}"
    );
    write_atomically(&policy_file, &exempt_yaml)?;
    if !agent.wait_for(RELOAD_TIMEOUT, "reload", reload_outcome)? {
        bail!("the agent refused the exemption");
    }
    tally(attempts(lab, &exempt, &[lab::RESIDENTIAL])?);

    heading(&format!(
        "Invalid edit: {INVALID_V4} (host bits set) instead of {EXEMPT_V4}"
    ));
    let invalid_yaml =
        exempt_yaml.replace(&format!("- {EXEMPT_V4}\n"), &format!("- {INVALID_V4}\n"));
    if invalid_yaml == exempt_yaml || policy::parse(&invalid_yaml, "lab.yaml").is_ok() {
        bail!("the demo's invalid edit is not invalid");
    }
    println!("  changing `- {EXEMPT_V4}` to `- {INVALID_V4}` (written the same way)");
    write_atomically(&policy_file, &invalid_yaml)?;
    if agent.wait_for(RELOAD_TIMEOUT, "reload", reload_outcome)? {
        bail!("the agent accepted a policy with host bits set");
    }
    println!("  The previous policy must still be in force (residential .10 exempt):");
    tally(attempts(lab, &exempt, &[lab::RESIDENTIAL])?);

    heading("Subscribers: alice is exempted by name and reconnects with another address");
    tally(subscribers(lab, binary, dir)?);

    // Each "connected" above was a handshake with one of the demo's own listeners.
    let accepted: usize = listeners.iter().map(Listener::accepted).sum();
    if accepted != connected {
        bail!("the listeners accepted {accepted} connections, the customers made {connected}");
    }
    println!(
        "\n  The lab's listeners accepted {accepted} connections, one per \"connected\" above."
    );
    Ok(mismatches)
}

// ---------------------------------------------------------------------------------------
// Subscribers.

/// The addresses the BNG hands alice and bob (residential, inside 100.64.0.0/10).
const FIRST_ADDRESS: &str = "100.64.0.20";
const SECOND_ADDRESS: &str = "100.64.0.21";

/// pppd's hooks tell the agent who holds which address; an exemption by name follows
/// alice from her first address to her second, and bob on her old one stays blocked.
fn subscribers(lab: &Lab, binary: &Path, dir: &Path) -> Result<(usize, usize)> {
    let socket = dir.join("control.sock");
    for address in [FIRST_ADDRESS, SECOND_ADDRESS] {
        lab.add_customer_address(address.parse()?)?;
    }
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ppp");
    let hook = |name: &str, peer: &str, ifname: &str, pid: u32, remote: &str| -> Result<()> {
        println!(
            "  $ PEERNAME={peer} IPREMOTE={remote} IFNAME={ifname} PPPD_PID={pid} packaging/ppp/{name} {ifname} /dev/pts/3 115200 100.64.255.254 {remote} ''"
        );
        let out = std::process::Command::new(hooks.join(name))
            .env_clear()
            .args([ifname, "/dev/pts/3", "115200", "100.64.255.254", remote, ""])
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("PEERNAME", peer)
            .env("IPREMOTE", remote)
            .env("IFNAME", ifname)
            .env("PPPD_PID", pid.to_string())
            .env("FILTER_AGENT", binary)
            .env("FILTER_AGENT_SOCKET", &socket)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .with_context(|| format!("running packaging/ppp/{name}"))?;
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("    {line}");
        }
        if !out.status.success() {
            bail!("packaging/ppp/{name} failed ({})", out.status);
        }
        Ok(())
    };
    let cli = |args: &[&str]| -> Result<String> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    a.to_string()
                }
            })
            .collect();
        println!("  $ filter-agent {}", shown.join(" "));
        let out = std::process::Command::new(binary)
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .process_group(0)
            .output()?;
        if !out.status.success() {
            bail!(
                "filter-agent {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.lines() {
            println!("    {line}");
        }
        Ok(text)
    };
    let (mut mismatches, mut connected) = (0, 0);
    let mut tally = |(m, c)| {
        mismatches += m;
        connected += c;
    };

    println!("  alice dials in (pppd runs ip-up):");
    hook("ip-up", "alice", "ppp0", 4242, FIRST_ADDRESS)?;
    tally(subscriber_attempts(
        lab,
        binary,
        &socket,
        &[("alice", FIRST_ADDRESS)],
    )?);

    println!("\n  The abuse desk exempts her by name:");
    cli(&[
        "exemptions",
        "add",
        "--subscriber",
        "alice",
        "--reason",
        "ticket 4711: runs own MTA",
    ])?;
    tally(subscriber_attempts(
        lab,
        binary,
        &socket,
        &[("alice", FIRST_ADDRESS)],
    )?);

    println!("\n  She reconnects and gets another address; bob gets her old one:");
    hook("ip-down", "alice", "ppp0", 4242, FIRST_ADDRESS)?;
    hook("ip-up", "alice", "ppp1", 4343, SECOND_ADDRESS)?;
    hook("ip-up", "bob", "ppp2", 4444, FIRST_ADDRESS)?;
    cli(&["sessions", "list"])?;
    tally(subscriber_attempts(
        lab,
        binary,
        &socket,
        &[("alice", SECOND_ADDRESS), ("bob", FIRST_ADDRESS)],
    )?);
    cli(&["exemptions", "list"])?;
    Ok((mismatches, connected))
}

/// Connects from each subscriber's address to remote:25 and relay:25 and checks the
/// outcome against what the running agent says (`explain` over its socket, which knows
/// the sessions and exemptions by name).
fn subscriber_attempts(
    lab: &Lab,
    binary: &Path,
    socket: &Path,
    who: &[(&'static str, &str)],
) -> Result<(usize, usize)> {
    let mut plan = Vec::new();
    for &(name, address) in who {
        let src: IpAddr = address.parse()?;
        for (dst, dst_name) in [(lab::REMOTE_V4, "remote MTA"), (lab::RELAY_V4, "relay")] {
            let out = std::process::Command::new(binary)
                .args([
                    "explain",
                    "--json",
                    "--src",
                    address,
                    "--dst",
                    &dst.to_string(),
                ])
                .arg("--socket")
                .arg(socket)
                .stdin(Stdio::null())
                .process_group(0)
                .output()?;
            if !out.status.success() {
                bail!(
                    "explain failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let said: filter_agent::control::protocol::Explanation =
                serde_json::from_slice(&out.stdout).context("reading explain --json")?;
            plan.push(Attempt {
                customer: name,
                src,
                dst: SocketAddr::new(dst, 25),
                dst_name,
                verdict: said.verdict.to_string(),
                reason: said.reason.to_string(),
                outcome: Outcome::Error("not run".into()),
            });
        }
    }
    run_and_print(lab, plan)
}

// ---------------------------------------------------------------------------------------
// Connection attempts and the table.

struct Attempt {
    customer: &'static str,
    src: IpAddr,
    dst: SocketAddr,
    dst_name: &'static str,
    verdict: String,
    reason: String,
    outcome: Outcome,
}

impl Attempt {
    fn expected(&self) -> Outcome {
        if self.verdict == "pass" {
            Outcome::Connected
        } else {
            Outcome::TimedOut
        }
    }

    fn matches(&self) -> bool {
        self.outcome == self.expected()
    }
}

/// Connects, all at once, from each customer (IPv4, then IPv6) to remote:25, relay:25,
/// remote:465 and remote:587, prints the table and returns the number of mismatches and
/// of connections made.
fn attempts(lab: &Lab, image: &MapImage, customers: &[Customer]) -> Result<(usize, usize)> {
    let mut plan = Vec::new();
    for c in customers {
        for (src, remote, relay) in [
            (c.v4, lab::REMOTE_V4, lab::RELAY_V4),
            (c.v6, lab::REMOTE_V6, lab::RELAY_V6),
        ] {
            for (dst, port, dst_name) in [
                (remote, 25, "remote MTA"),
                (relay, 25, "relay"),
                (remote, 465, "remote MTA"),
                (remote, 587, "remote MTA"),
            ] {
                let said = explain(image, src, dst, port);
                plan.push(Attempt {
                    customer: c.name,
                    src,
                    dst: SocketAddr::new(dst, port),
                    dst_name,
                    verdict: said.verdict.to_string(),
                    reason: said.reason.to_string(),
                    outcome: Outcome::Error("not run".into()),
                });
            }
        }
    }
    run_and_print(lab, plan)
}

/// Makes the attempts, all at once, prints the table and returns the number of
/// mismatches and of connections made.
fn run_and_print(lab: &Lab, mut plan: Vec<Attempt>) -> Result<(usize, usize)> {
    std::thread::scope(|s| {
        for attempt in &mut plan {
            s.spawn(|| attempt.outcome = lab.connect(attempt.src, attempt.dst, CONNECT_TIMEOUT));
        }
    });
    signals::check()?;
    print_table(&plan);
    Ok((
        plan.iter().filter(|a| !a.matches()).count(),
        plan.iter()
            .filter(|a| a.outcome == Outcome::Connected)
            .count(),
    ))
}

fn print_table(plan: &[Attempt]) {
    let rows: Vec<[String; 6]> = plan
        .iter()
        .map(|a| {
            [
                a.customer.to_owned(),
                a.src.to_string(),
                format!("{} {}", a.dst_name, a.dst),
                format!("{} ({})", a.verdict, a.reason),
                outcome_text(&a.outcome),
                if a.matches() {
                    "OK".to_owned()
                } else {
                    format!("MISMATCH, expected {}", outcome_text(&a.expected()))
                },
            ]
        })
        .collect();
    let header = [
        "customer",
        "source",
        "destination",
        "policy says",
        "what happened",
        "check",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::from(" ");
        for (cell, width) in cells.iter().zip(widths) {
            out += &format!(" {cell:<width$} ");
        }
        println!("{}", out.trim_end());
    };
    line(header);
    line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
    let mut previous = "";
    for (attempt, row) in plan.iter().zip(&rows) {
        let mut cells = row.each_ref().map(String::as_str);
        if attempt.customer == previous {
            cells[0] = "";
        } else if !previous.is_empty() {
            println!();
        }
        previous = attempt.customer;
        line(cells);
    }
    let (ok, total) = (plan.iter().filter(|a| a.matches()).count(), plan.len());
    println!("\n  {ok} of {total} attempts as the policy says");
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Connected => "connected".into(),
        Outcome::TimedOut => "timed out".into(),
        Outcome::Refused => "refused".into(),
        Outcome::Error(e) => format!("error: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// The policy file.

fn compile(yaml: &str) -> Result<MapImage> {
    let loaded = policy::parse(yaml, "lab.yaml").map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(loaded.policy.compile())
}

/// Inserts `group` (YAML list items, indented two spaces) at the end of `groups:`, i.e.
/// before the comment lines and the `relays:` key that follow it.
fn add_group(yaml: &str, group: &str) -> Result<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let relays = lines
        .iter()
        .position(|l| l.starts_with("relays:"))
        .context("the lab policy has no `relays:` key")?;
    let mut at = relays;
    while at > 0 && (lines[at - 1].starts_with('#') || lines[at - 1].trim().is_empty()) {
        at -= 1;
    }
    let mut out = String::new();
    for line in &lines[..at] {
        out += line;
        out.push('\n');
    }
    out.push('\n');
    out += group;
    for line in &lines[at..] {
        out += line;
        out.push('\n');
    }
    Ok(out)
}

/// Writes `text` as editors and config management do: a temporary file, then a rename.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("policy path has no file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The agent process.

/// The agent, its lines shown as the demo reads them.
struct Agent(AgentProcess);

/// After a policy change: `true` once the agent has applied it, `false` once refused.
fn reload_outcome(line: &str) -> Option<bool> {
    if line.contains(" generation=") {
        Some(true)
    } else if line.contains("the running policy stays in force unchanged") {
        Some(false)
    } else {
        None
    }
}

impl Agent {
    fn start(lab: &Lab, binary: &Path, policy_file: &Path) -> Result<Agent> {
        // Its own socket and state file beside the policy: the demo must not touch a
        // real agent's on the same machine.
        let dir = policy_file
            .parent()
            .expect("the policy lies in the demo's directory");
        Ok(Agent(AgentProcess::spawn(&AgentOptions {
            binary: binary.to_owned(),
            netns: lab.netns_path(Ns::Router),
            policy: Some(policy_file.to_owned()),
            pin_path: PIN_PATH.into(),
            socket: dir.join("control.sock"),
            state_dir: dir.join("state"),
            args: Vec::new(),
            log_filter: Some("info"),
            env: Vec::new(),
            // Ctrl-C at the terminal reaches the demo only; the demo stops the agent. If
            // the demo is killed outright, the agent gets SIGTERM rather than running on.
            own_process_group: true,
        })?))
    }

    /// Shows the agent's lines until `done` returns something for one, and returns that.
    /// Fails on timeout, on the agent exiting, and on Ctrl-C.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&str) -> Option<T>,
    ) -> Result<T> {
        self.0.read_until(timeout, what, |line| {
            println!("  agent | {}", without_timestamp(line));
            done(line)
        })
    }

    /// SIGTERM, then SIGKILL if it has not stopped in time; returns the whole log.
    fn stop(mut self) -> (Result<()>, Vec<String>) {
        let result = self.terminate();
        for line in self.0.unread_lines() {
            println!("  agent | {}", without_timestamp(&line));
        }
        if let (Ok(true), Ok(Some(status))) = (&result, self.0.try_wait()) {
            println!("  agent stopped ({status})");
        }
        (result.map(|_| ()), self.0.log())
    }

    /// Returns whether the agent was still running (and has now stopped on SIGTERM).
    fn terminate(&mut self) -> Result<bool> {
        if let Some(status) = self.0.try_wait()? {
            println!("  the agent had already exited ({status})");
            return Ok(false);
        }
        println!("  SIGTERM to the agent (it leaves the filter attached)");
        self.0.stop(STOP_TIMEOUT)?;
        Ok(true)
    }
}

/// `2026-01-02T03:04:05.678Z INFO  text` -> `INFO  text`.
fn without_timestamp(line: &str) -> &str {
    match line.split_once(' ') {
        Some((first, rest)) if first.len() >= 20 && first.ends_with('Z') => rest,
        _ => line,
    }
}

fn run_detach(lab: &Lab, binary: &Path) -> Result<()> {
    let out = lab
        .command_in(Ns::Router, binary)
        .args(["detach", "--pin-path", PIN_PATH])
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .context("running filter-agent detach")?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("  {line}");
    }
    if !out.status.success() {
        bail!(
            "filter-agent detach failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Stops the agent and detaches the filter; the caller drops the lab. Returns the
/// agent's log (empty if it never started).
fn teardown(lab: &Lab, binary: &Path, agent: Option<Agent>) -> (Result<()>, Vec<String>) {
    let (mut result, mut log) = (Ok(()), Vec::new());
    if let Some(agent) = agent {
        (result, log) = agent.stop();
    }
    if Path::new(PIN_PATH).exists() {
        println!("  $ filter-agent detach --pin-path {PIN_PATH}");
        if let Err(err) = run_detach(lab, binary) {
            result = result.and(Err(err));
        }
    }
    (result, log)
}

// ---------------------------------------------------------------------------------------
// Output.

fn heading(title: &str) {
    println!("\n== {title}");
}
