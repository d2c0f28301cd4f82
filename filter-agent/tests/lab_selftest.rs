//! Checks the network-namespace lab itself (with no filter attached) and that a test's
//! [`Scratch`] cleans up after its agent. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use filter_testkit::agent::Scratch;
use filter_testkit::lab::{
    self, CUSTOMERS, Lab, Ns, Outcome, RELAY_V4, RELAY_V6, REMOTE_V4, REMOTE_V6,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_customer_reaches_remote_and_relay() {
    let lab = Lab::create().unwrap();
    let targets = [
        (REMOTE_V4, 25),
        (REMOTE_V4, 587),
        (RELAY_V4, 25),
        (REMOTE_V6, 25),
        (REMOTE_V6, 587),
        (RELAY_V6, 25),
    ];
    let listeners: Vec<_> = targets
        .iter()
        .map(|&(ip, port)| lab.listen(SocketAddr::new(ip, port)).unwrap())
        .collect();
    for customer in CUSTOMERS {
        for listener in &listeners {
            let from = if listener.addr().is_ipv4() {
                customer.v4
            } else {
                customer.v6
            };
            let outcome = lab.connect(from, listener.addr(), TIMEOUT);
            assert_eq!(
                outcome,
                Outcome::Connected,
                "{} {from} -> {}",
                customer.name,
                listener.addr()
            );
        }
    }
    for listener in &listeners {
        assert_eq!(listener.accepted(), CUSTOMERS.len(), "{}", listener.addr());
    }
}

#[test]
fn closed_port_is_refused() {
    let lab = Lab::create().unwrap();
    for (from, to) in [(CUSTOMERS[0].v4, REMOTE_V4), (CUSTOMERS[0].v6, REMOTE_V6)] {
        let outcome = lab.connect(from, SocketAddr::new(to, 26), TIMEOUT);
        assert_eq!(outcome, Outcome::Refused, "{from} -> {to}:26");
    }
}

#[test]
fn dropped_syn_times_out() {
    let lab = Lab::create().unwrap();
    // A blackhole route discards silently (no ICMP), as a filter dropping the SYN would.
    let silent: IpAddr = "203.0.113.99".parse().unwrap();
    let status = lab
        .command_in(Ns::Router, "ip")
        .args(["route", "add", "blackhole", "203.0.113.99/32"])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let outcome = lab.connect(
        CUSTOMERS[0].v4,
        SocketAddr::new(silent, 25),
        Duration::from_millis(300),
    );
    assert_eq!(outcome, Outcome::TimedOut);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn two_labs_at_once() {
    let a = Lab::create().unwrap();
    let b = Lab::create().unwrap();
    assert_ne!(a.prefix(), b.prefix());
    assert_ne!(a.router_customer_if(), b.router_customer_if());
    assert!(a.router_customer_if().len() <= 15);
    let la = a.listen(SocketAddr::new(REMOTE_V4, 25)).unwrap();
    let lb = b.listen(SocketAddr::new(REMOTE_V4, 25)).unwrap();
    let to = SocketAddr::new(REMOTE_V4, 25);
    assert_eq!(a.connect(CUSTOMERS[1].v4, to, TIMEOUT), Outcome::Connected);
    assert_eq!((la.accepted(), lb.accepted()), (1, 0));
    assert_eq!(b.connect(CUSTOMERS[1].v4, to, TIMEOUT), Outcome::Connected);
    assert_eq!(b.connect(CUSTOMERS[2].v4, to, TIMEOUT), Outcome::Connected);
    assert_eq!((la.accepted(), lb.accepted()), (1, 2));
}

#[test]
fn drop_removes_namespaces() {
    let lab = Lab::create().unwrap();
    let names: Vec<String> = Ns::ALL.iter().map(|&ns| lab.netns_name(ns)).collect();
    let listed = |name: &str, list: &str| {
        list.lines()
            .any(|l| l.starts_with(&format!("{name} ")) || l == name)
    };
    let before = netns_list();
    for name in &names {
        assert!(listed(name, &before), "{name} missing:\n{before}");
    }
    drop(lab);
    let after = netns_list();
    for name in &names {
        assert!(!listed(name, &after), "{name} still listed:\n{after}");
        assert!(!std::path::Path::new("/run/netns").join(name).exists());
    }
}

#[test]
fn policy_names_the_labs_interface() {
    let lab = Lab::create().unwrap();
    let policy = lab.policy_yaml();
    assert!(policy.contains(&format!("name: {}\n", lab.router_customer_if())));
    assert!(!policy.contains(&format!("name: {}", lab::POLICY_PLACEHOLDER_IF)));
}

#[test]
fn a_scratch_dropped_while_its_agent_runs_stops_it_and_removes_the_pins() {
    let lab = Lab::create().unwrap();
    let scratch = Scratch::new(&lab, env!("CARGO_BIN_EXE_filter-agent"));
    scratch.write_policy(&lab.policy_yaml());
    let mut agent = scratch.start_agent(&lab, &[]);
    let pins = scratch.pin_path.clone();
    assert!(pins.join("links").exists(), "{}", pins.display());
    // As a tuple `(Scratch, AgentProcess)` drops: the scratch first.
    drop(scratch);
    assert!(!pins.exists(), "{} left behind", pins.display());
    assert!(agent.try_wait().unwrap().is_some(), "the agent still runs");
}
