//! `filter-agent prefixes add` and `remove`, an IPAM's changes, against a real agent in a
//! lab with real TCP: a prefix added to a block group stops its customers' SYNs to port
//! 25 at once (counted blocked for that group) and its removal lets them through again;
//! the change is kept in the drop-in beside the policy file, which check, explain,
//! replay, plan and diff lay over it too, so it stays in force across a restart and a reload of an unrelated edit of the file; `rollback` undoes it; refused
//! changes exit 1 and change nothing; and an agent on a signed fleet policy refuses them.
//! Needs root.

use std::{path::PathBuf, process::Output, time::Duration};

use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    capture_files::{Pcap, linktype},
    frames::Frame,
    lab::{self, Lab, Outcome, REMOTE_V4, REMOTE_V6, UNMANAGED, at},
    policy_server::{PolicyServer, Publisher},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
const CONNECT: Duration = Duration::from_millis(700);
const RELOAD: Duration = Duration::from_secs(20);
/// In no group of the lab policy; UNMANAGED's IPv4 address is in it.
const IPAM_PREFIX: &str = "198.18.0.0/24";

fn start(lab: &Lab, extra: &[&str]) -> (Scratch, AgentProcess, lab::Listener) {
    let listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let scratch = Scratch::new(lab, BINARY);
    scratch.write_policy(&lab.policy_yaml());
    let agent = scratch.start_agent(lab, extra);
    (scratch, agent, listener)
}

fn unmanaged(lab: &Lab) -> Outcome {
    lab.connect(UNMANAGED.v4, at(REMOTE_V4, 25), CONNECT)
}

fn drop_in(scratch: &Scratch) -> PathBuf {
    scratch.dir().join("policy.prefixes.yaml")
}

/// (how, note) of every generation kept.
fn generations(scratch: &Scratch) -> Vec<(String, String)> {
    let history: Value = serde_json::from_str(&ok(scratch.cli(&["history", "--json"]))).unwrap();
    history["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["how"].as_str().unwrap().to_string(),
                g["note"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Exit status and stderr of a command that must fail.
fn refused(output: Output) -> (i32, String) {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_ipam_prefix_blocks_at_once_and_survives_a_restart_and_a_reload_until_removed() {
    let lab = Lab::create().unwrap();
    let (scratch, mut agent, _listener) = start(&lab, &[]);
    let _v6 = lab.listen(at(REMOTE_V6, 25)).unwrap();
    let file = std::fs::read(scratch.policy()).unwrap();
    assert_eq!(unmanaged(&lab), Outcome::Connected);
    let blocked = scratch.group_packets("residential", "blocked");

    // The IPAM hands 198.18.0.0/24 to residential customers.
    let out = ok(scratch.cli(&["prefixes", "add", "--group", "residential", IPAM_PREFIX]));
    assert!(
        out.contains("198.18.0.0/24: no group -> residential")
            && out.contains("generation 2 in force: applied with 1 map operations"),
        "{out}"
    );
    assert_eq!(unmanaged(&lab), Outcome::TimedOut);
    assert!(scratch.group_packets("residential", "blocked") > blocked);
    // Only that prefix: the rest of the unmanaged customers still send.
    assert_eq!(
        lab.connect(UNMANAGED.v6, at(REMOTE_V6, 25), CONNECT),
        Outcome::Connected
    );
    // The policy file stays as committed; the change is in the drop-in beside it.
    assert_eq!(std::fs::read(scratch.policy()).unwrap(), file);
    let kept = std::fs::read_to_string(drop_in(&scratch)).unwrap();
    assert!(kept.contains("residential:\n  - 198.18.0.0/24"), "{kept}");
    assert_eq!(
        generations(&scratch).last().unwrap(),
        &("prefixes-add".into(), "residential += 198.18.0.0/24".into())
    );
    let status = ok(scratch.cli(&["status"]));
    assert!(
        status.contains("prefixes     ") && status.contains("1 added, 0 removed"),
        "{status}"
    );
    // The commands that read the file see what the agent enforces.
    let policy = scratch.policy();
    let policy = policy.to_str().unwrap();
    let checked = ok(std::process::Command::new(BINARY)
        .args(["check", "--policy", policy])
        .output()
        .unwrap());
    assert!(
        checked.contains("laid over it (1 added, 0 removed)"),
        "{checked}"
    );
    let explained: Value = serde_json::from_str(&ok(scratch.cli(&[
        "explain",
        "--policy",
        policy,
        "--src",
        "198.18.0.10",
        "--dst",
        "203.0.113.9",
        "--json",
    ])))
    .unwrap();
    assert_eq!(explained["group"], "residential", "{explained:#}");
    // `plan` of the file lays the drop-in in force over it (as `apply` would): no change;
    // `diff` of the two generations shows the prefix that came in.
    let planned = scratch.cli(&["plan", "--policy", policy]);
    assert_eq!(planned.status.code(), Some(0), "{planned:?}");
    let diffed = scratch.cli(&["diff", "1", "2"]);
    assert_eq!(diffed.status.code(), Some(1), "{diffed:?}");
    let diffed = String::from_utf8_lossy(&diffed.stdout);
    assert!(diffed.contains(IPAM_PREFIX), "{diffed}");
    // `replay` of a captured SYN from the new prefix judges it by the drop-in too.
    let capture = scratch.dir().join("ipam.pcap");
    let syn = Frame::tcp("198.18.0.10".parse().unwrap(), REMOTE_V4, 25)
        .syn()
        .build();
    std::fs::write(&capture, Pcap::new(linktype::ETHERNET).frame(&syn).bytes()).unwrap();
    let replayed = ok(std::process::Command::new(BINARY)
        .args(["replay", "--policy", policy, "--format", "json"])
        .arg(&capture)
        .output()
        .unwrap());
    let replayed: Value = serde_json::from_str(replayed.trim()).unwrap();
    assert_eq!(replayed["group"], "residential", "{replayed:#}");
    assert_ne!(replayed["verdict"], "pass", "{replayed:#}");

    // The policy file is deployed again with an unrelated edit: reloaded, still blocked.
    scratch.write_policy(
        &lab.policy_yaml()
            .replace("mode: enforce\n", "mode: enforce # git\n"),
    );
    agent.wait_for("reload done", RELOAD);
    assert_eq!(generations(&scratch).last().unwrap().0, "file-change");
    assert_eq!(unmanaged(&lab), Outcome::TimedOut);

    // A restarted agent enforces it from the start.
    agent.stop(Duration::from_secs(10)).unwrap();
    let agent = scratch.start_agent(&lab, &[]);
    assert_eq!(unmanaged(&lab), Outcome::TimedOut);

    let out = ok(scratch.cli(&["prefixes", "remove", IPAM_PREFIX]));
    assert!(
        out.contains("198.18.0.0/24: residential -> no group"),
        "{out}"
    );
    assert_eq!(unmanaged(&lab), Outcome::Connected);
    assert!(!drop_in(&scratch).exists(), "nothing is left to keep");
    // The agent's own writes of the drop-in are no reason to reload.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        agent.count("reload requested"),
        0,
        "{}",
        agent.log().join("\n")
    );

    // `rollback` goes back to the generation before: the prefix and its drop-in return.
    ok(scratch.cli(&["rollback"]));
    assert_eq!(unmanaged(&lab), Outcome::TimedOut);
    assert_eq!(std::fs::read_to_string(drop_in(&scratch)).unwrap(), kept);
}

#[test]
fn refused_prefix_changes_exit_1_and_change_nothing() {
    let lab = Lab::create().unwrap();
    let (scratch, _agent, _listener) = start(&lab, &["--no-watch"]);
    let cases: [(&[&str], &str); 7] = [
        (
            &["add", "--group", "residential", "198.18.0.1/24"],
            "198.18.0.1/24 has host bits set (did you mean 198.18.0.0/24?)",
        ),
        (
            &["add", "--group", "residential", IPAM_PREFIX, "mail.example"],
            "\"mail.example\" is not an IP address or prefix",
        ),
        (
            &["add", "--group", "nobody", IPAM_PREFIX],
            "the policy has no group \"nobody\" (its groups: residential, business-broadband, business-ethernet, leased-line)",
        ),
        (
            &[
                "add",
                "--group",
                "leased-line",
                IPAM_PREFIX,
                "100.64.0.0/10",
            ],
            "prefix 100.64.0.0/10 is already in group residential: a prefix belongs to one group",
        ),
        (
            &["add", "--group", "residential", IPAM_PREFIX, IPAM_PREFIX],
            "prefix 198.18.0.0/24 is given twice",
        ),
        (
            &["remove", IPAM_PREFIX],
            "prefix 198.18.0.0/24 is in no group of the policy",
        ),
        (
            &["add", "--group", "residential", "198.18.0.0/33"],
            "an IPv4 prefix length is 0 to 32",
        ),
    ];
    let check_nothing_changed = |what: &str| {
        assert_eq!(unmanaged(&lab), Outcome::Connected, "{what}");
        assert!(!drop_in(&scratch).exists(), "{what}");
        assert_eq!(generations(&scratch).len(), 1, "{what}");
    };
    for (args, reason) in cases {
        let args = [&["prefixes"], args].concat();
        let (code, stderr) = refused(scratch.cli(&args));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(reason) && stderr.contains("nothing changed"),
            "{args:?}: {stderr}"
        );
        check_nothing_changed(&format!("{args:?}"));
    }

    // The abuse desk's exemption is not overridden by a policy prefix.
    ok(scratch.cli(&[
        "exemptions",
        "add",
        "100.64.0.10/32",
        "--reason",
        "ticket 4711",
    ]));
    let (code, stderr) = refused(scratch.cli(&[
        "prefixes",
        "add",
        "--group",
        "leased-line",
        "100.64.0.10/32",
    ]));
    assert_eq!(code, 1);
    assert!(stderr.contains("is a CLI exemption"), "{stderr}");
    ok(scratch.cli(&["exemptions", "remove", "100.64.0.10/32"]));
    check_nothing_changed("exemption");

    // No room in the maps: they were sized for the lab policy (65,536 IPv4 prefixes) and a
    // reload filled them to two short of that.
    let mut prefixes = String::new();
    for i in 0..65_530u32 {
        prefixes += &format!("      - 10.{}.{}.{}/32\n", i >> 16, (i >> 8) & 255, i & 255);
    }
    let relays = "# The relay blocked customers";
    let bulk = lab.policy_yaml().replacen(
        relays,
        &format!("  - name: bulk\n    smtp: block\n    prefixes:\n{prefixes}\n{relays}"),
        1,
    );
    assert!(bulk.contains("10.0.255.249/32"));
    scratch.write_policy(&bulk);
    ok(scratch.cli(&["reload"]));
    let (code, stderr) = refused(scratch.cli(&[
        "prefixes",
        "add",
        "--group",
        "residential",
        "198.18.0.0/25",
        "198.18.0.128/25",
        "198.18.1.0/24",
    ]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "the IPv4 prefix map holds 65536 entries and 65534 are in use: no room for 3 more"
        ),
        "{stderr}"
    );
    assert_eq!(unmanaged(&lab), Outcome::Connected);
    assert!(!drop_in(&scratch).exists());
}

#[test]
fn prefix_changes_are_refused_under_a_signed_fleet_policy() {
    let lab = Lab::create().unwrap();
    let _listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let publisher = Publisher::new(BINARY);
    let server_listener = lab
        .in_netns(lab::Ns::Internet, || {
            std::net::TcpListener::bind((REMOTE_V4, 0))
        })
        .unwrap()
        .unwrap();
    let server = PolicyServer::start(server_listener, None).unwrap();
    let (text, sig) = publisher.sign(&lab.policy_yaml(), "fleet.key");
    server.put(&[
        ("/edge.yaml", text.as_bytes()),
        ("/edge.yaml.sig", sig.as_bytes()),
    ]);
    let scratch = Scratch::new(&lab, BINARY);
    let url = server.url(REMOTE_V4, "/edge.yaml");
    let agent = scratch.spawn_agent_from_url(&lab, &url, &publisher.public(), &[]);
    agent.wait_for("enforcing after", Duration::from_secs(30));

    for args in [
        &["prefixes", "add", "--group", "residential", IPAM_PREFIX][..],
        &["prefixes", "remove", "100.64.0.0/10"],
    ] {
        let (code, stderr) = refused(scratch.cli(args));
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("the policy comes from {url} (run --policy-url)"))
                && stderr.contains("would be undone by the next fetch"),
            "{stderr}"
        );
    }
    assert_eq!(unmanaged(&lab), Outcome::Connected);
    assert_eq!(generations(&scratch).len(), 1);
}
