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

/// The XDP entry point that filters.
pub const PROGRAM_FILTER: &str = "smtp_filter";
/// An XDP program that only returns `XDP_PASS`: the benchmark baseline.
pub const PROGRAM_PASS_BASELINE: &str = "pass_baseline";

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
    pub relays_v4: [RelayV4; MAX_RELAYS],
    pub relays_v6: [RelayV6; MAX_RELAYS],
    /// Bit `p % 64` of word `p / 64` is set when TCP destination port `p` is filtered.
    pub ports: [u64; PORT_WORDS],
}

pub const ACTION_DROP: u32 = 0;

impl Config {
    pub const fn empty() -> Self {
        Config {
            flags: 0,
            action: ACTION_DROP,
            relays_v4_len: 0,
            relays_v6_len: 0,
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
}

pub const REASON_COUNT: u32 = 10;

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
}
