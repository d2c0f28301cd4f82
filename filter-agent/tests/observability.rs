//! What a fleet's monitoring sees of real agents in labs (needs root; Debian's
//! `prometheus` and curl):
//! - a real Prometheus server scraping two agents in two router namespaces over TLS and
//!   basic auth (`--web-config`), after blocked SYNs on both: both targets up, and its
//!   `sum by (group)` equal to the sum of the two agents' own counters;
//! - curl against the metrics endpoint: 401 without or with wrong credentials, 200 with
//!   the right ones, the self-signed certificate verified; a bad web config stops the
//!   agent at start; the Grafana dashboard's every metric is one the live agent exports;
//! - `--log-format json`: every line an object, drop events with the fields of the
//!   key=value form.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use filter_testkit::{
    agent::{AgentProcess, Scratch},
    lab::{BUSINESS_BROADBAND, Customer, Lab, Ns, Outcome, REMOTE_V4, RESIDENTIAL, at},
    metrics_text::{exported_names, metric_names, recorded_names, sample},
    prometheus::{MonitoringNet, Prometheus},
};
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_filter-agent");
/// A blocked SYN is dropped: one SYN each (the first retransmission comes after 1 s).
const ATTEMPT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(10);
const METRICS_PORT: u16 = 9901;
const USER: &str = "prometheus";
const PASSWORD: &str = "scrape-secret";

fn packaging(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(path)
}

/// The lab policy with drop events on.
fn policy(lab: &Lab) -> String {
    lab.policy_yaml()
        .replace("ports: [25]\n", "ports: [25]\nevents:\n  per_second: 100\n")
}

/// A self-signed certificate for `names` (DNS names or IP addresses), its key, and a
/// web config with TLS and one basic auth user, all in `dir`; returns the config's path.
fn web_config(dir: &Path, names: &[String]) -> PathBuf {
    let certified = rcgen::generate_simple_self_signed(names.to_vec()).unwrap();
    std::fs::write(dir.join("metrics.crt"), certified.cert.pem()).unwrap();
    std::fs::write(
        dir.join("metrics.key"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let config = dir.join("web.yml");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: metrics.crt\n  key_file: metrics.key\n\
             basic_auth_users:\n  {USER}: '{hash}'\n"
        ),
    )
    .unwrap();
    config
}

/// curl in the lab's router namespace, the certificate checked against `ca`.
fn curl(lab: &Lab, ca: &Path, url: &str, credentials: Option<&str>) -> Output {
    let mut command = lab.command_in(Ns::Router, "curl");
    command
        .args(["--silent", "--show-error", "--max-time", "10"])
        .arg("--cacert")
        .arg(ca)
        .args(["--write-out", "\n%{http_code}"]);
    if let Some(credentials) = credentials {
        command.args(["--user", credentials]);
    }
    command
        .arg(url)
        .output()
        .expect("curl (apt-get install curl)")
}

/// The HTTP status and body curl got.
fn curl_status(lab: &Lab, ca: &Path, url: &str, credentials: Option<&str>) -> (u16, String) {
    let output = curl(lab, ca, url, credentials);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {url}: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_string())
}

fn blocked_syns(lab: &Lab, customer: Customer, n: usize) {
    for _ in 0..n {
        assert_eq!(
            lab.connect(customer.v4, at(REMOTE_V4, 25), ATTEMPT),
            Outcome::TimedOut
        );
    }
}

/// Waits until `done` holds, or panics with `what` and the last value seen.
fn eventually<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        if Instant::now() > deadline {
            panic!("{what} not within {timeout:?}; last: {value:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_two_routers_over_tls_with_basic_auth_and_sums_the_fleet() {
    let labs = [Lab::create().unwrap(), Lab::create().unwrap()];
    let net = MonitoringNet::create(
        &format!("observe{:05x}", std::process::id() & 0xfffff),
        &[&labs[0], &labs[1]],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addresses: Vec<String> = (0..2).map(|i| net.router_address(i).to_string()).collect();
    let config = web_config(dir.path(), &addresses);
    let ca = dir.path().join("metrics.crt");

    let mut agents: Vec<(Scratch, AgentProcess)> = Vec::new();
    for (i, lab) in labs.iter().enumerate() {
        let scratch = Scratch::new(lab, BINARY);
        scratch.write_policy(&policy(lab));
        let listen = format!("{}:{METRICS_PORT}", addresses[i]);
        let agent = scratch.start_agent(
            lab,
            &[
                "--metrics",
                &listen,
                "--web-config",
                config.to_str().unwrap(),
            ],
        );
        agents.push((scratch, agent));
    }
    // Different traffic per router: 3 + 1 blocked SYNs on the first, 5 + 2 on the second.
    for (lab, (residential, business)) in labs.iter().zip([(3, 1), (5, 2)]) {
        blocked_syns(lab, RESIDENTIAL, residential);
        blocked_syns(lab, BUSINESS_BROADBAND, business);
    }

    // Each agent's own counters, read with curl over TLS and basic auth.
    let credentials = format!("{USER}:{PASSWORD}");
    let mut expected = BTreeMap::<String, f64>::new();
    for (i, lab) in labs.iter().enumerate() {
        let url = format!("https://{}:{METRICS_PORT}/metrics", addresses[i]);
        let (status, body) = curl_status(lab, &ca, &url, Some(&credentials));
        assert_eq!(status, 200, "{body}");
        for (group, n) in [
            ("residential", [3.0, 5.0][i]),
            ("business-broadband", [1.0, 2.0][i]),
        ] {
            let count = sample(
                &body,
                "filter_agent_group_packets_total",
                &[("group", group), ("reason", "blocked")],
            );
            assert_eq!(count, n, "router {i}, {group}:\n{body}");
            *expected.entry(group.to_string()).or_default() += count;
        }
    }

    let targets: Vec<String> = addresses
        .iter()
        .map(|a| format!("'{a}:{METRICS_PORT}'"))
        .collect();
    std::fs::write(dir.path().join("password"), PASSWORD).unwrap();
    let prometheus = Prometheus::start(
        &net,
        dir.path(),
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{rules}']\n\
             scrape_configs:\n  - job_name: filter-agent\n    scheme: https\n\
             \x20   tls_config:\n      ca_file: {ca}\n\
             \x20   basic_auth:\n      username: {USER}\n      password_file: {password}\n\
             \x20   static_configs:\n      - targets: [{targets}]\n",
            rules = packaging("prometheus/filter-agent.rules.yml").display(),
            ca = ca.display(),
            password = dir.path().join("password").display(),
            targets = targets.join(", "),
        ),
    )
    .unwrap();

    let up = eventually(
        "both targets up",
        Duration::from_secs(30),
        || prometheus.query("up{job=\"filter-agent\"}").unwrap(),
        |up| up.len() == 2 && up.iter().all(|(_, v)| *v == 1.0),
    );
    let instances: BTreeSet<String> = up
        .iter()
        .map(|(labels, _)| labels["instance"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        instances,
        addresses
            .iter()
            .map(|a| format!("{a}:{METRICS_PORT}"))
            .collect::<BTreeSet<_>>()
    );
    let fleet = eventually(
        "the fleet's blocked attempts by group",
        Duration::from_secs(30),
        || {
            prometheus
                .query(
                    "sum by (group) (filter_agent_group_packets_total{job=\"filter-agent\",reason=\"blocked\"})",
                )
                .unwrap()
                .into_iter()
                .map(|(labels, v)| (labels["group"].as_str().unwrap().to_string(), v))
                .filter(|(_, v)| *v > 0.0)
                .collect::<BTreeMap<_, _>>()
        },
        |fleet| *fleet == expected,
    );
    eprintln!("fleet blocked attempts by group: {fleet:?} (expected {expected:?})");
    assert_eq!(fleet["residential"], 8.0);
    assert_eq!(fleet["business-broadband"], 3.0);
    // The rules file loaded into the real server, its recording rules evaluated.
    let (status, rules) = prometheus.get("/api/v1/rules").unwrap();
    assert_eq!(status, 200);
    assert!(
        rules.contains("filter_agent:blocked_attempts:rate5m")
            && rules.contains("FilterAgentDown")
            && !rules.contains("\"health\":\"err\""),
        "{rules}"
    );
    let versions = prometheus
        .query("count by (version) (filter_agent_build_info)")
        .unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(versions[0].1, 2.0);
    drop(agents);
}

#[test]
fn the_metrics_endpoint_wants_tls_and_basic_auth_and_the_dashboard_reads_what_it_serves() {
    let lab = Lab::create().unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&policy(&lab));
    let dir = tempfile::tempdir().unwrap();
    let config = web_config(dir.path(), &["localhost".to_string()]);
    let ca = dir.path().join("metrics.crt");
    let listen = format!("127.0.0.1:{METRICS_PORT}");

    // A bad web config: a clear error and exit 1 before anything is attached.
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "basic_auth_users:\n  prometheus: plaintext-password\n",
    )
    .unwrap();
    let mut agent = scratch.spawn_agent(
        &lab,
        &["--metrics", &listen, "--web-config", bad.to_str().unwrap()],
    );
    assert_eq!(agent.wait_exit(WAIT), Some(1));
    let log = agent.log().join("\n");
    assert!(
        log.contains(&format!("web config {}", bad.display())) && log.contains("not a bcrypt hash"),
        "{log}"
    );
    assert_eq!(lab.attached_program(lab.router_customer_if()), None);
    assert!(!scratch.pin_path.exists());

    let agent = scratch.start_agent(
        &lab,
        &[
            "--metrics",
            &listen,
            "--web-config",
            config.to_str().unwrap(),
        ],
    );
    agent.wait_for(
        "metrics on https://127.0.0.1:9901/metrics (basic auth)",
        WAIT,
    );
    blocked_syns(&lab, RESIDENTIAL, 1);
    let url = format!("https://localhost:{METRICS_PORT}/metrics");
    assert_eq!(curl_status(&lab, &ca, &url, None).0, 401);
    assert_eq!(
        curl_status(&lab, &ca, &url, Some(&format!("{USER}:wrong"))).0,
        401
    );
    assert_eq!(
        curl_status(&lab, &ca, &url, Some(&format!("nobody:{PASSWORD}"))).0,
        401
    );
    let (status, metrics) = curl_status(&lab, &ca, &url, Some(&format!("{USER}:{PASSWORD}")));
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains(&format!(
            "filter_agent_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "filter_agent_group_packets_total",
            &[("group", "residential"), ("reason", "blocked")]
        ),
        1.0
    );
    // The certificate is verified: against another CA, curl refuses (exit 60), and
    // plain HTTP gets no metrics.
    let other = tempfile::tempdir().unwrap();
    web_config(other.path(), &["localhost".to_string()]);
    let refused = curl(&lab, &other.path().join("metrics.crt"), &url, None);
    assert_eq!(refused.status.code(), Some(60), "{refused:?}");
    let plain = curl(
        &lab,
        &ca,
        &format!("http://localhost:{METRICS_PORT}/metrics"),
        None,
    );
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("filter_agent_"),
        "{plain:?}"
    );

    check_dashboard(&metrics);
}

/// The Grafana dashboard: valid JSON of a dashboard with a Prometheus datasource
/// variable and a router variable, and every panel query reading only metrics the live
/// agent exports (`metrics`) or recording rules of the rules file.
fn check_dashboard(metrics: &str) {
    let text = std::fs::read_to_string(packaging("grafana/filter-agent.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("instance")["type"], "query");

    let rules = std::fs::read_to_string(packaging("prometheus/filter-agent.rules.yml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_string)
        .collect();
    let exported = exported_names(metrics);

    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut queries = 0;
    let mut ids = BTreeSet::new();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids repeat"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            queries += 1;
            let names = metric_names(expr);
            let records = recorded_names(expr);
            assert!(!names.is_empty() || !records.is_empty(), "{title}: {expr}");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{title}: {name} is not exported by the agent"
                );
            }
            for name in records {
                assert!(
                    recorded.contains(&name),
                    "{title}: {name} is not a recording rule of filter-agent.rules.yml"
                );
            }
        }
    }
    assert!(queries >= 10, "{queries}");
}

/// The `key=value` pairs of a text log line from `event=` on (values without spaces).
fn key_values(line: &str) -> BTreeMap<String, Value> {
    let from = line.find("event=").expect("an event line");
    line[from..]
        .split(' ')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let value = match v.parse::<u64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::from(v),
            };
            (k.to_string(), value)
        })
        .collect()
}

#[test]
fn json_logs_carry_the_fields_of_the_key_value_lines() {
    let lab = Lab::create().unwrap();
    let scratch = Scratch::new(&lab, BINARY);
    scratch.write_policy(&policy(&lab));

    let mut agent = scratch.start_agent(&lab, &[]);
    blocked_syns(&lab, RESIDENTIAL, 1);
    agent.wait_for("event=drop", WAIT);
    let text_line = agent
        .log()
        .into_iter()
        .find(|l| l.contains("event=drop"))
        .unwrap();
    agent.stop(WAIT).unwrap();
    let text = key_values(&text_line);

    let mut agent = scratch.start_agent(&lab, &["--log-format", "json"]);
    blocked_syns(&lab, RESIDENTIAL, 1);
    agent.wait_for("\"event\":\"drop\"", WAIT);
    agent.stop(WAIT).unwrap();
    let lines = agent.log();
    assert!(lines.len() >= 4, "{lines:?}");
    let mut drops = Vec::new();
    for line in &lines {
        let object: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        let object = object.as_object().unwrap().clone();
        let ts = object["ts"].as_str().unwrap();
        humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts}: {e}"));
        assert!(
            ["error", "warn", "info", "debug", "trace"]
                .contains(&object["level"].as_str().unwrap()),
            "{line}"
        );
        if object.contains_key("event") {
            assert!(!object.contains_key("message"), "{line}");
            drops.push(object);
        } else {
            assert!(object["message"].is_string(), "{line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"enforcing after ")),
        "{lines:?}"
    );
    assert_eq!(drops.len(), 1, "{lines:?}");
    let mut drop = drops.pop().unwrap();
    assert_eq!(drop.remove("level").unwrap(), "info");
    drop.remove("ts");
    let json: BTreeMap<String, Value> = drop.into_iter().collect();
    assert_eq!(json["event"], "drop");
    assert_eq!(
        json.keys().collect::<Vec<_>>(),
        text.keys().collect::<Vec<_>>(),
        "{json:?}\n{text_line}"
    );
    for (key, value) in &json {
        // The second SYN has its own time and source port.
        if key != "time" && key != "sport" {
            assert_eq!(value, &text[key], "{key}");
        }
    }
    assert!(json["sport"].is_u64() && json["dport"] == 25, "{json:?}");
    assert_eq!(json["source"], RESIDENTIAL.v4.to_string());
    assert_eq!(json["reason"], "blocked");
    assert_eq!(json["group"], "residential");
}
