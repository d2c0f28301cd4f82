//! A fleet following one signed policy, in real namespaces with real TCP: one server
//! namespace serves the policy over HTTP to two agents in two labs' routers. A signed
//! change reaches both within the poll interval; a tampered file and a file signed with
//! another key are refused by both, counted in `filter_agent_policy_fetch_total`, with
//! the old policy still enforced; agents restarted while the server is down enforce the
//! cached policy, and one with neither cache nor server attaches nothing and exits 1.
//! Then https with a self-signed certificate (`--policy-ca`). Needs root.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use filter_testkit::{
    agent::{AgentProcess, Scratch, ok},
    lab::{self, BUSINESS_BROADBAND, Lab, Outcome, RESIDENTIAL, at},
    metrics_text,
    policy_server::{PolicyServer, Publisher, SelfSigned, ServerNs},
};

const BIN: &str = env!("CARGO_BIN_EXE_filter-agent");
const POLL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_millis(600);
/// The routers' customer-facing interface: one name in every router, as in a fleet
/// whose routers share one policy text.
const EDGE_IF: &str = "edge-source0";

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn publish(server: &PolicyServer, (text, sig): &(String, String)) {
    server.put(&[
        ("/edge.yaml", text.as_bytes()),
        ("/edge.yaml.sig", sig.as_bytes()),
    ]);
}

/// One router of the fleet: its lab, files, agent and metrics port.
struct Router {
    agent: Option<AgentProcess>,
    scratch: Scratch,
    lab: Lab,
    metrics: u16,
}

impl Router {
    fn new(metrics: u16) -> Router {
        let lab = Lab::create_with_router_if(EDGE_IF).unwrap();
        let scratch = Scratch::new(&lab, BIN);
        Router {
            agent: None,
            scratch,
            lab,
            metrics,
        }
    }

    fn spawn(&mut self, url: &str, key: &Path) -> &mut AgentProcess {
        let metrics = format!("127.0.0.1:{}", self.metrics);
        let agent = self.scratch.spawn_agent_from_url(
            &self.lab,
            url,
            key,
            &["--poll", "2s", "--metrics", &metrics],
        );
        self.agent.insert(agent)
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("the agent runs")
    }

    /// A real TCP/25 connection from `customer` to the remote MTA.
    fn smtp(&self, customer: lab::Customer) -> Outcome {
        self.lab
            .connect(customer.v4, at(lab::REMOTE_V4, 25), TIMEOUT)
    }

    fn fetches(&self, outcome: &str) -> f64 {
        let text = metrics_text::scrape(&self.lab, self.metrics);
        metrics_text::sample(
            &text,
            "filter_agent_policy_fetch_total",
            &[("outcome", outcome)],
        )
    }
}

/// Residential customers may send (the change the fleet rolls out).
fn residential_allowed(policy: &str) -> String {
    let block = "  - name: residential\n    smtp: block\n";
    assert!(policy.contains(block));
    policy.replace(block, "  - name: residential\n    smtp: allow\n")
}

#[test]
fn a_fleet_follows_one_signed_policy_and_refuses_what_is_not_signed() {
    let publisher = Publisher::new(BIN);
    let mut routers = [Router::new(19725), Router::new(19726)];
    let server_ns = ServerNs::create(
        &format!("{}-source", routers[0].lab.prefix()),
        &[&routers[0].lab, &routers[1].lab],
    )
    .unwrap();
    let server = PolicyServer::start(server_ns.listen().unwrap(), None).unwrap();
    let urls: Vec<String> = (0..2)
        .map(|i| server.url(ServerNs::server_addr(i), "/edge.yaml"))
        .collect();
    let _remote: Vec<_> = routers
        .iter()
        .map(|r| r.lab.listen(at(lab::REMOTE_V4, 25)).unwrap())
        .collect();

    // Generation 1: the lab policy (residential blocked), the same text for both.
    let v1_text = routers[0].lab.policy_yaml();
    assert_eq!(v1_text, routers[1].lab.policy_yaml());
    let v1 = publisher.sign(&v1_text, "fleet.key");
    publish(&server, &v1);
    for (router, url) in routers.iter_mut().zip(&urls) {
        let agent = router.spawn(url, &publisher.public());
        agent.wait_for("enforcing after", Duration::from_secs(30));
        agent.wait_for("policy fetch outcome=applied", Duration::from_secs(5));
    }
    for router in &routers {
        assert_eq!(router.smtp(RESIDENTIAL), Outcome::TimedOut);
        assert_eq!(router.smtp(BUSINESS_BROADBAND), Outcome::TimedOut);
    }

    // A signed change reaches both within the poll interval (plus the fetch itself).
    let v2 = publisher.sign(&residential_allowed(&v1_text), "fleet.key");
    let published = Instant::now();
    publish(&server, &v2);
    for router in &routers {
        router.agent().wait_for_nth(
            "policy fetch outcome=applied",
            2,
            POLL + Duration::from_secs(2),
        );
    }
    let reached = published.elapsed();
    assert!(reached <= POLL + Duration::from_secs(2), "{reached:?}");
    for router in &routers {
        assert_eq!(router.smtp(RESIDENTIAL), Outcome::Connected);
        assert_eq!(router.smtp(BUSINESS_BROADBAND), Outcome::TimedOut);
    }
    // Polls of an unchanged policy are answered 304.
    std::thread::sleep(POLL + Duration::from_millis(500));
    assert!(server.count("/edge.yaml", 304) >= 2, "{:?}", server.seen());
    for router in &routers {
        assert!(router.fetches("not-modified") >= 1.0);
        assert_eq!(router.fetches("applied"), 2.0);
        // `reload` fetches now and waits for the outcome.
        let out = ok(router.scratch.cli(&["reload"]));
        assert!(out.contains(": not-modified"), "{out}");
    }

    // Tampered: v1's text (residential blocked again) with v2's signature.
    publish(&server, &(v1.0.clone(), v2.1.clone()));
    for router in &routers {
        router.agent().wait_for(
            "policy fetch refused outcome=bad-signature",
            POLL + Duration::from_secs(2),
        );
    }
    for router in &routers {
        assert!(router.fetches("bad-signature") >= 1.0);
        assert_eq!(
            router.smtp(RESIDENTIAL),
            Outcome::Connected,
            "v2 still in force"
        );
        let status: serde_json::Value =
            serde_json::from_str(&ok(router.scratch.cli(&["status", "--json"]))).unwrap();
        let source = &status["source"];
        assert_eq!(source["kind"], "url");
        assert_eq!(source["last_fetch"]["outcome"], "bad-signature", "{source}");
        assert_eq!(
            source["etag"],
            filter_testkit::policy_server::etag_of(v2.0.as_bytes())
        );
        let text = ok(router.scratch.cli(&["status"]));
        assert!(text.contains("last fetch   bad-signature at"), "{text}");
    }

    // Signed, but with a key the routers do not trust.
    let wrong = publisher.sign(&v1_text, "other.key");
    publish(&server, &wrong);
    for router in &routers {
        router
            .agent()
            .wait_for("not with the trusted key", POLL + Duration::from_secs(2));
    }
    for router in &routers {
        assert!(router.fetches("bad-signature") >= 2.0);
        assert_eq!(router.fetches("applied"), 2.0);
        assert_eq!(
            router.smtp(RESIDENTIAL),
            Outcome::Connected,
            "v2 still in force"
        );
        let out = router.scratch.cli(&["reload"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("not with the trusted key"));
        // `apply` would be undone by the next fetch: refused, saying so.
        let out = router.scratch.cli(&[
            "apply",
            "--policy",
            path_str(&publisher.dir().join("edge.yaml")),
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--policy-url"),
            "{out:?}"
        );
    }

    // The server goes down; the agents stop and the filter is removed, so what the
    // restarted agents enforce is theirs alone: the cached v2.
    drop(server);
    for router in &mut routers {
        router
            .agent
            .take()
            .unwrap()
            .stop(Duration::from_secs(10))
            .unwrap();
        ok(router.scratch.detach());
        assert_eq!(
            router.smtp(BUSINESS_BROADBAND),
            Outcome::Connected,
            "unfiltered"
        );
    }
    for (router, url) in routers.iter_mut().zip(&urls) {
        let agent = router.spawn(url, &publisher.public());
        agent.wait_for("enforcing the cached policy", Duration::from_secs(30));
        agent.wait_for("enforcing after", Duration::from_secs(30));
        agent.wait_for(
            "policy fetch refused outcome=unreachable",
            Duration::from_secs(10),
        );
    }
    for router in &routers {
        assert_eq!(
            router.smtp(RESIDENTIAL),
            Outcome::Connected,
            "the cached v2"
        );
        assert_eq!(
            router.smtp(BUSINESS_BROADBAND),
            Outcome::TimedOut,
            "enforcing"
        );
    }

    // Neither a cache nor a server: nothing is attached, exit 1.
    let router = &mut routers[1];
    router
        .agent
        .take()
        .unwrap()
        .stop(Duration::from_secs(10))
        .unwrap();
    ok(router.scratch.detach());
    std::fs::remove_file(router.scratch.state_dir().join("fetched-policy.json")).unwrap();
    let agent = router.spawn(&urls[1], &publisher.public());
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(1));
    let log = agent.log().join("\n");
    assert!(
        log.contains("no usable cached policy") && log.contains("nothing attached"),
        "{log}"
    );
    assert_eq!(router.lab.attached_program(EDGE_IF), None);
}

#[test]
fn https_with_a_self_signed_certificate() {
    let publisher = Publisher::new(BIN);
    let router = Router::new(19727);
    // The server in the internet namespace, at the remote MTA's address.
    let cert = SelfSigned::for_ip(lab::REMOTE_V4).unwrap();
    let ca = publisher.dir().join("ca.pem");
    std::fs::write(&ca, &cert.cert_pem).unwrap();
    let listener = router
        .lab
        .in_netns(lab::Ns::Internet, || {
            std::net::TcpListener::bind((lab::REMOTE_V4, 0))
        })
        .unwrap()
        .unwrap();
    let server = PolicyServer::start(listener, Some(cert.config.clone())).unwrap();
    let url = server.url(lab::REMOTE_V4, "/edge.yaml");
    publish(
        &server,
        &publisher.sign(&router.lab.policy_yaml(), "fleet.key"),
    );
    let _remote = router.lab.listen(at(lab::REMOTE_V4, 25)).unwrap();

    // The system's CA bundle does not know the certificate: no policy, nothing attached.
    let mut agent =
        router
            .scratch
            .spawn_agent_from_url(&router.lab, &url, &publisher.public(), &[]);
    assert_eq!(agent.wait_exit(Duration::from_secs(30)), Some(1));
    assert!(
        agent.log().join("\n").contains("unreachable"),
        "{:?}",
        agent.log()
    );
    assert_eq!(router.lab.attached_program(EDGE_IF), None);

    // With it as --policy-ca: fetched over TLS and enforced.
    let agent = router.scratch.spawn_agent_from_url(
        &router.lab,
        &url,
        &publisher.public(),
        &["--policy-ca", path_str(&ca)],
    );
    agent.wait_for("enforcing after", Duration::from_secs(30));
    assert_eq!(router.smtp(RESIDENTIAL), Outcome::TimedOut);
    assert_eq!(router.smtp(lab::LEASED_LINE), Outcome::Connected);
    assert!(server.count("/edge.yaml", 200) >= 1);
}
