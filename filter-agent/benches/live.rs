//! The filter under a live flood, against nftables and XDP baselines: receive CPU per
//! packet on a router namespace fed NIC-like frames. Run with
//! `cargo xtask bench-live [--json] [--quick] [--prog-stats]` (root). Method:
//! docs/performance.md.
//!
//! ```text
//!  blive<pid>-c            blive<pid>-r                        blive<pid>-i
//!  bc<hexpid> <--veth--> br<hexpid> [setup]  bo<hexpid> <--veth--> bi<hexpid> [bench_sink]
//!  bench_sender            100.64.0.0/10 via br                 203.0.113.9
//!  (live frames, CPU 0)    forwarding, rx NAPI thread on CPU 1  (NAPI thread on CPU 0)
//! ```
//!
//! - Input: BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES runs `bench_sender`
//!   (filter-ebpf/src/bin/bench_sender.rs) in the customers namespace; it rewrites the frame
//!   and redirects it out of the customers' veth, so the router's veth gets xdp_frames in
//!   its NAPI ring, as from a driver (not skbs).
//! - Receive work on its own CPU: TSO off on the sending veths, GRO on on the receiving
//!   ones (that gives veth a NAPI instance without XDP), threaded NAPI, and the router's
//!   `napi/br<pid>-*` thread pinned to CPU 1, re-pinned after every attach and detach.
//!   The sender and the internet side's NAPI thread run on CPU 0. NAPI threads and the
//!   sender run SCHED_FIFO (NAPI above the sender), so other processes neither interrupt a
//!   poll nor leave gaps in the flood.
//! - Receive CPU per packet = the router NAPI thread's run time (`/proc/PID/schedstat`
//!   field 1) / packets the router's veth took off its ring (its rx_packets).
//! - Forwarded packets go to the internet namespace, where the `bench_sink` XDP program
//!   counts and drops them: the router pays for forwarding, nothing downstream.
//!
//! Everything lives in three namespaces and a bpffs directory named after this process; a
//! guard removes them at the end, on error, on panic and on SIGINT/SIGTERM/SIGHUP, and a
//! later run removes what a killed run (SIGKILL) left.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode as AyaXdpMode},
};
use filter_agent::{
    dataplane::{Capacity, Dataplane, PinDir, detach_components, freplace_refusal},
    policy::{AttachMode, DEFAULT_PRIORITY, Interface, XdpMode},
};
use filter_common::{
    Config, Family, PROGRAM_DROP_BASELINE, PROGRAM_PASS_BASELINE, Reason, reason_counter_index,
};
use filter_testkit::{
    bench::{MANY_SOURCES, Mix, Policy, RESTRICTED, SOURCE, median, stale_runs},
    frames::Frame,
    ip,
    lab::{RELAY_V4, RELAY_V6, REMOTE_V4, ROUTER_CUSTOMER_V4, ROUTER_INTERNET_V4},
    netns, signals,
};
use ipnet::IpNet;
use serde::Serialize;

/// The traffic generator and sink, built by build.rs from filter-ebpf's `bench_sender` bin.
static SENDER_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_sender"));

const SIZES: [usize; 4] = [10, 10_000, 100_000, 1_000_000];
const QUICK_SIZES: [usize; 2] = [10, 10_000];

/// Frames and repetitions: the full run takes about ten minutes (40 s of it loading the
/// 1,000,000-prefix nftables sets), `--quick` about two.
struct Plan {
    sizes: &'static [usize],
    repetitions: usize,
    frames: u32,
    warmup: u32,
}

const FULL: Plan = Plan {
    sizes: &SIZES,
    repetitions: 7,
    frames: 1_500_000,
    warmup: 200_000,
};
const QUICK: Plan = Plan {
    sizes: &QUICK_SIZES,
    repetitions: 3,
    frames: 1_000_000,
    warmup: 200_000,
};

/// Frames per live-frame batch (the kernel's default; at most 256).
const BATCH: u32 = 64;
/// The frame as sent: Ethernet, IPv4, TCP SYN, padded; `bench_sender` rewrites all of it.
const FRAME_LEN: usize = 64;

const SENDER_CPU: usize = 0;
const RECEIVE_CPU: usize = 1;

/// Locally administered MACs, fixed so frames and neighbour entries need no lookups.
const MAC_CUSTOMER: [u8; 6] = [0x02, 0xb1, 0, 0, 0, 0x01];
const MAC_ROUTER_CUSTOMER: [u8; 6] = [0x02, 0xb1, 0, 0, 0, 0x02];
const MAC_ROUTER_INTERNET: [u8; 6] = [0x02, 0xb1, 0, 0, 0, 0x03];
const MAC_INTERNET: [u8; 6] = [0x02, 0xb1, 0, 0, 0, 0x04];

const NS_PREFIX: &str = "blive";
const PIN_PREFIX: &str = "/sys/fs/bpf/bench-live-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Setup {
    OursNative,
    OursGeneric,
    /// Ours as the one component of a libxdp dispatcher: what sharing the hook costs.
    OursDispatcher,
    DropOnly,
    PassOnly,
    NftNetdev,
    NftForward,
    Forward,
}

impl Setup {
    const ALL: [Setup; 8] = [
        Setup::OursNative,
        Setup::OursGeneric,
        Setup::OursDispatcher,
        Setup::DropOnly,
        Setup::PassOnly,
        Setup::NftNetdev,
        Setup::NftForward,
        Setup::Forward,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::OursNative => "ours-native",
            Setup::OursGeneric => "ours-generic",
            Setup::OursDispatcher => "ours-dispatch",
            Setup::DropOnly => "drop-only",
            Setup::PassOnly => "pass-only",
            Setup::NftNetdev => "nft-netdev",
            Setup::NftForward => "nft-forward",
            Setup::Forward => "forward",
        }
    }

    /// What each setup is, for the table's legend and the JSON document.
    fn describe(self) -> &'static str {
        match self {
            Setup::OursNative => {
                "the filter (smtp_filter), native XDP on the router's customer veth"
            }
            Setup::OursGeneric => "the filter, generic (skb) XDP",
            Setup::OursDispatcher => {
                "the filter inside a libxdp dispatcher (attach: multiprog), native XDP; only \
                 where the kernel allows freplace"
            }
            Setup::DropOnly => "drop_baseline: XDP program that only drops (native)",
            Setup::PassOnly => {
                "pass_baseline: XDP program that only passes (native); packets forwarded"
            }
            Setup::NftNetdev => "nftables netdev ingress chain on the router's customer veth",
            Setup::NftForward => "nftables inet forward chain",
            Setup::Forward => "no filter; packets forwarded",
        }
    }

    /// Drop-only makes sense where everything is dropped: it would drop what must pass.
    fn applies(self, traffic: Traffic) -> bool {
        !(self == Setup::DropOnly && traffic != Traffic::Smtp)
            && (self != Setup::OursDispatcher || dispatcher_refusal().is_none())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Traffic {
    /// SYNs to tcp/25 from restricted sources: the filter drops them.
    Smtp,
    /// SYNs to tcp/443 from the same source: the filter passes them.
    Https,
    /// SYNs to tcp/25: 80 % from restricted sources (dropped), 10 % of those to a relay
    /// and 10 % from exempt prefixes (both passed and forwarded).
    Mixed,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Traffic::Smtp => "smtp",
            Traffic::Https => "https",
            Traffic::Mixed => "mixed",
        }
    }

    fn port(self) -> u16 {
        match self {
            Traffic::Smtp | Traffic::Mixed => 25,
            Traffic::Https => 443,
        }
    }

    /// The share of it a filter drops.
    fn dropped_share(self) -> f64 {
        match self {
            Traffic::Smtp => 1.0,
            Traffic::Https => 0.0,
            Traffic::Mixed => 0.8,
        }
    }
}

/// What the sender floods the router with: the traffic, from how many customers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flood {
    traffic: Traffic,
    sources: u32,
}

const FLOODS: [Flood; 4] = [
    Flood {
        traffic: Traffic::Smtp,
        sources: 1,
    },
    Flood {
        traffic: Traffic::Https,
        sources: 1,
    },
    Flood {
        traffic: Traffic::Smtp,
        sources: MANY_SOURCES,
    },
    Flood {
        traffic: Traffic::Mixed,
        sources: MANY_SOURCES,
    },
];

impl Flood {
    fn describe(self) -> String {
        format!("{} from {}", self.traffic.name(), self.sources)
    }
}

/// The three namespaces and their veths; dropping it removes them all.
struct Bed {
    pid: u32,
    customers: String,
    router: String,
    internet: String,
    customer_if: String,
    router_customer_if: String,
    router_internet_if: String,
    internet_if: String,
}

impl Bed {
    fn new() -> Bed {
        let pid = std::process::id();
        Bed {
            pid,
            customers: format!("{NS_PREFIX}{pid}-c"),
            router: format!("{NS_PREFIX}{pid}-r"),
            internet: format!("{NS_PREFIX}{pid}-i"),
            // At most 8 characters, so `napi/IF-` fits a kernel thread's 15-character name.
            customer_if: format!("bc{pid:x}"),
            router_customer_if: format!("br{pid:x}"),
            router_internet_if: format!("bo{pid:x}"),
            internet_if: format!("bi{pid:x}"),
        }
    }

    fn build(&self) -> Result<()> {
        let (c, r, i) = (&self.customers, &self.router, &self.internet);
        let (bc, br, bo, bi) = (
            &self.customer_if,
            &self.router_customer_if,
            &self.router_internet_if,
            &self.internet_if,
        );
        for ns in [c, r, i] {
            run(Command::new("ip").args(["netns", "add", ns]))?;
        }
        ip::batch(
            None,
            &format!(
                "link add {bc} netns {c} address {} type veth peer name {br} netns {r} address {}\n\
                 link add {bo} netns {r} address {} type veth peer name {bi} netns {i} address {}\n",
                mac(MAC_CUSTOMER),
                mac(MAC_ROUTER_CUSTOMER),
                mac(MAC_ROUTER_INTERNET),
                mac(MAC_INTERNET),
            ),
        )?;
        // IPv4 only: without IPv6 no interface sends router solicitations or MLD reports
        // that would be counted with the flood.
        for ns in [c, r, i] {
            sysctl(
                ns,
                &[
                    ("net.ipv6.conf.all.disable_ipv6", "1"),
                    ("net.ipv6.conf.default.disable_ipv6", "1"),
                ],
            )?;
        }
        sysctl(
            r,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                (&format!("net.ipv4.conf.{br}.rp_filter"), "0"),
            ],
        )?;
        ip::batch(Some(c), &format!("link set lo up\nlink set {bc} up\n"))?;
        ip::batch(
            Some(r),
            &format!(
                "link set lo up\nlink set {br} up\nlink set {bo} up\n\
                 addr add {ROUTER_CUSTOMER_V4}/32 dev {br}\n\
                 addr add {ROUTER_INTERNET_V4}/24 dev {bo}\n\
                 route add {RESTRICTED} dev {br}\n\
                 neigh replace {REMOTE_V4} lladdr {internet} dev {bo} nud permanent\n\
                 neigh replace {RELAY_V4} lladdr {internet} dev {bo} nud permanent\n",
                internet = mac(MAC_INTERNET)
            ),
        )?;
        ip::batch(
            Some(i),
            &format!("link set lo up\nlink set {bi} up\naddr add {REMOTE_V4}/24 dev {bi}\n"),
        )?;
        // Segmentation offload on a sending veth keeps its skbs off the peer's NAPI ring;
        // GRO on a receiving veth gives it a NAPI instance even without XDP.
        ethtool(c, &["-K", bc, "tso", "off"])?;
        ethtool(r, &["-K", br, "gro", "on"])?;
        ethtool(r, &["-K", bo, "tso", "off"])?;
        ethtool(i, &["-K", bi, "gro", "on"])?;
        Ok(())
    }

    fn pin_dir(&self) -> PathBuf {
        PathBuf::from(format!("{PIN_PREFIX}{}", self.pid))
    }

    fn remove(pid: u32) {
        for suffix in ["c", "r", "i"] {
            netns::delete(&format!("{NS_PREFIX}{pid}-{suffix}"));
        }
        let pins = PathBuf::from(format!("{PIN_PREFIX}{pid}"));
        if pins.exists()
            && let Ok(dir) = PinDir::open(&pins)
        {
            let _ = dir.remove_all();
        }
    }

    /// Removes what runs killed without a chance to clean up left behind.
    fn remove_stale() {
        let places = [
            ("/run/netns", NS_PREFIX),
            ("/sys/fs/bpf", PIN_PREFIX.trim_start_matches("/sys/fs/bpf/")),
        ];
        for pid in stale_runs(&places) {
            eprintln!("removing namespaces and pins left by bench-live run {pid}");
            Self::remove(pid);
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        Self::remove(self.pid);
    }
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.map(|b| format!("{b:02x}")).join(":")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `PROGRAM` in network namespace `ns`, with the host's mounts.
fn in_ns(ns: &str, program: &str) -> Command {
    netns::command(&netns::path(ns), program)
}

fn sysctl(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let mut cmd = in_ns(ns, "sysctl");
    cmd.arg("-qw");
    for (key, value) in settings {
        cmd.arg(format!("{key}={value}"));
    }
    run(&mut cmd).map(drop)
}

fn ethtool(ns: &str, args: &[&str]) -> Result<String> {
    run(in_ns(ns, "ethtool").args(args)).context("ethtool is needed (cargo xtask setup)")
}

/// Writes `/sys/class/net/IF/threaded` of an interface in `ns` (sysfs shows the
/// namespace of whoever mounted it, so through `ip netns exec`, which remounts it).
fn set_threaded(ns: &str, interface: &str) -> Result<()> {
    run(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{interface}/threaded"),
    ]))
    .map(drop)
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) -> Result<()> {
    netns::enter(&netns::path(ns))
}

/// Pins thread or process `pid` (0: the calling thread) to one CPU.
fn pin_to_cpu(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning pid {pid} to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The NAPI kernel threads of `interface` (`napi/IF-ID`), by their names.
fn napi_threads(interface: &str) -> Vec<i32> {
    let prefix = format!("napi/{interface}-");
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm"))
                && comm.trim_end().starts_with(&prefix)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Real-time priorities: NAPI threads above the sender, which shares a CPU with the sink.
const NAPI_PRIORITY: i32 = 20;
const SENDER_PRIORITY: i32 = 10;

/// Gives thread or process `pid` (0: the calling thread) SCHED_FIFO at `priority`.
fn realtime(pid: i32, priority: i32) -> Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a valid sched_param for SCHED_FIFO.
    if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SCHED_FIFO for pid {pid}"));
    }
    Ok(())
}

/// Makes the NAPI of `interface` threaded, pins its thread(s) to `cpu` and gives them
/// SCHED_FIFO (softirq work, which NAPI threads replace, preempts any task); returns them.
/// Attaching or detaching native XDP recreates the thread, so this runs after each.
fn pin_napi(ns: &str, interface: &str, cpu: usize) -> Result<Vec<i32>> {
    for attempt in 0..50 {
        let pids = napi_threads(interface);
        if !pids.is_empty() {
            for &pid in &pids {
                pin_to_cpu(pid, cpu)?;
                realtime(pid, NAPI_PRIORITY)?;
            }
            return Ok(pids);
        }
        if attempt % 10 == 0 {
            set_threaded(ns, interface)?;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("no NAPI thread for {interface} (threaded NAPI needs GRO or XDP on the veth)")
}

/// Run time in ns of the threads (`/proc/PID/schedstat`, first field).
fn runtime_ns(pids: &[i32]) -> Result<u64> {
    let mut total = 0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
            .with_context(|| format!("reading /proc/{pid}/schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("parsing schedstat")?;
    }
    Ok(total)
}

/// The IPv4 counters of the calling thread's namespace (`/proc/net/snmp`, `Ip:` lines),
/// for telling where packets the router received but did not forward went.
fn ip_counters() -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut lines = text.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Ip: lines in /proc/net/snmp");
    };
    Ok(names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
        .collect())
}

/// (rx_packets, rx_dropped, tx_packets, tx_dropped) per interface of the calling thread's
/// namespace.
fn link_counters() -> Result<BTreeMap<String, [u64; 4]>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    let mut counters = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, fields)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = fields
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() >= 12 {
            counters.insert(name.trim().to_string(), [v[1], v[3], v[9], v[11]]);
        }
    }
    Ok(counters)
}

/// (source, destination) of each customer of `flood`.
fn customers(policy: &Policy, flood: Flood) -> Vec<(Ipv4Addr, IpAddr)> {
    match (flood.sources, flood.traffic) {
        (1, _) => vec![(SOURCE, REMOTE_V4)],
        (count, Traffic::Mixed) => policy.customers(Mix::Mixed, count),
        (count, _) => policy.customers(Mix::Blocked, count),
    }
}

/// The filter's config for the policy: port 25, the defaults otherwise.
fn config() -> Config {
    let mut config = Config::empty();
    config.set_port(25);
    config
}

/// The same policy as nftables tables: `netdev blN` and `inet bfN`, sets only; the chains
/// (and so the hooks) are added only while their setup is measured. The exempt prefixes
/// are left out of the restricted set (as a careful nftables user would write it: one
/// rule, one lookup), so `prefixes` are the blocked ranges.
fn nft_tables(size: usize, prefixes: &[IpNet]) -> String {
    let join = |v6: bool| {
        prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)) == v6)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let (v4, v6) = (join(false), join(true));
    let mut text = String::new();
    for (family, table) in [
        ("netdev", format!("bl{size}")),
        ("inet", format!("bf{size}")),
    ] {
        let _ = writeln!(text, "table {family} {table} {{");
        let _ = writeln!(
            text,
            "  set r4 {{ type ipv4_addr; flags interval; elements = {{ {v4} }} }}"
        );
        if v6.is_empty() {
            let _ = writeln!(text, "  set r6 {{ type ipv6_addr; flags interval; }}");
        } else {
            let _ = writeln!(
                text,
                "  set r6 {{ type ipv6_addr; flags interval; elements = {{ {v6} }} }}"
            );
        }
        let _ = writeln!(
            text,
            "  set relays4 {{ type ipv4_addr; flags interval; elements = {{ {RELAY_V4} }} }}"
        );
        let _ = writeln!(
            text,
            "  set relays6 {{ type ipv6_addr; flags interval; elements = {{ {RELAY_V6} }} }}"
        );
        let _ = writeln!(text, "}}");
    }
    text
}

/// The rule equivalent to the policy, per family, with a counter each.
const NFT_RULES: [&str; 2] = [
    "ip saddr @r4 tcp dport 25 ip daddr != @relays4 counter drop",
    "ip6 saddr @r6 tcp dport 25 ip6 daddr != @relays6 counter drop",
];

fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = in_ns(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (nftables is needed: cargo xtask setup)")?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "nft -f failed: {}",
            err.lines().take(10).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// Where an nftables setup hooks: (family, table, chain, base-chain spec).
fn nft_chain(setup: Setup, size: usize, device: &str) -> (String, String, &'static str, String) {
    match setup {
        Setup::NftNetdev => (
            "netdev".into(),
            format!("bl{size}"),
            "ingress",
            format!("type filter hook ingress device \"{device}\" priority 0; policy accept;"),
        ),
        _ => (
            "inet".into(),
            format!("bf{size}"),
            "forward",
            "type filter hook forward priority 0; policy accept;".into(),
        ),
    }
}

/// Packets counted by the IPv4 rule of an nftables setup's chain.
fn nft_counter(ns: &str, family: &str, table: &str, chain: &str) -> Result<u64> {
    let text = run(in_ns(ns, "nft").args(["list", "chain", family, table, chain]))?;
    text.lines()
        .find(|l| l.contains("ip saddr @r4"))
        .and_then(|l| l.split("counter packets ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no IPv4 rule counter in:\n{text}"))
}

/// A veth's XDP drop count (`ethtool -S`, summed over its rx queues).
fn xdp_drops(ns: &str, interface: &str) -> Result<u64> {
    let text = ethtool(ns, &["-S", interface])?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.starts_with("rx_queue_") && k.ends_with("_xdp_drops"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum())
}

/// The sender: `bench_sender` and `bench_sink`, loaded once.
struct Generator {
    ebpf: Ebpf,
    customer_ifindex: u32,
}

impl Generator {
    fn load(bed: &Bed) -> Result<Generator> {
        let mut ebpf = Ebpf::load(SENDER_OBJECT).context("loading bench_sender")?;
        for name in ["bench_sender", "bench_sink"] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel refused {name}"))?;
        }
        let links =
            run(in_ns(&bed.customers, "ip").args(["-j", "link", "show", &bed.customer_if]))?;
        let links: serde_json::Value = serde_json::from_str(&links)?;
        let customer_ifindex = links[0]["ifindex"]
            .as_u64()
            .context("ifindex of the customers' veth")? as u32;
        // The sink: counts and drops whatever reaches the internet namespace.
        let internet = bed.internet.clone();
        let internet_if = bed.internet_if.clone();
        let sink: &mut Xdp = ebpf.program_mut("bench_sink").unwrap().try_into()?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                enter_netns(&internet)?;
                sink.attach(&internet_if, AyaXdpMode::Driver)
                    .context("attaching bench_sink")?;
                Ok(())
            })
            .join()
            .expect("sink attach thread")
        })?;
        Ok(Generator {
            ebpf,
            customer_ifindex,
        })
    }

    /// The frames bench_sender writes into the live frames: one SYN per flow, the first as
    /// the template and, with more than one, each flow's addresses and checksums.
    fn set_flood(&mut self, traffic: Traffic, flows: &[(Ipv4Addr, IpAddr)]) -> Result<()> {
        let frame = |(source, destination): (Ipv4Addr, IpAddr)| -> Result<Vec<u8>> {
            let mut frame = Frame::tcp(IpAddr::V4(source), destination, traffic.port())
                .syn()
                .build();
            frame[0..6].copy_from_slice(&MAC_ROUTER_CUSTOMER);
            frame[6..12].copy_from_slice(&MAC_CUSTOMER);
            if frame.len() > FRAME_LEN {
                bail!(
                    "the SYN frame is {} bytes, more than {FRAME_LEN}",
                    frame.len()
                );
            }
            frame.resize(FRAME_LEN, 0);
            Ok(frame)
        };
        if flows.len() > 1 {
            let mut table: Array<&mut MapData, [u8; 12]> =
                Array::try_from(self.ebpf.map_mut("BENCH_FLOWS").context("BENCH_FLOWS")?)?;
            for (index, &flow) in flows.iter().enumerate() {
                let frame = frame(flow)?;
                // bench_sender's `Flow`: addresses (26..34), IPv4 and TCP checksums.
                let mut value = [0u8; 12];
                value[0..8].copy_from_slice(&frame[26..34]);
                value[8..10].copy_from_slice(&frame[24..26]);
                value[10..12].copy_from_slice(&frame[50..52]);
                table.set(index as u32, value, 0)?;
            }
        }
        let mut value = [0u8; 8 + FRAME_LEN];
        value[0..4].copy_from_slice(&self.customer_ifindex.to_ne_bytes());
        value[4..8].copy_from_slice(&(flows.len() as u32).to_ne_bytes());
        value[8..].copy_from_slice(&frame(flows[0])?);
        let mut config: Array<&mut MapData, [u8; 8 + FRAME_LEN]> =
            Array::try_from(self.ebpf.map_mut("BENCH_SENDER").context("BENCH_SENDER")?)?;
        config.set(0, value, 0)?;
        Ok(())
    }

    /// Packets the sink has seen.
    fn sunk(&self) -> Result<u64> {
        let map: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map("BENCH_SINK").context("BENCH_SINK")?)?;
        Ok(map.get(&0, 0)?.iter().sum())
    }

    /// Sends `frames` live frames out of the customers' veth from a thread in the
    /// customers namespace on the sender CPU; returns the time it took.
    fn send(&self, bed: &Bed, frames: u32) -> Result<Duration> {
        let program: &Xdp = self.ebpf.program("bench_sender").unwrap().try_into()?;
        let frame = [0u8; FRAME_LEN];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md = [0, FRAME_LEN as u32, 0, self.customer_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let customers = bed.customers.clone();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<Duration> {
                enter_netns(&customers)?;
                pin_to_cpu(0, SENDER_CPU)?;
                // Other processes on the sender's CPU would leave gaps in the flood; the
                // sink's NAPI thread (higher priority) still preempts the sender.
                realtime(0, SENDER_PRIORITY)?;
                let started = Instant::now();
                let result = program
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&ctx),
                        repeat: frames,
                        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..TestRunOptions::new()
                    })
                    .context("BPF_PROG_TEST_RUN with live frames")?;
                let elapsed = started.elapsed();
                if result.return_value != 0 {
                    bail!("the live-frame run returned {}", result.return_value);
                }
                Ok(elapsed)
            })
            .join()
            .expect("sender thread")
        })
    }
}

/// What is attached to the router while a setup is measured.
enum Active {
    Ours(usize),
    Baseline(Box<Dataplane>),
    Nft {
        family: String,
        table: String,
        chain: &'static str,
        /// Whether its rule's counter is read (see [`NFT_COUNTER_MAX_PREFIXES`]).
        rule_counter: bool,
    },
    Nothing,
}

/// Above this many prefixes the nft rule's counter is not read: `nft list` fetches every
/// set element first, and the kernel's dump of a 1,000,000-element interval set takes
/// 75-100 s (nftables 1.0.6, `-t` too). There the drops are the packets received and not
/// forwarded, which is what the rule's counter showed at every smaller size.
const NFT_COUNTER_MAX_PREFIXES: usize = 100_000;

/// One measurement.
#[derive(Clone, Debug)]
struct Sample {
    rx: u64,
    runtime_ns: u64,
    /// The setup's own counter: the filter's, XDP drops, the nft rule's (above
    /// [`NFT_COUNTER_MAX_PREFIXES`] received minus forwarded), or for the setups that only
    /// forward, the router's forwarded packets.
    counted: u64,
    forwarded: u64,
    /// Deltas of the router's nonzero IPv4 counters (InReceives, ForwDatagrams, InDiscards...).
    ip: BTreeMap<String, u64>,
    sunk: u64,
    sent: u64,
    ring_drops: u64,
    wall: Duration,
    /// `--prog-stats`: the attached XDP program's run time and runs (kernel-measured).
    program: Option<(u64, u64)>,
}

impl Sample {
    fn ns_per_packet(&self) -> f64 {
        self.runtime_ns as f64 / self.rx.max(1) as f64
    }

    fn program_ns_per_run(&self) -> Option<f64> {
        self.program
            .filter(|&(_, runs)| runs > 0)
            .map(|(ns, runs)| ns as f64 / runs as f64)
    }
}

/// Run time (ns) and run count of the XDP program attached to `interface` (in the calling
/// thread's namespace), if any; counted only while BPF_ENABLE_STATS is on.
fn xdp_program_stats(interface: &str) -> Result<Option<(u64, u64)>> {
    let text = run(Command::new("ip").args(["-j", "-d", "link", "show", "dev", interface]))?;
    let links: serde_json::Value = serde_json::from_str(&text)?;
    fn find_id(v: &serde_json::Value) -> Option<u64> {
        match v {
            serde_json::Value::Object(map) => map
                .get("prog")
                .and_then(|p| p.get("id"))
                .and_then(|id| id.as_u64())
                .or_else(|| map.values().find_map(find_id)),
            serde_json::Value::Array(items) => items.iter().find_map(find_id),
            _ => None,
        }
    }
    let Some(id) = links[0].get("xdp").and_then(find_id) else {
        return Ok(None);
    };
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if u64::from(info.id()) == id {
            return Ok(Some((info.run_time().as_nanos() as u64, info.run_count())));
        }
    }
    Ok(None)
}

struct Router<'a> {
    bed: &'a Bed,
    /// `--prog-stats`: read the attached XDP program's own run time (BPF_ENABLE_STATS).
    prog_stats: bool,
    pins: PinDir,
    dataplanes: BTreeMap<usize, Dataplane>,
    slots: BTreeMap<usize, u32>,
    generator: Generator,
}

impl Router<'_> {
    fn attach(&mut self, setup: Setup, size: usize) -> Result<Active> {
        let device = self.bed.router_customer_if.clone();
        Ok(match setup {
            Setup::OursNative | Setup::OursGeneric | Setup::OursDispatcher => {
                let (mode, want) = if setup == Setup::OursGeneric {
                    (XdpMode::Generic, "generic")
                } else {
                    (XdpMode::Native, "native")
                };
                let attach = if setup == Setup::OursDispatcher {
                    AttachMode::Multiprog
                } else {
                    AttachMode::Exclusive
                };
                let dataplane = self.dataplanes.get_mut(&size).context("dataplane")?;
                let interface = Interface {
                    name: device.clone(),
                    xdp_mode: mode,
                    attach,
                    priority: DEFAULT_PRIORITY,
                };
                let attached = dataplane.attach(&self.pins, &interface, false)?;
                if attached.mode != want || attached.attach != attach.name() {
                    bail!(
                        "the filter attached {} in {} mode, not {} in {want}",
                        attached.attach,
                        attached.mode,
                        attach.name()
                    );
                }
                Active::Ours(size)
            }
            Setup::DropOnly | Setup::PassOnly => {
                let program = if setup == Setup::DropOnly {
                    PROGRAM_DROP_BASELINE
                } else {
                    PROGRAM_PASS_BASELINE
                };
                // A fresh object each time: dropping it is what detaches the baseline.
                let mut dataplane = Dataplane::load(Capacity {
                    sources_v4: 1024,
                    sources_v6: 1024,
                })?;
                dataplane.attach_unpinned(program, &device, AyaXdpMode::Driver)?;
                Active::Baseline(Box::new(dataplane))
            }
            Setup::NftNetdev | Setup::NftForward => {
                let (family, table, chain, spec) = nft_chain(setup, size, &device);
                let mut script = format!("add chain {family} {table} {chain} {{ {spec} }}\n");
                for rule in NFT_RULES {
                    let _ = writeln!(script, "add rule {family} {table} {chain} {rule}");
                }
                nft(&self.bed.router, &script)?;
                Active::Nft {
                    family,
                    table,
                    chain,
                    rule_counter: size <= NFT_COUNTER_MAX_PREFIXES,
                }
            }
            Setup::Forward => Active::Nothing,
        })
    }

    fn detach(&mut self, active: Active) -> Result<()> {
        match active {
            Active::Ours(_) => {
                self.pins.detach_interface(&self.bed.router_customer_if)?;
                detach_components(&self.pins, Some(&self.bed.router_customer_if))?;
            }
            Active::Baseline(dataplane) => drop(dataplane),
            Active::Nft {
                family,
                table,
                chain,
                ..
            } => nft(
                &self.bed.router,
                &format!(
                    "flush chain {family} {table} {chain}\ndelete chain {family} {table} {chain}\n"
                ),
            )?,
            Active::Nothing => {}
        }
        Ok(())
    }

    /// The setup's own count of what it did to the flood (see `Sample::counted`).
    /// `None`: not readable here; the sample takes received minus forwarded.
    fn counted(&self, setup: Setup, traffic: Traffic, active: &Active) -> Result<Option<u64>> {
        Ok(Some(match active {
            Active::Ours(size) => {
                let slot = self.slots[size];
                let counters = self.dataplanes[size].reason_counters(slot)?;
                match traffic {
                    // Drops: blocked IPv4 SYNs.
                    Traffic::Smtp | Traffic::Mixed => {
                        counters[reason_counter_index(0, Family::Ipv4, Reason::Blocked) as usize]
                            .packets
                    }
                    // Everything it judged (then checked to be all passes).
                    Traffic::Https => counters.iter().map(|c| c.packets).sum(),
                }
            }
            Active::Baseline(_) if setup == Setup::DropOnly => {
                xdp_drops(&self.bed.router, &self.bed.router_customer_if)?
            }
            Active::Nft {
                rule_counter: false,
                ..
            } if traffic != Traffic::Https => return Ok(None),
            Active::Nft {
                family,
                table,
                chain,
                ..
            } if traffic != Traffic::Https => nft_counter(&self.bed.router, family, table, chain)?,
            _ => self.forwarded()?,
        }))
    }

    fn program_stats(&self) -> Result<Option<(u64, u64)>> {
        if !self.prog_stats {
            return Ok(None);
        }
        xdp_program_stats(&self.bed.router_customer_if)
    }

    /// Packets the router sent out of its internet veth: transmitted, or dropped there
    /// because the sink's ring was full (the router did the forwarding work either way).
    fn forwarded(&self) -> Result<u64> {
        let [_, _, tx, tx_dropped] = *link_counters()?
            .get(&self.bed.router_internet_if)
            .context("router's internet veth")?;
        Ok(tx + tx_dropped)
    }

    fn measure(
        &mut self,
        setup: Setup,
        size: usize,
        traffic: Traffic,
        plan: &Plan,
    ) -> Result<Sample> {
        for attempt in 1.. {
            let active = self.attach(setup, size)?;
            let result = self.measure_attached(setup, traffic, &active, plan);
            let detached = self.detach(active);
            let sample = result?;
            detached?;
            match sample {
                Some(sample) => return Ok(sample),
                // veth's NAPI sometimes stops polling when its ring fills right after an
                // attach; a fresh attach brings it back.
                None if attempt < 3 => eprintln!(
                    "{} {} {size}: the router's NAPI received nothing; attaching again",
                    setup.name(),
                    traffic.name()
                ),
                None => break,
            }
        }
        bail!("the router's veth received nothing in 3 attempts")
    }

    fn measure_attached(
        &mut self,
        setup: Setup,
        traffic: Traffic,
        active: &Active,
        plan: &Plan,
    ) -> Result<Option<Sample>> {
        let bed = self.bed;
        let threads = pin_napi(&bed.router, &bed.router_customer_if, RECEIVE_CPU)?;
        pin_napi(&bed.internet, &bed.internet_if, SENDER_CPU)?;
        let warmup_before = link_counters()?[&bed.router_customer_if][0];
        self.generator.send(bed, plan.warmup)?;
        settle()?;
        if link_counters()?[&bed.router_customer_if][0] == warmup_before {
            return Ok(None);
        }

        let rx_before = link_counters()?[&bed.router_customer_if];
        let runtime_before = runtime_ns(&threads)?;
        let counted_before = self.counted(setup, traffic, active)?;
        let forwarded_before = self.forwarded()?;
        let ip_before = ip_counters()?;
        let sunk_before = self.generator.sunk()?;
        let program_before = self.program_stats()?;

        let wall = self.generator.send(bed, plan.frames)?;
        settle()?;

        let rx_after = link_counters()?[&bed.router_customer_if];
        let runtime_after = runtime_ns(&threads)?;
        let counted_after = self.counted(setup, traffic, active)?;
        let forwarded_after = self.forwarded()?;
        let ip_after = ip_counters()?;
        let sunk_after = self.generator.sunk()?;
        let program_after = self.program_stats()?;
        if napi_threads(&bed.router_customer_if) != threads {
            bail!("the router's NAPI thread changed during the measurement");
        }
        if rx_after[0] == rx_before[0] {
            return Ok(None);
        }
        let (rx, forwarded) = (
            rx_after[0] - rx_before[0],
            forwarded_after - forwarded_before,
        );
        Ok(Some(Sample {
            rx,
            runtime_ns: runtime_after - runtime_before,
            counted: match counted_before.zip(counted_after) {
                Some((before, after)) => after - before,
                None => rx.saturating_sub(forwarded),
            },
            forwarded,
            ip: ip_after
                .iter()
                .filter_map(|(k, &v)| {
                    let delta = v.saturating_sub(*ip_before.get(k).unwrap_or(&0));
                    (delta > 0).then(|| (k.clone(), delta))
                })
                .collect(),
            sunk: sunk_after - sunk_before,
            sent: plan.frames as u64,
            ring_drops: rx_after[1] - rx_before[1],
            wall,
            program: program_before
                .zip(program_after)
                .map(|(b, a)| (a.0 - b.0, a.1 - b.1)),
        }))
    }
}

/// Waits until the router is done with the last frames: its interface counters stop
/// moving.
fn settle() -> Result<()> {
    let mut last = link_counters()?;
    let mut quiet = 0;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(5));
        let now = link_counters()?;
        quiet = if now == last { quiet + 1 } else { 0 };
        if quiet == 3 {
            break;
        }
        last = now;
    }
    Ok(())
}

/// Whether a sample's counters agree with what the router received: the setup's own
/// counter equals the packets received, and what had to pass was forwarded.
fn check(setup: Setup, traffic: Traffic, s: &Sample) -> Result<(), String> {
    let drops = traffic != Traffic::Https
        && matches!(
            setup,
            Setup::OursNative
                | Setup::OursGeneric
                | Setup::OursDispatcher
                | Setup::DropOnly
                | Setup::NftNetdev
                | Setup::NftForward
        );
    if s.rx == 0 {
        return Err("no packets received".into());
    }
    if drops && traffic == Traffic::Mixed {
        // Which frames found the ring full is chance: the shares hold within a percent.
        let share = s.counted as f64 / s.rx as f64;
        if s.counted + s.forwarded != s.rx || (share - traffic.dropped_share()).abs() > 0.01 {
            return Err(format!(
                "{} dropped {} and forwarded {} of {} packets received, expected {:.0} % \
                 dropped and the rest forwarded (router IPv4 counters: {:?})",
                setup.name(),
                s.counted,
                s.forwarded,
                s.rx,
                traffic.dropped_share() * 100.0,
                s.ip
            ));
        }
        return Ok(());
    }
    if s.counted != s.rx {
        return Err(format!(
            "{} counted {} packets, the router received {} (router IPv4 counters: {:?})",
            setup.name(),
            s.counted,
            s.rx,
            s.ip
        ));
    }
    let want_forwarded = if drops { 0 } else { s.rx };
    if s.forwarded != want_forwarded {
        return Err(format!(
            "{} packets forwarded, expected {want_forwarded} (router IPv4 counters: {:?})",
            s.forwarded, s.ip
        ));
    }
    Ok(())
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

#[derive(Serialize)]
struct Row {
    setup: Setup,
    prefixes: usize,
    traffic: Traffic,
    /// Distinct customers (source addresses) in the flood.
    sources: u32,
    /// Median over repetitions of the router NAPI thread's run time / packets received.
    rx_ns_per_packet: f64,
    rx_ns_per_packet_min: f64,
    rx_ns_per_packet_max: f64,
    /// 1000 / rx_ns_per_packet: packets per second of receive-CPU time, in millions.
    max_mpps: f64,
    /// Median over repetitions of (this rx_ns_per_packet / ours-native's) in the same
    /// repetition, same prefixes and traffic.
    ratio_to_ours: f64,
    ratio_to_ours_min: f64,
    ratio_to_ours_max: f64,
    /// Median packets received per second of wall time while sending (sender-limited).
    measured_mpps: f64,
    /// Median share of the wall time the receive thread was running.
    rx_cpu_busy: f64,
    /// `--prog-stats` only: the XDP program's own run time per run (median), measured by
    /// the kernel, which then times every BPF program run (so all figures rise a little).
    #[serde(skip_serializing_if = "Option::is_none")]
    program_ns_per_packet: Option<f64>,
    repetitions: usize,
    counters_ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    counter_errors: Vec<String>,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    cpu_model: String,
}

fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel,
        cpu_model,
    }
}

/// Why this kernel cannot build a libxdp dispatcher, if it cannot (asked once).
fn dispatcher_refusal() -> Option<&'static str> {
    static REFUSAL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REFUSAL.get_or_init(freplace_refusal).as_deref()
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    let plan = if std::env::args().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    let prog_stats = std::env::args().any(|a| a == "--prog-stats");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-live needs root (namespaces, XDP, nftables)");
    }
    if std::thread::available_parallelism().map_or(0, |n| n.get()) < 2 {
        bail!("bench-live needs 2 CPUs: one sends, one receives");
    }
    signals::install(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    Bed::remove_stale();
    let bed = Bed::new();
    bed.build().context("building the namespaces")?;
    // From here on the main thread lives in the router namespace: interface names,
    // XDP attach and /proc/thread-self/net/dev all resolve there.
    enter_netns(&bed.router)?;
    // Held for the run: the kernel times every BPF program while this fd is open.
    let _stats = prog_stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
        .transpose()
        .context("enabling BPF run-time statistics")?;
    if let Some(refusal) = dispatcher_refusal() {
        eprintln!(
            "ours-dispatch: NOT MEASURED, this kernel refuses the freplace programs a libxdp \
             dispatcher needs ({refusal}); the filter's cost inside a dispatcher cannot be \
             measured here"
        );
    }
    let rows = bench(&bed, &plan, prog_stats)?;
    drop(bed);
    report(&rows, &plan, json)?;
    let failed = rows.iter().filter(|r| !r.counters_ok).count();
    if failed > 0 {
        bail!("{failed} rows failed the counter check");
    }
    Ok(())
}

fn bench(bed: &Bed, plan: &Plan, prog_stats: bool) -> Result<Vec<Row>> {
    let started = Instant::now();
    let generator = Generator::load(bed)?;
    let pins = PinDir::open(&bed.pin_dir())?;
    let router_ifindex = {
        // SAFETY: a NUL-terminated name; the main thread is in the router namespace.
        let name = std::ffi::CString::new(bed.router_customer_if.as_str())?;
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    if router_ifindex == 0 {
        bail!(
            "{} not found in the router namespace",
            bed.router_customer_if
        );
    }
    let mut dataplanes = BTreeMap::new();
    let mut slots = BTreeMap::new();
    let mut flows = BTreeMap::new();
    for &size in plan.sizes {
        signals::check()?;
        let policy = Policy::new(size);
        let t = Instant::now();
        let mut dataplane = Dataplane::load_with(&policy.map_image(config()))?;
        let slot = dataplane.assign_interface_slot(&bed.router_customer_if, router_ifindex)?;
        let loaded = t.elapsed();
        let t = Instant::now();
        nft(&bed.router, &nft_tables(size, &policy.blocked()))?;
        eprintln!(
            "policy of {size} prefixes ({} exempt inside them): filter maps loaded in {:.2} s, \
             nftables sets in {:.2} s",
            policy.exempt.len(),
            loaded.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        for flood in FLOODS {
            flows.insert((flood, size), customers(&policy, flood));
        }
        dataplanes.insert(size, dataplane);
        slots.insert(size, slot);
    }
    let mut router = Router {
        bed,
        prog_stats,
        pins,
        dataplanes,
        slots,
        generator,
    };

    let mut samples: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    let mut rng = fastrand::Rng::with_seed(6);
    let total = plan.repetitions;
    for rep in 0..total {
        for flood in FLOODS {
            let traffic = flood.traffic;
            for &size in plan.sizes {
                router
                    .generator
                    .set_flood(traffic, &flows[&(flood, size)])?;
                // Every setup in each block, in a fresh order, so drift hits all alike.
                let mut setups: Vec<Setup> = Setup::ALL
                    .into_iter()
                    .filter(|s| s.applies(traffic))
                    .collect();
                rng.shuffle(&mut setups);
                for setup in setups {
                    signals::check()?;
                    let sample = router
                        .measure(setup, size, traffic, plan)
                        .with_context(|| {
                            format!("measuring {} {} {size}", setup.name(), flood.describe())
                        })?;
                    eprintln!(
                        "[{}/{total} {:>4.0}s] {:<16} {:>7} {:<12} {:>7.1} ns/pkt  rx {:>8} of {:>8} sent ({} ring drops), {:.2} Mpps, fwd {} sunk {}{}",
                        rep + 1,
                        started.elapsed().as_secs_f64(),
                        flood.describe(),
                        size,
                        setup.name(),
                        sample.ns_per_packet(),
                        sample.rx,
                        sample.sent,
                        sample.ring_drops,
                        sample.rx as f64 / sample.wall.as_secs_f64() / 1e6,
                        sample.forwarded,
                        sample.sunk,
                        match check(setup, traffic, &sample) {
                            Ok(()) => String::new(),
                            Err(e) => format!("  COUNTER CHECK FAILED: {e}"),
                        }
                    );
                    samples
                        .entry((flood, size, setup))
                        .or_default()
                        .push(sample);
                }
            }
        }
    }
    let rows = summarize(&samples, plan);
    // Detach and unpin before the namespaces go.
    drop(router.dataplanes);
    let _ = router.pins.remove_all();
    Ok(rows)
}

/// Samples by flood, policy size and setup.
type Key = (Flood, usize, Setup);

fn summarize(samples: &BTreeMap<Key, Vec<Sample>>, plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for flood in FLOODS {
        let traffic = flood.traffic;
        for &size in plan.sizes {
            let Some(ours) = samples.get(&(flood, size, Setup::OursNative)) else {
                continue;
            };
            for setup in Setup::ALL {
                let Some(list) = samples.get(&(flood, size, setup)) else {
                    continue;
                };
                let ns: Vec<f64> = list.iter().map(Sample::ns_per_packet).collect();
                let ratios: Vec<f64> = list
                    .iter()
                    .zip(ours)
                    .map(|(s, o)| s.ns_per_packet() / o.ns_per_packet())
                    .collect();
                let rates: Vec<f64> = list
                    .iter()
                    .map(|s| s.rx as f64 / s.wall.as_secs_f64() / 1e6)
                    .collect();
                let busy: Vec<f64> = list
                    .iter()
                    .map(|s| s.runtime_ns as f64 / s.wall.as_nanos() as f64)
                    .collect();
                let errors: Vec<String> = list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        check(setup, traffic, s)
                            .err()
                            .map(|e| format!("repetition {}: {e}", i + 1))
                    })
                    .collect();
                let program: Vec<f64> =
                    list.iter().filter_map(Sample::program_ns_per_run).collect();
                let (lo, hi) = min_max(&ns);
                let (rlo, rhi) = min_max(&ratios);
                let rx_ns = median(&ns);
                rows.push(Row {
                    setup,
                    prefixes: size,
                    traffic,
                    sources: flood.sources,
                    rx_ns_per_packet: round(rx_ns, 1),
                    rx_ns_per_packet_min: round(lo, 1),
                    rx_ns_per_packet_max: round(hi, 1),
                    max_mpps: round(1e3 / rx_ns, 2),
                    ratio_to_ours: round(median(&ratios), 2),
                    ratio_to_ours_min: round(rlo, 2),
                    ratio_to_ours_max: round(rhi, 2),
                    measured_mpps: round(median(&rates), 2),
                    rx_cpu_busy: round(median(&busy), 2),
                    program_ns_per_packet: (!program.is_empty())
                        .then(|| round(median(&program), 1)),
                    repetitions: list.len(),
                    counters_ok: errors.is_empty(),
                    counter_errors: errors,
                });
            }
        }
    }
    rows
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn report(rows: &[Row], plan: &Plan, json: bool) -> Result<()> {
    if json {
        let doc = serde_json::json!({
            "benchmark": "bench-live",
            "machine": machine(),
            "repetitions": plan.repetitions,
            "frames_per_run": plan.frames,
            "frame": format!("{FRAME_LEN}-byte Ethernet/IPv4 TCP SYN; sources 1: from {SOURCE} to {REMOTE_V4}; sources {MANY_SOURCES}: that many customers at random in the policy's blocked IPv4 ranges (mixed: 10 % of them to {RELAY_V4}, 10 % from exempt prefixes instead), one frame each in turn"),
            "input": "BPF_PROG_TEST_RUN live frames redirected out of a veth (xdp_frames in the router veth's NAPI ring)",
            "rx_ns_per_packet": "router NAPI thread run time (schedstat) / packets taken off the router veth's ring; median over repetitions",
            "max_mpps": "1000 / rx_ns_per_packet: packets per second one receive CPU handles on this path",
            "ratio_to_ours": "median over repetitions of the per-repetition ratio to ours-native at the same prefixes and traffic",
            "rx_cpu_busy": "receive thread run time / send time: below 1 the sender, not the receiver, was the limit",
            "measured_mpps": "packets received / send time (wall clock)",
            "program_ns_per_packet": "--prog-stats only: the attached XDP program's own run time per run (BPF_ENABLE_STATS, which adds its own cost to every BPF run)",
            "setups": Setup::ALL.iter().map(|s| (s.name(), s.describe())).collect::<BTreeMap<_, _>>(),
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let m = machine();
    println!(
        "bench-live: {} CPUs, kernel {}, {}; {} repetitions of {} frames per setup",
        m.cpus, m.kernel, m.cpu_model, plan.repetitions, plan.frames
    );
    let program = rows.iter().any(|r| r.program_ns_per_packet.is_some());
    println!(
        "\n{:<7} {:>7} {:>8}  {:<12} {:>9} {:>13} {:>8} {:>7} {:>13} {:>7}{}  counters",
        "traffic",
        "sources",
        "prefixes",
        "setup",
        "rx ns/pkt",
        "(min..max)",
        "max Mpps",
        "vs ours",
        "(min..max)",
        "rx busy",
        if program { "  prog ns" } else { "" }
    );
    for r in rows {
        println!(
            "{:<7} {:>7} {:>8}  {:<12} {:>9.1} {:>13} {:>8.2} {:>6.2}x {:>13} {:>6.0}%{}  {}",
            r.traffic.name(),
            r.sources,
            r.prefixes,
            r.setup.name(),
            r.rx_ns_per_packet,
            format!(
                "({:.0}..{:.0})",
                r.rx_ns_per_packet_min, r.rx_ns_per_packet_max
            ),
            r.max_mpps,
            r.ratio_to_ours,
            format!("({:.2}..{:.2})", r.ratio_to_ours_min, r.ratio_to_ours_max),
            r.rx_cpu_busy * 100.0,
            match (program, r.program_ns_per_packet) {
                (false, _) => String::new(),
                (true, Some(ns)) => format!(" {ns:>8.1}"),
                (true, None) => format!(" {:>8}", "-"),
            },
            if r.counters_ok { "ok" } else { "MISMATCH" }
        );
    }
    for r in rows.iter().filter(|r| !r.counters_ok) {
        for e in &r.counter_errors {
            println!(
                "warning: {} from {} {} {}: {e}",
                r.traffic.name(),
                r.sources,
                r.prefixes,
                r.setup.name()
            );
        }
    }
    println!(
        "\nrx ns/pkt: receive CPU per packet (router NAPI thread run time / packets received),\n\
         median of {} interleaved repetitions; max Mpps = 1000 / rx ns/pkt; vs ours: median of\n\
         per-repetition ratios to ours-native at the same prefixes and traffic; rx busy: share\n\
         of the send time the receive thread ran (below 100 %: the sender was the limit).",
        plan.repetitions
    );
    for s in Setup::ALL {
        println!("  {:<13} {}", s.name(), s.describe());
    }
    Ok(())
}
