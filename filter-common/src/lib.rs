//! The contract between the XDP program and userspace: map names, the `#[repr(C)]` keys
//! and values stored in them, the verdict reasons and the counter layout.
//!
//! Everything the kernel program reads is precomputed by the agent into these types, so
//! the program and the reference model read the same plain data.
#![no_std]

/// Name of the two-slot array holding [`Config`]: the agent writes the idle slot, then
/// flips [`MAP_CONFIG_SLOT`], so a config change is seen whole or not at all.
pub const MAP_CONFIG: &str = "FILTER_CONFIG";
/// Single-entry array: the index (0 or 1) of the live slot of [`MAP_CONFIG`].
pub const MAP_CONFIG_SLOT: &str = "CONFIG_SLOT";
/// Array of [`GroupName`] by group id. Only the agent reads it: it keeps group ids (and
/// so their counters) stable across reloads and restarts.
pub const MAP_GROUP_NAMES: &str = "GROUP_NAMES";
/// LPM trie: IPv4 source prefix (network-order bytes) -> [`SourceRule`].
pub const MAP_SOURCES_V4: &str = "SOURCES_V4";
/// LPM trie: IPv6 source prefix (network-order bytes) -> [`SourceRule`].
pub const MAP_SOURCES_V6: &str = "SOURCES_V6";
/// Array: ingress ifindex -> interface slot (0: an interface the agent did not attach).
pub const MAP_IFINDEX_SLOTS: &str = "IFINDEX_SLOTS";
/// Array of [`InterfaceSlot`] by slot: which interface a slot's counters belong to. Only the
/// agent reads it.
pub const MAP_INTERFACE_SLOTS: &str = "INTERFACE_SLOTS";
/// Per-CPU array of [`Counter`], indexed by [`reason_counter_index`].
pub const MAP_REASON_STATS: &str = "REASON_STATS";
/// Per-CPU array of [`Counter`], indexed by [`group_counter_index`].
pub const MAP_GROUP_STATS: &str = "GROUP_STATS";
/// LRU hash: [`SourceKey`] -> u64, the relay rate limit's theoretical arrival time (GCRA,
/// `bpf_ktime_get_ns` clock): a SYN to a relay may pass while it is at most
/// `Config::relay_tolerance_ns` ahead of now.
pub const MAP_RELAY_BUCKETS: &str = "RELAY_BUCKETS";
/// LRU hash: [`SourceKey`] -> [`Offender`], updated on every blocked attempt.
pub const MAP_OFFENDERS: &str = "OFFENDERS";
/// Ring buffer of [`Event`]: sampled drops and offender alerts, read by the agent.
pub const MAP_EVENTS: &str = "EVENTS";
/// Single-entry array: u64 theoretical arrival time of the drop-event sampler (GCRA).
pub const MAP_EVENT_LIMIT: &str = "EVENT_LIMIT";
/// Per-CPU array of u64 by [`ActionStat`]: what the program did besides pass and drop.
pub const MAP_ACTION_STATS: &str = "ACTION_STATS";

/// The XDP entry point that filters.
pub const PROGRAM_FILTER: &str = "smtp_filter";
/// An XDP program that only returns `XDP_PASS`: the benchmark baseline.
pub const PROGRAM_PASS_BASELINE: &str = "pass_baseline";
/// An XDP program that only returns `XDP_DROP`: the floor of any drop path.
pub const PROGRAM_DROP_BASELINE: &str = "drop_baseline";

/// Group ids run 1..=MAX_GROUPS; 0 means "no group". Policy groups use 1..MAX_GROUPS.
pub const MAX_GROUPS: u32 = 1023;
/// The group id of exemptions granted from the CLI (`filter-agent exemptions add`).
pub const EXEMPTION_GROUP: u32 = MAX_GROUPS;
/// The name the CLI exemptions' group goes by in counters and metrics.
pub const EXEMPTION_GROUP_NAME: &str = "exemptions";
/// Default capacity of the prefix tries when the loader does not size them.
pub const DEFAULT_PREFIX_CAPACITY: u32 = 1024;

/// Number of 64-bit words in the destination-port bitmap (one bit per port).
pub const PORT_WORDS: usize = 65536 / 64;

/// `Config::flags`: count would-be drops as `monitored` and drop nothing.
pub const FLAG_MONITOR: u32 = 1;

/// Relay prefixes per address family. ISPs run a handful of relays; a short scan of them
/// in the config costs a fraction of a second trie lookup on every blocked SYN.
pub const MAX_RELAYS: usize = 16;

/// An IPv4 relay prefix. Both fields hold the network-order bytes as read from the
/// packet (`u32::from_ne_bytes(octets)`), so matching needs no byte swapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayV4 {
    pub network: u32,
    pub mask: u32,
}

/// An IPv6 relay prefix, as two native words of network-order bytes each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayV6 {
    pub network: [u64; 2],
    pub mask: [u64; 2],
}

/// Everything scalar the program needs, in one array slot, so it changes in one write.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub flags: u32,
    /// One of the `ACTION_*` constants.
    pub action: u32,
    /// How many entries of `relays_v4` / `relays_v6` are in use, longest prefix first.
    pub relays_v4_len: u32,
    pub relays_v6_len: u32,
    /// Relay limit: nanoseconds per SYN token (60 s / syn_per_minute); 0 = no limit.
    pub relay_interval_ns: u64,
    /// Relay limit: how far ahead of now the bucket may run, `(burst - 1) * interval`.
    pub relay_tolerance_ns: u64,
    /// Offender alerts: a source with `offender_alert_after` blocked attempts inside one
    /// window of `offender_window_ns` raises one alert event; 0 = no alerts.
    pub offender_alert_after: u64,
    pub offender_window_ns: u64,
    /// Drop-event sampling: nanoseconds per event (1 s / per_second); 0 = no events.
    pub event_interval_ns: u64,
    /// Drop-event sampling: burst tolerance, as for the relay limit.
    pub event_tolerance_ns: u64,
    pub relays_v4: [RelayV4; MAX_RELAYS],
    pub relays_v6: [RelayV6; MAX_RELAYS],
    /// Bit `p % 64` of word `p / 64` is set when TCP destination port `p` is filtered.
    pub ports: [u64; PORT_WORDS],
}

pub const ACTION_DROP: u32 = 0;
/// Answer a blocked SYN with a TCP RST+ACK sent back out of the interface (XDP_TX).
pub const ACTION_REJECT: u32 = 1;

impl Config {
    pub const fn empty() -> Self {
        Config {
            flags: 0,
            action: ACTION_DROP,
            relays_v4_len: 0,
            relays_v6_len: 0,
            relay_interval_ns: 0,
            relay_tolerance_ns: 0,
            offender_alert_after: 0,
            offender_window_ns: 0,
            event_interval_ns: 0,
            event_tolerance_ns: 0,
            relays_v4: [RelayV4 {
                network: 0,
                mask: 0,
            }; MAX_RELAYS],
            relays_v6: [RelayV6 {
                network: [0; 2],
                mask: [0; 2],
            }; MAX_RELAYS],
            ports: [0; PORT_WORDS],
        }
    }

    #[inline(always)]
    pub fn port_filtered(&self, port: u16) -> bool {
        let word = (port >> 6) as usize;
        // The index is always < PORT_WORDS; `get` keeps the verifier and the compiler agreeing.
        match self.ports.get(word) {
            Some(bits) => bits & (1u64 << (port & 63)) != 0,
            None => false,
        }
    }

    pub fn set_port(&mut self, port: u16) {
        self.ports[(port >> 6) as usize] |= 1u64 << (port & 63);
    }

    pub fn monitor(&self) -> bool {
        self.flags & FLAG_MONITOR != 0
    }

    pub fn reject(&self) -> bool {
        self.action == ACTION_REJECT
    }

    /// True when the destination (network-order bytes read as a native u32) is a relay.
    #[inline(always)]
    pub fn is_relay_v4(&self, destination: u32) -> bool {
        for i in 0..MAX_RELAYS {
            if i as u32 >= self.relays_v4_len {
                break;
            }
            let relay = &self.relays_v4[i];
            if destination & relay.mask == relay.network {
                return true;
            }
        }
        false
    }

    /// True when the destination (network-order bytes read as two native u64) is a relay.
    #[inline(always)]
    pub fn is_relay_v6(&self, destination: [u64; 2]) -> bool {
        for i in 0..MAX_RELAYS {
            if i as u32 >= self.relays_v6_len {
                break;
            }
            let relay = &self.relays_v6[i];
            if destination[0] & relay.mask[0] == relay.network[0]
                && destination[1] & relay.mask[1] == relay.network[1]
            {
                return true;
            }
        }
        false
    }
}

/// `SourceRule::smtp`: the group blocks port-25 traffic.
pub const SMTP_BLOCK: u32 = 1;
/// `SourceRule::smtp`: the group may send.
pub const SMTP_ALLOW: u32 = 2;

/// The value of a source-prefix entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRule {
    /// 1-based group number (see [`MAX_GROUPS`]).
    pub group: u32,
    /// [`SMTP_BLOCK`] or [`SMTP_ALLOW`].
    pub smtp: u32,
}

/// Longest group name, in bytes.
pub const GROUP_NAME_MAX: usize = 60;

/// A group's name; `len == 0` marks a free id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupName {
    pub len: u32,
    pub bytes: [u8; GROUP_NAME_MAX],
}

/// Packet and byte totals of one counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a frame got its verdict. The discriminant is the counter index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    NotIp = 0,
    NotTcp = 1,
    Fragment = 2,
    Port = 3,
    Unmanaged = 4,
    Exempt = 5,
    Relay = 6,
    Blocked = 7,
    Monitored = 8,
    Malformed = 9,
    /// A SYN to a relay over the source's `relay_limit`.
    RateLimited = 10,
}

pub const REASON_COUNT: u32 = 11;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::NotIp,
        Reason::NotTcp,
        Reason::Fragment,
        Reason::Port,
        Reason::Unmanaged,
        Reason::Exempt,
        Reason::Relay,
        Reason::Blocked,
        Reason::Monitored,
        Reason::Malformed,
        Reason::RateLimited,
    ];

    /// The name used in output, policies and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NotIp => "not-ip",
            Reason::NotTcp => "not-tcp",
            Reason::Fragment => "fragment",
            Reason::Port => "port",
            Reason::Unmanaged => "unmanaged",
            Reason::Exempt => "exempt",
            Reason::Relay => "relay",
            Reason::Blocked => "blocked",
            Reason::Monitored => "monitored",
            Reason::Malformed => "malformed",
            Reason::RateLimited => "rate-limited",
        }
    }

    pub fn from_name(name: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Address family of a frame, as far as it was parsed.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Not IP, or malformed before the IP header was found.
    Other = 0,
    Ipv4 = 1,
    Ipv6 = 2,
}

pub const FAMILY_COUNT: u32 = 3;

impl Family {
    pub const ALL: [Family; FAMILY_COUNT as usize] = [Family::Other, Family::Ipv4, Family::Ipv6];

    pub const fn name(self) -> &'static str {
        match self {
            Family::Other => "other",
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// Interfaces with counters of their own: slots 1..=MAX_INTERFACES; slot 0 counts the rest
/// (and BPF_PROG_TEST_RUN).
pub const MAX_INTERFACES: u32 = 63;
/// ifindex values below this map to a slot; higher ones count under slot 0.
pub const IFINDEX_SLOTS_ENTRIES: u32 = 65536;
pub const INTERFACE_NAME_MAX: usize = 16;

/// The interface a counter slot belongs to; `ifindex == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceSlot {
    pub ifindex: u32,
    pub name: [u8; INTERFACE_NAME_MAX],
}

pub const REASON_STATS_ENTRIES: u32 = (MAX_INTERFACES + 1) * FAMILY_COUNT * REASON_COUNT;
pub const GROUP_STATS_ENTRIES: u32 = (MAX_GROUPS + 1) * REASON_COUNT;

#[inline(always)]
pub const fn reason_counter_index(slot: u32, family: Family, reason: Reason) -> u32 {
    (slot * FAMILY_COUNT + family as u32) * REASON_COUNT + reason as u32
}

#[inline(always)]
pub const fn group_counter_index(group: u32, reason: Reason) -> u32 {
    group * REASON_COUNT + reason as u32
}

/// Who a rate-limit bucket or offender record belongs to: an IPv4 address, or the /64 of
/// an IPv6 address (a customer holds at least a /64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    /// [`Family`] as u32.
    pub family: u32,
    /// IPv4: the 4 address bytes, then zeros. IPv6: the first 8 address bytes.
    pub address: [u8; 8],
}

/// Capacity of the LRU maps keyed by [`SourceKey`].
pub const RELAY_BUCKETS_ENTRIES: u32 = 65_536;
pub const OFFENDERS_ENTRIES: u32 = 65_536;

/// Bits in `Offender::destination_sketch`: a destination sets bit `hash % 64`, and the
/// number of distinct destinations is estimated from the bits still clear (linear
/// counting), so it is exact-ish for a handful and saturates in the low hundreds.
pub const DESTINATION_SKETCH_BITS: u32 = 64;

/// What the kernel knows about one source's blocked attempts. Times are
/// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at tick resolution).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offender {
    pub attempts: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Start of the current alert window and the attempts inside it.
    pub window_start_ns: u64,
    pub window_attempts: u64,
    pub destination_sketch: u64,
    /// IPv4 destinations in the first 4 bytes.
    pub last_destination: [u8; 16],
    pub last_dport: u16,
    pub padding: u16,
    pub group: u32,
}

/// [`Event::kind`]: a sampled frame that was dropped, rejected or (monitor mode) counted.
pub const EVENT_SAMPLE: u32 = 1;
/// [`Event::kind`]: a source reached `offender_alert_after` attempts in its window.
pub const EVENT_OFFENDER: u32 = 2;

/// [`Event::verdict`] values, as the XDP return code says them.
pub const VERDICT_PASS: u32 = 0;
pub const VERDICT_DROP: u32 = 1;
pub const VERDICT_REJECT: u32 = 2;

/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_coarse_ns`, as the offender records.
    pub time_ns: u64,
    pub kind: u32,
    pub ifindex: u32,
    /// [`Family`] as u32.
    pub family: u32,
    /// One of the `VERDICT_*` constants.
    pub verdict: u32,
    /// [`Reason`] as u32.
    pub reason: u32,
    pub group: u32,
    /// IPv4 addresses in the first 4 bytes. For offender alerts `source` holds the
    /// [`SourceKey`] address (an IPv6 /64 network).
    pub source: [u8; 16],
    pub destination: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u32,
    /// Offender alerts: attempts in the window when the alert was raised.
    pub attempts: u64,
}

/// Indexes of [`MAP_ACTION_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionStat {
    /// RST+ACK replies sent with XDP_TX.
    ResetsSent = 0,
    /// Events written to the ring buffer.
    EventsSent = 1,
    /// Events the sampler held back (over `events.per_second`).
    EventsSuppressed = 2,
    /// Events lost because the ring buffer was full.
    EventsLost = 3,
    /// Offender alert events raised.
    OffenderAlerts = 4,
}

pub const ACTION_STATS_ENTRIES: u32 = 8;

impl ActionStat {
    pub const ALL: [ActionStat; 5] = [
        ActionStat::ResetsSent,
        ActionStat::EventsSent,
        ActionStat::EventsSuppressed,
        ActionStat::EventsLost,
        ActionStat::OffenderAlerts,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ActionStat::ResetsSent => "resets-sent",
            ActionStat::EventsSent => "events-sent",
            ActionStat::EventsSuppressed => "events-suppressed",
            ActionStat::EventsLost => "events-lost",
            ActionStat::OffenderAlerts => "offender-alerts",
        }
    }
}

/// GCRA, the token bucket as one timestamp: a request at `now` conforms while the
/// theoretical arrival time `tat` is at most `tolerance` ahead of now; a conforming request
/// moves `tat` on by `interval`. Returns the new `tat`, or `None` when over the limit.
/// With `tolerance = (burst - 1) * interval` it passes `burst` back-to-back requests and
/// then one per `interval`. The kernel and the reference model both use this function.
#[inline(always)]
pub fn gcra(tat: Option<u64>, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let tat = match tat {
        Some(tat) if tat > now => tat,
        _ => now,
    };
    if tat - now > tolerance {
        return None;
    }
    Some(tat + interval)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding or pointers.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SourceRule {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::GroupName {}
    unsafe impl aya::Pod for super::InterfaceSlot {}
    unsafe impl aya::Pod for super::RelayV4 {}
    unsafe impl aya::Pod for super::RelayV6 {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::Offender {}
    unsafe impl aya::Pod for super::Event {}
}
