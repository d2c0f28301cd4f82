//! Walks the located YAML tree, builds the `Policy` and collects every problem on the way,
//! so one run shows the operator all of them.

use filter_common::MAX_RELAYS;
use std::borrow::Cow;
use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

use filter_common::{EXEMPTION_GROUP, EXEMPTION_GROUP_NAME, GROUP_NAME_MAX};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::Loaded;
use super::diagnostic::{Diagnostic, PolicyErrors, Severity};
use super::locate::{Node, Pos, Value, parse_yaml};
use super::prefix::parse_prefix;
use super::schema::{
    AttachMode, DEFAULT_PORTS, DEFAULT_PRIORITY, Events, Group, Interface, Mode, Offenders, Policy,
    RadiusAccounting, RadiusClient, RelayLimit, Subscribers, VERSION, XdpMode,
};
use filter_common::{Action, Smtp};

const POLICY_KEYS: &[&str] = &[
    "version",
    "mode",
    "action",
    "ports",
    "groups",
    "relays",
    "relay_limit",
    "offenders",
    "events",
    "interfaces",
    "subscribers",
];
const SUBSCRIBERS_KEYS: &[&str] = &["radius_accounting", "session_timeout"];
const RADIUS_KEYS: &[&str] = &["listen", "clients"];
const RADIUS_CLIENT_KEYS: &[&str] = &["address", "secret_file"];
/// RADIUS sessions last from a minute without an update to a month.
const MIN_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 86_400);
const GROUP_KEYS: &[&str] = &["name", "smtp", "mode", "prefixes"];
const INTERFACE_KEYS: &[&str] = &["name", "xdp_mode", "attach", "priority"];
const RELAY_LIMIT_KEYS: &[&str] = &["syn_per_minute", "burst"];
const OFFENDERS_KEYS: &[&str] = &["alert_after", "window"];
const EVENTS_KEYS: &[&str] = &["per_second"];

/// One SYN per microsecond: the relay limit's interval stays at least 1,000 ns.
const MAX_SYN_PER_MINUTE: u64 = 60_000_000;
const MAX_BURST: u64 = 1_000_000;
const MAX_EVENTS_PER_SECOND: u64 = 1_000_000;
/// Offender windows run from a second to a year.
const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(365 * 86_400);
const DURATION_HINT: &str = "write a number and a unit, e.g. 30s, 10m, 1h or 1d";

const MODES: &[(&str, Mode)] = &[
    (Mode::Enforce.name(), Mode::Enforce),
    (Mode::Monitor.name(), Mode::Monitor),
];
const ACTIONS: &[(&str, Action)] = &[
    (Action::Drop.name(), Action::Drop),
    (Action::Reject.name(), Action::Reject),
];
const SMTP: &[(&str, Smtp)] = &[
    (Smtp::Block.name(), Smtp::Block),
    (Smtp::Allow.name(), Smtp::Allow),
];
const ATTACH_MODES: &[(&str, AttachMode)] = &[
    (AttachMode::Auto.name(), AttachMode::Auto),
    (AttachMode::Multiprog.name(), AttachMode::Multiprog),
    (AttachMode::Exclusive.name(), AttachMode::Exclusive),
];
/// libxdp keeps run priorities as 32-bit unsigned numbers.
const MAX_PRIORITY: u64 = u32::MAX as u64;
const XDP_MODES: &[(&str, XdpMode)] = &[
    (XdpMode::Auto.name(), XdpMode::Auto),
    (XdpMode::Native.name(), XdpMode::Native),
    (XdpMode::Generic.name(), XdpMode::Generic),
];

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
const MAX_INTERFACE_NAME: usize = 15;

const PREFIX_HINT: &str = "write ADDRESS/LENGTH, e.g. 192.0.2.0/24 or 2001:db8::/32";
const RELAY_HINT: &str =
    "write an address or a prefix, e.g. 203.0.113.25 or 2001:db8::/64; host names are not resolved";

pub fn check(source: &str, file: &str) -> Result<Loaded, PolicyErrors> {
    let mut checker = Checker {
        file,
        diagnostics: Vec::new(),
    };
    let policy = match parse_yaml(source) {
        Err((pos, info)) => {
            checker.error(pos, format!("invalid YAML: {info}"), None);
            None
        }
        Ok(documents) => match documents.as_slice() {
            [] => {
                checker.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    file: file.to_string(),
                    line: None,
                    column: None,
                    message: "the policy file is empty".to_string(),
                    hint: Some("start it with `version: 1`".to_string()),
                });
                None
            }
            [document, extra @ ..] => {
                for node in extra {
                    checker.error(
                        node.pos,
                        "a policy file holds one YAML document".to_string(),
                        Some("remove the `---` that starts a second one".to_string()),
                    );
                }
                checker.policy(document)
            }
        },
    };
    checker.finish(policy)
}

struct Checker<'f> {
    file: &'f str,
    diagnostics: Vec<Diagnostic>,
}

/// The known keys of one mapping, each with the position of its key.
struct Fields<'n> {
    pos: Pos,
    what: String,
    entries: Vec<(&'n str, Pos, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(.., value)| *value)
    }
}

/// One group's prefixes as listed, for the check that no prefix is in two places.
struct Listed<'n> {
    label: String,
    prefixes: Cow<'n, [IpNet]>,
    positions: Cow<'n, [Pos]>,
}

impl Checker<'_> {
    fn finish(mut self, policy: Option<Policy>) -> Result<Loaded, PolicyErrors> {
        self.diagnostics.sort_by_key(|d| (d.line, d.column));
        let has_errors = self
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error);
        match policy {
            Some(policy) if !has_errors => Ok(Loaded {
                policy,
                warnings: self.diagnostics,
            }),
            _ => Err(PolicyErrors(self.diagnostics)),
        }
    }

    fn report(&mut self, severity: Severity, pos: Pos, message: String, hint: Option<String>) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.to_string(),
            line: Some(pos.line as usize),
            column: Some(pos.column as usize),
            message,
            hint,
        });
    }

    fn error(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.report(Severity::Error, pos, message, hint);
    }

    fn warning(&mut self, pos: Pos, message: String, hint: Option<String>) {
        self.report(Severity::Warning, pos, message, hint);
    }

    fn policy(&mut self, document: &Node) -> Option<Policy> {
        let fields = self.fields(document, "the policy".to_string(), POLICY_KEYS)?;
        let version = self.required(&fields, "version").and_then(|node| {
            let version = self.integer(node, "a version number")?;
            if version != i128::from(VERSION) {
                self.error(
                    node.pos,
                    format!("unsupported policy version {version}"),
                    Some(format!("this agent understands version {VERSION}")),
                );
            }
            Some(version)
        });
        let mode = fields
            .get("mode")
            .and_then(|n| self.choice(n, "mode", MODES));
        let action = fields
            .get("action")
            .and_then(|n| self.choice(n, "action", ACTIONS));
        let ports = fields
            .get("ports")
            .map_or_else(|| DEFAULT_PORTS.to_vec(), |n| self.ports(n));
        let groups = fields
            .get("groups")
            .map_or_else(Vec::new, |n| self.groups(n));
        let relays = fields
            .get("relays")
            .map_or_else(Vec::new, |n| self.relays(n));
        let relay_limit = fields.get("relay_limit").map(|n| self.relay_limit(n));
        let offenders = fields.get("offenders").map(|n| self.offenders(n));
        let events = fields.get("events").map(|n| self.events(n));
        let interfaces = fields
            .get("interfaces")
            .map_or_else(Vec::new, |n| self.interfaces(n));
        let subscribers = fields.get("subscribers").map(|n| self.subscribers(n));
        if let (Some(node), Some(Action::Reject), Some(Mode::Monitor)) =
            (fields.get("action"), action, mode)
        {
            self.warning(
                node.pos,
                "action reject has no effect in monitor mode: nothing is dropped or rejected"
                    .to_string(),
                Some("use `mode: enforce` to send resets".to_string()),
            );
        }
        if let (Some(node), Some(Some(_)), true) =
            (fields.get("relay_limit"), relay_limit, relays.is_empty())
        {
            self.warning(
                node.pos,
                "relay_limit has no effect: the policy lists no relays".to_string(),
                Some("list the relays under `relays`, or remove relay_limit".to_string()),
            );
        }
        // Without a version the rest was still checked, but there is no policy to return.
        version?;
        Some(Policy {
            version: VERSION,
            mode: mode.unwrap_or(Mode::Enforce),
            action: action.unwrap_or(Action::Drop),
            ports,
            groups,
            relays,
            relay_limit: relay_limit.flatten(),
            offenders: offenders.flatten(),
            events: events.flatten().unwrap_or_default(),
            interfaces,
            subscribers: subscribers.flatten().unwrap_or_default(),
        })
    }

    /// `subscribers: { radius_accounting: {...}, session_timeout: DURATION }`.
    fn subscribers(&mut self, node: &Node) -> Option<Subscribers> {
        let fields = self.fields(node, "subscribers".to_string(), SUBSCRIBERS_KEYS)?;
        let radius = fields.get("radius_accounting").map(|n| self.radius(n));
        let timeout = fields.get("session_timeout").map(|n| {
            self.duration(
                n,
                "session_timeout",
                MIN_SESSION_TIMEOUT,
                MAX_SESSION_TIMEOUT,
            )
        });
        if let (Some(node), None) = (
            fields.get("session_timeout"),
            fields.get("radius_accounting"),
        ) {
            self.warning(
                node.pos,
                "session_timeout has no effect without radius_accounting: hook sessions end with their ip-down hook".to_string(),
                None,
            );
        }
        Some(Subscribers {
            radius_accounting: match radius {
                Some(radius) => Some(radius?),
                None => None,
            },
            session_timeout: match timeout {
                Some(timeout) => Some(timeout?),
                None => None,
            },
        })
    }

    /// `radius_accounting: { listen: ADDR:PORT, clients: [{address, secret_file}] }`.
    fn radius(&mut self, node: &Node) -> Option<RadiusAccounting> {
        let fields = self.fields(node, "radius_accounting".to_string(), RADIUS_KEYS)?;
        let listen = self.required(&fields, "listen").and_then(|n| {
            let text = self.string(n, "an address and port for listen")?;
            let parsed = text.parse::<std::net::SocketAddr>().ok();
            match parsed {
                Some(addr) if addr.port() != 0 => Some(addr),
                _ => {
                    self.error(
                        n.pos,
                        format!("listen \"{text}\" is not an address and port"),
                        Some(
                            "write ADDRESS:PORT, e.g. \"127.0.0.1:1813\" or \"[::1]:1813\""
                                .to_string(),
                        ),
                    );
                    None
                }
            }
        });
        let clients_node = self.required(&fields, "clients");
        let mut clients = Vec::new();
        let mut seen: HashMap<IpNet, Pos> = HashMap::new();
        if let Some(list_node) = clients_node
            && let Some(items) = self.list(list_node, "clients")
        {
            if items.is_empty() {
                self.error(
                    list_node.pos,
                    "radius_accounting lists no clients, so every request would be dropped".to_string(),
                    Some("list the BNGs (or the RADIUS server replicating for them) with their secret_file".to_string()),
                );
            }
            for (index, item) in items.iter().enumerate() {
                let Some(client) =
                    self.fields(item, format!("client #{}", index + 1), RADIUS_CLIENT_KEYS)
                else {
                    continue;
                };
                let address = self.required(&client, "address").and_then(|n| {
                    let address = self.prefix(n, "client address", RELAY_HINT)?;
                    if let Some(first) = first_seen(&mut seen, address, n.pos) {
                        self.error(
                            n.pos,
                            format!(
                                "client {address} is listed twice (first on line {})",
                                first.line
                            ),
                            None,
                        );
                        return None;
                    }
                    Some(address)
                });
                let secret_file = self.required(&client, "secret_file").and_then(|n| {
                    let path = self.string(n, "a file name for secret_file")?;
                    if !path.starts_with('/') {
                        self.error(
                            n.pos,
                            format!("secret_file \"{path}\" is not an absolute path"),
                            Some("e.g. /etc/filter-agent/radius.secret".to_string()),
                        );
                        return None;
                    }
                    Some(std::path::PathBuf::from(path))
                });
                if let (Some(address), Some(secret_file)) = (address, secret_file) {
                    clients.push(RadiusClient {
                        address,
                        secret_file,
                    });
                }
            }
        }
        Some(RadiusAccounting {
            listen: listen?,
            clients,
        })
    }

    /// `relay_limit: { syn_per_minute: N, burst: M }`.
    fn relay_limit(&mut self, node: &Node) -> Option<RelayLimit> {
        let fields = self.fields(node, "relay_limit".to_string(), RELAY_LIMIT_KEYS)?;
        let rate = self.required(&fields, "syn_per_minute").and_then(|n| {
            self.bounded(
                n,
                "syn_per_minute",
                1,
                MAX_SYN_PER_MINUTE,
                "new connections a customer may open to the relays per minute",
            )
        });
        let burst = self.required(&fields, "burst").and_then(|n| {
            self.bounded(
                n,
                "burst",
                1,
                MAX_BURST,
                "how many SYNs may come back to back before the rate applies",
            )
        });
        Some(RelayLimit {
            syn_per_minute: u32::try_from(rate?).ok()?,
            burst: u32::try_from(burst?).ok()?,
        })
    }

    /// `offenders: { alert_after: N, window: DURATION }`.
    fn offenders(&mut self, node: &Node) -> Option<Offenders> {
        let fields = self.fields(node, "offenders".to_string(), OFFENDERS_KEYS)?;
        let alert_after = self.required(&fields, "alert_after").and_then(|n| {
            self.bounded(
                n,
                "alert_after",
                1,
                u64::MAX,
                "blocked attempts within one window that raise an alert",
            )
        });
        let window = self
            .required(&fields, "window")
            .and_then(|n| self.duration(n, "window", MIN_WINDOW, MAX_WINDOW));
        Some(Offenders {
            alert_after: alert_after?,
            window: window?,
        })
    }

    /// `events: { per_second: K }`.
    fn events(&mut self, node: &Node) -> Option<Events> {
        let fields = self.fields(node, "events".to_string(), EVENTS_KEYS)?;
        let per_second = self.required(&fields, "per_second").and_then(|n| {
            self.bounded(
                n,
                "per_second",
                0,
                MAX_EVENTS_PER_SECOND,
                "sampled drop events per second; 0 turns them off",
            )
        })?;
        Some(Events {
            per_second: u32::try_from(per_second).ok()?,
        })
    }

    /// A whole number in `min..=max`; `meaning` says what it is in the hint.
    fn bounded(
        &mut self,
        node: &Node,
        key: &str,
        min: u64,
        max: u64,
        meaning: &str,
    ) -> Option<u64> {
        let number = self.integer(node, &format!("a number for {key}"))?;
        let value = u64::try_from(number)
            .ok()
            .filter(|n| (min..=max).contains(n));
        if value.is_none() {
            let range = if max == u64::MAX {
                format!("at least {min}")
            } else {
                format!("{min} to {max}")
            };
            self.error(
                node.pos,
                format!("{key} {number} is out of range"),
                Some(format!("{key} ({meaning}) is {range}")),
            );
        }
        value
    }

    /// A duration such as `30s`, `10m`, `1h` or `1d`, in `min..=max`.
    fn duration(
        &mut self,
        node: &Node,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let text = self.string(node, &format!("a duration for {key}"))?;
        let duration = match parse_duration(text) {
            Some(duration) => duration,
            None => {
                self.error(
                    node.pos,
                    format!("{key} \"{text}\" is not a duration"),
                    Some(DURATION_HINT.to_string()),
                );
                return None;
            }
        };
        if duration < min || duration > max {
            self.error(
                node.pos,
                format!("{key} {text} is out of range"),
                Some(format!("{key} is {} to {}", short(min), short(max))),
            );
            return None;
        }
        Some(duration)
    }

    fn ports(&mut self, node: &Node) -> Vec<u16> {
        let Some(items) = self.list(node, "ports") else {
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                node.pos,
                "the port list is empty, so nothing would be filtered".to_string(),
                Some(
                    "list the ports to filter, e.g. [25], or leave out `ports` for port 25"
                        .to_string(),
                ),
            );
        }
        let mut seen: HashMap<u16, Pos> = HashMap::new();
        let mut ports = Vec::new();
        for item in items {
            let Some(number) = self.integer(item, "a port number") else {
                continue;
            };
            let Some(port) = u16::try_from(number).ok().filter(|&p| p != 0) else {
                self.error(
                    item.pos,
                    format!("port {number} is out of range"),
                    Some("TCP ports are 1 to 65535".to_string()),
                );
                continue;
            };
            if let Some(first) = first_seen(&mut seen, port, item.pos) {
                self.error(
                    item.pos,
                    format!("port {port} is listed twice (first on line {})", first.line),
                    None,
                );
                continue;
            }
            let submission = match port {
                587 => Some("message submission port (RFC 6409)"),
                465 => Some("submission over implicit TLS port (RFC 8314)"),
                _ => None,
            };
            if let Some(what) = submission {
                self.warning(
                    item.pos,
                    format!(
                        "port {port} is the {what}; customers need it to reach their mail provider"
                    ),
                    Some("filter port 25 only: that is where direct-to-MX spam goes".to_string()),
                );
            }
            ports.push(port);
        }
        ports
    }

    fn groups(&mut self, node: &Node) -> Vec<Group> {
        let Some(items) = self.list(node, "groups") else {
            return Vec::new();
        };
        // The last id is reserved for exemptions granted from the CLI.
        let max_groups = EXEMPTION_GROUP - 1;
        if let Some(first_extra) = items.get(max_groups as usize) {
            self.error(
                first_extra.pos,
                format!("too many groups: {} (at most {max_groups})", items.len()),
                Some("merge groups that block or allow alike".to_string()),
            );
        }
        let mut names = HashMap::new();
        let mut listed = Vec::new();
        let mut groups = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(group) = self.group(index, item, &mut names, &mut listed) {
                groups.push(group);
            }
        }
        self.repeated_prefixes(&listed);
        groups
    }

    fn group<'n>(
        &mut self,
        index: usize,
        node: &'n Node,
        names: &mut HashMap<String, Pos>,
        listed: &mut Vec<Listed<'n>>,
    ) -> Option<Group> {
        let label = label(node, "group", index);
        let fields = self.fields(node, label.clone(), GROUP_KEYS)?;
        let name = self.required(&fields, "name").and_then(|n| {
            let name = self.string(n, "a group name")?;
            if name.is_empty() {
                self.error(
                    n.pos,
                    "group name is empty".to_string(),
                    Some("name the group, e.g. residential; counters and logs show it".to_string()),
                );
                return None;
            }
            if name == EXEMPTION_GROUP_NAME {
                self.error(
                    n.pos,
                    format!("group name \"{name}\" is reserved for exemptions granted with `filter-agent exemptions add`"),
                    Some("choose another name".to_string()),
                );
                return None;
            }
            if name.len() > GROUP_NAME_MAX {
                self.error(
                    n.pos,
                    format!("group name \"{name}\" is longer than {GROUP_NAME_MAX} bytes"),
                    None,
                );
                return None;
            }
            if let Some(first) = first_seen(names, name.to_string(), n.pos) {
                self.error(
                    n.pos,
                    format!(
                        "group name \"{name}\" is used twice (first on line {})",
                        first.line
                    ),
                    None,
                );
            }
            Some(name)
        });
        let smtp = self
            .required(&fields, "smtp")
            .and_then(|n| self.choice(n, "smtp", SMTP));
        // Absent: the policy's mode. A value that is no mode is an error, not the default.
        let mode = match fields.get("mode") {
            None => Some(None),
            Some(n) => self.choice(n, "mode", MODES).map(Some),
        };
        if let (Some(node), Some(Smtp::Allow), Some(Some(_))) = (fields.get("mode"), smtp, mode) {
            self.warning(
                node.pos,
                format!("{label} allows: its mode has no effect, nothing of it is dropped"),
                Some("a group's mode matters only with `smtp: block`".to_string()),
            );
        }
        let prefixes = self
            .required(&fields, "prefixes")
            .and_then(|n| self.group_prefixes(n, &label))
            .map(|group_listed| {
                let prefixes = group_listed.prefixes.to_vec();
                listed.push(group_listed);
                prefixes
            });
        Some(Group {
            name: name?.to_string(),
            smtp: smtp?,
            mode: mode?,
            prefixes: prefixes?,
        })
    }

    /// A group's prefixes, each checked; every item that is not a prefix is an error.
    fn group_prefixes<'n>(&mut self, node: &'n Node, label: &str) -> Option<Listed<'n>> {
        let mut listed = Listed {
            label: label.to_string(),
            prefixes: Cow::Borrowed(&[]),
            positions: Cow::Borrowed(&[]),
        };
        let count = match &node.value {
            // What the parser could not read as a prefix says why here.
            Value::Prefixes(list) => {
                for other in &list.others {
                    self.prefix(other, "prefix", PREFIX_HINT);
                }
                listed.prefixes = Cow::Borrowed(&list.prefixes);
                listed.positions = Cow::Borrowed(&list.positions);
                list.len()
            }
            _ => {
                // A list that reached `prefixes` through an alias.
                let items = self.list(node, "prefixes")?;
                let (mut prefixes, mut positions) = (Vec::new(), Vec::new());
                for item in items {
                    if let Some(prefix) = self.prefix(item, "prefix", PREFIX_HINT) {
                        prefixes.push(prefix);
                        positions.push(item.pos);
                    }
                }
                listed.prefixes = Cow::Owned(prefixes);
                listed.positions = Cow::Owned(positions);
                items.len()
            }
        };
        if count == 0 {
            self.warning(
                node.pos,
                format!("{label} has no prefixes, so it matches no traffic"),
                None,
            );
        }
        Some(listed)
    }

    /// A prefix belongs to one group, once. Sorting finds repeats without a table of
    /// every prefix (at a million, hundreds of megabytes); only those found are then
    /// located, in list order, so each repeat points at its first place.
    fn repeated_prefixes(&mut self, listed: &[Listed]) {
        let all = || listed.iter().flat_map(|l| l.prefixes.iter());
        let mut v4: Vec<Ipv4Net> = Vec::new();
        let mut v6: Vec<Ipv6Net> = Vec::new();
        for prefix in all() {
            match prefix {
                IpNet::V4(p) => v4.push(*p),
                IpNet::V6(p) => v6.push(*p),
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        let repeated: HashSet<IpNet> = v4
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| IpNet::V4(w[0]))
            .chain(
                v6.windows(2)
                    .filter(|w| w[0] == w[1])
                    .map(|w| IpNet::V6(w[0])),
            )
            .collect();
        drop((v4, v6));
        if repeated.is_empty() {
            return;
        }
        let mut first: HashMap<IpNet, (usize, Pos)> = HashMap::new();
        for (index, list) in listed.iter().enumerate() {
            for (prefix, &pos) in list.prefixes.iter().zip(list.positions.iter()) {
                if !repeated.contains(prefix) {
                    continue;
                }
                let (first_index, first_pos) = match first.entry(*prefix) {
                    Slot::Vacant(slot) => {
                        slot.insert((index, pos));
                        continue;
                    }
                    Slot::Occupied(seen) => *seen.get(),
                };
                let label = &list.label;
                let message = if first_index == index {
                    format!(
                        "prefix {prefix} is listed twice in {label} (first on line {})",
                        first_pos.line
                    )
                } else {
                    format!(
                        "prefix {prefix} is listed in {} (line {}) and again in {label}",
                        listed[first_index].label, first_pos.line
                    )
                };
                self.error(
                    pos,
                    message,
                    Some("a prefix belongs to one group; list a more specific one to carve out an exception".to_string()),
                );
            }
        }
    }

    fn relays(&mut self, node: &Node) -> Vec<IpNet> {
        let Some(items) = self.list(node, "relays") else {
            return Vec::new();
        };
        let mut seen: HashMap<IpNet, Pos> = HashMap::new();
        let mut relays = Vec::new();
        for item in items {
            let Some(relay) = self.prefix(item, "relay", RELAY_HINT) else {
                continue;
            };
            if let Some(first) = first_seen(&mut seen, relay, item.pos) {
                self.error(
                    item.pos,
                    format!(
                        "relay {relay} is listed twice (first on line {})",
                        first.line
                    ),
                    None,
                );
                continue;
            }
            let same_family = relays
                .iter()
                .filter(|r: &&IpNet| r.addr().is_ipv4() == relay.addr().is_ipv4());
            if same_family.count() == MAX_RELAYS {
                self.error(
                    item.pos,
                    format!(
                        "more than {MAX_RELAYS} IPv{} relays",
                        if relay.addr().is_ipv4() { 4 } else { 6 }
                    ),
                    Some(format!(
                        "the filter scans at most {MAX_RELAYS} relay prefixes per address family; \
                         cover several relays with one prefix"
                    )),
                );
                continue;
            }
            relays.push(relay);
        }
        relays
    }

    fn interfaces(&mut self, node: &Node) -> Vec<Interface> {
        let Some(items) = self.list(node, "interfaces") else {
            return Vec::new();
        };
        let mut names: HashMap<String, Pos> = HashMap::new();
        let mut interfaces = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let label = label(item, "interface", index);
            let Some(fields) = self.fields(item, label, INTERFACE_KEYS) else {
                continue;
            };
            let name = self.required(&fields, "name").and_then(|n| {
                let name = self.string(n, "an interface name")?;
                let problem = if name.is_empty() {
                    Some("interface name is empty".to_string())
                } else if name.len() > MAX_INTERFACE_NAME {
                    Some(format!(
                        "interface name \"{name}\" is longer than {MAX_INTERFACE_NAME} bytes"
                    ))
                } else if name.contains(|c: char| c == '/' || c.is_whitespace()) {
                    Some(format!(
                        "interface name \"{name}\" contains a slash or white space"
                    ))
                } else {
                    first_seen(&mut names, name.to_string(), n.pos).map(|first| {
                        format!(
                            "interface \"{name}\" is listed twice (first on line {})",
                            first.line
                        )
                    })
                };
                match problem {
                    Some(message) => {
                        self.error(n.pos, message, None);
                        None
                    }
                    None => Some(name.to_string()),
                }
            });
            let xdp_mode = fields
                .get("xdp_mode")
                .map(|n| self.choice(n, "xdp_mode", XDP_MODES));
            let attach = fields
                .get("attach")
                .map(|n| self.choice(n, "attach", ATTACH_MODES))
                .unwrap_or(Some(AttachMode::Auto));
            let priority = match fields.get("priority") {
                None => Some(DEFAULT_PRIORITY),
                Some(n) => {
                    let priority = self.bounded(
                        n,
                        "priority",
                        0,
                        MAX_PRIORITY,
                        "the run priority inside a libxdp dispatcher, lower first",
                    );
                    if priority.is_some() && attach == Some(AttachMode::Exclusive) {
                        self.warning(
                            n.pos,
                            "priority has no effect with attach: exclusive".to_string(),
                            Some("it orders programs inside a libxdp dispatcher".to_string()),
                        );
                    }
                    priority.and_then(|p| u32::try_from(p).ok())
                }
            };
            if let (Some(name), Some(xdp_mode), Some(attach), Some(priority)) = (
                name,
                xdp_mode.unwrap_or(Some(XdpMode::Auto)),
                attach,
                priority,
            ) {
                interfaces.push(Interface {
                    name,
                    xdp_mode,
                    attach,
                    priority,
                });
            }
        }
        interfaces
    }

    /// Checks a mapping's keys: unknown ones (with a guess at the intended one) and repeats.
    fn fields<'n>(&mut self, node: &'n Node, what: String, known: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.pos,
                format!("expected a mapping for {what}, found {}", node.kind()),
                None,
            );
            return None;
        };
        let mut fields = Fields {
            pos: node.pos,
            what,
            entries: Vec::new(),
        };
        for entry in entries {
            let key_pos = entry.key.pos;
            let Some(key) = entry.key.scalar() else {
                self.error(
                    key_pos,
                    format!(
                        "a key in {} is {}, not a name",
                        fields.what,
                        entry.key.kind()
                    ),
                    None,
                );
                continue;
            };
            if !known.contains(&key) {
                let known_list = format!("known keys: {}", known.join(", "));
                let hint = match nearest(key, known) {
                    Some(guess) => format!("did you mean \"{guess}\"? {known_list}"),
                    None => known_list,
                };
                self.error(
                    key_pos,
                    format!("unknown key \"{key}\" in {}", fields.what),
                    Some(hint),
                );
            } else if let Some((_, first, _)) = fields.entries.iter().find(|(k, ..)| *k == key) {
                let message = format!(
                    "key \"{key}\" is given twice in {} (first on line {})",
                    fields.what, first.line
                );
                self.error(key_pos, message, None);
            } else {
                fields.entries.push((key, key_pos, &entry.value));
            }
        }
        Some(fields)
    }

    fn required<'n>(&mut self, fields: &Fields<'n>, key: &str) -> Option<&'n Node> {
        let node = fields.get(key);
        if node.is_none() {
            self.error(
                fields.pos,
                format!("{} is missing required key \"{key}\"", fields.what),
                None,
            );
        }
        node
    }

    /// A sequence; an empty value counts as an empty one.
    fn list<'n>(&mut self, node: &'n Node, key: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ if node.is_null() => Some(&[]),
            value => {
                let hint = match value {
                    Value::Scalar { text, .. } => Some(format!("write a list: `{key}: [{text}]`")),
                    _ => None,
                };
                self.error(
                    node.pos,
                    format!("expected a list for {key}, found {}", node.kind()),
                    hint,
                );
                None
            }
        }
    }

    fn string<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n str> {
        match node.scalar() {
            Some(text) if !node.is_null() => Some(text),
            _ => {
                self.error(
                    node.pos,
                    format!("expected {what}, found {}", node.kind()),
                    None,
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, what: &str) -> Option<i128> {
        let number = self.string(node, what)?;
        let parsed = number.parse().ok();
        if parsed.is_none() {
            self.error(
                node.pos,
                format!("expected {what}, found \"{number}\""),
                Some("write a whole number".to_string()),
            );
        }
        parsed
    }

    fn choice<T: Copy>(&mut self, node: &Node, key: &str, options: &[(&str, T)]) -> Option<T> {
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let allowed = format!("allowed values: {}", names.join(", "));
        let Some(text) = node.scalar().filter(|_| !node.is_null()) else {
            self.error(
                node.pos,
                format!("expected a value for {key}, found {}", node.kind()),
                Some(allowed),
            );
            return None;
        };
        if let Some((_, value)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let hint = match nearest(text, &names) {
            Some(guess) => format!("did you mean \"{guess}\"? {allowed}"),
            None => allowed,
        };
        self.error(
            node.pos,
            format!("unknown value \"{text}\" for {key}"),
            Some(hint),
        );
        None
    }

    fn prefix(&mut self, node: &Node, what: &str, hint: &str) -> Option<IpNet> {
        let text = self.string(node, &format!("a {what}"))?;
        let error = match parse_prefix(text) {
            Ok(prefix) => return Some(prefix),
            Err(error) => error,
        };
        let message = format!("{what} {}", error.problem(text));
        let hint = error.hint().unwrap_or_else(|| hint.to_string());
        self.error(node.pos, message, Some(hint));
        None
    }
}

/// A whole number of days, hours, minutes or seconds as the policy would write it.
fn short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| seconds >= *unit && seconds.is_multiple_of(*unit))
    {
        Some((unit, name)) => format!("{}{name}", seconds / unit),
        None => format!("{seconds}s"),
    }
}

/// `30s`, `10m`, `1h`, `1d`, or any combination humantime reads (`1h 30m`); a bare number
/// has no unit and is not a duration.
pub(super) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.starts_with(['-', '+']) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

/// Records where `key` was first seen; returns that place if it was seen before.
fn first_seen<K: Hash + Eq>(seen: &mut HashMap<K, Pos>, key: K, pos: Pos) -> Option<Pos> {
    match seen.entry(key) {
        Slot::Occupied(first) => Some(*first.get()),
        Slot::Vacant(slot) => {
            slot.insert(pos);
            None
        }
    }
}

/// `group "residential"` when the item has a usable name, else `group #2` (1-based).
fn label(node: &Node, kind: &str, index: usize) -> String {
    let name = match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|e| e.key.scalar() == Some("name"))
            .and_then(|e| {
                e.value
                    .scalar()
                    .filter(|n| !n.is_empty() && !e.value.is_null())
            }),
        _ => None,
    };
    match name {
        Some(name) => format!("{kind} \"{name}\""),
        None => format!("{kind} #{}", index + 1),
    }
}

/// The candidate `word` is most likely a misspelling of, if any is close enough.
fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        // Optimal string alignment: a swap of neighbours, the commonest typo, is one edit.
        .map(|&c| (strsim::osa_distance(&word, c), c))
        .filter(|&(d, c)| {
            let common = word
                .chars()
                .zip(c.chars())
                .take_while(|(a, b)| a == b)
                .count();
            d <= (c.len() / 3).max(1) || (common >= 4 && 2 * common >= c.len())
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}
