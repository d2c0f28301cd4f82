//! The XDP hook shared and taken for real: jumbo frames in native mode, what the agent
//! says when native is refused or resets cannot arrive, and other XDP programs (xdp-filter,
//! one attached with `ip link`) that must never be replaced. Namespace labs, the real
//! kernel, real TCP. Needs root and xdp-tools (`cargo xtask setup` installs it).

use std::{path::PathBuf, sync::Mutex, time::Duration};

use filter_agent::dataplane::freplace_refusal;
use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    lab::{Lab, Ns, Outcome, REMOTE_V4, RESIDENTIAL, UNMANAGED, at},
    metrics_text::{sample, scrape},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
const CONNECT: Duration = Duration::from_millis(700);
const START: Duration = Duration::from_secs(30);

/// The lab policy with its interface entry's `xdp_mode: auto` replaced by `entry` (the
/// lines after `name:`).
fn policy(lab: &Lab, entry: &str) -> String {
    let yaml = lab.policy_yaml();
    assert!(yaml.contains("    xdp_mode: auto\n"), "{yaml}");
    yaml.replace("    xdp_mode: auto\n", entry)
}

fn status(scratch: &Scratch) -> Value {
    serde_json::from_str(&ok(scratch.cli(&["status", "--json"]))).unwrap()
}

/// The status entry of `interface`.
fn interface<'a>(status: &'a Value, interface: &str) -> &'a Value {
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["interface"] == interface)
        .unwrap_or_else(|| panic!("{interface} not in {status}"))
}

#[test]
fn native_mode_runs_on_a_veth_with_mtu_9000_and_judges_jumbo_frames() {
    let lab = Lab::create().unwrap();
    lab.set_mtu(9000).unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&policy(&lab, "    xdp_mode: native\n"));
    let agent = scratch.start_agent(&lab, &[]);
    let status = status(&scratch);
    let attached = interface(&status, lab.router_customer_if());
    assert_eq!(attached["mode"], "native", "{status}");
    assert_eq!(attached["attach"], "exclusive", "{status}");

    let _mta = lab.listen(at(REMOTE_V4, 25)).unwrap();
    assert_eq!(
        lab.connect(RESIDENTIAL.v4, at(REMOTE_V4, 25), CONNECT),
        Outcome::TimedOut,
        "a blocked SYN on the jumbo port"
    );
    const BULK: usize = 300_000;
    let received = lab
        .send_bulk(RESIDENTIAL.v4, at(REMOTE_V4, 443), BULK)
        .unwrap();
    assert_eq!(
        received, BULK,
        "TCP/443 from a blocked customer passes whole"
    );

    let stats: Value = serde_json::from_str(&ok(scratch.cli(&["stats", "--json"]))).unwrap();
    let reason = |name: &str| {
        stats["by_reason"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    assert!(
        reason("blocked")["packets"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    let port = reason("port");
    let (packets, bytes) = (
        port["packets"].as_u64().unwrap(),
        port["bytes"].as_u64().unwrap(),
    );
    // Segments of 8,960 bytes (MSS at MTU 9000): frames of 9,014 bytes, in several
    // buffers, counted whole.
    assert!(bytes >= BULK as u64, "{packets} packets, {bytes} bytes");
    assert!(
        bytes / packets > 4096,
        "{packets} packets, {bytes} bytes: no frame larger than a page was judged"
    );
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}

#[test]
fn a_native_refusal_falls_back_to_generic_with_the_drivers_reason_and_reject_on_a_veth_warns() {
    let lab = Lab::create().unwrap();
    // A veth whose peer has more transmit queues than it has receive queues: the veth
    // driver refuses native XDP on it.
    let (narrow, peer) = (
        format!("{}-q0", lab.prefix()),
        format!("{}-q1", lab.prefix()),
    );
    let made = lab
        .command_in(Ns::Router, "ip")
        .args([
            "link",
            "add",
            &narrow,
            "numrxqueues",
            "1",
            "numtxqueues",
            "1",
        ])
        .args(["type", "veth", "peer", "name", &peer, "numtxqueues", "2"])
        .args(["numrxqueues", "2"])
        .status()
        .unwrap();
    assert!(made.success());
    let scratch = Scratch::new(&lab, BINARY);
    let yaml = lab.policy_yaml().replace("action: drop", "action: reject");
    let yaml = yaml.replace(
        "interfaces:\n",
        &format!("interfaces:\n  - name: {narrow}\n    xdp_mode: auto\n"),
    );
    scratch.write_policy(&yaml);
    let port = 19000 + (std::process::id() % 1000) as u16 + 500;
    let agent = scratch.start_agent(&lab, &["--metrics", &format!("127.0.0.1:{port}")]);

    let reason = "veth: XDP expects number of rx queues not less than peer tx queues";
    let status = status(&scratch);
    let fallen = interface(&status, &narrow);
    assert_eq!(fallen["mode"], "generic", "{status}");
    let fallback = fallen["fallback"].as_str().unwrap_or_default();
    assert!(fallback.contains(reason), "{status}");
    assert!(
        agent
            .log()
            .iter()
            .any(|l| l.contains("WARN") && l.contains(reason)),
        "{}",
        agent.log().join("\n")
    );
    let text = ok(scratch.cli(&["status"]));
    assert!(
        text.contains(&format!(
            "warning      {narrow}: native XDP refused on {narrow}: {reason}"
        )),
        "{text}"
    );
    // Resets to a veth whose peer runs no XDP program are lost: said at attach.
    let veth = interface(&status, lab.router_customer_if());
    assert_eq!(veth["mode"], "native", "{status}");
    let warnings = veth["warnings"].to_string();
    assert!(warnings.contains("peer runs an XDP program"), "{status}");

    let metrics = scrape(&lab, port);
    let info = "filter_agent_attached_info";
    let labels = |i: &str, mode: &str| {
        sample(
            &metrics,
            info,
            &[("interface", i), ("mode", mode), ("attach", "exclusive")],
        )
    };
    assert_eq!(labels(&narrow, "generic"), 1.0, "{metrics}");
    assert_eq!(labels(lab.router_customer_if(), "native"), 1.0, "{metrics}");
}

/// Where xdp-tools keeps the BPF objects of xdp-filter (Debian's multiarch folder).
fn xdp_tools_object(name: &str) -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bpf").join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} not found under /usr/lib/*/bpf: install xdp-tools"))
}

/// xdp-filter keeps one state for the whole host (pinned under /sys/fs/bpf/xdp-filter):
/// the tests that load it take turns.
static XDP_FILTER: Mutex<()> = Mutex::new(());

/// Runs an xdp-tools command in the router namespace.
fn xdp_tool(lab: &Lab, args: &[&str]) -> String {
    let out = lab
        .command_in(Ns::Router, args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (install xdp-tools)", args[0]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// xdp-filter on the router's customer interface, dropping TCP/UDP to port 465 and
/// passing the rest; unloaded on drop (also after a failed assertion).
struct XdpFilter<'a> {
    lab: &'a Lab,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl<'a> XdpFilter<'a> {
    fn load(lab: &'a Lab, mode: &str) -> XdpFilter<'a> {
        let turn = XDP_FILTER.lock().unwrap_or_else(|e| e.into_inner());
        let rcust = lab.router_customer_if();
        xdp_tool(lab, &["xdp-filter", "load", rcust, "-m", mode]);
        xdp_tool(lab, &["xdp-filter", "port", "465"]);
        XdpFilter { lab, _turn: turn }
    }
}

impl Drop for XdpFilter<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .command_in(Ns::Router, "xdp-filter")
            .args(["unload", self.lab.router_customer_if()])
            .output();
    }
}

/// Starts the agent expecting it to refuse: exit 1; returns its log.
fn refused(scratch: &Scratch, lab: &Lab) -> String {
    let mut agent: AgentProcess = scratch.spawn_agent(lab, &[]);
    assert_eq!(
        agent.wait_exit(START),
        Some(1),
        "{}",
        agent.log().join("\n")
    );
    agent.log().join("\n")
}

#[test]
fn xdp_filter_loaded_first_is_left_attached_and_enforcing_with_auto_and_multiprog() {
    let lab = Lab::create().unwrap();
    let rcust = lab.router_customer_if().to_string();
    let _xdp_filter = XdpFilter::load(&lab, "skb");
    let theirs = lab.attached_program(&rcust).expect("xdp-filter attached");
    let _listeners: Vec<_> = [465, 587]
        .map(|p| lab.listen(at(REMOTE_V4, p)).unwrap())
        .into();
    let xdp_filter_enforces = || {
        assert_eq!(
            lab.connect(UNMANAGED.v4, at(REMOTE_V4, 465), CONNECT),
            Outcome::TimedOut,
            "xdp-filter drops 465"
        );
        assert_eq!(
            lab.connect(UNMANAGED.v4, at(REMOTE_V4, 587), CONNECT),
            Outcome::Connected
        );
    };
    xdp_filter_enforces();

    let scratch = Scratch::new(&lab, BINARY);
    for attach in ["auto", "multiprog"] {
        scratch.write_policy(&policy(
            &lab,
            &format!("    xdp_mode: auto\n    attach: {attach}\n"),
        ));
        let log = refused(&scratch, &lab);
        assert!(
            log.contains(&format!(
                "{rcust} already runs XDP program {theirs} (\"xdpfilt_alw_all\", generic mode), \
                 which is not a libxdp dispatcher (attach: {attach}); filter-agent never \
                 replaces or removes another program"
            )),
            "{log}"
        );
        if let Some(refusal) = freplace_refusal() {
            assert!(log.contains(&refusal), "{log}");
        }
        assert_eq!(lab.attached_program(&rcust), Some(theirs), "{attach}");
        xdp_filter_enforces();
    }
}

#[test]
fn a_program_attached_with_ip_link_is_never_replaced_and_the_error_names_it() {
    let lab = Lab::create().unwrap();
    let rcust = lab.router_customer_if().to_string();
    let object = xdp_tools_object("xdpfilt_alw_all.o");
    let attached = lab
        .command_in(Ns::Router, "ip")
        .args(["link", "set", "dev", &rcust, "xdpdrv", "obj"])
        .arg(&object)
        .args(["sec", "xdp"])
        .status()
        .unwrap();
    assert!(
        attached.success(),
        "ip link set xdpdrv obj {}",
        object.display()
    );
    let theirs = lab.attached_program(&rcust).expect("attached");
    let scratch = Scratch::new(&lab, BINARY);
    for attach in ["auto", "exclusive", "multiprog"] {
        scratch.write_policy(&policy(
            &lab,
            &format!("    xdp_mode: auto\n    attach: {attach}\n"),
        ));
        let log = refused(&scratch, &lab);
        assert!(
            log.contains(&format!(
                "{rcust} already runs XDP program {theirs} (\"xdpfilt_alw_all\", native mode)"
            )),
            "{attach}: {log}"
        );
        assert!(log.contains("ip link set dev"), "{log}");
        assert_eq!(lab.attached_program(&rcust), Some(theirs), "{attach}");
    }
}

#[test]
fn multiprog_on_an_empty_hook_needs_the_dispatcher_the_kernel_may_refuse() {
    let lab = Lab::create().unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&policy(&lab, "    xdp_mode: auto\n    attach: multiprog\n"));
    match freplace_refusal() {
        Some(refusal) => {
            let log = refused(&scratch, &lab);
            assert!(
                log.contains(
                    "attach: multiprog needs a libxdp dispatcher, and the kernel refused it"
                ),
                "{log}"
            );
            assert!(log.contains(&refusal), "{log}");
            assert_eq!(lab.attached_program(lab.router_customer_if()), None);
        }
        None => {
            let _agent = scratch.start_agent(&lab, &[]);
            let status = status(&scratch);
            let attached = interface(&status, lab.router_customer_if());
            assert_eq!(attached["attach"], "multiprog", "{status}");
        }
    }
}

/// The dispatcher join: xdp-filter and our filter both in one libxdp dispatcher. Only a
/// kernel that allows freplace can build one; elsewhere this says so and stops.
#[test]
fn with_a_dispatcher_both_programs_enforce_survive_kill_9_and_detach_leaves_xdp_filter() {
    if let Some(refusal) = freplace_refusal() {
        eprintln!(
            "dispatcher join test NOT RUN: this kernel refuses the freplace programs a libxdp \
             dispatcher needs ({refusal})"
        );
        return;
    }
    let lab = Lab::create().unwrap();
    let rcust = lab.router_customer_if().to_string();
    let _xdp_filter = XdpFilter::load(&lab, "native");
    let _listeners: Vec<_> = [25, 465, 587]
        .map(|p| lab.listen(at(REMOTE_V4, p)).unwrap())
        .into();
    let both_enforce = || {
        // Ours blocks 25 from a residential customer; xdp-filter drops 465 for everyone.
        for (from, port, want) in [
            (RESIDENTIAL.v4, 25, Outcome::TimedOut),
            (UNMANAGED.v4, 25, Outcome::Connected),
            (UNMANAGED.v4, 465, Outcome::TimedOut),
            (RESIDENTIAL.v4, 587, Outcome::Connected),
        ] {
            assert_eq!(
                lab.connect(from, at(REMOTE_V4, port), CONNECT),
                want,
                "{from} -> {port}"
            );
        }
    };
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&policy(
        &lab,
        "    xdp_mode: auto\n    attach: multiprog\n    priority: 5\n",
    ));
    let agent = scratch.start_agent(&lab, &[]);
    both_enforce();
    let loader = xdp_tool(&lab, &["xdp-loader", "status", &rcust]);
    assert!(
        loader.contains("smtp_filter") && loader.contains("xdpfilt_alw_all"),
        "{loader}"
    );
    let status = status(&scratch);
    let chain = interface(&status, &rcust)["chain"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(chain.len(), 2, "{status}");
    assert_eq!(
        chain[0]["ours"], true,
        "priority 5 runs before xdp-filter's: {status}"
    );

    agent.kill9();
    both_enforce();
    let agent = scratch.start_agent(&lab, &[]);
    both_enforce();
    let status = self::status(&scratch);
    let chain = interface(&status, &rcust)["chain"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        chain.iter().filter(|p| p["ours"] == true).count(),
        1,
        "{status}"
    );
    drop(agent);
    let detached = String::from_utf8_lossy(&scratch.detach().stdout).into_owned();
    assert!(detached.contains("removed our component"), "{detached}");
    assert_eq!(
        lab.connect(RESIDENTIAL.v4, at(REMOTE_V4, 25), CONNECT),
        Outcome::Connected
    );
    assert_eq!(
        lab.connect(UNMANAGED.v4, at(REMOTE_V4, 465), CONNECT),
        Outcome::TimedOut,
        "xdp-filter still enforces"
    );
}
