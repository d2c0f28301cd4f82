//! The policy as the agent uses it, once validated.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use filter_common::{Action, GroupMode, Smtp};

/// The only policy version this agent understands.
pub const VERSION: u32 = 1;

/// Ports filtered when a policy does not list any.
pub const DEFAULT_PORTS: [u16; 1] = [25];

/// Sampled drop events per second when a policy has no `events` key.
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 10;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    pub version: u32,
    pub mode: Mode,
    pub action: Action,
    /// TCP destination ports that are filtered.
    pub ports: Vec<u16>,
    /// In policy order: a group's id is its index plus one.
    pub groups: Vec<Group>,
    /// Host addresses are stored as /32 or /128 prefixes.
    pub relays: Vec<IpNet>,
    /// Limit on new connections (SYNs) to the relays per customer; `None`: no limit.
    pub relay_limit: Option<RelayLimit>,
    /// When an offender alert is raised; `None`: never (offenders are still tracked).
    pub offenders: Option<Offenders>,
    pub events: Events,
    pub interfaces: Vec<Interface>,
    /// Where subscriber sessions come from besides the hooks, and how long they last.
    pub subscribers: Subscribers,
}

/// `subscribers`: RADIUS accounting as a source of sessions, and their timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Subscribers {
    pub radius_accounting: Option<RadiusAccounting>,
    /// A RADIUS session with no update for this long has ended; `None`: only a Stop (or
    /// Accounting-On/Off) ends it.
    #[serde(serialize_with = "human_duration_option")]
    pub session_timeout: Option<Duration>,
}

/// `subscribers.radius_accounting`: a UDP listener for RFC 2866 accounting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RadiusAccounting {
    pub listen: SocketAddr,
    pub clients: Vec<RadiusClient>,
}

/// A BNG (or a prefix of them, or the RADIUS server replicating for them) and the file
/// holding the secret it signs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RadiusClient {
    pub address: IpNet,
    pub secret_file: PathBuf,
}

fn human_duration_option<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(d) => human_duration(d, serializer),
        None => serializer.serialize_none(),
    }
}

/// `relay_limit`: SYNs from a block group's source to the relays on the filtered ports,
/// per customer (an IPv4 address, an IPv6 /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RelayLimit {
    /// 1..=60,000,000.
    pub syn_per_minute: u32,
    /// Back-to-back SYNs allowed before the rate applies; 1..=1,000,000.
    pub burst: u32,
}

/// `offenders`: raise one alert when a source makes `alert_after` blocked attempts within
/// one `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Offenders {
    /// At least 1.
    pub alert_after: u64,
    /// At least one second; serialized as text, e.g. "10m".
    #[serde(serialize_with = "human_duration")]
    pub window: Duration,
}

/// `events`: sampled drop events, at most `per_second` a second (with a burst of one
/// second's worth); 0 turns them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Events {
    /// 0..=1,000,000.
    pub per_second: u32,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            per_second: DEFAULT_EVENTS_PER_SECOND,
        }
    }
}

fn human_duration<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    pub smtp: Smtp,
    /// The group's own mode, overriding the policy's for this group only (a new group is
    /// rolled out watched before it blocks); `None`: the policy's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Networks with their host bits clear; a bare address is a /32 or /128.
    pub prefixes: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interface {
    pub name: String,
    pub xdp_mode: XdpMode,
    /// How the filter shares the interface's XDP hook with other programs.
    pub attach: AttachMode,
    /// Run priority inside a libxdp dispatcher (lower runs first).
    pub priority: u32,
}

/// The run priority inside a dispatcher when the policy gives none.
pub const DEFAULT_PRIORITY: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Join the libxdp dispatcher on the interface if there is one; take the hook alone
    /// when the interface has no program; refuse beside a program that is not a dispatcher.
    Auto,
    /// A component of a libxdp multi-program dispatcher (joined or created).
    Multiprog,
    /// Alone on the hook, through a pinned XDP link.
    Exclusive,
}

impl AttachMode {
    /// The name a policy writes it by.
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Multiprog => "multiprog",
            AttachMode::Exclusive => "exclusive",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Filtered traffic is dropped.
    Enforce,
    /// Filtered traffic is only counted.
    Monitor,
}

impl Mode {
    /// The name a policy writes it by.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }

    /// A group's mode as its kernel rules hold it (`None`: the policy's).
    pub const fn of_group(mode: Option<Mode>) -> GroupMode {
        match mode {
            None => GroupMode::Policy,
            Some(Mode::Enforce) => GroupMode::Enforce,
            Some(Mode::Monitor) => GroupMode::Monitor,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    Auto,
    Native,
    Generic,
}

impl XdpMode {
    /// The name a policy writes it by.
    pub const fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl Policy {
    /// The number of group prefixes, over all groups.
    pub fn prefix_count(&self) -> usize {
        self.groups.iter().map(|g| g.prefixes.len()).sum()
    }
}
