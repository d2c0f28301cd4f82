//! Subscribers, not addresses, against a real agent in a lab with real TCP: pppd's hooks
//! run exactly as pppd runs them, FreeRADIUS replicating accounting from radclient (the
//! BNG) to the agent, and bad RADIUS input. An exemption by name follows the subscriber's
//! sessions from address to address; a stranger who gets the old address is blocked.
//! Needs root, freeradius and freeradius-utils (`cargo xtask setup` installs them).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use filter_agent::subscribers::radius::{self, build::*, build_request};
use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    lab::{Lab, Ns, Outcome, RELAY_V4, REMOTE_V4, REMOTE_V6, at},
    metrics_text::{sample, scrape},
    radius::{BNG_SECRET, FreeRadius, answered, radclient},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
const CONNECT: Duration = Duration::from_millis(700);
/// Where the agent listens for accounting in the router namespace, and its secret.
const AGENT_RADIUS: &str = "127.0.0.1:1814";
const AGENT_SECRET: &str = "agent-lab-secret";

/// Residential addresses the BNG hands out (inside the lab policy's 100.64.0.0/10).
const FIRST: &str = "100.64.0.20";
const SECOND: &str = "100.64.0.21";
const ALICE_V6: &str = "2001:db8:1000:20::10";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The lab with FIRST, SECOND and ALICE_V6 as customer addresses, listeners on the remote
/// MTA and the relay, and an agent whose policy takes RADIUS accounting on AGENT_RADIUS.
fn start(lab: &Lab, extra: &[&str]) -> (Scratch, AgentProcess, Vec<filter_testkit::lab::Listener>) {
    for a in [FIRST, SECOND, ALICE_V6] {
        lab.add_customer_address(ip(a)).unwrap();
    }
    let listeners = vec![
        lab.listen(at(REMOTE_V4, 25)).unwrap(),
        lab.listen(at(REMOTE_V6, 25)).unwrap(),
        lab.listen(at(RELAY_V4, 25)).unwrap(),
    ];
    let scratch = Scratch::new(lab, BINARY);
    let secret = scratch.dir().join("radius.secret");
    // A trailing newline, as an editor leaves it: not part of the secret.
    std::fs::write(&secret, format!("{AGENT_SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    scratch.write_policy(&format!(
        "{}\nsubscribers:\n  radius_accounting:\n    listen: \"{AGENT_RADIUS}\"\n    clients:\n      - address: 127.0.0.1\n        secret_file: {}\n  session_timeout: 2h\n",
        lab.policy_yaml(),
        secret.display()
    ));
    let agent = scratch.start_agent(lab, extra);
    agent.wait_for(
        &format!("radius accounting on udp {AGENT_RADIUS}"),
        Duration::from_secs(10),
    );
    (scratch, agent, listeners)
}

fn smtp(lab: &Lab, from: &str) -> Outcome {
    let to = if ip(from).is_ipv4() {
        REMOTE_V4
    } else {
        REMOTE_V6
    };
    lab.connect(ip(from), at(to, 25), CONNECT)
}

fn relay(lab: &Lab, from: &str) -> Outcome {
    lab.connect(ip(from), at(RELAY_V4, 25), CONNECT)
}

fn json(output: Output) -> Value {
    serde_json::from_str(&ok(output)).unwrap()
}

/// (subscriber, addresses) of every session, as `sessions list --json` gives them.
fn sessions(scratch: &Scratch) -> Vec<(String, Vec<String>)> {
    json(scratch.cli(&["sessions", "list", "--json"]))["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let addresses = s["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            (s["subscriber"].as_str().unwrap().to_string(), addresses)
        })
        .collect()
}

fn hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/ppp")
        .join(name)
}

/// Runs packaging/ppp/NAME as pppd runs it: `NAME IFNAME TTY SPEED LOCAL REMOTE IPPARAM`
/// with pppd's environment (and nothing else but PATH and where the agent is).
fn run_hook(
    scratch: &Scratch,
    name: &str,
    peer: &str,
    ifname: &str,
    pid: u32,
    remote: &str,
    ipv6_prefix: Option<&str>,
) -> Output {
    let mut cmd = Command::new(hook(name));
    cmd.env_clear()
        .args([ifname, "/dev/pts/3", "115200", "100.64.255.254", remote, ""])
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("PEERNAME", peer)
        .env("IPREMOTE", remote)
        .env("IPLOCAL", "100.64.255.254")
        .env("IFNAME", ifname)
        .env("DEVICE", "/dev/pts/3")
        .env("SPEED", "115200")
        .env("PPPD_PID", pid.to_string())
        .env("LINKNAME", format!("ppp-{peer}"))
        .env("FILTER_AGENT", BINARY)
        .env("FILTER_AGENT_SOCKET", scratch.socket());
    if let Some(prefix) = ipv6_prefix {
        cmd.env("PPP_IPV6_PREFIX", prefix);
    }
    cmd.output().unwrap()
}

fn hook_ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status.code()
    );
    stderr
}

#[test]
fn an_exemption_by_name_follows_alice_through_pppd_hooks_and_a_restart() {
    let lab = Lab::create().unwrap();
    let (scratch, agent, _listeners) = start(&lab, &[]);

    // Alice dials in: blocked on :25 like every residential customer, the relay works.
    let said = hook_ok(run_hook(
        &scratch,
        "ip-up",
        "alice",
        "ppp0",
        4242,
        FIRST,
        Some("2001:db8:1000:20::/64"),
    ));
    assert!(
        said.contains("session up: alice (ppp0-4242) holds 100.64.0.20/32, 2001:db8:1000:20::/64"),
        "{said}"
    );
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);
    assert_eq!(smtp(&lab, ALICE_V6), Outcome::TimedOut);
    assert_eq!(relay(&lab, FIRST), Outcome::Connected);
    // The abuse desk sees her name: in the drop event, the offenders and explain.
    agent.wait_for("event=drop", Duration::from_secs(10));
    let event = agent
        .log()
        .into_iter()
        .find(|l| l.contains("event=drop") && l.contains("source=100.64.0.20 "))
        .unwrap();
    assert!(event.contains("subscriber=alice"), "{event}");
    let offenders = json(scratch.cli(&["offenders", "--json"]));
    let row = offenders["offenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["source"] == FIRST)
        .expect("alice offends");
    assert_eq!(row["subscriber"], "alice");
    let table = ok(scratch.cli(&["offenders"]));
    assert!(
        table.contains("SUBSCRIBER") && table.contains("alice"),
        "{table}"
    );
    let explained = ok(scratch.cli(&["explain", "--src", FIRST, "--dst", "203.0.113.9"]));
    assert!(
        explained.contains("subscriber=alice") && explained.contains("drop blocked"),
        "{explained}"
    );

    // Exempt by name: in force on both her addresses at once.
    let added = ok(scratch.cli(&[
        "exemptions",
        "add",
        "--subscriber",
        "alice",
        "--reason",
        "ticket 4711: own MTA",
        "--expires",
        "30d",
    ]));
    assert!(
        added.contains("subscriber alice") && added.contains("100.64.0.20/32"),
        "{added}"
    );
    assert_eq!(smtp(&lab, FIRST), Outcome::Connected);
    assert_eq!(smtp(&lab, ALICE_V6), Outcome::Connected);
    let list = json(scratch.cli(&["exemptions", "list", "--json"]));
    let entry = &list["subscribers"][0];
    assert_eq!(
        (entry["subscriber"].as_str(), entry["added_by"].as_str()),
        (Some("alice"), Some("root"))
    );
    assert_eq!(
        entry["addresses"],
        serde_json::json!(["100.64.0.20/32", "2001:db8:1000:20::/64"])
    );

    // She hangs up: the exemption leaves the kernel with the session.
    hook_ok(run_hook(
        &scratch, "ip-down", "alice", "ppp0", 4242, FIRST, None,
    ));
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);
    let list = json(scratch.cli(&["exemptions", "list", "--json"]));
    assert_eq!(list["subscribers"][0]["addresses"], serde_json::json!([]));
    assert!(ok(scratch.cli(&["exemptions", "list"])).contains("offline"));

    // She reconnects with another address: the exemption follows. Bob gets her old one
    // and is blocked.
    hook_ok(run_hook(
        &scratch, "ip-up", "alice", "ppp1", 4343, SECOND, None,
    ));
    hook_ok(run_hook(
        &scratch, "ip-up", "bob", "ppp2", 4444, FIRST, None,
    ));
    assert_eq!(smtp(&lab, SECOND), Outcome::Connected);
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);
    assert_eq!(relay(&lab, FIRST), Outcome::Connected);
    assert_eq!(
        sessions(&scratch),
        [
            ("alice".to_string(), vec!["100.64.0.21/32".to_string()]),
            ("bob".to_string(), vec!["100.64.0.20/32".to_string()])
        ]
    );

    // A restart (even kill -9) forgets nobody: sessions and the exemption are persisted.
    agent.kill9();
    let agent = scratch.start_agent(&lab, &[]);
    assert!(
        agent
            .log()
            .iter()
            .any(|l| l.contains("1 subscriber exemptions, 2 sessions")),
        "{}",
        agent.log().join("\n")
    );
    assert_eq!(sessions(&scratch).len(), 2);
    assert_eq!(smtp(&lab, SECOND), Outcome::Connected);
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);
    // After the restart she hangs up and the exemption is gone from the kernel.
    hook_ok(run_hook(
        &scratch, "ip-down", "alice", "ppp1", 4343, SECOND, None,
    ));
    assert_eq!(smtp(&lab, SECOND), Outcome::TimedOut);

    // What cannot be done says why, exit 1, and changes nothing.
    let refused = run_hook(&scratch, "ip-down", "carol", "ppp9", 1, SECOND, None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no session with session id ppp9-1"));
    for (args, why) in [
        (
            vec![
                "sessions",
                "up",
                "--subscriber",
                "x",
                "--address",
                "10.0.0.0/8",
            ],
            "wider than a session holds",
        ),
        (
            vec![
                "sessions",
                "up",
                "--subscriber",
                "x",
                "--address",
                "mail.example",
            ],
            "is not an IP address or prefix",
        ),
        (
            vec![
                "sessions",
                "up",
                "--subscriber",
                " ",
                "--address",
                "100.64.0.9",
            ],
            "subscriber name is empty",
        ),
        (
            vec![
                "exemptions",
                "add",
                "--subscriber",
                "alice",
                "--reason",
                "again",
            ],
            "already exempt",
        ),
        (
            vec!["exemptions", "remove", "--subscriber", "nobody"],
            "has no exemption",
        ),
    ] {
        let output = scratch.cli(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    // Erin's session claims bob's address before bob's ip-down came: the newest claim
    // wins, it is logged, and bob's session, left without an address, ends.
    ok(scratch.cli(&["sessions", "up", "--subscriber", "erin", "--address", FIRST]));
    agent.wait_for(
        "claimed by two sessions: the newest wins",
        Duration::from_secs(5),
    );
    assert_eq!(
        sessions(&scratch),
        [("erin".to_string(), vec!["100.64.0.20/32".to_string()])]
    );
    // A session outside every block group is accepted, and noted.
    let noted = ok(scratch.cli(&[
        "sessions",
        "up",
        "--subscriber",
        "dave",
        "--address",
        "198.51.100.130",
    ]));
    assert!(
        noted.contains("note:") && noted.contains("an exemption has nothing to do there"),
        "{noted}"
    );
    let removed = ok(scratch.cli(&["exemptions", "remove", "--subscriber", "alice"]));
    assert!(
        removed.contains("exemption removed: subscriber alice"),
        "{removed}"
    );
    let state =
        std::fs::read_to_string(scratch.state_dir().join("subscriber-exemptions.yaml")).unwrap();
    assert!(!state.contains("alice"), "{state}");
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}

/// radclient's attribute list for one accounting request of session `id`.
fn acct(status: &str, user: &str, id: &str, address: Option<&str>) -> String {
    let mut text = format!(
        "Acct-Status-Type = {status}, User-Name = \"{user}\", Acct-Session-Id = \"{id}\", NAS-IP-Address = 192.0.2.1"
    );
    if let Some(address) = address {
        text += &format!(", Framed-IP-Address = {address}");
    }
    text
}

#[test]
fn freeradius_replicates_the_bngs_accounting_and_the_exemption_follows_alice() {
    let lab = Lab::create().unwrap();
    let port = 19000 + (std::process::id() % 1000) as u16;
    let metrics = format!("127.0.0.1:{port}");
    let (scratch, agent, _listeners) = start(&lab, &["--metrics", &metrics]);
    let server = FreeRadius::start(
        &lab,
        &scratch.dir().join("freeradius"),
        "127.0.0.1:1813".parse().unwrap(),
        AGENT_RADIUS.parse().unwrap(),
        AGENT_SECRET,
    )
    .unwrap();
    let bng = |attributes: String| {
        let output = radclient(&lab, server.addr, BNG_SECRET, &attributes);
        assert!(
            answered(&output),
            "{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
    };
    // FreeRADIUS answers the BNG at once and replicates after: wait for the agent.
    let applied =
        |n: usize| agent.wait_for_nth("radius: from=127.0.0.1", n, Duration::from_secs(10));

    bng(acct("Start", "alice", "0001", Some(FIRST)));
    applied(1);
    assert_eq!(
        sessions(&scratch),
        [("alice".to_string(), vec!["100.64.0.20/32".to_string()])]
    );
    let listed = json(scratch.cli(&["sessions", "list", "--json"]));
    assert_eq!(
        (
            listed["sessions"][0]["feed"].as_str(),
            listed["sessions"][0]["nas"].as_str()
        ),
        (Some("radius"), Some("192.0.2.1"))
    );
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);
    assert_eq!(relay(&lab, FIRST), Outcome::Connected);

    ok(scratch.cli(&[
        "exemptions",
        "add",
        "--subscriber",
        "alice",
        "--reason",
        "ticket 4711",
    ]));
    assert_eq!(smtp(&lab, FIRST), Outcome::Connected);
    bng(acct("Interim-Update", "alice", "0001", Some(FIRST)));
    applied(2);
    assert_eq!(smtp(&lab, FIRST), Outcome::Connected);

    // Reconnect: Stop, then Start with another Framed-IP-Address; bob gets the old one.
    bng(acct("Stop", "alice", "0001", Some(FIRST)));
    applied(3);
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);
    bng(acct("Start", "alice", "0002", Some(SECOND)));
    bng(acct("Start", "bob", "0003", Some(FIRST)));
    applied(5);
    assert_eq!(smtp(&lab, SECOND), Outcome::Connected);
    assert_eq!(smtp(&lab, FIRST), Outcome::TimedOut);

    // The BNG reboots: Accounting-Off ends every session it had.
    bng("Acct-Status-Type = Accounting-Off, NAS-IP-Address = 192.0.2.1".to_string());
    applied(6);
    assert!(sessions(&scratch).is_empty());
    assert_eq!(smtp(&lab, SECOND), Outcome::TimedOut);
    agent.wait_for(
        "radius Accounting-Off from nas=192.0.2.1: 2 sessions ended",
        Duration::from_secs(5),
    );

    let body = scrape(&lab, port);
    assert_eq!(
        sample(
            &body,
            "filter_agent_radius_requests_total",
            &[("outcome", "applied")]
        ),
        6.0
    );
    assert_eq!(sample(&body, "filter_agent_sessions", &[]), 0.0);
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}

/// Sends `datagrams` to the agent one after the other from one socket on `from` in the
/// router namespace, as a BNG retransmits; the answer to each, if one comes within half a
/// second.
fn send_each(lab: &Lab, from: &str, datagrams: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    lab.in_netns(Ns::Router, || {
        let socket = UdpSocket::bind((ip(from), 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        datagrams
            .iter()
            .map(|datagram| {
                socket
                    .send_to(datagram, AGENT_RADIUS.parse::<SocketAddr>().unwrap())
                    .unwrap();
                let mut buffer = [0u8; 4096];
                socket.recv(&mut buffer).ok().map(|n| buffer[..n].to_vec())
            })
            .collect()
    })
    .unwrap()
}

fn send(lab: &Lab, from: &str, datagram: &[u8]) -> Option<Vec<u8>> {
    send_each(lab, from, &[datagram]).remove(0)
}

#[test]
fn bad_accounting_is_dropped_and_counted_and_never_applied() {
    let lab = Lab::create().unwrap();
    let port = 19000 + (std::process::id() % 1000) as u16 + 500;
    let metrics = format!("127.0.0.1:{port}");
    let (scratch, agent, _listeners) = start(&lab, &["--metrics", &metrics]);
    let agent_addr: SocketAddr = AGENT_RADIUS.parse().unwrap();
    let start_of = |user: &str, address: [u8; 4], id: u8, secret: &str| {
        build_request(
            id,
            &[
                status(1),
                user_name(user),
                session_id(&format!("s{id}")),
                framed_ip(address.into()),
            ],
            secret.as_bytes(),
        )
    };

    // radclient straight to the agent: the right secret is answered, a wrong one is not.
    let good = radclient(
        &lab,
        agent_addr,
        AGENT_SECRET,
        &acct("Start", "alice", "r1", Some(FIRST)),
    );
    assert!(answered(&good), "{}", String::from_utf8_lossy(&good.stdout));
    let wrong = radclient(
        &lab,
        agent_addr,
        "not-the-secret",
        &acct("Start", "mallory", "r2", Some(SECOND)),
    );
    assert!(!answered(&wrong));

    // A retransmission (same identifier and authenticator) is answered again, the same
    // answer, and applied once.
    let request = start_of("bob", [100, 64, 0, 21], 7, AGENT_SECRET);
    let answers = send_each(&lab, "127.0.0.1", &[&request, &request]);
    let first = answers[0].clone().expect("answered");
    assert_eq!(first[0], radius::ACCOUNTING_RESPONSE);
    assert_eq!(answers[1].as_deref(), Some(&first[..]));
    // The answer can arrive before the agent's log line has been read from its stderr.
    agent.wait_for_nth(
        "session up session=radius:127.0.0.1:s7",
        1,
        Duration::from_secs(10),
    );
    assert_eq!(
        agent.count("session up session=radius:127.0.0.1:s7"),
        1,
        "{}",
        agent.log().join("\n")
    );

    // Dropped, never answered, never applied: an unknown client, truncated, malformed,
    // not accounting, a flipped bit, an attribute out of range.
    let mallory = start_of("mallory", [100, 64, 0, 22], 8, AGENT_SECRET);
    assert_eq!(send(&lab, "127.0.0.2", &mallory), None);
    assert_eq!(send(&lab, "127.0.0.1", &mallory[..mallory.len() - 3]), None);
    let mut bad = mallory.clone();
    bad[21] = 250;
    assert_eq!(send(&lab, "127.0.0.1", &bad), None);
    let mut bad = mallory.clone();
    bad[0] = 1;
    assert_eq!(send(&lab, "127.0.0.1", &bad), None);
    let mut bad = mallory.clone();
    *bad.last_mut().unwrap() ^= 0x10;
    assert_eq!(send(&lab, "127.0.0.1", &bad), None);
    let out_of_range = build_request(
        9,
        &[
            status(1),
            user_name("mallory"),
            session_id("s9"),
            (8, vec![100, 64, 0]),
        ],
        AGENT_SECRET.as_bytes(),
    );
    assert_eq!(send(&lab, "127.0.0.1", &out_of_range), None);
    let wide = build_request(
        10,
        &[
            status(1),
            user_name("mallory"),
            session_id("s10"),
            ipv6_prefix(DELEGATED_IPV6_PREFIX, "2001:db8::/16".parse().unwrap()),
        ],
        AGENT_SECRET.as_bytes(),
    );
    assert_eq!(send(&lab, "127.0.0.1", &wide), None);
    for _ in 0..5 {
        send(&lab, "127.0.0.1", &[0u8; 3]);
    }

    let names: Vec<String> = sessions(&scratch)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let body = scrape(&lab, port);
    let count = |outcome| {
        sample(
            &body,
            "filter_agent_radius_requests_total",
            &[("outcome", outcome)],
        )
    };
    let radius_log: Vec<String> = agent
        .log()
        .into_iter()
        .filter(|l| l.contains("radius"))
        .collect();
    assert_eq!(count("applied"), 2.0, "{}", radius_log.join("\n"));
    assert_eq!(count("duplicate"), 1.0);
    assert_eq!(count("unknown-client"), 1.0);
    assert_eq!(count("truncated"), 6.0);
    assert_eq!(count("malformed"), 1.0);
    assert_eq!(count("unsupported"), 1.0);
    assert_eq!(count("bad-authenticator"), 2.0);
    assert_eq!(count("invalid"), 2.0);
    // Still enforcing and answering.
    assert_eq!(smtp(&lab, SECOND), Outcome::TimedOut);
    let later = start_of("carol", [100, 64, 0, 22], 11, AGENT_SECRET);
    assert!(send(&lab, "127.0.0.1", &later).is_some());
    assert!(
        agent
            .log()
            .iter()
            .any(|l| l.contains("outcome=bad-authenticator")),
        "{}",
        agent.log().join("\n")
    );
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}
