//! Who is online with which addresses: the sessions the BNG's hooks and RADIUS accounting
//! report, kept in `STATE_DIR/sessions.yaml` so a restarted agent still knows.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::state_file;

const VERSION: u32 = 1;
const HEADER: &str =
    "# Subscriber sessions reported by the BNG (hooks, RADIUS accounting); managed by the agent.\n";
/// Longest subscriber name or session id, in bytes: RADIUS attributes hold at most 253.
pub const MAX_NAME_BYTES: usize = 253;
/// Addresses and prefixes one session may hold.
pub const MAX_ADDRESSES: usize = 16;
/// The widest prefix a session may hold, per family: a routed business block or an IPv6
/// delegation, never a whole region.
const MIN_PREFIX_V4: u8 = 16;
const MIN_PREFIX_V6: u8 = 32;

/// Where a session was reported from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    /// `filter-agent sessions up`, e.g. from pppd's ip-up.
    Hook,
    /// RADIUS accounting from a BNG, or replicated by the ISP's RADIUS server.
    Radius,
}

impl Feed {
    pub fn name(self) -> &'static str {
        match self {
            Feed::Hook => "hook",
            Feed::Radius => "radius",
        }
    }
}

/// What identifies a session: a hook's session id, or a BNG's Acct-Session-Id (unique per
/// BNG only, so the BNG is part of it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub feed: Feed,
    /// The BNG that reported it (its NAS-IP-Address or NAS-Identifier, else the sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nas: Option<String>,
    pub session_id: String,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.nas {
            Some(nas) => write!(f, "{}:{nas}:{}", self.feed.name(), self.session_id),
            None => write!(f, "{}:{}", self.feed.name(), self.session_id),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    #[serde(flatten)]
    pub key: SessionKey,
    pub subscriber: String,
    /// Sorted, no repeats: IPv4 addresses as /32, IPv6 prefixes.
    pub addresses: Vec<IpNet>,
    #[serde(with = "crate::rfc3339")]
    pub started_at: SystemTime,
    /// The last Start, Interim-Update or hook call for it.
    #[serde(with = "crate::rfc3339")]
    pub updated_at: SystemTime,
}

/// A request about sessions that cannot be carried out; the message is for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError(pub String);

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SessionError {}

/// A subscriber name or session id as the feeds give it: one line of text that fits a
/// RADIUS attribute.
pub fn check_name(text: &str, what: &str) -> Result<String, SessionError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SessionError(format!("the {what} is empty")));
    }
    if text.chars().any(char::is_control) {
        return Err(SessionError(format!(
            "the {what} {text:?} contains control characters"
        )));
    }
    if text.len() > MAX_NAME_BYTES {
        return Err(SessionError(format!(
            "the {what} is {} bytes long; at most {MAX_NAME_BYTES}",
            text.len()
        )));
    }
    Ok(text.to_string())
}

/// One address or prefix of a session: host bits clear, a unicast address, not wider
/// than a /16 (IPv4) or /32 (IPv6).
pub fn check_address(prefix: IpNet) -> Result<IpNet, SessionError> {
    let addr = prefix.addr();
    let special = addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || matches!(addr, IpAddr::V4(a) if a.is_broadcast());
    if special {
        return Err(SessionError(format!(
            "{prefix} is not a customer address (unspecified, loopback, multicast or broadcast)"
        )));
    }
    let min = if addr.is_ipv4() {
        MIN_PREFIX_V4
    } else {
        MIN_PREFIX_V6
    };
    if prefix.prefix_len() < min {
        return Err(SessionError(format!(
            "{prefix} is wider than a session holds (at most a /{min})"
        )));
    }
    Ok(prefix)
}

/// What [`SessionTable::up`] changed besides the session itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpReport {
    /// The session's previous state, if it was known.
    pub previous: Option<Session>,
    /// Addresses taken from another session (the newest claim wins): the address, that
    /// session and its subscriber.
    pub moved: Vec<(IpNet, SessionKey, String)>,
    /// Sessions left without an address by that, and so ended.
    pub emptied: Vec<Session>,
}

/// The sessions, and the file they are kept in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    path: PathBuf,
    sessions: BTreeMap<SessionKey, Session>,
    /// Which session holds each address (derived from `sessions`).
    holders: BTreeMap<IpNet, SessionKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    sessions: Vec<Session>,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u32,
}

impl SessionTable {
    /// Reads the sessions file; a missing file is no sessions.
    pub fn load(path: &Path) -> anyhow::Result<SessionTable> {
        let mut table = SessionTable {
            path: path.to_path_buf(),
            sessions: BTreeMap::new(),
            holders: BTreeMap::new(),
        };
        let Some(text) = state_file::read(path, "the sessions file")? else {
            return Ok(table);
        };
        let corrupt = |e: serde_saphyr::Error| {
            anyhow::anyhow!("{}: invalid sessions file: {e}", path.display())
        };
        let probe: VersionProbe = state_file::from_yaml(&text).map_err(corrupt)?;
        if probe.version != VERSION {
            anyhow::bail!(
                "{}: sessions file version {} is not supported (this agent knows version {VERSION})",
                path.display(),
                probe.version
            );
        }
        let file: StateFile = state_file::from_yaml(&text).map_err(corrupt)?;
        for session in file.sessions {
            let invalid = |why: String| {
                anyhow::anyhow!(
                    "{}: invalid sessions file: session {}: {why}",
                    path.display(),
                    session.key
                )
            };
            for address in &session.addresses {
                check_address(*address).map_err(|e| invalid(e.0))?;
                if let Some(other) = table.holders.get(address) {
                    return Err(invalid(format!("{address} is also held by {other}")));
                }
                table.holders.insert(*address, session.key.clone());
            }
            if table.sessions.contains_key(&session.key) {
                return Err(invalid("listed twice".into()));
            }
            table.sessions.insert(session.key.clone(), session);
        }
        Ok(table)
    }

    /// Writes the file whole or not at all.
    pub fn save(&self) -> anyhow::Result<()> {
        let file = StateFile {
            version: VERSION,
            sessions: self.sessions.values().cloned().collect(),
        };
        let text = format!("{HEADER}{}", state_file::to_yaml(&file)?);
        state_file::write_atomically(&self.path, &text, "the sessions file")
    }

    /// Starts or updates a session with `addresses` (checked, sorted and deduplicated by
    /// the caller's [`Session`]), taking each address from any other session holding it.
    pub fn up(&mut self, mut session: Session) -> UpReport {
        session.addresses.sort();
        session.addresses.dedup();
        let mut report = UpReport {
            previous: self.remove(&session.key),
            ..UpReport::default()
        };
        if let Some(previous) = &report.previous {
            session.started_at = previous.started_at;
        }
        for address in &session.addresses {
            let Some(holder) = self.holders.get(address).cloned() else {
                continue;
            };
            let other = self
                .sessions
                .get_mut(&holder)
                .expect("every holder is a session");
            other.addresses.retain(|a| a != address);
            report
                .moved
                .push((*address, holder.clone(), other.subscriber.clone()));
            if other.addresses.is_empty()
                && let Some(emptied) = self.remove(&holder)
            {
                report.emptied.push(emptied);
            }
        }
        for address in &session.addresses {
            self.holders.insert(*address, session.key.clone());
        }
        self.sessions.insert(session.key.clone(), session);
        report
    }

    /// Ends one session.
    pub fn remove(&mut self, key: &SessionKey) -> Option<Session> {
        let session = self.sessions.remove(key)?;
        for address in &session.addresses {
            self.holders.remove(address);
        }
        Some(session)
    }

    /// Ends every session `matches` picks.
    pub fn remove_where(&mut self, matches: impl Fn(&Session) -> bool) -> Vec<Session> {
        let keys: Vec<SessionKey> = self
            .sessions
            .values()
            .filter(|s| matches(s))
            .map(|s| s.key.clone())
            .collect();
        keys.iter().filter_map(|key| self.remove(key)).collect()
    }

    /// An Interim-Update that changes nothing but the time.
    pub fn touch(&mut self, key: &SessionKey, now: SystemTime) {
        if let Some(session) = self.sessions.get_mut(key) {
            session.updated_at = now;
        }
    }

    /// Ends the RADIUS sessions with no update for `timeout` (hook sessions end with
    /// their hook).
    pub fn take_stale(&mut self, now: SystemTime, timeout: Duration) -> Vec<Session> {
        self.remove_where(|s| {
            s.key.feed == Feed::Radius
                && now
                    .duration_since(s.updated_at)
                    .is_ok_and(|idle| idle >= timeout)
        })
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.sessions.get(key)
    }

    /// The session whose address or prefix holds `addr` (the longest one).
    pub fn holder_of(&self, addr: IpAddr) -> Option<&Session> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            self.holders
                .get(&net)
                .and_then(|key| self.sessions.get(key))
        })
    }

    /// The session holding all of `prefix` (an IPv6 /64 of an offender record, say).
    pub fn holder_of_prefix(&self, prefix: IpNet) -> Option<&Session> {
        std::iter::successors(Some(prefix), IpNet::supernet)
            .find_map(|net| self.holders.get(&net))
            .and_then(|key| self.sessions.get(key))
            .or_else(|| {
                // A session holding a longer prefix inside it (a /128 inside a /64).
                self.holders
                    .range(prefix..)
                    .next()
                    .filter(|(net, _)| prefix.contains(*net))
                    .and_then(|(_, key)| self.sessions.get(key))
            })
    }

    /// The sessions of one subscriber.
    pub fn of_subscriber<'a>(&'a self, subscriber: &'a str) -> impl Iterator<Item = &'a Session> {
        self.sessions
            .values()
            .filter(move |s| s.subscriber == subscriber)
    }

    /// By feed, BNG and session id.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000 + secs)
    }

    fn key(feed: Feed, id: &str) -> SessionKey {
        SessionKey {
            feed,
            nas: (feed == Feed::Radius).then(|| "192.0.2.1".to_string()),
            session_id: id.into(),
        }
    }

    fn session(feed: Feed, id: &str, subscriber: &str, addresses: &[&str], t: u64) -> Session {
        Session {
            key: key(feed, id),
            subscriber: subscriber.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            started_at: at(t),
            updated_at: at(t),
        }
    }

    fn table(dir: &tempfile::TempDir) -> SessionTable {
        SessionTable::load(&dir.path().join("sessions.yaml")).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn alice_reconnects_with_a_new_address_and_bob_gets_her_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(&dir);
        t.up(session(
            Feed::Radius,
            "a1",
            "alice",
            &["100.64.0.20/32", "2001:db8:1000:2000::/56"],
            0,
        ));
        assert_eq!(t.holder_of(ip("100.64.0.20")).unwrap().subscriber, "alice");
        assert_eq!(
            t.holder_of(ip("2001:db8:1000:2000::5")).unwrap().subscriber,
            "alice"
        );
        assert_eq!(
            t.holder_of_prefix("2001:db8:1000:2000::/64".parse().unwrap())
                .unwrap()
                .subscriber,
            "alice"
        );
        assert!(t.holder_of(ip("100.64.0.21")).is_none());

        t.remove(&key(Feed::Radius, "a1")).unwrap();
        t.up(session(
            Feed::Radius,
            "a2",
            "alice",
            &["100.64.0.21/32"],
            10,
        ));
        t.up(session(Feed::Radius, "b1", "bob", &["100.64.0.20/32"], 11));
        assert_eq!(t.holder_of(ip("100.64.0.21")).unwrap().subscriber, "alice");
        assert_eq!(t.holder_of(ip("100.64.0.20")).unwrap().subscriber, "bob");
        assert!(t.holder_of(ip("2001:db8:1000:2000::5")).is_none());
        assert_eq!(t.of_subscriber("alice").count(), 1);
    }

    #[test]
    fn the_newest_claim_to_an_address_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(&dir);
        t.up(session(
            Feed::Hook,
            "ppp0",
            "alice",
            &["100.64.0.20/32", "2001:db8:1000:20::/64"],
            0,
        ));
        // Bob's Start arrives before alice's Stop.
        let report = t.up(session(Feed::Radius, "b1", "bob", &["100.64.0.20/32"], 5));
        assert_eq!(
            report.moved,
            [(
                "100.64.0.20/32".parse().unwrap(),
                key(Feed::Hook, "ppp0"),
                "alice".into()
            )]
        );
        assert!(report.emptied.is_empty());
        assert_eq!(t.holder_of(ip("100.64.0.20")).unwrap().subscriber, "bob");
        assert_eq!(
            t.get(&key(Feed::Hook, "ppp0")).unwrap().addresses,
            ["2001:db8:1000:20::/64".parse::<IpNet>().unwrap()]
        );
        // Taking alice's last address ends her session.
        let report = t.up(session(
            Feed::Radius,
            "b1",
            "bob",
            &["100.64.0.20/32", "2001:db8:1000:20::/64"],
            6,
        ));
        assert_eq!(report.emptied.len(), 1);
        assert_eq!(report.previous.unwrap().started_at, at(5));
        assert!(t.get(&key(Feed::Hook, "ppp0")).is_none());
        assert_eq!(
            t.get(&key(Feed::Radius, "b1")).unwrap().started_at,
            at(5),
            "an update keeps the start"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn an_update_replaces_the_addresses_of_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(&dir);
        t.up(session(Feed::Radius, "a1", "alice", &["100.64.0.20/32"], 0));
        t.up(session(
            Feed::Radius,
            "a1",
            "alice",
            &["100.64.0.22/32", "100.64.0.22/32"],
            1,
        ));
        assert!(t.holder_of(ip("100.64.0.20")).is_none());
        assert_eq!(t.get(&key(Feed::Radius, "a1")).unwrap().addresses.len(), 1);
    }

    #[test]
    fn stale_radius_sessions_time_out_and_hook_sessions_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(&dir);
        t.up(session(Feed::Radius, "a1", "alice", &["100.64.0.20/32"], 0));
        t.up(session(Feed::Radius, "b1", "bob", &["100.64.0.21/32"], 0));
        t.up(session(Feed::Hook, "ppp0", "carol", &["100.64.0.22/32"], 0));
        t.touch(&key(Feed::Radius, "b1"), at(3000));
        let stale = t.take_stale(at(7200), Duration::from_secs(7200));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].subscriber, "alice");
        assert!(t.holder_of(ip("100.64.0.20")).is_none());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn sessions_survive_a_save_and_load_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(&dir);
        t.up(session(
            Feed::Radius,
            "a1",
            "alice@isp.example",
            &["100.64.0.20/32", "2001:db8:1000:2000::/56"],
            0,
        ));
        t.up(session(
            Feed::Hook,
            "ppp0-1234",
            "bob",
            &["100.64.0.21/32"],
            1,
        ));
        t.save().unwrap();
        let loaded = table(&dir);
        assert_eq!(loaded, t);
        let text = std::fs::read_to_string(dir.path().join("sessions.yaml")).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("feed: radius\n"), "{text}");
        assert!(text.contains("nas: 192.0.2.1\n"), "{text}");

        let path = dir.path().join("sessions.yaml");
        let entry = |id: &str, addr: &str| {
            format!(
                "  - {{feed: hook, session_id: {id}, subscriber: x, addresses: [{addr}], started_at: 2026-11-28T10:00:00Z, updated_at: 2026-11-28T10:00:00Z}}\n"
            )
        };
        for (text, why) in [
            (
                format!(
                    "version: 1\nsessions:\n{}{}",
                    entry("s1", "100.64.0.20/32"),
                    entry("s2", "100.64.0.20/32")
                ),
                "100.64.0.20/32 is also held by hook:s1",
            ),
            (
                format!("version: 1\nsessions:\n{}", entry("s1", "0.0.0.0/0")),
                "not a customer address",
            ),
            (
                format!("version: 1\nsessions:\n{}", entry("s1", "10.0.0.0/8")),
                "wider than a session holds",
            ),
            (
                "version: 2\nsessions: []\n".to_string(),
                "version 2 is not supported",
            ),
            (
                "version: 1\nsessions: {}\n".to_string(),
                "invalid sessions file",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", SessionTable::load(&path).unwrap_err());
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn names_and_addresses_are_checked() {
        assert_eq!(check_name(" alice ", "subscriber").unwrap(), "alice");
        assert!(
            check_name("", "subscriber")
                .unwrap_err()
                .0
                .contains("empty")
        );
        assert!(
            check_name("a\nb", "subscriber")
                .unwrap_err()
                .0
                .contains("control")
        );
        assert!(
            check_name(&"x".repeat(254), "session id")
                .unwrap_err()
                .0
                .contains("at most 253")
        );
        let net = |t: &str| check_address(t.parse().unwrap()).map_err(|e| e.0);
        assert!(net("100.64.0.20/32").is_ok());
        assert!(net("100.64.0.0/16").is_ok());
        assert!(net("2001:db8:1000::/48").is_ok());
        assert!(net("100.0.0.0/8").unwrap_err().contains("at most a /16"));
        assert!(net("2001:db8::/29").unwrap_err().contains("at most a /32"));
        assert!(net("127.0.0.1/32").unwrap_err().contains("loopback"));
        assert!(net("255.255.255.255/32").is_err());
        assert!(net("224.0.0.1/32").is_err());
    }
}
