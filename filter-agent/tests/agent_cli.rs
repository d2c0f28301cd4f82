//! The operator CLI against a real agent in a lab: exemptions that change kernel verdicts
//! at once and persist, expiry, permissions, a control socket that survives bad requests,
//! and metrics that move with traffic. Needs root.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::Command,
    time::Duration,
};

use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    lab::{self, LEASED_LINE, Lab, Outcome, REMOTE_V4, REMOTE_V6, RESIDENTIAL, at},
    metrics_text::{sample, scrape},
};

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");

const CONNECT: Duration = Duration::from_millis(700);

fn start(lab: &Lab, extra: &[&str]) -> (Scratch, AgentProcess, Vec<lab::Listener>) {
    let listeners = vec![
        lab.listen(at(REMOTE_V4, 25)).unwrap(),
        lab.listen(at(REMOTE_V6, 25)).unwrap(),
    ];
    let scratch = Scratch::new(lab, BINARY);
    scratch.write_policy(&lab.policy_yaml());
    let agent = scratch.start_agent(lab, extra);
    (scratch, agent, listeners)
}

fn residential_v4(lab: &Lab) -> Outcome {
    lab.connect(RESIDENTIAL.v4, at(REMOTE_V4, 25), CONNECT)
}

#[test]
fn an_exemption_changes_the_kernel_verdict_at_once_and_back() {
    let lab = Lab::create().unwrap();
    let (scratch, _agent, _listeners) = start(&lab, &[]);
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);

    let added = ok(scratch.cli(&[
        "exemptions",
        "add",
        "100.64.0.10/32",
        "--reason",
        "ticket 4711: own MTA",
    ]));
    assert!(added.contains("exemption added: 100.64.0.10/32"), "{added}");
    assert_eq!(residential_v4(&lab), Outcome::Connected);
    // Only that customer: the rest of the residential /10 stays blocked (IPv6 too).
    assert_eq!(
        lab.connect(RESIDENTIAL.v6, at(REMOTE_V6, 25), CONNECT),
        Outcome::TimedOut
    );

    let list = ok(scratch.cli(&["exemptions", "list", "--json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let entry = list["exemptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == "100.64.0.10/32")
        .expect("listed");
    assert_eq!(entry["source"], "cli");
    assert_eq!(entry["reason"], "ticket 4711: own MTA");
    assert_eq!(entry["added_by"], "root");
    assert!(
        list["exemptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["source"] == "policy")
    );
    let explained = ok(scratch.cli(&["explain", "--src", "100.64.0.10", "--dst", "203.0.113.9"]));
    assert!(
        explained.contains("pass exempt") && explained.contains("exemptions"),
        "{explained}"
    );
    let table = ok(scratch.cli(&["exemptions", "list"]));
    assert!(
        table.contains("PREFIX") && table.contains("100.64.0.10/32"),
        "{table}"
    );

    ok(scratch.cli(&["exemptions", "remove", "100.64.0.10/32"]));
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
    let state = std::fs::read_to_string(scratch.state_file()).unwrap();
    assert!(!state.contains("100.64.0.10"), "{state}");
}

#[test]
fn refused_exemptions_say_why() {
    let lab = Lab::create().unwrap();
    let (scratch, _agent, _listeners) = start(&lab, &[]);
    for (args, why) in [
        (vec!["198.51.100.130/32", "--reason", "x"], "leased-line"),
        (vec!["203.0.113.0/24", "--reason", "x"], "no group"),
        (vec!["100.64.0.1/8", "--reason", "x"], "host bits"),
        (vec!["100.64.0.10/32", "--reason", " "], "reason"),
        (
            vec![
                "100.64.0.10/32",
                "--reason",
                "x",
                "--until",
                "2001-01-01T00:00:00Z",
            ],
            "past",
        ),
    ] {
        let output = scratch.cli(&[&["exemptions", "add"][..], &args].concat());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
}

#[test]
fn exemptions_survive_kill_9_and_expire_on_time() {
    let lab = Lab::create().unwrap();
    let (scratch, agent, _listeners) = start(&lab, &[]);
    ok(scratch.cli(&["exemptions", "add", "100.64.0.10/32", "--reason", "kept"]));
    ok(scratch.cli(&[
        "exemptions",
        "add",
        "2001:db8:1000::10/128",
        "--reason",
        "short",
        "--expires",
        "3s",
    ]));
    agent.kill9();
    let agent = scratch.start_agent(&lab, &[]);
    let list = ok(scratch.cli(&["exemptions", "list"]));
    assert!(
        list.contains("100.64.0.10/32") && list.contains("kept"),
        "{list}"
    );
    assert_eq!(residential_v4(&lab), Outcome::Connected);
    assert_eq!(
        lab.connect(RESIDENTIAL.v6, at(REMOTE_V6, 25), CONNECT),
        Outcome::Connected
    );

    agent.wait_for(
        "exemption expired prefix=2001:db8:1000::10/128",
        Duration::from_secs(10),
    );
    assert_eq!(
        lab.connect(RESIDENTIAL.v6, at(REMOTE_V6, 25), CONNECT),
        Outcome::TimedOut
    );
    assert_eq!(residential_v4(&lab), Outcome::Connected);
    let list = ok(scratch.cli(&["exemptions", "list"]));
    assert!(!list.contains("2001:db8:1000::10"), "{list}");
}

#[test]
fn users_without_permission_cannot_change_exemptions() {
    let lab = Lab::create().unwrap();
    // nogroup may connect and read; only root may write.
    let (scratch, _agent, _listeners) = start(&lab, &["--socket-group", "nogroup"]);
    // The scratch dir must be searchable for nobody to reach the socket.
    let mut perms = std::fs::metadata(scratch.dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(scratch.dir(), perms).unwrap();
    ok(scratch.cli(&["exemptions", "add", "100.64.0.20/32", "--reason", "before"]));
    let state_before = std::fs::read(scratch.state_file()).unwrap();

    let read = scratch.cli_as_nobody(&["exemptions", "list"]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    for args in [
        &["exemptions", "add", "100.64.0.10/32", "--reason", "sneaky"][..],
        &["exemptions", "remove", "100.64.0.20/32"][..],
    ] {
        let output = scratch.cli_as_nobody(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("permission denied"), "{stderr}");
    }
    assert_eq!(std::fs::read(scratch.state_file()).unwrap(), state_before);
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
}

#[test]
fn users_outside_the_socket_group_cannot_even_connect() {
    let lab = Lab::create().unwrap();
    let (scratch, _agent, _listeners) = start(&lab, &[]);
    let mut perms = std::fs::metadata(scratch.dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(scratch.dir(), perms).unwrap();
    let output = scratch.cli_as_nobody(&["exemptions", "add", "100.64.0.10/32", "--reason", "x"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(!scratch.state_file().exists());
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
}

fn raw(scratch: &Scratch, bytes: &[u8], close_write: bool) -> String {
    let mut stream = UnixStream::connect(scratch.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The agent may stop reading once it has seen enough; a failed write is fine.
    let _ = stream.write_all(bytes);
    if close_write {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

#[test]
fn bad_requests_get_errors_and_the_agent_keeps_enforcing_and_answering() {
    let lab = Lab::create().unwrap();
    let (scratch, agent, _listeners) = start(&lab, &[]);
    let garbage = raw(&scratch, b"\x00\xffhello\n", true);
    assert!(
        garbage.contains("\"ok\":false") && garbage.contains("malformed"),
        "{garbage}"
    );
    let truncated = raw(&scratch, b"{\"version\":1,\"command\":\"exemp", true);
    assert!(truncated.contains("\"ok\":false"), "{truncated}");
    let huge = vec![b'x'; 4 << 20];
    let huge = raw(&scratch, &huge, true);
    assert!(huge.contains("larger than"), "{huge}");
    let unknown = raw(
        &scratch,
        b"{\"version\":1,\"command\":\"frobnicate\"}\n",
        true,
    );
    assert!(unknown.contains("unknown"), "{unknown}");
    let version = raw(&scratch, b"{\"version\":99,\"command\":\"status\"}\n", true);
    assert!(version.contains("version"), "{version}");

    let status = ok(scratch.cli(&["status", "--json"]));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["interfaces"][0]["interface"],
        lab.router_customer_if()
    );
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
    assert_eq!(
        lab.connect(LEASED_LINE.v4, at(REMOTE_V4, 25), CONNECT),
        Outcome::Connected
    );
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}

#[test]
fn metrics_parse_and_their_counters_move_with_traffic() {
    let lab = Lab::create().unwrap();
    let port = 19000 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let (scratch, _agent, _listeners) = start(&lab, &["--metrics", &addr]);
    let interface = lab.router_customer_if().to_string();
    let blocked = [("interface", interface.as_str()), ("reason", "blocked")];

    let before = scrape(&lab, port);
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    let body = &before[before.find("\r\n\r\n").unwrap() + 4..];
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok(),
            "not `name{{labels}} value`: {line}"
        );
    }
    assert!(body.trim_end().ends_with("# EOF"));
    assert_eq!(sample(body, "filter_agent_last_reload_success", &[]), 1.0);
    assert_eq!(
        sample(body, "filter_agent_map_entries", &[("map", "SOURCES_V4")]),
        4.0
    );
    let blocked_before = sample(body, "filter_agent_packets_total", &blocked);

    for _ in 0..3 {
        assert_eq!(residential_v4(&lab), Outcome::TimedOut);
    }
    ok(scratch.cli(&["exemptions", "add", "100.64.0.10/32", "--reason", "metrics"]));
    let after = scrape(&lab, port);
    let blocked_after = sample(&after, "filter_agent_packets_total", &blocked);
    assert!(
        blocked_after >= blocked_before + 3.0,
        "{blocked_before} -> {blocked_after}"
    );
    assert!(
        sample(
            &after,
            "filter_agent_group_packets_total",
            &[("group", "residential"), ("reason", "blocked")]
        ) >= 3.0
    );
    assert_eq!(sample(&after, "filter_agent_exemptions", &[]), 1.0);

    let stats = ok(scratch.cli(&["stats", "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["by_interface"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["interface"] == interface.as_str() && r["reason"] == "blocked")
    );
    let table = ok(scratch.cli(&["stats"]));
    assert!(
        table.contains("INTERFACE") && table.contains("blocked"),
        "{table}"
    );

    // --watch refreshes and, from its second round on, shows rates.
    let mut watch = Command::new(BINARY)
        .args(["stats", "--watch", "1", "--socket"])
        .arg(scratch.socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    watch.kill().unwrap();
    let mut watched = String::new();
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut watched)
        .unwrap();
    watch.wait().unwrap();
    assert!(watched.matches("REASON").count() >= 2, "{watched}");
    assert!(
        watched.contains("PKT/S") && watched.contains("BIT/S"),
        "{watched}"
    );
}

/// A read command against a stopped agent's pins and state directory, as root.
fn read_stopped(scratch: &Scratch, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    let (pins, state) = (
        scratch.pin_path.display().to_string(),
        scratch.state_dir().display().to_string(),
    );
    all.extend(["--pin-path", &pins, "--state-dir", &state]);
    scratch.cli(&all)
}

const NOT_RUNNING: &str = "agent not running; reading the pinned filter, which is enforcing\n";

#[test]
fn status_stats_offenders_and_exemptions_read_the_pinned_filter_when_the_agent_is_stopped() {
    let lab = Lab::create().unwrap();
    let (scratch, mut agent, _listeners) = start(&lab, &[]);
    ok(scratch.cli(&[
        "exemptions",
        "add",
        "2001:db8:1000:42::/64",
        "--reason",
        "pilot",
    ]));
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
    let before: serde_json::Value =
        serde_json::from_str(&ok(scratch.cli(&["stats", "--json"]))).unwrap();
    let offenders_before: serde_json::Value =
        serde_json::from_str(&ok(scratch.cli(&["offenders", "--json"]))).unwrap();
    let exemptions_before = ok(scratch.cli(&["exemptions", "list", "--json"]));
    // SIGTERM: the agent exits, the filter stays attached.
    agent.stop(Duration::from_secs(10)).unwrap();

    for args in [
        &["status"][..],
        &["status", "--json"],
        &["stats"],
        &["stats", "--json"],
        &["offenders", "--json"],
        &["exemptions", "list", "--json"],
    ] {
        let output = read_stopped(&scratch, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert_eq!(stderr, NOT_RUNNING, "{args:?}");
    }
    let status = ok(read_stopped(&scratch, &["status"]));
    assert!(
        status.contains("agent        not running")
            && status.contains("generation 1")
            && status.contains("1 CLI exemptions"),
        "{status}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&ok(read_stopped(&scratch, &["status", "--json"]))).unwrap();
    assert_eq!(status["agent"]["pid"], serde_json::Value::Null);
    assert_eq!(
        status["interfaces"][0]["interface"],
        lab.router_customer_if()
    );
    // The counters as they were when the agent stopped (nothing was sent since); but for
    // the frames that are not TCP, which the lab's IPv6 stacks send by themselves at any
    // time (MLD reports) and the still attached filter goes on counting.
    let stats: serde_json::Value =
        serde_json::from_str(&ok(read_stopped(&scratch, &["stats", "--json"]))).unwrap();
    let tcp_reasons = |stats: &serde_json::Value| -> Vec<serde_json::Value> {
        stats["by_reason"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !matches!(r["reason"].as_str(), Some("not-ip" | "not-tcp")))
            .cloned()
            .collect()
    };
    assert_eq!(stats["by_group"], before["by_group"]);
    assert_eq!(tcp_reasons(&stats), tcp_reasons(&before));
    assert!(!tcp_reasons(&before).is_empty(), "{before}");
    // Offenders and exemptions as they were (times are rendered at each read, so the
    // comparison leaves them out).
    let rows = |offenders: &serde_json::Value| -> Vec<(String, u64, String)> {
        offenders["offenders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["source"].as_str().unwrap().to_string(),
                    o["attempts"].as_u64().unwrap(),
                    o["group"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let offenders: serde_json::Value =
        serde_json::from_str(&ok(read_stopped(&scratch, &["offenders", "--json"]))).unwrap();
    assert_eq!(rows(&offenders), rows(&offenders_before));
    assert_eq!(
        offenders["offenders"][0]["source"],
        RESIDENTIAL.v4.to_string()
    );
    let entries = |list: &str| -> Vec<(String, String, String)> {
        let list: serde_json::Value = serde_json::from_str(list).unwrap();
        list["exemptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["prefix"].as_str().unwrap().to_string(),
                    e["source"].as_str().unwrap().to_string(),
                    e["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let exemptions = ok(read_stopped(&scratch, &["exemptions", "list", "--json"]));
    assert_eq!(entries(&exemptions), entries(&exemptions_before));
    assert!(
        entries(&exemptions).contains(&(
            "2001:db8:1000:42::/64".into(),
            "cli".into(),
            "pilot".into()
        )),
        "{exemptions}"
    );

    // Still enforcing, and the counters read without the agent move with the traffic.
    assert_eq!(residential_v4(&lab), Outcome::TimedOut);
    let after: serde_json::Value =
        serde_json::from_str(&ok(read_stopped(&scratch, &["stats", "--json"]))).unwrap();
    let blocked = |stats: &serde_json::Value| -> u64 {
        stats["by_reason"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["reason"] == "blocked")
            .map(|r| r["packets"].as_u64().unwrap())
            .sum()
    };
    assert!(blocked(&after) > blocked(&stats), "{after:#}");

    // The program off every interface (its link unpinned), the maps still pinned: not
    // "enforcing".
    for link in std::fs::read_dir(scratch.pin_path.join("links")).unwrap() {
        std::fs::remove_file(link.unwrap().path()).unwrap();
    }
    let output = read_stopped(&scratch, &["status"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "agent not running; reading the pinned filter, which is attached to no interface: \
         nothing is filtered\n"
    );
    assert_eq!(
        residential_v4(&lab),
        Outcome::Connected,
        "the filter is off indeed"
    );

    // Nothing pinned either: the agent's absence is the error.
    ok(scratch.detach());
    let output = read_stopped(&scratch, &["status"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no agent is running"));
}
