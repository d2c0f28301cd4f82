use std::path::Path;

use filter_common::{Action, GroupMode, MAX_GROUPS, Smtp, SourceRule};
use ipnet::IpNet;

use super::*;

const FILE: &str = "policies/test.yaml";

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn diagnostics(source: &str) -> Vec<Diagnostic> {
    match parse(source, FILE) {
        Ok(loaded) => panic!("expected errors, got {loaded:?}"),
        Err(errors) => errors.0,
    }
}

/// The single diagnostic of a policy that must fail with exactly one.
fn one_error(source: &str) -> Diagnostic {
    let found = diagnostics(source);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].severity, Severity::Error);
    found.into_iter().next().unwrap()
}

fn at(d: &Diagnostic) -> (usize, usize) {
    (d.line.unwrap(), d.column.unwrap())
}

/// A policy with one group whose prefix list is `prefixes` (a flow list), on line 5.
fn with_prefixes(prefixes: &str) -> String {
    format!("version: 1\ngroups:\n  - name: a\n    smtp: block\n    prefixes: [{prefixes}]\n")
}

/// A policy whose port list is `ports`, on line 2 from column 9.
fn with_ports(ports: &str) -> String {
    format!("version: 1\nports: [{ports}]\n")
}

#[test]
fn minimal_policy_takes_defaults() {
    let loaded = parse("version: 1\n", FILE).unwrap();
    assert!(loaded.warnings.is_empty());
    let policy = loaded.policy;
    assert_eq!(policy.version, 1);
    assert_eq!(policy.mode, Mode::Enforce);
    assert_eq!(policy.action, Action::Drop);
    assert_eq!(policy.ports, vec![25]);
    assert!(policy.groups.is_empty() && policy.relays.is_empty());
    assert!(policy.interfaces.is_empty());
}

#[test]
fn yaml_syntax_error_is_one_error_with_the_parser_location() {
    let d = one_error("version: 1\nmode: enforce\n  action: drop\n");
    assert!(d.message.starts_with("invalid YAML: "), "{}", d.message);
    assert_eq!(at(&d), (3, 9));
}

#[test]
fn empty_file_is_an_error() {
    let d = one_error("# nothing yet\n");
    assert_eq!(d.message, "the policy file is empty");
    assert_eq!((d.line, d.column), (None, None));
    assert_eq!(
        d.to_string(),
        format!("{FILE}: error: the policy file is empty\n  hint: start it with `version: 1`")
    );
}

#[test]
fn second_document_is_an_error() {
    let d = one_error("version: 1\n---\nversion: 1\n");
    assert_eq!(d.message, "a policy file holds one YAML document");
    assert_eq!(at(&d), (3, 1));
}

#[test]
fn top_level_must_be_a_mapping() {
    let d = one_error("- version: 1\n");
    assert_eq!(d.message, "expected a mapping for the policy, found a list");
    assert_eq!(at(&d), (1, 1));
}

#[test]
fn unparseable_prefix() {
    let d = one_error(&with_prefixes("10.0.0.0/8, bogus"));
    assert_eq!(d.message, "prefix \"bogus\" is not an IP address or prefix");
    assert_eq!(at(&d), (5, 28));
    assert_eq!(
        d.hint.as_deref(),
        Some("write ADDRESS/LENGTH, e.g. 192.0.2.0/24 or 2001:db8::/32")
    );
}

#[test]
fn prefix_length_out_of_range() {
    let found = diagnostics(&with_prefixes(
        "10.0.0.0/33, \"2001:db8::/129\", 10.0.0.0/x",
    ));
    let messages: Vec<_> = found.iter().map(|d| (at(d), d.message.as_str())).collect();
    assert_eq!(
        messages,
        [
            ((5, 16), "prefix \"10.0.0.0/33\" has an invalid length"),
            ((5, 29), "prefix \"2001:db8::/129\" has an invalid length"),
            ((5, 47), "prefix \"10.0.0.0/x\" has an invalid length"),
        ]
    );
    assert_eq!(
        found[1].hint.as_deref(),
        Some("an IPv6 prefix length is 0 to 128")
    );
}

#[test]
fn prefix_with_host_bits_names_the_network() {
    let d = one_error(&with_prefixes("10.0.0.1/8"));
    assert_eq!(at(&d), (5, 16));
    assert_eq!(
        d.to_string(),
        "policies/test.yaml:5:16: error: prefix 10.0.0.1/8 has host bits set\n  hint: did you mean 10.0.0.0/8?"
    );
    let d = one_error(&with_prefixes("\"2001:db8::1/64\""));
    assert_eq!(d.hint.as_deref(), Some("did you mean 2001:db8::/64?"));
}

#[test]
fn bare_address_is_a_host_prefix() {
    let policy = parse(&with_prefixes("192.0.2.1, \"2001:db8::1\""), FILE)
        .unwrap()
        .policy;
    assert_eq!(
        policy.groups[0].prefixes,
        [net("192.0.2.1/32"), net("2001:db8::1/128")]
    );
}

#[test]
fn prefix_listed_twice_in_one_group() {
    // A bare address and its /32 are the same prefix.
    let d = one_error(&with_prefixes("192.0.2.1, 192.0.2.1/32"));
    assert_eq!(
        d.message,
        "prefix 192.0.2.1/32 is listed twice in group \"a\" (first on line 5)"
    );
    assert_eq!(at(&d), (5, 27));
}

#[test]
fn prefix_listed_in_two_groups() {
    let source = "version: 1
groups:
  - name: residential
    smtp: block
    prefixes:
      - 100.64.0.0/10
  - name: business
    smtp: allow
    prefixes:
      - 100.64.0.0/10
";
    let d = one_error(source);
    assert_eq!(
        d.message,
        "prefix 100.64.0.0/10 is listed in group \"residential\" (line 6) and again in group \"business\""
    );
    assert_eq!(at(&d), (10, 9));
}

#[test]
fn unknown_keys_at_every_level() {
    let source = "version: 1
mdoe: monitor
groups:
  - name: a
    smtp: block
    prefixs: []
    colour: red
interfaces:
  - name: eth1
    xdpmode: native
";
    let found = diagnostics(source);
    let got: Vec<_> = found.iter().map(|d| (at(d), d.message.as_str())).collect();
    assert_eq!(
        got,
        [
            ((2, 1), "unknown key \"mdoe\" in the policy"),
            ((4, 5), "group \"a\" is missing required key \"prefixes\""),
            ((6, 5), "unknown key \"prefixs\" in group \"a\""),
            ((7, 5), "unknown key \"colour\" in group \"a\""),
            ((10, 5), "unknown key \"xdpmode\" in interface \"eth1\""),
        ]
    );
    let hints: Vec<_> = found.iter().map(|d| d.hint.as_deref()).collect();
    assert_eq!(
        hints,
        [
            Some(
                "did you mean \"mode\"? known keys: version, mode, action, ports, groups, relays, relay_limit, offenders, events, interfaces, subscribers"
            ),
            None,
            Some("did you mean \"prefixes\"? known keys: name, smtp, mode, prefixes"),
            Some("known keys: name, smtp, mode, prefixes"),
            Some("did you mean \"xdp_mode\"? known keys: name, xdp_mode, attach, priority"),
        ]
    );
}

#[test]
fn key_given_twice() {
    let d = one_error("version: 1\nmode: enforce\nmode: monitor\n");
    assert_eq!(
        d.message,
        "key \"mode\" is given twice in the policy (first on line 2)"
    );
    assert_eq!(at(&d), (3, 1));
}

#[test]
fn ports_out_of_range() {
    let found = diagnostics(&with_ports("0, 70000, -1, 25"));
    let got: Vec<_> = found.iter().map(|d| (at(d), d.message.as_str())).collect();
    assert_eq!(
        got,
        [
            ((2, 9), "port 0 is out of range"),
            ((2, 12), "port 70000 is out of range"),
            ((2, 19), "port -1 is out of range"),
        ]
    );
    assert_eq!(found[0].hint.as_deref(), Some("TCP ports are 1 to 65535"));
}

#[test]
fn port_that_is_not_a_number() {
    let d = one_error(&with_ports("smtp"));
    assert_eq!(d.message, "expected a port number, found \"smtp\"");
    assert_eq!(at(&d), (2, 9));
}

#[test]
fn port_list_that_is_not_a_list() {
    let d = one_error("version: 1\nports: 25\n");
    assert_eq!(d.message, "expected a list for ports, found a scalar");
    assert_eq!(d.hint.as_deref(), Some("write a list: `ports: [25]`"));
    assert_eq!(at(&d), (2, 8));
}

#[test]
fn empty_port_list() {
    let d = one_error("version: 1\nports: []\n");
    assert_eq!(
        d.message,
        "the port list is empty, so nothing would be filtered"
    );
    assert_eq!(at(&d), (2, 8));
}

#[test]
fn duplicate_port() {
    let d = one_error("version: 1\nports:\n  - 25\n  - 2525\n  - 25\n");
    assert_eq!(d.message, "port 25 is listed twice (first on line 3)");
    assert_eq!(at(&d), (5, 5));
}

#[test]
fn submission_ports_are_warnings() {
    let loaded = parse(&with_ports("25, 587, 465"), FILE).unwrap();
    assert_eq!(loaded.policy.ports, [25, 587, 465]);
    let got: Vec<_> = loaded
        .warnings
        .iter()
        .map(|d| (d.severity, at(d), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Severity::Warning,
                (2, 13),
                "port 587 is the message submission port (RFC 6409); customers need it to reach their mail provider"
            ),
            (
                Severity::Warning,
                (2, 18),
                "port 465 is the submission over implicit TLS port (RFC 8314); customers need it to reach their mail provider"
            ),
        ]
    );
    assert!(
        loaded.warnings[0]
            .to_string()
            .starts_with("policies/test.yaml:2:13: warning: port 587 ")
    );
}

#[test]
fn relay_that_is_not_an_address() {
    let source = "version: 1\nrelays:\n  - mail.example.net\n  - 203.0.113.1/24\n  - 203.0.113.25\n  - 203.0.113.25/32\n";
    let found = diagnostics(source);
    let got: Vec<_> = found.iter().map(|d| (at(d), d.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                (3, 5),
                "relay \"mail.example.net\" is not an IP address or prefix"
            ),
            ((4, 5), "relay 203.0.113.1/24 has host bits set"),
            (
                (6, 5),
                "relay 203.0.113.25/32 is listed twice (first on line 5)"
            ),
        ]
    );
    assert!(
        found[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("host names are not resolved")
    );
    assert_eq!(
        found[1].hint.as_deref(),
        Some("did you mean 203.0.113.0/24?")
    );
}

#[test]
fn interfaces_take_attach_and_priority() {
    let source = "version: 1
interfaces:
  - name: eth1
    attach: multiprog
    priority: 30
  - name: eth2
    attach: exclusive
  - name: eth3
";
    let interfaces = parse(source, FILE).unwrap().policy.interfaces;
    let got: Vec<_> = interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.attach, i.priority))
        .collect();
    assert_eq!(
        got,
        [
            ("eth1", AttachMode::Multiprog, 30),
            ("eth2", AttachMode::Exclusive, DEFAULT_PRIORITY),
            ("eth3", AttachMode::Auto, DEFAULT_PRIORITY),
        ]
    );
}

#[test]
fn a_bad_attach_or_priority_is_an_error_and_priority_beside_exclusive_a_warning() {
    let source = "version: 1
interfaces:
  - name: eth1
    attach: multiprg
  - name: eth2
    priority: -1
  - name: eth3
    priority: 4294967296
";
    let got: Vec<_> = diagnostics(source)
        .iter()
        .map(|d| (at(d), d.message.clone(), d.hint.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (
                (4, 13),
                "unknown value \"multiprg\" for attach".to_string(),
                "did you mean \"multiprog\"? allowed values: auto, multiprog, exclusive"
                    .to_string()
            ),
            (
                (6, 15),
                "priority -1 is out of range".to_string(),
                "priority (the run priority inside a libxdp dispatcher, lower first) is 0 to \
                 4294967295"
                    .to_string()
            ),
            (
                (8, 15),
                "priority 4294967296 is out of range".to_string(),
                "priority (the run priority inside a libxdp dispatcher, lower first) is 0 to \
                 4294967295"
                    .to_string()
            ),
        ]
    );
    let loaded = parse(
        "version: 1\ninterfaces:\n  - name: eth1\n    attach: exclusive\n    priority: 5\n",
        FILE,
    )
    .unwrap();
    let warnings: Vec<_> = loaded.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(warnings, ["priority has no effect with attach: exclusive"]);
}

#[test]
fn unknown_enum_values_list_the_allowed_ones() {
    let source = "version: 1
mode: enforcing
action: rejcet
groups:
  - name: a
    smtp: blokc
    prefixes: []
interfaces:
  - name: eth1
    xdp_mode: [native]
";
    let found: Vec<_> = diagnostics(source)
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    let got: Vec<_> = found
        .iter()
        .map(|d| (at(d), d.message.as_str(), d.hint.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            (
                (2, 7),
                "unknown value \"enforcing\" for mode",
                "did you mean \"enforce\"? allowed values: enforce, monitor"
            ),
            (
                (3, 9),
                "unknown value \"rejcet\" for action",
                "did you mean \"reject\"? allowed values: drop, reject"
            ),
            (
                (6, 11),
                "unknown value \"blokc\" for smtp",
                "did you mean \"block\"? allowed values: block, allow"
            ),
            (
                (10, 15),
                "expected a value for xdp_mode, found a list",
                "allowed values: auto, native, generic"
            ),
        ]
    );
}

#[test]
fn missing_required_fields() {
    let found = diagnostics("groups:\n  - smtp: block\n  - name: b\n    prefixes: []\n  - {}\n");
    let got: Vec<_> = found
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.line, d.column, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Some(1),
                Some(1),
                "the policy is missing required key \"version\""
            ),
            (
                Some(2),
                Some(5),
                "group #1 is missing required key \"name\""
            ),
            (
                Some(2),
                Some(5),
                "group #1 is missing required key \"prefixes\""
            ),
            (
                Some(3),
                Some(5),
                "group \"b\" is missing required key \"smtp\""
            ),
            (
                Some(5),
                Some(5),
                "group #3 is missing required key \"name\""
            ),
            (
                Some(5),
                Some(5),
                "group #3 is missing required key \"smtp\""
            ),
            (
                Some(5),
                Some(5),
                "group #3 is missing required key \"prefixes\""
            ),
        ]
    );
}

#[test]
fn unsupported_version() {
    let d = one_error("version: 2\n");
    assert_eq!(d.message, "unsupported policy version 2");
    assert_eq!(d.hint.as_deref(), Some("this agent understands version 1"));
    assert_eq!(at(&d), (1, 10));
    let d = one_error("version: one\n");
    assert_eq!(d.message, "expected a version number, found \"one\"");
}

#[test]
fn duplicate_group_name() {
    let source = "version: 1
groups:
  - name: a
    smtp: block
    prefixes: [10.0.0.0/8]
  - name: a
    smtp: allow
    prefixes: [10.1.0.0/16]
";
    let d = one_error(source);
    assert_eq!(
        d.message,
        "group name \"a\" is used twice (first on line 3)"
    );
    assert_eq!(at(&d), (6, 11));
}

#[test]
fn empty_group_name() {
    let d = one_error(
        "version: 1\ngroups:\n  - name: \"\"\n    smtp: block\n    prefixes: [10.0.0.0/8]\n",
    );
    assert_eq!(d.message, "group name is empty");
    assert_eq!(at(&d), (3, 11));
}

#[test]
fn too_many_groups() {
    let mut source = String::from("version: 1\ngroups:\n");
    for i in 0..MAX_GROUPS {
        source += &format!(
            "  - {{name: g{i}, smtp: block, prefixes: [10.{}.{}.0/24]}}\n",
            i / 256,
            i % 256
        );
    }
    let d = one_error(&source);
    assert_eq!(d.message, "too many groups: 1023 (at most 1022)");
    // The first key of the first group past the limit; line 3 holds group 1.
    assert_eq!(at(&d), (2 + MAX_GROUPS as usize, 6));
}

#[test]
fn group_without_prefixes_is_a_warning() {
    let loaded = parse(
        "version: 1\ngroups:\n  - name: new\n    smtp: block\n    prefixes:\n",
        FILE,
    )
    .unwrap();
    assert!(loaded.policy.groups[0].prefixes.is_empty());
    assert_eq!(loaded.warnings.len(), 1);
    let w = &loaded.warnings[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(
        w.message,
        "group \"new\" has no prefixes, so it matches no traffic"
    );
    assert_eq!(at(w), (5, 5));
}

#[test]
fn interface_names_are_checked() {
    let source = "version: 1
interfaces:
  - name: eth1
  - name: eth1
  - name: a-very-long-interface
  - xdp_mode: native
";
    let found = diagnostics(source);
    let got: Vec<_> = found.iter().map(|d| (at(d), d.message.as_str())).collect();
    assert_eq!(
        got,
        [
            (
                (4, 11),
                "interface \"eth1\" is listed twice (first on line 3)"
            ),
            (
                (5, 11),
                "interface name \"a-very-long-interface\" is longer than 15 bytes"
            ),
            ((6, 5), "interface #4 is missing required key \"name\""),
        ]
    );
}

#[test]
fn every_error_in_a_file_is_reported() {
    let source = "version: 3
mode: monitr
ports: [25, 0, 587]
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.1/10, nonsense]
  - name: residential
    smtp: permit
    prefixes: [100.64.0.0/10]
    extra: 1
relays: [relay.example]
";
    let errors = parse(source, FILE).unwrap_err();
    let got: Vec<_> = errors.0.iter().map(|d| (d.severity, at(d))).collect();
    use Severity::{Error, Warning};
    assert_eq!(
        got,
        [
            (Error, (1, 10)),
            (Error, (2, 7)),
            (Error, (3, 13)),
            (Warning, (3, 16)),
            (Error, (7, 16)),
            (Error, (7, 31)),
            (Error, (8, 11)),
            (Error, (9, 11)),
            (Error, (11, 5)),
            (Error, (12, 10)),
        ]
    );
    // Display shows each diagnostic as its own block, in file order.
    let text = errors.to_string();
    assert_eq!(text.matches("error: ").count(), 9);
    assert!(
        text.starts_with("policies/test.yaml:1:10: error: unsupported policy version 3\n  hint: ")
    );
    // 100.64.0.1/10 was rejected, so the second group's 100.64.0.0/10 is no duplicate.
    assert!(!text.contains("listed"));
}

#[test]
fn example_policy_loads_and_compiles() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/example.yaml");
    let loaded = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let policy = &loaded.policy;
    let names: Vec<_> = policy.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "residential",
            "business-broadband",
            "business-ethernet",
            "leased-line"
        ]
    );
    assert_eq!(policy.prefix_count(), 7);
    assert_eq!(
        policy.interfaces,
        [Interface {
            name: "eth1".to_string(),
            xdp_mode: XdpMode::Auto,
            attach: AttachMode::Auto,
            priority: DEFAULT_PRIORITY,
        }]
    );

    assert_eq!(
        policy.relay_limit,
        Some(RelayLimit {
            syn_per_minute: 60,
            burst: 10
        })
    );
    assert_eq!(policy.offenders.map(|o| o.alert_after), Some(100));
    assert_eq!(policy.events.per_second, 10);

    let image = policy.compile();
    assert!(!image.config.monitor());
    assert_eq!(image.config.action, Action::Drop as u32);
    assert_eq!(image.config.relay_interval_ns, 1_000_000_000);
    assert_eq!(image.config.offender_window_ns, 600_000_000_000);
    assert!(image.config.port_filtered(25));
    assert!(!image.config.port_filtered(26));
    assert!(!image.config.port_filtered(587));
    assert_eq!(image.groups.len(), 4);
    assert_eq!(image.group(3).unwrap().name, "business-ethernet");
    assert_eq!(image.group(3).unwrap().smtp, Smtp::Allow);
    assert_eq!(image.source_count(), 7);
    let v4 = |p: &str| image.sources_v4[&p.parse().unwrap()];
    let v6 = |p: &str| image.sources_v6[&p.parse().unwrap()];
    assert_eq!(v4("100.64.0.0/10"), SourceRule::new(1, Smtp::Block));
    assert_eq!(v4("192.0.2.0/24"), SourceRule::new(2, Smtp::Block));
    assert_eq!(v4("192.0.2.128/26"), SourceRule::new(3, Smtp::Allow));
    assert_eq!(v4("198.51.100.128/25"), SourceRule::new(4, Smtp::Allow));
    assert_eq!(
        v6("2001:db8:2000:100::/56"),
        SourceRule::new(3, Smtp::Allow)
    );
    assert_eq!(
        image
            .relays()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["203.0.113.25/32", "2001:db8:ffff::25/128"]
    );
}

#[test]
fn a_groups_mode_compiles_into_each_of_its_rules() {
    let source = "version: 1
mode: enforce
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10]
  - name: pilot
    smtp: block
    mode: monitor
    prefixes: [198.18.0.0/15, \"2001:db8:4000::/48\"]
  - name: strict
    smtp: block
    mode: enforce
    prefixes: [192.0.2.0/24]
";
    let loaded = parse(source, FILE).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let policy = loaded.policy;
    let modes: Vec<_> = policy.groups.iter().map(|g| g.mode).collect();
    assert_eq!(modes, [None, Some(Mode::Monitor), Some(Mode::Enforce)]);
    let image = policy.compile();
    assert!(!image.config.monitor());
    let rule = |p: &str| *image.source(net(p)).unwrap();
    assert_eq!(
        rule("100.64.0.0/10"),
        SourceRule::with_mode(1, Smtp::Block, GroupMode::Policy)
    );
    for prefix in ["198.18.0.0/15", "2001:db8:4000::/48"] {
        assert_eq!(
            rule(prefix),
            SourceRule::with_mode(2, Smtp::Block, GroupMode::Monitor)
        );
    }
    assert_eq!(
        rule("192.0.2.0/24"),
        SourceRule::with_mode(3, Smtp::Block, GroupMode::Enforce)
    );
}

#[test]
fn a_bad_group_mode_is_an_error_at_its_value_and_one_on_an_allow_group_a_warning() {
    let source = "version: 1
groups:
  - name: pilot
    smtp: block
    mode: monitr
    prefixes: [198.18.0.0/15]
  - name: other
    smtp: block
    mode: [monitor]
    prefixes: [100.64.0.0/10]
";
    let got: Vec<_> = diagnostics(source)
        .iter()
        .map(|d| (at(d), d.message.clone(), d.hint.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (
                (5, 11),
                "unknown value \"monitr\" for mode".to_string(),
                "did you mean \"monitor\"? allowed values: enforce, monitor".to_string()
            ),
            (
                (9, 11),
                "expected a value for mode, found a list".to_string(),
                "allowed values: enforce, monitor".to_string()
            ),
        ]
    );
    let allow = "version: 1
groups:
  - name: leased-line
    smtp: allow
    mode: monitor
    prefixes: [198.51.100.128/25]
";
    let loaded = parse(allow, FILE).unwrap();
    let warnings: Vec<_> = loaded
        .warnings
        .iter()
        .map(|d| (at(d), d.message.as_str()))
        .collect();
    assert_eq!(
        warnings,
        [(
            (5, 11),
            "group \"leased-line\" allows: its mode has no effect, nothing of it is dropped"
        )]
    );
}

#[test]
fn monitor_mode_and_ports_compile_into_config() {
    let policy = parse("version: 1\nmode: monitor\nports: [25, 2525]\n", FILE)
        .unwrap()
        .policy;
    let config = policy.compile().config;
    assert!(config.monitor());
    assert!(config.port_filtered(25) && config.port_filtered(2525));
    assert!(!config.port_filtered(24) && !config.port_filtered(0));
}

#[test]
fn policy_serializes_with_yaml_names() {
    let policy = parse(&with_prefixes("192.0.2.0/24"), FILE).unwrap().policy;
    let json = serde_json::to_value(&policy).unwrap();
    assert_eq!(json["mode"], "enforce");
    assert_eq!(json["groups"][0]["smtp"], "block");
    assert_eq!(json["groups"][0]["prefixes"][0], "192.0.2.0/24");
}

#[test]
fn unreadable_file_is_one_error() {
    let errors = load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert!(
        errors
            .to_string()
            .starts_with("/nonexistent/policy.yaml: error: cannot read the policy: ")
    );
}

#[test]
fn aliases_resolve_to_their_anchor() {
    let source = "version: 1\ngroups:\n  - name: a\n    smtp: block\n    prefixes: &nets [10.0.0.0/8]\nrelays: *nets\n";
    let policy = parse(source, FILE).unwrap().policy;
    assert_eq!(policy.relays, [net("10.0.0.0/8")]);
}

#[test]
fn more_relays_than_the_filter_scans_is_an_error() {
    let relays: String = (1..=17).map(|i| format!("  - 203.0.113.{i}\n")).collect();
    let source = format!("version: 1\nrelays:\n{relays}  - 2001:db8::25\n");
    let error = one_error(&source);
    assert_eq!(at(&error), (19, 5));
    assert_eq!(error.message, "more than 16 IPv4 relays");
    assert!(error.hint.as_deref().unwrap().contains("one prefix"));
}

// ---- action, relay_limit, offenders, events ------------------------------------------

#[test]
fn new_keys_default_when_absent() {
    let policy = parse("version: 1\n", FILE).unwrap().policy;
    assert_eq!(policy.relay_limit, None);
    assert_eq!(policy.offenders, None);
    assert_eq!(
        policy.events,
        Events {
            per_second: DEFAULT_EVENTS_PER_SECOND
        }
    );
    let config = policy.compile().config;
    assert_eq!(config.action, Action::Drop as u32);
    assert_eq!(
        (config.relay_interval_ns, config.relay_tolerance_ns),
        (0, 0)
    );
    assert_eq!(
        (config.offender_alert_after, config.offender_window_ns),
        (0, 0)
    );
    // 10 a second: one every 100 ms, a second's worth (10) back to back.
    assert_eq!(
        (config.event_interval_ns, config.event_tolerance_ns),
        (100_000_000, 900_000_000)
    );
}

#[test]
fn reject_relay_limit_offenders_and_events_compile_into_config() {
    let source = "version: 1
action: reject
relays: [203.0.113.25]
relay_limit: { syn_per_minute: 60, burst: 10 }
offenders:
  alert_after: 100
  window: 10m
events: { per_second: 4 }
";
    let loaded = parse(source, FILE).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let policy = loaded.policy;
    assert_eq!(policy.action, Action::Reject);
    assert_eq!(
        policy.relay_limit,
        Some(RelayLimit {
            syn_per_minute: 60,
            burst: 10
        })
    );
    assert_eq!(
        policy.offenders,
        Some(Offenders {
            alert_after: 100,
            window: std::time::Duration::from_secs(600)
        })
    );
    assert_eq!(policy.events, Events { per_second: 4 });
    let config = policy.compile().config;
    assert_eq!(config.action, Action::Reject as u32);
    assert!(config.reject());
    let second = 1_000_000_000;
    assert_eq!(config.relay_interval_ns, second);
    assert_eq!(config.relay_tolerance_ns, 9 * second);
    assert_eq!(config.offender_alert_after, 100);
    assert_eq!(config.offender_window_ns, 600 * second);
    assert_eq!(config.event_interval_ns, second / 4);
    assert_eq!(config.event_tolerance_ns, 3 * second / 4);
}

#[test]
fn limits_compile_at_their_edges() {
    let compile = |yaml: &str| {
        parse(&format!("version: 1\nrelays: [203.0.113.25]\n{yaml}"), FILE)
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
            .compile()
            .config
    };
    let c = compile("relay_limit: { syn_per_minute: 1, burst: 1 }\n");
    assert_eq!(
        (c.relay_interval_ns, c.relay_tolerance_ns),
        (60_000_000_000, 0)
    );
    let c = compile("relay_limit: { syn_per_minute: 60000000, burst: 1000000 }\n");
    assert_eq!(
        (c.relay_interval_ns, c.relay_tolerance_ns),
        (1_000, 999_999_000)
    );
    // 60 s / 7 rounds down; the tolerance is whole intervals.
    let c = compile("relay_limit: { syn_per_minute: 7, burst: 3 }\n");
    assert_eq!(
        (c.relay_interval_ns, c.relay_tolerance_ns),
        (8_571_428_571, 17_142_857_142)
    );
    let c = compile("events: { per_second: 0 }\n");
    assert_eq!((c.event_interval_ns, c.event_tolerance_ns), (0, 0));
    let c = compile("events: { per_second: 1 }\n");
    assert_eq!(
        (c.event_interval_ns, c.event_tolerance_ns),
        (1_000_000_000, 0)
    );
    let c = compile("events: { per_second: 1000000 }\n");
    assert_eq!(
        (c.event_interval_ns, c.event_tolerance_ns),
        (1_000, 999_999_000)
    );
    for (window, seconds) in [
        ("1s", 1),
        ("30s", 30),
        ("1h", 3600),
        ("1d", 86_400),
        ("1h 30m", 5400),
        ("365d", 365 * 86_400),
    ] {
        let c = compile(&format!(
            "offenders: {{ alert_after: 1, window: {window} }}\n"
        ));
        assert_eq!(c.offender_window_ns, seconds * 1_000_000_000, "{window}");
        assert_eq!(c.offender_alert_after, 1);
    }
}

#[test]
fn out_of_range_numbers_are_located_errors() {
    let cases = [
        (
            "relay_limit: { syn_per_minute: 0, burst: 1 }",
            (2, 32),
            "syn_per_minute 0 is out of range",
            "1 to 60000000",
        ),
        (
            "relay_limit: { syn_per_minute: 60000001, burst: 1 }",
            (2, 32),
            "syn_per_minute 60000001 is out of range",
            "1 to 60000000",
        ),
        (
            "relay_limit: { syn_per_minute: -5, burst: 1 }",
            (2, 32),
            "syn_per_minute -5 is out of range",
            "1 to 60000000",
        ),
        (
            "relay_limit: { syn_per_minute: 60, burst: 0 }",
            (2, 43),
            "burst 0 is out of range",
            "1 to 1000000",
        ),
        (
            "relay_limit: { syn_per_minute: 60, burst: 1000001 }",
            (2, 43),
            "burst 1000001 is out of range",
            "1 to 1000000",
        ),
        (
            "offenders: { alert_after: 0, window: 1h }",
            (2, 27),
            "alert_after 0 is out of range",
            "at least 1",
        ),
        (
            "events: { per_second: 1000001 }",
            (2, 23),
            "per_second 1000001 is out of range",
            "0 to 1000000",
        ),
        (
            "events: { per_second: -1 }",
            (2, 23),
            "per_second -1 is out of range",
            "0 to 1000000",
        ),
    ];
    for (yaml, pos, message, range) in cases {
        let d = one_error(&format!("version: 1\n{yaml}\nrelays: [203.0.113.25]\n"));
        assert_eq!((at(&d), d.message.as_str()), (pos, message), "{yaml}");
        assert!(
            d.hint.as_deref().unwrap().ends_with(range),
            "{yaml}: {:?}",
            d.hint
        );
    }
    let d = one_error(
        "version: 1\nrelays: [203.0.113.25]\nrelay_limit: { syn_per_minute: lots, burst: 1 }\n",
    );
    assert_eq!(at(&d), (3, 32));
    assert_eq!(
        d.message,
        "expected a number for syn_per_minute, found \"lots\""
    );
    assert_eq!(d.hint.as_deref(), Some("write a whole number"));
}

#[test]
fn durations_need_a_unit_and_a_sane_range() {
    let cases = [
        (
            "600",
            "window \"600\" is not a duration",
            "write a number and a unit, e.g. 30s, 10m, 1h or 1d",
        ),
        (
            "ten minutes",
            "window \"ten minutes\" is not a duration",
            "write a number and a unit, e.g. 30s, 10m, 1h or 1d",
        ),
        (
            "-5m",
            "window \"-5m\" is not a duration",
            "write a number and a unit, e.g. 30s, 10m, 1h or 1d",
        ),
        (
            "500ms",
            "window 500ms is out of range",
            "window is 1s to 365d",
        ),
        ("0s", "window 0s is out of range", "window is 1s to 365d"),
        (
            "366d",
            "window 366d is out of range",
            "window is 1s to 365d",
        ),
    ];
    for (window, message, hint) in cases {
        let d = one_error(&format!(
            "version: 1\noffenders:\n  alert_after: 5\n  window: {window}\n"
        ));
        assert_eq!((at(&d), d.message.as_str()), ((4, 11), message), "{window}");
        assert_eq!(d.hint.as_deref(), Some(hint), "{window}");
    }
    let d = one_error("version: 1\noffenders: { alert_after: 5, window: [1h] }\n");
    assert_eq!(d.message, "expected a duration for window, found a list");
}

#[test]
fn new_sections_report_unknown_and_missing_keys() {
    let source = "version: 1
relays: [203.0.113.25]
relay_limit: { syn_per_minute: 60, brust: 5 }
offenders: { window: 1h }
events: { per_sec: 5 }
realy_limit: 5
";
    let found = diagnostics(source);
    let got: Vec<_> = found
        .iter()
        .map(|d| (at(d), d.message.as_str(), d.hint.as_deref()))
        .collect();
    // A flow mapping is located at its first key.
    assert_eq!(
        got,
        [
            (
                (3, 16),
                "relay_limit is missing required key \"burst\"",
                None
            ),
            (
                (3, 36),
                "unknown key \"brust\" in relay_limit",
                Some("did you mean \"burst\"? known keys: syn_per_minute, burst")
            ),
            (
                (4, 14),
                "offenders is missing required key \"alert_after\"",
                None
            ),
            (
                (5, 11),
                "unknown key \"per_sec\" in events",
                Some("did you mean \"per_second\"? known keys: per_second")
            ),
            (
                (5, 11),
                "events is missing required key \"per_second\"",
                None
            ),
            (
                (6, 1),
                "unknown key \"realy_limit\" in the policy",
                Some(
                    "did you mean \"relay_limit\"? known keys: version, mode, action, ports, groups, relays, relay_limit, offenders, events, interfaces, subscribers"
                )
            ),
        ]
    );
    let d = one_error("version: 1\nevents: 10\n");
    assert_eq!(at(&d), (2, 9));
    assert_eq!(d.message, "expected a mapping for events, found a scalar");
}

#[test]
fn reject_in_monitor_mode_and_a_limit_without_relays_are_warnings() {
    let loaded = parse(
        "version: 1\nmode: monitor\naction: reject\nrelay_limit: { syn_per_minute: 6, burst: 2 }\n",
        FILE,
    )
    .unwrap();
    let got: Vec<_> = loaded
        .warnings
        .iter()
        .map(|d| (d.severity, at(d), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                Severity::Warning,
                (3, 9),
                "action reject has no effect in monitor mode: nothing is dropped or rejected"
            ),
            (
                Severity::Warning,
                (4, 16),
                "relay_limit has no effect: the policy lists no relays"
            ),
        ]
    );
    // Still compiled as written: switching to enforce needs no other change.
    let config = loaded.policy.compile().config;
    assert!(config.monitor() && config.reject());
    assert_eq!(config.relay_interval_ns, 10_000_000_000);
}

#[test]
fn new_keys_serialize_for_check_json() {
    let source = "version: 1
action: reject
relays: [203.0.113.25]
relay_limit: { syn_per_minute: 60, burst: 10 }
offenders: { alert_after: 100, window: 90m }
events: { per_second: 0 }
";
    let json = serde_json::to_value(parse(source, FILE).unwrap().policy).unwrap();
    assert_eq!(json["action"], "reject");
    assert_eq!(
        json["relay_limit"],
        serde_json::json!({"syn_per_minute": 60, "burst": 10})
    );
    assert_eq!(
        json["offenders"],
        serde_json::json!({"alert_after": 100, "window": "1h 30m"})
    );
    assert_eq!(json["events"], serde_json::json!({"per_second": 0}));
    let json = serde_json::to_value(parse("version: 1\n", FILE).unwrap().policy).unwrap();
    assert_eq!(json["relay_limit"], serde_json::Value::Null);
    assert_eq!(json["events"]["per_second"], 10);
}

#[test]
fn subscribers_take_radius_accounting_and_a_session_timeout() {
    let policy = crate::policy::parse(
        "version: 1
subscribers:
  radius_accounting:
    listen: \"127.0.0.1:1813\"
    clients:
      - address: 127.0.0.1
        secret_file: /etc/filter-agent/radius.secret
      - address: 192.0.2.0/28
        secret_file: /etc/filter-agent/bng.secret
  session_timeout: 2h
",
        "p.yaml",
    )
    .unwrap()
    .policy;
    let radius = policy.subscribers.radius_accounting.unwrap();
    assert_eq!(radius.listen, "127.0.0.1:1813".parse().unwrap());
    assert_eq!(radius.clients.len(), 2);
    assert_eq!(radius.clients[0].address, net("127.0.0.1/32"));
    assert_eq!(
        radius.clients[1].secret_file,
        std::path::Path::new("/etc/filter-agent/bng.secret")
    );
    assert_eq!(
        policy.subscribers.session_timeout,
        Some(std::time::Duration::from_secs(7200))
    );
    // Without the section: no listener, no timeout.
    let none = crate::policy::parse("version: 1\n", "p.yaml")
        .unwrap()
        .policy;
    assert_eq!(none.subscribers, Default::default());
}

#[test]
fn bad_subscribers_sections_are_located_errors() {
    let cases = [
        (
            "subscribers:\n  radius_accounting:\n    listen: 1813\n    clients: [{address: 127.0.0.1, secret_file: /s}]\n",
            (4, 13),
            "listen \"1813\" is not an address and port",
        ),
        (
            "subscribers:\n  radius_accounting:\n    listen: \"127.0.0.1:1813\"\n    clients: []\n",
            (5, 14),
            "radius_accounting lists no clients, so every request would be dropped",
        ),
        (
            "subscribers:\n  radius_accounting:\n    listen: \"127.0.0.1:1813\"\n    clients: [{address: 127.0.0.1, secret_file: radius.secret}]\n",
            (5, 49),
            "secret_file \"radius.secret\" is not an absolute path",
        ),
        (
            "subscribers:\n  radius_accounting:\n    listen: \"127.0.0.1:1813\"\n    clients: [{address: 127.0.0.1/8, secret_file: /s}]\n",
            (5, 25),
            "client address 127.0.0.1/8 has host bits set",
        ),
        (
            "subscribers:\n  radius_accounting:\n    listen: \"127.0.0.1:1813\"\n    clients: [{address: 127.0.0.1, secret_file: /s}, {address: 127.0.0.1, secret_file: /t}]\n",
            (5, 64),
            "client 127.0.0.1/32 is listed twice (first on line 5)",
        ),
        (
            "subscribers:\n  radius_accounting:\n    listen: \"127.0.0.1:1813\"\n    clients: [{address: 127.0.0.1, secret_file: /s}]\n  session_timeout: 10s\n",
            (6, 20),
            "session_timeout 10s is out of range",
        ),
        (
            "subscribers:\n  radius_acounting: {}\n",
            (3, 3),
            "unknown key \"radius_acounting\" in subscribers",
        ),
    ];
    for (section, place, message) in cases {
        let d = one_error(&format!("version: 1\n{section}"));
        assert_eq!((at(&d), d.message.as_str()), (place, message), "{section}");
    }
    let warned = crate::policy::parse(
        "version: 1\nsubscribers:\n  session_timeout: 2h\n",
        "p.yaml",
    )
    .unwrap();
    assert!(
        warned.warnings[0]
            .message
            .starts_with("session_timeout has no effect without radius_accounting")
    );
}
