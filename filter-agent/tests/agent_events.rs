//! Offender tracking and sampled drop events against a real agent in a lab: the kernel's
//! offender records as `filter-agent offenders` lists them, one alert log line per source
//! crossing the threshold, drop events as structured log lines, the kernel's event rate
//! limit, and the counters and metrics of all of it. Needs root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant, SystemTime},
};

use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    lab::{LEASED_LINE, Lab, Ns, Outcome, RELAY_V4, REMOTE_V4, REMOTE_V6, RESIDENTIAL, at},
    metrics_text::{sample, scrape},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");

/// A blocked SYN is dropped, so every attempt times out; one SYN each (the first
/// retransmission would come after a second).
const ATTEMPT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);

/// The lab policy with `extra` top-level keys after the port list.
fn policy(lab: &Lab, extra: &str) -> String {
    let text = lab.policy_yaml();
    let anchor = "ports: [25]\n";
    let at = text.find(anchor).expect("the lab policy lists its ports") + anchor.len();
    format!("{}{extra}{}", &text[..at], &text[at..])
}

fn start(lab: &Lab, extra_policy: &str, args: &[&str]) -> (Scratch, AgentProcess) {
    let scratch = Scratch::new(lab, BINARY);
    scratch.write_policy(&policy(lab, extra_policy));
    let agent = scratch.start_agent(lab, args);
    (scratch, agent)
}

fn json(output: std::process::Output) -> Value {
    let text = ok(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The `key=value` pairs of a log line from `event=` on.
fn fields(line: &str) -> BTreeMap<String, String> {
    let from = line.find("event=").expect("an event line");
    line[from..]
        .split(' ')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn event_lines(agent: &AgentProcess, kind: &str) -> Vec<BTreeMap<String, String>> {
    let needle = format!("event={kind} ");
    agent
        .log()
        .iter()
        .filter(|l| l.contains(&needle))
        .map(|l| fields(l))
        .collect()
}

/// Allowed connections (no offence, no drop event) in both families, which also settle
/// the customers' ARP and neighbour entries before the counted attempts.
fn warm_up(lab: &Lab) {
    for (from, to) in [(LEASED_LINE.v4, REMOTE_V4), (LEASED_LINE.v6, REMOTE_V6)] {
        for _ in 0..2 {
            assert_eq!(
                lab.connect(from, at(to, 25), Duration::from_secs(2)),
                Outcome::Connected
            );
        }
    }
}

fn offender<'a>(list: &'a Value, source: &str) -> Option<&'a Value> {
    list["offenders"]
        .as_array()
        .expect("an offenders array")
        .iter()
        .find(|o| o["source"] == source)
}

#[test]
fn a_repeat_offender_is_logged_once_listed_and_counted() {
    let lab = Lab::create().unwrap();
    let _listener = lab.listen(at(REMOTE_V4, 25)).unwrap();
    let _listener_v6 = lab.listen(at(REMOTE_V6, 25)).unwrap();
    let port = 19000 + (std::process::id() % 1000) as u16 + 500;
    let metrics_addr = format!("127.0.0.1:{port}");
    let _relay = lab.listen(at(RELAY_V4, 25)).unwrap();
    let (scratch, agent) = start(
        &lab,
        "relay_limit:\n  syn_per_minute: 1\n  burst: 1\n\
         offenders:\n  alert_after: 3\n  window: 1m\n\
         events:\n  per_second: 100\n",
        &["--metrics", &metrics_addr, "--socket-group", "nogroup"],
    );
    warm_up(&lab);
    // A second address in the residential customer's /64: counted with the first.
    let second_v6 = "2001:db8:1000::11";
    let added = lab
        .command_in(Ns::Customers, "ip")
        .args(["addr", "add", &format!("{second_v6}/128"), "dev"])
        .arg(lab.customer_if())
        .arg("nodad")
        .status()
        .unwrap();
    assert!(added.success());

    let started = SystemTime::now();
    // Four blocked attempts to three destinations (none of them needs to exist: the
    // SYNs never get past the filter).
    let destinations: [IpAddr; 4] = [
        REMOTE_V4,
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 77)),
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 78)),
        REMOTE_V4,
    ];
    for destination in destinations {
        assert_eq!(
            lab.connect(RESIDENTIAL.v4, at(destination, 25), ATTEMPT),
            Outcome::TimedOut
        );
    }
    for source in [RESIDENTIAL.v6, second_v6.parse().unwrap()] {
        assert_eq!(
            lab.connect(source, at(REMOTE_V6, 25), ATTEMPT),
            Outcome::TimedOut
        );
    }

    agent.wait_for("event=offender", WAIT);
    agent.wait_for_nth("event=drop", 6, WAIT);

    // One drop event per blocked SYN, each a complete key=value line.
    let interface = lab.router_customer_if();
    let drops = event_lines(&agent, "drop");
    assert_eq!(drops.len(), 6, "{}", agent.log().join("\n"));
    for (drop, destination) in drops.iter().zip(destinations) {
        let time = humantime::parse_rfc3339(&drop["time"]).expect("RFC 3339 time");
        // The kernel stamps events at tick resolution and the log truncates to
        // milliseconds: up to a tick (at most 10 ms) before `started`.
        let since = match time.duration_since(started) {
            Ok(after) => after,
            Err(before) => {
                assert!(before.duration() <= Duration::from_millis(10), "{drop:?}");
                Duration::ZERO
            }
        };
        assert!(since < Duration::from_secs(30), "{drop:?}");
        assert!(
            drop["time"].ends_with('Z') && drop["time"].contains('.'),
            "{drop:?}"
        );
        let sport: u16 = drop["sport"].parse().unwrap();
        assert_ne!(sport, 0);
        let mut expected = BTreeMap::from([
            ("event", "drop"),
            ("interface", interface),
            ("family", "ipv4"),
            ("source", "100.64.0.10"),
            ("dport", "25"),
            ("verdict", "drop"),
            ("reason", "blocked"),
            ("group", "residential"),
            ("flags", "SYN"),
        ])
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>();
        expected.insert("destination".into(), destination.to_string());
        expected.insert("time".into(), drop["time"].clone());
        expected.insert("sport".into(), drop["sport"].clone());
        assert_eq!(drop, &expected);
    }
    assert_eq!(drops[4]["family"], "ipv6");
    assert_eq!(drops[4]["source"], "2001:db8:1000::10");
    assert_eq!(drops[5]["source"], second_v6);
    assert_eq!(drops[5]["destination"], "2001:db8:ffff::9");

    // Exactly one alert: the third attempt reached the threshold, the fourth did not
    // raise another.
    let alerts = event_lines(&agent, "offender");
    assert_eq!(alerts.len(), 1, "{}", agent.log().join("\n"));
    let expected: BTreeMap<String, String> = [
        ("event", "offender"),
        ("source", "100.64.0.10"),
        ("group", "residential"),
        ("attempts", "3"),
        ("window", "1m"),
        ("threshold", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(alerts[0], expected);
    assert_eq!(agent.count("WARN  event=offender"), 1);

    let list = json(scratch.cli(&["offenders", "--json"]));
    let v4 = offender(&list, "100.64.0.10").unwrap_or_else(|| panic!("not listed: {list:#}"));
    assert_eq!(v4["family"], "ipv4");
    assert_eq!(v4["group"], "residential");
    assert_eq!(v4["attempts"], 4);
    assert_eq!(v4["in_window"], 4);
    assert_eq!(v4["over_threshold"], true);
    assert_eq!(v4["last_destination"], "203.0.113.9:25");
    assert_eq!(v4["destinations_saturated"], false);
    // Three destinations, which the kernel's hash puts on three different bits of the
    // sketch (were two to share one, the estimate would say 2).
    assert_eq!(v4["destinations"], 3, "{v4:#}");
    for seen in ["first_seen", "last_seen"] {
        let time = humantime::parse_rfc3339(v4[seen].as_str().unwrap()).unwrap();
        let skew = match time.duration_since(started) {
            Ok(after) => after,
            // RFC 3339 seconds: up to a second before `started`.
            Err(before) => before.duration(),
        };
        assert!(skew < Duration::from_secs(30), "{seen}: {v4:#}");
    }
    let v6 = offender(&list, "2001:db8:1000::/64").unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(v6["attempts"], 2, "both addresses count under the /64");
    assert_eq!(v6["over_threshold"], false);
    assert_eq!(v6["destinations"], 1);
    assert_eq!(v6["last_destination"], "[2001:db8:ffff::9]:25");
    // The busiest window first; nobody else.
    assert_eq!(list["offenders"][0]["source"], "100.64.0.10");
    assert_eq!(list["offenders"].as_array().unwrap().len(), 2, "{list:#}");
    assert!(offender(&list, "198.51.100.130").is_none());
    assert_eq!(list["sources"], 2);
    assert_eq!(list["over_threshold"], 1);
    assert_eq!(list["alert_after"], 3);
    assert_eq!(list["window"], "1m");

    let top = json(scratch.cli(&["offenders", "--top", "1", "--json"]));
    assert_eq!(top["offenders"].as_array().unwrap().len(), 1);
    assert_eq!(top["sources"], 2);
    let table = ok(scratch.cli(&["offenders"]));
    let row = table
        .lines()
        .find(|l| l.starts_with("100.64.0.10 "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("residential") && row.contains("203.0.113.9:25") && row.ends_with("yes"),
        "{table}"
    );
    assert!(
        table.contains("OVER THRESHOLD") && table.contains("estimate"),
        "{table}"
    );
    let refused = scratch.cli(&["offenders", "--top", "0"]);
    assert_eq!(refused.status.code(), Some(2));

    // Readable by the socket's group, like the other read commands.
    let mut perms = std::fs::metadata(scratch.dir()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(scratch.dir(), perms).unwrap();
    let read = scratch.cli_as_nobody(&["offenders", "--json"]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );

    let metrics = scrape(&lab, port);
    assert_eq!(
        sample(&metrics, "filter_agent_offenders_over_threshold", &[]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "filter_agent_offender_alerts_total", &[]),
        1.0
    );
    let sent = sample(
        &metrics,
        "filter_agent_events_total",
        &[("outcome", "sent")],
    );
    assert!(sent >= 6.0, "six drops: {metrics}");
    assert_eq!(
        sample(
            &metrics,
            "filter_agent_events_total",
            &[("outcome", "lost")]
        ),
        0.0
    );
    assert_eq!(sample(&metrics, "filter_agent_resets_sent_total", &[]), 0.0);
    assert!(metrics.contains("# TYPE filter_agent_events counter"));

    let status = json(scratch.cli(&["status", "--json"]));
    assert_eq!(status["policy"]["action"], "drop");
    assert_eq!(status["policy"]["offenders"]["alert_after"], 3);
    assert_eq!(status["policy"]["offenders"]["window"], "1m");
    assert_eq!(status["policy"]["events"]["per_second"], 100);
    let counters = &status["counters"];
    assert_eq!(counters["offenders_over_threshold"], 1);
    assert_eq!(counters["offender_alerts"], 1);
    assert_eq!(counters["blocked"], 6);
    assert_eq!(counters["rate_limited"], 0);
    assert!(counters["events_sent"].as_u64().unwrap() >= 6, "{status:#}");
    let map = status["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "OFFENDERS")
        .expect("OFFENDERS in status");
    assert_eq!(map["entries"], 2);
    let text = ok(scratch.cli(&["status"]));
    assert!(
        text.contains("offender alert after 3 attempts in 1m")
            && text.contains("drop events 100/s")
            && text.contains("1 sources over threshold now"),
        "{text}"
    );
    let stats = json(scratch.cli(&["stats", "--json"]));
    assert_eq!(stats["offenders_over_threshold"], 1);
    assert_eq!(stats["actions"]["offender_alerts"], 1);
    let table = ok(scratch.cli(&["stats"]));
    assert!(table.contains("events-suppressed"), "{table}");

    // The relay limit: the first SYN to the relay passes, the second within the minute is
    // dropped as rate-limited, with its drop event, counter and metric.
    assert_eq!(
        lab.connect(RESIDENTIAL.v4, at(RELAY_V4, 25), Duration::from_secs(2)),
        Outcome::Connected
    );
    assert_eq!(
        lab.connect(RESIDENTIAL.v4, at(RELAY_V4, 25), ATTEMPT),
        Outcome::TimedOut
    );
    agent.wait_for_nth("event=drop", 7, WAIT);
    let limited = event_lines(&agent, "drop").pop().unwrap();
    assert_eq!(
        (
            limited["destination"].as_str(),
            limited["reason"].as_str(),
            limited["verdict"].as_str()
        ),
        ("203.0.113.25", "rate-limited", "drop"),
        "{limited:?}"
    );
    let status = json(scratch.cli(&["status", "--json"]));
    assert_eq!(status["counters"]["rate_limited"], 1);
    assert_eq!(status["policy"]["relay_limit"]["syn_per_minute"], 1);
    assert_eq!(status["policy"]["relay_limit"]["burst"], 1);
    let metrics = scrape(&lab, port);
    assert_eq!(
        sample(
            &metrics,
            "filter_agent_packets_total",
            &[("interface", interface), ("reason", "rate-limited")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "filter_agent_group_packets_total",
            &[("group", "residential"), ("reason", "rate-limited")]
        ),
        1.0
    );
    let text = ok(scratch.cli(&["status"]));
    assert!(
        text.contains("relay limit 1 SYN/min per source (burst 1)")
            && text.contains("1 rate-limited"),
        "{text}"
    );
    // Not a blocked attempt: the offender record did not move.
    let list = json(scratch.cli(&["offenders", "--json"]));
    assert_eq!(offender(&list, "100.64.0.10").unwrap()["attempts"], 4);

    // A restarted agent knows who is over the threshold from the kernel's records.
    drop(agent);
    let agent = scratch.start_agent(&lab, &["--metrics", &metrics_addr]);
    let status = json(scratch.cli(&["status", "--json"]));
    assert_eq!(status["counters"]["offenders_over_threshold"], 1);
    assert_eq!(event_lines(&agent, "offender").len(), 0);
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}

/// `count` SYNs to `to` from `from` as fast as the kernel sends them: non-blocking
/// connects, closed before any retransmission.
fn syn_burst(lab: &Lab, from: IpAddr, to: SocketAddr, count: usize) {
    use socket2::{Domain, Socket, Type};
    lab.in_netns(Ns::Customers, || {
        let sockets: Vec<Socket> = (0..count)
            .map(|_| {
                let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
                socket.set_nonblocking(true).unwrap();
                socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
                match socket.connect(&to.into()) {
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    other => panic!("non-blocking connect: {other:?}"),
                }
                socket
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(sockets);
    })
    .unwrap();
}

#[test]
fn drop_events_are_rate_limited_in_the_kernel() {
    let lab = Lab::create().unwrap();
    let _listeners = [
        lab.listen(at(REMOTE_V4, 25)).unwrap(),
        lab.listen(at(REMOTE_V6, 25)).unwrap(),
    ];
    // `reject`, so that resets are counted too (and no SYN is retransmitted).
    let policy_text = "events:\n  per_second: 2\n";
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&policy(&lab, policy_text).replace("action: drop", "action: reject"));
    let agent = scratch.start_agent(&lab, &[]);
    warm_up(&lab);
    let status = json(scratch.cli(&["status", "--json"]));
    assert_eq!(status["policy"]["action"], "reject");
    let rate = &status["policy"]["events"];
    assert_eq!(rate["per_second"], 2, "{status:#}");
    let burst = rate["burst"].as_u64().unwrap();
    assert_eq!(status["policy"]["offenders"], Value::Null);
    let before = json(scratch.cli(&["stats", "--json"]));

    let started = Instant::now();
    syn_burst(&lab, RESIDENTIAL.v4, at(REMOTE_V4, 25), 50);
    let elapsed = started.elapsed();
    // Whatever the kernel let through has reached the log by now.
    agent.wait_for("event=drop", WAIT);
    std::thread::sleep(Duration::from_secs(1));

    let logged = event_lines(&agent, "drop").len() as u64;
    let allowed = burst + (2.0 * elapsed.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        (1..=allowed).contains(&logged),
        "{logged} drop events logged for 50 SYNs in {elapsed:?} at 2/s, burst {burst}"
    );
    assert!(logged < 50);
    let after = json(scratch.cli(&["stats", "--json"]));
    let moved = |key: &str| {
        after["actions"][key].as_u64().unwrap() - before["actions"][key].as_u64().unwrap()
    };
    assert_eq!(moved("events_sent"), logged, "{after:#}");
    assert_eq!(moved("events_lost"), 0);
    assert_eq!(moved("resets_sent"), 50, "every SYN was answered");
    assert_eq!(moved("offender_alerts"), 0);
    assert_eq!(
        moved("events_suppressed"),
        50 - logged,
        "every SYN was blocked and either sampled or suppressed"
    );
    let blocked: u64 = after["by_reason"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "blocked")
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(blocked, 50);
    for line in event_lines(&agent, "drop") {
        assert_eq!(
            (line["verdict"].as_str(), line["reason"].as_str()),
            ("reject", "blocked"),
            "{line:?}"
        );
    }
    assert_eq!(event_lines(&agent, "offender").len(), 0, "alerts are off");
    let text = ok(scratch.cli(&["stats"]));
    assert!(text.contains("resets-sent           50"), "{text}");
    let list = json(scratch.cli(&["offenders", "--json"]));
    let record = offender(&list, "100.64.0.10").unwrap_or_else(|| panic!("{list:#}"));
    assert_eq!(record["attempts"], 50);
    assert_eq!(
        record["in_window"], 50,
        "without `offenders` one window spans all time"
    );
    assert_eq!(record["over_threshold"], false);
    assert_eq!(agent.count("ERROR"), 0, "{}", agent.log().join("\n"));
}
