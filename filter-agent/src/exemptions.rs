//! Exemptions granted by the abuse desk from the CLI (`filter-agent exemptions add`): a
//! customer prefix inside a `block` group that may send on port 25 anyway, with who asked,
//! why and until when.
//!
//! They live in a state file the agent owns, written atomically before a change is
//! reported as done, so a restarted agent restores exactly what was granted. In the
//! kernel maps they are more specific `allow` prefixes of the group [`EXEMPTION_GROUP`],
//! so the filter itself needs no notion of them.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use filter_common::{EXEMPTION_GROUP, EXEMPTION_GROUP_NAME, Smtp, SourceRule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::image::{GroupInfo, MapImage};
use crate::policy;
use crate::state_file;

/// The only state file version this agent reads and writes.
const VERSION: u32 = 1;
/// Longest reason, in characters: it is a ticket reference, not a record.
const MAX_REASON_CHARS: usize = 200;
const HEADER: &str =
    "# Exemptions granted with `filter-agent exemptions add`; managed by the agent.\n";

/// One customer prefix allowed to send on the filtered ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exemption {
    /// A network (host bits clear): the state file may be edited by hand, so it is read as
    /// strictly as the policy.
    #[serde(with = "strict_prefix")]
    pub prefix: IpNet,
    pub reason: String,
    /// The user who asked, from the peer credentials of the CLI's connection.
    pub added_by: String,
    /// Whole seconds, as written to the state file.
    #[serde(with = "crate::rfc3339")]
    pub added_at: SystemTime,
    /// Whole seconds; `None`: until removed.
    #[serde(with = "crate::rfc3339::option", default)]
    pub expires_at: Option<SystemTime>,
}

/// A request refused, or a change to the store that cannot be made; the message is for
/// the operator as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExemptionError(pub String);

impl fmt::Display for ExemptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExemptionError {}

fn refuse<T>(message: impl Into<String>) -> Result<T, ExemptionError> {
    Err(ExemptionError(message.into()))
}

/// The state file's layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    exemptions: Vec<Exemption>,
}

/// Only the version, read first so a future layout is refused for its version rather
/// than for a field this agent does not know.
#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

/// The exemptions granted from the CLI and the file they are kept in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExemptionStore {
    path: PathBuf,
    items: BTreeMap<IpNet, Exemption>,
}

impl ExemptionStore {
    /// Reads the state file; a missing file is an empty store (nothing granted yet).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut store = ExemptionStore {
            path: path.to_path_buf(),
            items: BTreeMap::new(),
        };
        let Some(text) = state_file::read(path, "the exemptions file")? else {
            return Ok(store);
        };
        let corrupt = |e: serde_saphyr::Error| {
            anyhow::anyhow!("{}: invalid exemptions file: {e}", path.display())
        };
        let probe: VersionProbe = state_file::from_yaml(&text).map_err(corrupt)?;
        if probe.version != VERSION {
            anyhow::bail!(
                "{}: exemptions file version {} is not supported (this agent knows version {VERSION})",
                path.display(),
                probe.version
            );
        }
        let file: StateFile = state_file::from_yaml(&text).map_err(corrupt)?;
        for exemption in file.exemptions {
            let prefix = exemption.prefix;
            if store.items.insert(prefix, exemption).is_some() {
                anyhow::bail!(
                    "{}: invalid exemptions file: {prefix} is listed twice",
                    path.display()
                );
            }
        }
        Ok(store)
    }

    /// Writes the state file whole or not at all (see [`state_file::write_atomically`]).
    pub fn save(&self) -> anyhow::Result<()> {
        state_file::write_atomically(&self.path, &self.to_yaml()?, "the exemptions file")
    }

    fn to_yaml(&self) -> anyhow::Result<String> {
        let file = StateFile {
            version: VERSION,
            exemptions: self.items.values().cloned().collect(),
        };
        Ok(format!("{HEADER}{}", state_file::to_yaml(&file)?))
    }

    pub fn insert(&mut self, exemption: Exemption) -> Result<(), ExemptionError> {
        if let Some(existing) = self.items.get(&exemption.prefix) {
            return refuse(format!(
                "{} is already exempt (reason {:?}, added by {} at {}{}); remove it first to change it",
                existing.prefix,
                existing.reason,
                existing.added_by,
                time(existing.added_at),
                match existing.expires_at {
                    Some(at) => format!(", expires {}", time(at)),
                    None => String::new(),
                },
            ));
        }
        self.items.insert(exemption.prefix, exemption);
        Ok(())
    }

    /// Removes the CLI exemption of exactly this prefix. Whether the prefix is a policy
    /// `allow` prefix instead is for the caller, which has the policy, to say.
    pub fn remove(&mut self, prefix: IpNet) -> Result<Exemption, ExemptionError> {
        match self.items.remove(&prefix) {
            Some(exemption) => Ok(exemption),
            None => refuse(format!("{prefix} has no exemption from the CLI")),
        }
    }

    /// Removes and returns the exemptions whose expiry is at or before `now`.
    pub fn take_expired(&mut self, now: SystemTime) -> Vec<Exemption> {
        let expired: Vec<IpNet> = self
            .items
            .values()
            .filter(|e| e.expires_at.is_some_and(|at| at <= now))
            .map(|e| e.prefix)
            .collect();
        expired
            .iter()
            .filter_map(|prefix| self.items.remove(prefix))
            .collect()
    }

    /// When the next exemption expires, for the agent to wake up then.
    #[cfg(test)]
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.items.values().filter_map(|e| e.expires_at).min()
    }

    pub fn get(&self, prefix: IpNet) -> Option<&Exemption> {
        self.items.get(&prefix)
    }

    /// In prefix order.
    pub fn iter(&self) -> impl Iterator<Item = &Exemption> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Turns a request from the CLI into an exemption (not yet checked against the policy or
/// stored).
pub fn parse_request(
    prefix: &str,
    reason: &str,
    expires: Option<&str>,
    until: Option<&str>,
    added_by: &str,
    now: SystemTime,
) -> Result<Exemption, ExemptionError> {
    let prefix = parse_prefix(prefix.trim())?;
    let terms = parse_terms(reason, expires, until, added_by, now)?;
    Ok(Exemption {
        prefix,
        reason: terms.reason,
        added_by: terms.added_by,
        added_at: terms.added_at,
        expires_at: terms.expires_at,
    })
}

/// Why, by whom, since and until when: what every exemption carries, by prefix or by
/// subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terms {
    pub reason: String,
    pub added_by: String,
    pub added_at: SystemTime,
    pub expires_at: Option<SystemTime>,
}

/// The reason and expiry of a request, checked. Times are kept in whole seconds, as the
/// state files hold them: `added_at` is `now` rounded down, the expiry is rounded up so it
/// never comes early.
pub fn parse_terms(
    reason: &str,
    expires: Option<&str>,
    until: Option<&str>,
    added_by: &str,
    now: SystemTime,
) -> Result<Terms, ExemptionError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return refuse("a reason is required (--reason TEXT), e.g. the ticket number");
    }
    if reason.chars().any(char::is_control) {
        return refuse("the reason must be one line of text");
    }
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        return refuse(format!(
            "the reason is {chars} characters long; at most {MAX_REASON_CHARS} (refer to a ticket for details)"
        ));
    }
    let expires_at = match (expires, until) {
        (Some(_), Some(_)) => return refuse("give at most one of --expires and --until"),
        (Some(text), None) => Some(expiry_after(now, text)?),
        (None, Some(text)) => Some(expiry_at(now, text)?),
        (None, None) => None,
    };
    Ok(Terms {
        reason: reason.to_string(),
        added_by: added_by.to_string(),
        added_at: round_down(now),
        expires_at: expires_at.map(round_up),
    })
}

/// `ADDRESS/LENGTH` with the host bits clear, or a bare address as a /32 or /128: the
/// prefix of an exemption as the operator types it (also for `remove`), read as strictly
/// as the policy reads its own, by the same parser, in the CLI's wording.
pub fn parse_prefix(text: &str) -> Result<IpNet, ExemptionError> {
    policy::parse_prefix(text).map_err(|e| ExemptionError(e.sentence(text)))
}

fn expiry_after(now: SystemTime, text: &str) -> Result<SystemTime, ExemptionError> {
    let text = text.trim();
    if text.starts_with('-') {
        return refuse(format!(
            "--expires {text}: the duration must be positive, e.g. 30m, 2h or 7d"
        ));
    }
    let duration = humantime::parse_duration(text).map_err(|e| {
        ExemptionError(format!(
            "--expires {text:?} is not a duration ({e}); use e.g. 30m, 2h or 7d"
        ))
    })?;
    if duration.is_zero() {
        return refuse(format!(
            "--expires {text}: the duration must be longer than zero, e.g. 30m, 2h or 7d"
        ));
    }
    now.checked_add(duration)
        .filter(|at| {
            at.duration_since(UNIX_EPOCH)
                .is_ok_and(|d| d.as_secs() < MAX_SECS)
        })
        .ok_or_else(|| ExemptionError(format!("--expires {text} is too far in the future")))
}

/// Up to the year 9999: what RFC 3339 can write.
const MAX_SECS: u64 = 253_402_300_799;

fn expiry_at(now: SystemTime, text: &str) -> Result<SystemTime, ExemptionError> {
    let text = text.trim();
    let at = humantime::parse_rfc3339(text).map_err(|e| {
        ExemptionError(format!(
            "--until {text:?} is not a time ({e}); use RFC 3339 in UTC, e.g. 2026-12-05T10:00:00Z"
        ))
    })?;
    if at <= now {
        return refuse(format!(
            "--until {text} is in the past (it is now {})",
            time(now)
        ));
    }
    Ok(at)
}

fn round_down(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    UNIX_EPOCH + Duration::from_secs(since.as_secs())
}

fn round_up(t: SystemTime) -> SystemTime {
    let down = round_down(t);
    if down == t {
        t
    } else {
        down + Duration::from_secs(1)
    }
}

pub fn time(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// Refuses an exemption that would not do what the desk expects: outside any `block`
/// group the customers already send, a policy prefix is the policy's to change, and a more
/// specific `block` prefix inside the exemption would keep blocking part of it. `policy`
/// is the image compiled from the policy alone.
pub fn check_against_policy(policy: &MapImage, prefix: IpNet) -> Result<(), ExemptionError> {
    let group_name = |rule: SourceRule| match policy.group(rule.group) {
        Some(group) => group.name.clone(),
        None => format!("#{}", rule.group),
    };
    // The longest policy prefix that contains the whole exemption.
    let covering = std::iter::successors(Some(prefix), IpNet::supernet)
        .find_map(|p| source(policy, p).map(|rule| (p, rule)));
    let Some((covering, rule)) = covering else {
        return refuse(format!(
            "{prefix} is in no group: its customers are unmanaged and already send"
        ));
    };
    if covering == prefix {
        return refuse(format!(
            "{prefix} is listed in the policy's group {}; change the policy instead",
            group_name(rule)
        ));
    }
    if rule.smtp != Smtp::Block as u32 {
        return refuse(format!(
            "{prefix} is in group {}, which already allows SMTP (policy prefix {covering})",
            group_name(rule)
        ));
    }
    if let Some((inner, rule)) = more_specific(policy, prefix)
        .into_iter()
        .find(|(_, rule)| rule.smtp == Smtp::Block as u32)
    {
        return refuse(format!(
            "{prefix} contains {inner} of group {}, which would still block SMTP there; exempt smaller prefixes around it or change the policy",
            group_name(rule)
        ));
    }
    Ok(())
}

fn source(image: &MapImage, prefix: IpNet) -> Option<SourceRule> {
    match prefix {
        IpNet::V4(p) => image.sources_v4.get(&p).copied(),
        IpNet::V6(p) => image.sources_v6.get(&p).copied(),
    }
}

/// The image's prefixes strictly inside `prefix` (a network), in address order.
fn more_specific(image: &MapImage, prefix: IpNet) -> Vec<(IpNet, SourceRule)> {
    // Prefixes order by address first, so those inside lie between the network and the
    // broadcast address as a host prefix.
    let inside = |p: &IpNet| p.prefix_len() > prefix.prefix_len();
    match prefix {
        IpNet::V4(net) => {
            let last = Ipv4Net::from(net.broadcast());
            image
                .sources_v4
                .range(net..=last)
                .map(|(p, rule)| (IpNet::V4(*p), *rule))
                .filter(|(p, _)| inside(p))
                .collect()
        }
        IpNet::V6(net) => {
            let last = Ipv6Net::from(net.broadcast());
            image
                .sources_v6
                .range(net..=last)
                .map(|(p, rule)| (IpNet::V6(*p), *rule))
                .filter(|(p, _)| inside(p))
                .collect()
        }
    }
}

/// Adds the exemptions to `image` (compiled from the policy) as `allow` prefixes of the
/// group [`EXEMPTION_GROUP`]. An exemption whose prefix the policy now lists itself is
/// skipped, the policy's entry winning; those are returned for the agent to log.
pub fn apply(image: &mut MapImage, store: &ExemptionStore) -> Vec<IpNet> {
    apply_prefixes(image, store.iter().map(|e| e.prefix))
}

/// Adds `prefixes` to `image` as exemptions, as [`apply`] does; a prefix exempt already
/// (by another exemption) is no change, one the policy lists is skipped and returned.
pub fn apply_prefixes(
    image: &mut MapImage,
    prefixes: impl IntoIterator<Item = IpNet>,
) -> Vec<IpNet> {
    let rule = SourceRule::new(EXEMPTION_GROUP, Smtp::Allow);
    let mut skipped = Vec::new();
    let mut applied = false;
    for prefix in prefixes {
        match source(image, prefix) {
            // Already applied to this image: applying twice changes nothing.
            Some(existing) if existing == rule => applied = true,
            Some(_) => skipped.push(prefix),
            None => {
                image.insert_source(prefix, rule);
                applied = true;
            }
        }
    }
    if applied {
        image.groups.insert(
            EXEMPTION_GROUP,
            GroupInfo {
                name: EXEMPTION_GROUP_NAME.to_string(),
                smtp: Smtp::Allow,
            },
        );
    }
    skipped
}

/// Prefixes as text, read strictly (host bits clear).
mod strict_prefix {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(prefix: &IpNet, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(prefix)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_prefix(&text).map_err(Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use std::{fs, os::unix::fs::PermissionsExt};

    use filter_common::{Reason, Verdict};
    use tempfile::TempDir;

    use super::*;
    use crate::model::judge_flow;

    /// The lab policy's groups: residential and business-broadband block, business-ethernet
    /// (inside business-broadband) and leased-line allow.
    const POLICY: &str = "
version: 1
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]
  - name: business-broadband
    smtp: block
    prefixes: [192.0.2.0/24]
  - name: business-ethernet
    smtp: allow
    prefixes: [192.0.2.128/26]
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25]
";

    fn policy() -> MapImage {
        crate::policy::parse(POLICY, "policy.yaml")
            .unwrap()
            .policy
            .compile()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn now() -> SystemTime {
        at("2026-11-28T10:00:00.250Z")
    }

    fn request(prefix: &str, expires: Option<&str>, until: Option<&str>) -> Exemption {
        parse_request(prefix, "ticket 4711", expires, until, "root", now()).unwrap()
    }

    fn refusal(prefix: &str, reason: &str, expires: Option<&str>, until: Option<&str>) -> String {
        parse_request(prefix, reason, expires, until, "root", now())
            .unwrap_err()
            .0
    }

    fn store(dir: &TempDir, exemptions: &[Exemption]) -> ExemptionStore {
        let mut store = ExemptionStore::load(&dir.path().join("exemptions.yaml")).unwrap();
        for e in exemptions {
            store.insert(e.clone()).unwrap();
        }
        store
    }

    #[test]
    fn request_is_parsed_with_whole_second_times() {
        let e = parse_request(
            " 100.64.0.10 ",
            "  ticket 4711: customer runs own MTA ",
            Some("7d"),
            None,
            "alice",
            now(),
        )
        .unwrap();
        assert_eq!(
            e,
            Exemption {
                prefix: net("100.64.0.10/32"),
                reason: "ticket 4711: customer runs own MTA".into(),
                added_by: "alice".into(),
                added_at: at("2026-11-28T10:00:00Z"),
                expires_at: Some(at("2026-12-05T10:00:01Z")),
            }
        );
        let e = request("2001:db8:1000::/64", None, Some("2026-12-05T10:00:00Z"));
        assert_eq!(e.expires_at, Some(at("2026-12-05T10:00:00Z")));
        assert_eq!(request("100.64.0.0/24", None, None).expires_at, None);
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert_eq!(
            refusal("mail.example", "t", None, None),
            "\"mail.example\" is not an IP address or prefix (expected ADDRESS/LENGTH, e.g. \
             100.64.0.10/32)"
        );
        assert_eq!(
            refusal("100.64.0.0/33", "t", None, None),
            "\"100.64.0.0/33\" has an invalid length (an IPv4 prefix length is 0 to 32)"
        );
        assert_eq!(
            refusal("2001:db8::/x", "t", None, None),
            "\"2001:db8::/x\" has an invalid length (an IPv6 prefix length is 0 to 128)"
        );
        assert_eq!(
            refusal("100.64.0.10/24", "t", None, None),
            "100.64.0.10/24 has host bits set (did you mean 100.64.0.0/24?)"
        );
    }

    #[test]
    fn bad_reasons_are_refused() {
        let missing = "a reason is required (--reason TEXT), e.g. the ticket number";
        assert_eq!(refusal("100.64.0.10", "", None, None), missing);
        assert_eq!(refusal("100.64.0.10", " \t ", None, None), missing);
        assert_eq!(
            refusal("100.64.0.10", "ticket\n4711", None, None),
            "the reason must be one line of text"
        );
        assert_eq!(
            refusal("100.64.0.10", &"x".repeat(201), None, None),
            "the reason is 201 characters long; at most 200 (refer to a ticket for details)"
        );
        assert!(parse_request("100.64.0.10", &"é".repeat(200), None, None, "root", now()).is_ok());
    }

    #[test]
    fn bad_expiries_are_refused() {
        assert_eq!(
            refusal("100.64.0.10", "t", Some("2h"), Some("2026-12-05T10:00:00Z")),
            "give at most one of --expires and --until"
        );
        assert_eq!(
            refusal("100.64.0.10", "t", Some("0s"), None),
            "--expires 0s: the duration must be longer than zero, e.g. 30m, 2h or 7d"
        );
        assert_eq!(
            refusal("100.64.0.10", "t", Some("-2h"), None),
            "--expires -2h: the duration must be positive, e.g. 30m, 2h or 7d"
        );
        assert_eq!(
            refusal("100.64.0.10", "t", Some("soon"), None),
            "--expires \"soon\" is not a duration (expected number at 0); use e.g. 30m, 2h or 7d"
        );
        assert_eq!(
            refusal("100.64.0.10", "t", Some("100000000y"), None),
            "--expires 100000000y is too far in the future"
        );
        assert_eq!(
            refusal("100.64.0.10", "t", None, Some("2026-11-28T10:00:00Z")),
            "--until 2026-11-28T10:00:00Z is in the past (it is now 2026-11-28T10:00:00Z)"
        );
        assert_eq!(
            refusal("100.64.0.10", "t", None, Some("next friday")),
            "--until \"next friday\" is not a time (timestamp format is invalid); \
             use RFC 3339 in UTC, e.g. 2026-12-05T10:00:00Z"
        );
    }

    #[test]
    fn insert_of_an_exempt_prefix_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(&dir, &[request("100.64.0.10", Some("7d"), None)]);
        let mut again = request("100.64.0.10", None, None);
        again.reason = "other".into();
        assert_eq!(
            store.insert(again).unwrap_err().0,
            "100.64.0.10/32 is already exempt (reason \"ticket 4711\", added by root at \
             2026-11-28T10:00:00Z, expires 2026-12-05T10:00:01Z); remove it first to change it"
        );
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.get(net("100.64.0.10/32")).unwrap().reason,
            "ticket 4711"
        );
    }

    #[test]
    fn remove_returns_the_exemption_or_says_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let e = request("100.64.0.10", None, None);
        let mut store = store(&dir, std::slice::from_ref(&e));
        assert_eq!(
            store.remove(net("100.64.0.11/32")).unwrap_err().0,
            "100.64.0.11/32 has no exemption from the CLI"
        );
        assert_eq!(store.remove(e.prefix), Ok(e));
        assert!(store.is_empty());
    }

    #[test]
    fn only_prefixes_inside_a_block_group_may_be_exempt() {
        let policy = policy();
        let check = |p: &str| check_against_policy(&policy, net(p)).map_err(|e| e.0);
        assert_eq!(check("100.64.0.10/32"), Ok(()));
        assert_eq!(check("192.0.2.64/26"), Ok(()));
        assert_eq!(check("2001:db8:1000::/64"), Ok(()));
        assert_eq!(
            check("203.0.113.0/24"),
            Err(
                "203.0.113.0/24 is in no group: its customers are unmanaged and already send"
                    .into()
            )
        );
        assert_eq!(
            check("198.51.100.130/32"),
            Err(
                "198.51.100.130/32 is in group leased-line, which already allows SMTP \
                 (policy prefix 198.51.100.128/25)"
                    .into()
            )
        );
        // Inside an allow group inside a block group: the allow group decides.
        assert_eq!(
            check("192.0.2.130/32"),
            Err(
                "192.0.2.130/32 is in group business-ethernet, which already allows SMTP \
                 (policy prefix 192.0.2.128/26)"
                    .into()
            )
        );
        assert_eq!(
            check("100.64.0.0/10"),
            Err("100.64.0.0/10 is listed in the policy's group residential; change the policy instead".into())
        );
        assert_eq!(
            check("192.0.2.128/26"),
            Err("192.0.2.128/26 is listed in the policy's group business-ethernet; change the policy instead".into())
        );
        // Wider than the block prefix: its network address is unmanaged.
        assert_eq!(
            check("100.0.0.0/8"),
            Err("100.0.0.0/8 is in no group: its customers are unmanaged and already send".into())
        );
    }

    #[test]
    fn an_exemption_around_a_more_specific_block_prefix_is_refused() {
        let mut policy = policy();
        let residential = source(&policy, net("100.64.0.0/10")).unwrap();
        policy.insert_source(net("100.64.5.0/24"), residential);
        assert_eq!(
            check_against_policy(&policy, net("100.64.0.0/16"))
                .unwrap_err()
                .0,
            "100.64.0.0/16 contains 100.64.5.0/24 of group residential, which would still block \
             SMTP there; exempt smaller prefixes around it or change the policy"
        );
        // A more specific allow prefix inside is no obstacle: it sends either way.
        assert_eq!(check_against_policy(&policy, net("192.0.2.0/25")), Ok(()));
        assert_eq!(check_against_policy(&policy, net("100.64.4.0/24")), Ok(()));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = request("100.64.0.10", None, Some("2026-12-05T10:00:00Z"));
        e.reason = "ticket 4711: customer runs own MTA".into();
        let saved = store(
            &dir,
            &[
                e,
                request("2001:db8:1000::/64", None, None),
                request("192.0.2.0/25", Some("2h"), None),
            ],
        );
        saved.save().unwrap();
        let loaded = ExemptionStore::load(saved.path()).unwrap();
        assert_eq!(loaded, saved);
        let text = fs::read_to_string(saved.path()).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("version: 1\n"), "{text}");
        assert!(text.contains("- prefix: 100.64.0.10/32\n"), "{text}");
        assert!(
            text.contains("reason: \"ticket 4711: customer runs own MTA\"\n"),
            "{text}"
        );
        assert!(text.contains("added_by: root\n"), "{text}");
        assert!(text.contains("added_at: 2026-11-28T10:00:00Z\n"), "{text}");
        assert!(
            text.contains("expires_at: 2026-12-05T10:00:00Z\n"),
            "{text}"
        );
        assert!(text.contains("expires_at: null\n"), "{text}");
        let mode = fs::metadata(saved.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn hand_written_file_in_the_documented_format_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exemptions.yaml");
        fs::write(
            &path,
            "# Exemptions granted with `filter-agent exemptions add`; managed by the agent.
version: 1
exemptions:
  - prefix: 100.64.0.10/32
    reason: \"ticket 4711: customer runs own MTA\"
    added_by: root
    added_at: 2026-11-28T10:00:00Z
    expires_at: 2026-12-05T10:00:00Z
  - prefix: 100.64.0.11/32
    reason: no expiry given
    added_by: root
    added_at: 2026-11-28T10:00:00Z
",
        )
        .unwrap();
        let store = ExemptionStore::load(&path).unwrap();
        let items: Vec<_> = store.iter().cloned().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].expires_at, Some(at("2026-12-05T10:00:00Z")));
        assert_eq!(items[1].expires_at, None);
    }

    /// Byte for byte as the agent wrote it with serde_yaml, before serde-saphyr.
    #[test]
    fn file_written_by_earlier_agents_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exemptions.yaml");
        fs::write(
            &path,
            "# Exemptions granted with `filter-agent exemptions add`; managed by the agent.
version: 1
exemptions:
- prefix: 100.64.0.10/32
  reason: 'ticket 4711: customer runs own MTA'
  added_by: root
  added_at: 2026-11-28T10:00:00Z
  expires_at: 2026-12-05T10:00:00Z
- prefix: 2001:db8:1000::/64
  reason: it's 'null'
  added_by: root
  added_at: 2026-11-28T10:00:00Z
  expires_at: null
",
        )
        .unwrap();
        let store = ExemptionStore::load(&path).unwrap();
        let items: Vec<_> = store.iter().cloned().collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].reason, "ticket 4711: customer runs own MTA");
        assert_eq!(items[0].expires_at, Some(at("2026-12-05T10:00:00Z")));
        assert_eq!(items[1].reason, "it's 'null'");
        assert_eq!(items[1].expires_at, None);
        store.save().unwrap();
        assert_eq!(ExemptionStore::load(&path).unwrap(), store);
    }

    #[test]
    fn missing_file_is_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ExemptionStore::load(&dir.path().join("nothing.yaml")).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.next_expiry(), None);
    }

    #[test]
    fn save_creates_the_directory_and_replaces_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("lib/filter-agent");
        let path = state.join("exemptions.yaml");
        let mut store = ExemptionStore::load(&path).unwrap();
        store.insert(request("100.64.0.10", None, None)).unwrap();
        store.save().unwrap();
        let dir_mode = fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o755 & !umask());

        // A longer file, and a temporary file a crash left behind.
        fs::write(&path, "#".repeat(10_000)).unwrap();
        fs::write(state.join(".exemptions.yaml.tmp"), "stale").unwrap();
        store.save().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), store.to_yaml().unwrap());
        let names: Vec<_> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["exemptions.yaml"]);
    }

    /// The process's umask, which `DirBuilder::mode` is subject to.
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exemptions.yaml");
        let error = |text: &str| {
            fs::write(&path, text).unwrap();
            format!("{:#}", ExemptionStore::load(&path).unwrap_err())
        };
        let name = path.display().to_string();
        let e = error("version: 1\nexemptions:\n  - prefix: 100.64.0.10/24\n");
        assert!(
            e.starts_with(&format!("{name}: invalid exemptions file: ")),
            "{e}"
        );
        assert!(e.contains("100.64.0.10/24 has host bits set"), "{e}");
        assert!(e.ends_with(" at line 3, column 13"), "{e}");
        let e = error("version: 1\nexemptions: [\n");
        assert!(
            e.starts_with(&format!("{name}: invalid exemptions file: ")),
            "{e}"
        );
        let e = error("");
        assert!(
            e.starts_with(&format!("{name}: invalid exemptions file: ")),
            "{e}"
        );
        let e = error("version: 2\nexemptions: []\nowners: {}\n");
        assert_eq!(
            e,
            format!(
                "{name}: exemptions file version 2 is not supported (this agent knows version 1)"
            )
        );
        let entry = "  - {prefix: 100.64.0.10/32, reason: r, added_by: root, added_at: 2026-11-28T10:00:00Z}\n";
        let e = error(&format!("version: 1\nexemptions:\n{entry}{entry}"));
        assert_eq!(
            e,
            format!("{name}: invalid exemptions file: 100.64.0.10/32 is listed twice")
        );
        let e = error(
            "version: 1\nexemptions:\n  - {prefix: 100.64.0.10/32, reason: r, added_by: root, added_at: yesterday}\n",
        );
        assert!(
            e.contains("\"yesterday\" is not an RFC 3339 UTC time"),
            "{e}"
        );

        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let e = format!("{:#}", ExemptionStore::load(&path).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot read the exemptions file {name}: ")),
            "{e}"
        );
    }

    #[test]
    fn expired_exemptions_are_taken_out_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(
            &dir,
            &[
                request("100.64.0.10", Some("2h"), None),
                request("100.64.0.11", Some("30m"), None),
                request("100.64.0.12", None, None),
            ],
        );
        let half_hour = at("2026-11-28T10:30:01Z");
        assert_eq!(store.next_expiry(), Some(half_hour));
        assert!(store.take_expired(at("2026-11-28T10:30:00Z")).is_empty());
        let expired = store.take_expired(half_hour);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].prefix, net("100.64.0.11/32"));
        assert_eq!(store.next_expiry(), Some(at("2026-11-28T12:00:01Z")));
        assert_eq!(store.take_expired(at("2027-01-01T00:00:00Z")).len(), 1);
        assert_eq!(store.next_expiry(), None);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn apply_adds_allow_prefixes_of_the_exemption_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = policy();
        assert!(apply(&mut image, &store(&dir, &[])).is_empty());
        assert_eq!(image, policy(), "no exemptions, no group");

        let store = store(
            &dir,
            &[
                request("100.64.0.10", None, None),
                request("2001:db8:1000::/64", None, None),
            ],
        );
        let rule = SourceRule::new(EXEMPTION_GROUP, Smtp::Allow);
        assert!(apply(&mut image, &store).is_empty());
        assert_eq!(source(&image, net("100.64.0.10/32")), Some(rule));
        assert_eq!(source(&image, net("2001:db8:1000::/64")), Some(rule));
        assert_eq!(image.source_count(), policy().source_count() + 2);
        assert_eq!(
            image.group(EXEMPTION_GROUP),
            Some(&GroupInfo {
                name: EXEMPTION_GROUP_NAME.into(),
                smtp: Smtp::Allow
            })
        );
        let once = image.clone();
        assert!(apply(&mut image, &store).is_empty());
        assert_eq!(image, once, "applying twice changes nothing");
    }

    #[test]
    fn apply_skips_prefixes_the_policy_now_lists() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(
            &dir,
            &[
                request("100.64.0.10", None, None),
                request("192.0.2.0/25", None, None),
            ],
        );
        let changed = POLICY.replace("[192.0.2.0/24]", "[192.0.2.0/24, 192.0.2.0/25]");
        let mut image = crate::policy::parse(&changed, "policy.yaml")
            .unwrap()
            .policy
            .compile();
        let policy_rule = source(&image, net("192.0.2.0/25"));
        assert_eq!(apply(&mut image, &store), [net("192.0.2.0/25")]);
        assert_eq!(source(&image, net("192.0.2.0/25")), policy_rule);
        assert_eq!(
            source(&image, net("100.64.0.10/32")).unwrap().group,
            EXEMPTION_GROUP
        );
    }

    #[test]
    fn an_exempt_customer_may_send() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy();
        let exemption = request("100.64.0.10", None, None);
        check_against_policy(&policy, exemption.prefix).unwrap();
        let mut image = policy.clone();
        apply(&mut image, &store(&dir, &[exemption]));

        let remote: IpAddr = "203.0.113.9".parse().unwrap();
        let exempt: IpAddr = "100.64.0.10".parse().unwrap();
        let neighbour: IpAddr = "100.64.0.11".parse().unwrap();
        let before = judge_flow(&policy, exempt, remote, 25);
        assert_eq!(
            (before.verdict, before.reason),
            (Verdict::Drop, Reason::Blocked)
        );
        let after = judge_flow(&image, exempt, remote, 25);
        assert_eq!(
            (after.verdict, after.reason),
            (Verdict::Pass, Reason::Exempt)
        );
        assert_eq!(after.group, EXEMPTION_GROUP);
        assert_eq!(after.source_prefix, Some(net("100.64.0.10/32")));
        let other = judge_flow(&image, neighbour, remote, 25);
        assert_eq!(
            (other.verdict, other.reason),
            (Verdict::Drop, Reason::Blocked)
        );
    }
}
