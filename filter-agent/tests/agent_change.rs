//! The operator's change workflow against a real agent in a lab, with real TCP: `reload`
//! that says whether it applied, `apply` with an automatic rollback that happens on time
//! (also across a kill -9 of the agent) unless confirmed, `rollback` byte for byte, the
//! history, `run --no-watch`, systemd's READY=1 once the filter enforces, and a group
//! rolled out in monitor mode under an enforcing policy (and the reverse). Needs root.

use std::{
    os::unix::net::UnixDatagram,
    process::Output,
    time::{Duration, Instant},
};

use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    lab::{self, LEASED_LINE, Lab, Outcome, REMOTE_V4, RESIDENTIAL, at},
    metrics_text::{sample, scrape},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
const CONNECT: Duration = Duration::from_millis(700);
/// How long the agent may take to act on a due rollback (it checks every second) on a
/// loaded machine.
const LATE: Duration = Duration::from_secs(15);
/// Long enough for a kill -9 and a restart of the agent before it runs out.
const CONFIRM_WITHIN: Duration = Duration::from_secs(20);

fn start(lab: &Lab, extra: &[&str]) -> (Scratch, AgentProcess, lab::Listener) {
    let listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let scratch = Scratch::new(lab, BINARY);
    scratch.write_policy(&lab.policy_yaml());
    let agent = scratch.start_agent(lab, extra);
    (scratch, agent, listener)
}

fn residential(lab: &Lab) -> Outcome {
    lab.connect(RESIDENTIAL.v4, at(REMOTE_V4, 25), CONNECT)
}

/// The lab policy with residential customers allowed to send: the change under test.
fn residential_allowed(lab: &Lab) -> String {
    lab.policy_yaml().replacen(
        "  - name: residential\n    smtp: block",
        "  - name: residential\n    smtp: allow",
        1,
    )
}

fn failed(output: Output) -> (i32, String) {
    assert!(!output.status.success(), "expected a failure: {output:?}");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn history(scratch: &Scratch) -> Value {
    serde_json::from_str(&ok(scratch.cli(&["history", "--json"]))).unwrap()
}

/// (generation, how, who, restores) of every generation kept.
fn generations(scratch: &Scratch) -> Vec<(u64, String, String, Option<u64>)> {
    history(scratch)["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_u64().unwrap(),
                g["how"].as_str().unwrap().to_string(),
                g["who"].as_str().unwrap_or("-").to_string(),
                g["restores"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn reload_exits_1_on_an_invalid_file_and_the_old_policy_stays() {
    let lab = Lab::create().unwrap();
    let (scratch, agent, _listener) = start(&lab, &["--no-watch"]);
    assert_eq!(residential(&lab), Outcome::TimedOut);

    // --no-watch: saving the file changes nothing by itself.
    scratch.write_policy(&residential_allowed(&lab));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(residential(&lab), Outcome::TimedOut);
    assert_eq!(
        agent.count("reload requested"),
        0,
        "{}",
        agent.log().join("\n")
    );

    let broken = residential_allowed(&lab).replace("100.64.0.0/10", "100.64.0.1/10");
    scratch.write_policy(&broken);
    let (code, stderr) = failed(scratch.cli(&["reload"]));
    assert_eq!(code, 1, "{stderr}");
    let located = format!("{}:", scratch.policy().display());
    assert!(
        stderr.contains(&located) && stderr.contains("host bits set"),
        "{stderr}"
    );
    // The old policy stays in force, in the kernel and in the history.
    assert_eq!(residential(&lab), Outcome::TimedOut);
    assert_eq!(
        lab.connect(LEASED_LINE.v4, at(REMOTE_V4, 25), CONNECT),
        Outcome::Connected
    );
    assert_eq!(generations(&scratch).len(), 1);

    scratch.write_policy(&residential_allowed(&lab));
    let reloaded = ok(scratch.cli(&["reload"]));
    assert!(reloaded.contains("generation 2 in force"), "{reloaded}");
    assert_eq!(residential(&lab), Outcome::Connected);
    // The same file again: applied, but no new generation.
    let again = ok(scratch.cli(&["reload"]));
    assert!(again.contains("policy unchanged: generation 2"), "{again}");
    assert_eq!(
        generations(&scratch),
        [
            (1, "start".into(), "-".into(), None),
            (2, "reload".into(), "root".into(), None)
        ]
    );
}

#[test]
fn an_unconfirmed_apply_rolls_back_on_time_also_across_a_kill_9() {
    let lab = Lab::create().unwrap();
    let port = 20000 + (std::process::id() % 1000) as u16;
    let metrics = format!("127.0.0.1:{port}");
    let (scratch, agent, _listener) = start(&lab, &["--metrics", &metrics]);
    let original = std::fs::read(scratch.policy()).unwrap();
    let new = scratch.dir().join("new.yaml");
    std::fs::write(&new, residential_allowed(&lab)).unwrap();

    let applied = Instant::now();
    let out = ok(scratch.cli(&[
        "apply",
        "--policy",
        new.to_str().unwrap(),
        "--confirm-within",
        "20s",
    ]));
    assert!(
        out.contains("generation 2 in force") && out.contains("confirm` within 20s"),
        "{out}"
    );
    // File and kernel agree on the new policy.
    assert_eq!(residential(&lab), Outcome::Connected);
    assert_eq!(
        std::fs::read_to_string(scratch.policy()).unwrap(),
        residential_allowed(&lab)
    );
    assert_eq!(history(&scratch)["pending"]["rollback_to"], 1);

    // The agent dies; the rollback it promised survives it.
    agent.kill9();
    let agent = scratch.start_agent(&lab, &["--metrics", &metrics]);
    agent.wait_for(
        "is not confirmed: generation 1 is applied again in",
        Duration::from_secs(5),
    );
    assert_eq!(residential(&lab), Outcome::Connected);
    agent.wait_for("rollback done", CONFIRM_WITHIN + LATE);
    let took = applied.elapsed();
    assert!(took >= CONFIRM_WITHIN, "rolled back after {took:?}");

    // The blocked customer is blocked again; the file holds the old policy, byte for byte.
    assert_eq!(residential(&lab), Outcome::TimedOut);
    assert_eq!(std::fs::read(scratch.policy()).unwrap(), original);
    let generations = generations(&scratch);
    assert_eq!(
        generations.last(),
        Some(&(3, "rollback".into(), "agent".into(), Some(1)))
    );
    let history = history(&scratch);
    assert_eq!(history["pending"], Value::Null);
    assert_eq!(
        history["generations"][2]["sha256"],
        history["generations"][0]["sha256"]
    );
    let text = scrape(&lab, port);
    assert_eq!(
        sample(&text, "filter_agent_automatic_rollbacks_total", &[]),
        1.0
    );
    assert!(
        agent.count("WARN  rollback: automatic") == 1,
        "{}",
        agent.log().join("\n")
    );
    // Nothing left to confirm.
    let (code, stderr) = failed(scratch.cli(&["confirm"]));
    assert!(
        code == 1 && stderr.contains("nothing to confirm"),
        "{stderr}"
    );
}

#[test]
fn a_confirmed_apply_stays() {
    let lab = Lab::create().unwrap();
    let (scratch, agent, _listener) = start(&lab, &[]);
    let new = scratch.dir().join("new.yaml");
    std::fs::write(&new, residential_allowed(&lab)).unwrap();
    ok(scratch.cli(&[
        "apply",
        "--policy",
        new.to_str().unwrap(),
        "--confirm-within",
        "10s",
    ]));
    let confirmed = ok(scratch.cli(&["confirm"]));
    assert!(
        confirmed.contains("generation 2 confirmed; the rollback to generation 1"),
        "{confirmed}"
    );
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(residential(&lab), Outcome::Connected);
    assert_eq!(agent.count("rollback:"), 0, "{}", agent.log().join("\n"));
    assert_eq!(agent.count("rollback done"), 0);
    assert_eq!(generations(&scratch).len(), 2);
    assert_eq!(history(&scratch)["pending"], Value::Null);
}

#[test]
fn rollback_restores_a_generation_byte_for_byte() {
    let lab = Lab::create().unwrap();
    let listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    // Comments, CRLF line ends and trailing blanks: what a byte-for-byte restore keeps.
    let original = format!(
        "# edited on the router by hand \t\r\n{}\r\n\r\n",
        lab.policy_yaml().replace('\n', "\r\n")
    );
    scratch.write_policy(&original);
    let agent = scratch.start_agent(&lab, &[]);
    let new = scratch.dir().join("new.yaml");
    std::fs::write(&new, residential_allowed(&lab)).unwrap();
    ok(scratch.cli(&["apply", "--policy", new.to_str().unwrap()]));
    assert_eq!(residential(&lab), Outcome::Connected);

    let out = ok(scratch.cli(&["rollback"]));
    assert!(out.contains("generation 3 in force"), "{out}");
    assert_eq!(std::fs::read_to_string(scratch.policy()).unwrap(), original);
    assert_eq!(residential(&lab), Outcome::TimedOut);

    // Forward again to a named generation, then refusals that change nothing.
    ok(scratch.cli(&["rollback", "--to", "2"]));
    assert_eq!(
        std::fs::read_to_string(scratch.policy()).unwrap(),
        residential_allowed(&lab)
    );
    assert_eq!(residential(&lab), Outcome::Connected);
    let (code, stderr) = failed(scratch.cli(&["rollback", "--to", "99"]));
    assert!(
        code == 1 && stderr.contains("no generation 99 in the history"),
        "{stderr}"
    );
    let broken = scratch.dir().join("broken.yaml");
    std::fs::write(&broken, "version: 1\ngroups: nonsense\n").unwrap();
    let (code, stderr) = failed(scratch.cli(&["apply", "--policy", broken.to_str().unwrap()]));
    assert!(code == 1 && stderr.contains("broken.yaml:2:"), "{stderr}");
    assert_eq!(residential(&lab), Outcome::Connected);
    assert_eq!(
        generations(&scratch),
        [
            (1, "start".into(), "-".into(), None),
            (2, "apply".into(), "root".into(), None),
            (3, "rollback".into(), "root".into(), Some(1)),
            (4, "rollback".into(), "root".into(), Some(2)),
        ]
    );
    let shas: Vec<Value> = history(&scratch)["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["sha256"].clone())
        .collect();
    assert_eq!((&shas[0], &shas[1]), (&shas[2], &shas[3]));
    let table = ok(scratch.cli(&["history"]));
    assert!(
        table.contains("rollback of 1") && table.contains("4*"),
        "{table}"
    );
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
    drop(listener);
}

#[test]
fn a_reader_sees_the_history_but_cannot_change_the_policy() {
    let lab = Lab::create().unwrap();
    let (scratch, _agent, _listener) = start(&lab, &["--socket-group", "nogroup"]);
    // The scratch dir must be searchable for nobody to reach the socket and the file.
    let mut perms = std::fs::metadata(scratch.dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(scratch.dir(), perms).unwrap();
    let new = scratch.dir().join("new.yaml");
    std::fs::write(&new, residential_allowed(&lab)).unwrap();
    let before = std::fs::read(scratch.policy()).unwrap();

    let read = scratch.cli_as_nobody(&["history"]);
    assert!(read.status.success(), "{read:?}");
    for (args, what) in [
        (
            &["apply", "--policy", new.to_str().unwrap()][..],
            "applying a policy",
        ),
        (&["reload"][..], "reloading the policy"),
        (&["rollback", "--to", "1"][..], "rolling back"),
        (&["confirm"][..], "confirming a change"),
    ] {
        let (code, stderr) = failed(scratch.cli_as_nobody(args));
        assert!(
            code == 1 && stderr.contains(&format!("permission denied: {what} needs root")),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(std::fs::read(scratch.policy()).unwrap(), before);
    assert_eq!(generations(&scratch).len(), 1);
    assert_eq!(residential(&lab), Outcome::TimedOut);
}

/// An agent started as systemd starts a `Type=notify` unit, and the first message it
/// sends to the notify socket (waited for up to 30 s).
fn start_under_systemd(lab: &Lab) -> (Scratch, AgentProcess, lab::Listener, String) {
    let listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let scratch = Scratch::new(lab, BINARY);
    scratch.write_policy(&lab.policy_yaml());
    let socket_path = scratch.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let env = vec![(
        "NOTIFY_SOCKET".to_string(),
        socket_path.display().to_string(),
    )];
    let agent = scratch.spawn_agent_with_env(lab, &[], env);
    let mut message = [0u8; 512];
    let len = notify
        .recv(&mut message)
        .expect("a notification within 30 s");
    let message = String::from_utf8_lossy(&message[..len]).into_owned();
    (scratch, agent, listener, message)
}

#[test]
fn systemd_hears_ready_only_once_the_filter_enforces() {
    let lab = Lab::create().unwrap();
    let (_scratch, agent, _listener, message) = start_under_systemd(&lab);
    assert_eq!(residential(&lab), Outcome::TimedOut);
    assert!(
        message.contains("READY=1\n") && message.contains("STATUS=enforcing generation 1"),
        "{message}"
    );
    agent.wait_for("enforcing after", Duration::from_secs(5));
}

#[test]
fn a_sighup_the_moment_systemd_hears_ready_is_a_reload() {
    let lab = Lab::create().unwrap();
    let (_scratch, mut agent, _listener, message) = start_under_systemd(&lab);
    assert!(message.contains("READY=1\n"), "{message}");
    // As `systemctl reload` can, right after systemd is told the filter enforces.
    agent.hangup();
    agent.wait_for("reload requested (SIGHUP)", Duration::from_secs(10));
    assert_eq!(
        agent.try_wait().unwrap(),
        None,
        "{}",
        agent.log().join("\n")
    );
    assert_eq!(residential(&lab), Outcome::TimedOut);
}

/// The lab policy with residential's 100.64.0.0/24 moved to leased-line and a relay
/// added.
fn first_residential_24_to_leased_line(lab: &Lab) -> String {
    lab.policy_yaml()
        .replacen(
            "      - 198.51.100.128/25\n",
            "      - 198.51.100.128/25\n      - 100.64.0.0/24\n",
            1,
        )
        .replacen(
            "  - 203.0.113.25\n",
            "  - 203.0.113.25\n  - 203.0.113.26\n",
            1,
        )
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap_or(-1)
}

#[test]
fn plan_names_the_prefixes_and_seen_sources_that_would_change_and_nothing_else() {
    let lab = Lab::create().unwrap();
    let _v6 = lab.listen(at(lab::REMOTE_V6, 25)).unwrap();
    let (scratch, _agent, _listener) = start(&lab, &[]);
    // Traffic to port 25 of every kind: blocked, allowed, unmanaged, IPv6.
    assert_eq!(residential(&lab), Outcome::TimedOut);
    for (source, remote, want) in [
        (lab::BUSINESS_BROADBAND.v4, REMOTE_V4, Outcome::TimedOut),
        (LEASED_LINE.v4, REMOTE_V4, Outcome::Connected),
        (lab::UNMANAGED.v4, REMOTE_V4, Outcome::Connected),
        (RESIDENTIAL.v6, lab::REMOTE_V6, Outcome::TimedOut),
    ] {
        assert_eq!(
            lab.connect(source, at(remote, 25), CONNECT),
            want,
            "{source}"
        );
    }
    let new = scratch.dir().join("new.yaml");
    std::fs::write(&new, first_residential_24_to_leased_line(&lab)).unwrap();

    let output = scratch.cli(&["plan", "--policy", new.to_str().unwrap(), "--json"]);
    assert_eq!(code(&output), 1, "{output:?}");
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    let changes = plan["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{plan:#}");
    assert_eq!(
        changes[0],
        serde_json::json!({"kind": "prefix", "prefix": "100.64.0.0/24",
            "from": {"group": "residential", "verdict": "block", "mode": "enforce"},
            "to": {"group": "leased-line", "verdict": "allow", "mode": null}})
    );
    assert_eq!(
        changes[1],
        serde_json::json!({"kind": "relay-added", "relay": "203.0.113.26/32"})
    );
    let sources = plan["impact"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{plan:#}");
    let source = &sources[0];
    assert_eq!(source["source"], RESIDENTIAL.v4.to_string());
    assert_eq!(
        (source["from"].clone(), source["to"].clone()),
        (
            serde_json::json!({"group": "residential", "verdict": "block", "mode": "enforce"}),
            serde_json::json!({"group": "leased-line", "verdict": "allow", "mode": null})
        )
    );
    assert!(source["attempts"].as_u64().unwrap() >= 1, "{source}");
    assert_eq!(plan["impact"]["window_seconds"], 3600);
    // Every source that sent was remembered, whatever its verdict.
    assert_eq!(plan["summary"]["sources_remembered"], 5, "{plan:#}");

    let text = String::from_utf8(
        scratch
            .cli(&["plan", "--policy", new.to_str().unwrap()])
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("100.64.0.0/24 residential -> leased-line: block -> allow; 1 sources seen in the last 1h"),
        "{text}"
    );

    // The policy in force itself: no change, exit 0.
    let same = scratch.cli(&["plan", "--policy", scratch.policy().to_str().unwrap()]);
    assert_eq!(code(&same), 0, "{same:?}");
    assert!(String::from_utf8_lossy(&same.stdout).contains("no change in effect"));
    // An invalid policy: exit 2 with the error at its line.
    let broken = scratch.dir().join("broken.yaml");
    std::fs::write(&broken, "version: 1\ngroups: nonsense\n").unwrap();
    let refused = scratch.cli(&["plan", "--policy", broken.to_str().unwrap()]);
    assert_eq!(code(&refused), 2, "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("broken.yaml:2:"));

    // Applied, the same change is the diff between generations 1 and 2.
    ok(scratch.cli(&["apply", "--policy", new.to_str().unwrap()]));
    assert_eq!(residential(&lab), Outcome::Connected);
    let diff = scratch.cli(&["diff", "1", "2", "--json"]);
    assert_eq!(code(&diff), 1, "{diff:?}");
    let diff: Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(diff["changes"], plan["changes"]);
    assert_eq!(code(&scratch.cli(&["diff", "2", "2"])), 0);
    assert_eq!(code(&scratch.cli(&["diff", "1", "9"])), 2);
}

#[test]
fn plan_needs_a_running_agent() {
    let lab = Lab::create().unwrap();
    let (scratch, mut agent, _listener) = start(&lab, &[]);
    agent.stop(Duration::from_secs(10)).unwrap();
    let output = scratch.cli(&["plan", "--policy", scratch.policy().to_str().unwrap()]);
    assert_eq!(code(&output), 2, "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no agent is running"));
}

/// The lab policy with `mode` at the top and `group_mode` on business-broadband.
fn with_group_mode(lab: &Lab, mode: &str, group: &str, group_mode: &str) -> String {
    lab.policy_yaml()
        .replacen("mode: enforce\n", &format!("mode: {mode}\n"), 1)
        .replacen(
            &format!("  - name: {group}\n    smtp: block\n"),
            &format!("  - name: {group}\n    smtp: block\n    mode: {group_mode}\n"),
            1,
        )
}

#[test]
fn a_group_in_monitor_mode_passes_and_counts_only_its_own_would_be_drops() {
    let lab = Lab::create().unwrap();
    let (scratch, _agent, listener) = start(&lab, &["--no-watch"]);
    let broadband = || lab.connect(lab::BUSINESS_BROADBAND.v4, at(REMOTE_V4, 25), CONNECT);
    assert_eq!(broadband(), Outcome::TimedOut);

    // Rolled out watched: business-broadband in monitor mode, the policy enforcing.
    let watched = scratch.dir().join("watched.yaml");
    std::fs::write(
        &watched,
        with_group_mode(&lab, "enforce", "business-broadband", "monitor"),
    )
    .unwrap();
    let output = scratch.cli(&["plan", "--policy", watched.to_str().unwrap(), "--json"]);
    assert_eq!(code(&output), 1, "{output:?}");
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        plan["changes"],
        serde_json::json!([{"kind": "group-mode", "group": "business-broadband",
            "from": null, "to": "monitor"}]),
        "{plan:#}"
    );
    let sources = plan["impact"]["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{plan:#}");
    assert_eq!(sources[0]["source"], lab::BUSINESS_BROADBAND.v4.to_string());
    assert_eq!(
        (sources[0]["from"].clone(), sources[0]["to"].clone()),
        (
            serde_json::json!({"group": "business-broadband", "verdict": "block", "mode": "enforce"}),
            serde_json::json!({"group": "business-broadband", "verdict": "block", "mode": "monitor"})
        )
    );
    let text = String::from_utf8(
        scratch
            .cli(&["plan", "--policy", watched.to_str().unwrap()])
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("group mode")
            && text.contains("business-broadband: the policy's -> monitor")
            && text.contains("business-broadband: block -> monitored"),
        "{text}"
    );
    ok(scratch.cli(&["apply", "--policy", watched.to_str().unwrap()]));

    let (residential_before, broadband_before) = (
        scratch.group_packets("residential", "blocked"),
        scratch.group_packets("business-broadband", "monitored"),
    );
    let accepted = listener.accepted();
    // The watched group's SYN to port 25 arrives; the other block group's does not.
    assert_eq!(broadband(), Outcome::Connected);
    assert_eq!(listener.accepted(), accepted + 1);
    assert_eq!(residential(&lab), Outcome::TimedOut);
    assert_eq!(listener.accepted(), accepted + 1);
    let monitored = scratch.group_packets("business-broadband", "monitored");
    assert!(
        monitored > broadband_before,
        "{broadband_before} -> {monitored}"
    );
    assert!(scratch.group_packets("residential", "blocked") > residential_before);
    // Each group counts only its own: nothing of residential monitored, nothing more of
    // business-broadband blocked than before the change.
    assert_eq!(scratch.group_packets("residential", "monitored"), 0);
    let explained = ok(scratch.cli(&["explain", "--src", "192.0.2.10", "--dst", "203.0.113.9"]));
    assert!(
        explained.contains("verdict   pass monitored")
            && explained.contains(
                "mode      monitor, group \"business-broadband\"'s own mode (the policy's is enforce)"
            ),
        "{explained}"
    );

    // The other direction: the policy monitoring, residential enforcing.
    let strict = scratch.dir().join("strict.yaml");
    std::fs::write(
        &strict,
        with_group_mode(&lab, "monitor", "residential", "enforce"),
    )
    .unwrap();
    ok(scratch.cli(&["apply", "--policy", strict.to_str().unwrap()]));
    let blocked = scratch.group_packets("residential", "blocked");
    let accepted = listener.accepted();
    assert_eq!(residential(&lab), Outcome::TimedOut);
    assert_eq!(broadband(), Outcome::Connected);
    assert_eq!(listener.accepted(), accepted + 1);
    assert!(scratch.group_packets("residential", "blocked") > blocked);
    assert_eq!(scratch.group_packets("residential", "monitored"), 0);
}
