//! The `#[repr(C)]` keys and values stored in the maps. Fields that hold a vocabulary
//! value (`verdict`, `family`, ...) stay raw `u32`: decoding them with `TryFrom` fails
//! closed on a number this build does not know.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    config::Config,
    verdict::{EventKind, Family, GroupMode, Smtp},
};

/// The value of a source-prefix entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceRule {
    /// 1-based group number (see [`crate::MAX_GROUPS`]).
    pub group: u32,
    /// A [`Smtp`] as u32; the kernel treats anything but `Allow` as `Block`.
    pub smtp: u32,
    /// A [`GroupMode`] as u32: whether the group's would-be drops are only counted.
    pub mode: u32,
}

impl SourceRule {
    /// A rule that follows the policy's mode.
    pub const fn new(group: u32, smtp: Smtp) -> Self {
        SourceRule::with_mode(group, smtp, GroupMode::Policy)
    }

    pub const fn with_mode(group: u32, smtp: Smtp, mode: GroupMode) -> Self {
        SourceRule {
            group,
            smtp: smtp as u32,
            mode: mode as u32,
        }
    }

    /// Whether the group's would-be drops are only counted (`pass monitored`): its own
    /// mode, else the policy's. An unknown mode enforces (fail closed).
    #[inline(always)]
    pub fn monitors(&self, config: &Config) -> bool {
        if self.mode == GroupMode::Policy as u32 {
            config.monitor()
        } else {
            self.mode == GroupMode::Monitor as u32
        }
    }

    /// Whether the group may send: only an explicit `Allow` may (fail closed).
    #[inline(always)]
    pub const fn allows(&self) -> bool {
        self.smtp == Smtp::Allow as u32
    }
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

pub const INTERFACE_NAME_MAX: usize = 16;

/// The interface a counter slot belongs to; `ifindex == 0` marks a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceSlot {
    pub ifindex: u32,
    pub name: [u8; INTERFACE_NAME_MAX],
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

impl SourceKey {
    /// The key of a source address: the address itself, or its IPv6 /64.
    pub fn from_ip(source: IpAddr) -> SourceKey {
        let mut address = [0u8; 8];
        let family = match source {
            IpAddr::V4(a) => {
                address[..4].copy_from_slice(&a.octets());
                Family::Ipv4
            }
            IpAddr::V6(a) => {
                address.copy_from_slice(&a.octets()[..8]);
                Family::Ipv6
            }
        };
        SourceKey {
            family: family as u32,
            address,
        }
    }

    /// The address as two native words: what the kernel compares and hashes (word-wise,
    /// as byte arrays are handled a byte at a time).
    #[inline(always)]
    pub fn words(&self) -> [u32; 2] {
        // SAFETY: same size, plain integers.
        unsafe { core::mem::transmute(self.address) }
    }

    /// The same source (compared word-wise, see [`SourceKey::words`]).
    #[inline(always)]
    pub fn is(&self, other: &SourceKey) -> bool {
        self.family == other.family && self.words() == other.words()
    }

    /// The key named by 16 address bytes as records and events hold them (IPv4 in the
    /// first 4); `None` for a family that carries no address.
    pub fn from_bytes(family: u32, bytes: &[u8; 16]) -> Option<SourceKey> {
        address(family, bytes).map(SourceKey::from_ip)
    }

    /// The IPv4 address, or the network address of the IPv6 /64; `None` for an unknown
    /// family.
    pub fn ip(&self) -> Option<IpAddr> {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.address);
        match Family::from_code(self.family) {
            Family::Ipv4 => address(self.family, &bytes),
            Family::Ipv6 => Some(IpAddr::V6(Ipv6Addr::from(bytes))),
            Family::Other => None,
        }
    }
}

/// The IPv4 address, or the IPv6 /64 (`2001:db8:1000::/64`); `-` for an unknown family.
impl core::fmt::Display for SourceKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(network)) => write!(f, "{network}/64"),
            Some(address) => write!(f, "{address}"),
            None => f.write_str("-"),
        }
    }
}

/// An address of an event or offender record (IPv4 in the first 4 bytes); `None` for a
/// family that carries no address.
pub fn address(family: u32, bytes: &[u8; 16]) -> Option<IpAddr> {
    match Family::from_code(family) {
        Family::Ipv4 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        Family::Ipv6 => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        Family::Other => None,
    }
}

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

/// Ways of one [`OffenderSet`]: two sources whose keys hash to one set both keep a
/// record; a third takes the way seen least recently.
pub const OFFENDER_WAYS: usize = 2;

/// One way of the offender table: whose record it is, and the record. A way whose record
/// has no attempts is free.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffenderSlot {
    pub key: SourceKey,
    pub padding: u32,
    pub record: Offender,
}

/// One entry of the offender table, a set-associative cache of records in an array: a
/// blocked frame touches only its source's set (a few adjacent cache lines), where an
/// LRU hash walks a bucket, an element and the LRU lists, all cold under a flood from
/// many sources.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffenderSet {
    pub ways: [OffenderSlot; OFFENDER_WAYS],
}

impl OffenderSet {
    /// The set that holds `key`'s record, of `sets` (a power of two).
    #[inline(always)]
    pub fn index(key: &SourceKey, sets: u32) -> u32 {
        let [low, high] = key.words();
        // murmur3's finaliser: every key bit reaches the low bits the index keeps.
        let mut hash = low ^ high.rotate_left(16) ^ key.family.wrapping_mul(0x9e37_79b9);
        hash ^= hash >> 16;
        hash = hash.wrapping_mul(0x85eb_ca6b);
        hash ^= hash >> 13;
        hash = hash.wrapping_mul(0xc2b2_ae35);
        hash ^= hash >> 16;
        hash & (sets - 1)
    }
}

/// A source that asked to connect to a filtered port, whatever its verdict: what `plan`
/// weighs a policy change by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentSource {
    /// Connection requests (SYN without ACK and RST) seen.
    pub attempts: u64,
    /// `bpf_ktime_get_coarse_ns`, as the offender records.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_coarse_ns`, as the offender records.
    pub time_ns: u64,
    /// An [`EventKind`] as u32.
    pub kind: u32,
    pub ifindex: u32,
    /// [`Family`] as u32.
    pub family: u32,
    /// A [`crate::Verdict`] as u32.
    pub verdict: u32,
    /// [`crate::Reason`] as u32.
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

impl Event {
    /// The source an offender alert names.
    pub fn alert_key(&self) -> Option<SourceKey> {
        SourceKey::from_bytes(self.family, &self.source)
    }

    pub fn is(&self, kind: EventKind) -> bool {
        self.kind == kind as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_keys_are_per_64() {
        let a = SourceKey::from_ip("2001:db8:1000:42::1".parse().unwrap());
        let b = SourceKey::from_ip("2001:db8:1000:42:ffff::9".parse().unwrap());
        let c = SourceKey::from_ip("2001:db8:1000:43::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.ip(), Some("2001:db8:1000:42::".parse().unwrap()));
        assert_eq!(a.to_string(), "2001:db8:1000:42::/64");
    }

    #[test]
    fn ipv4_keys_round_trip() {
        let source: IpAddr = "100.64.1.10".parse().unwrap();
        let key = SourceKey::from_ip(source);
        assert_eq!(key.family, Family::Ipv4 as u32);
        assert_eq!(key.address, [100, 64, 1, 10, 0, 0, 0, 0]);
        assert_eq!(key.ip(), Some(source));
        assert_eq!(key.to_string(), "100.64.1.10");
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&[100, 64, 1, 10]);
        assert_eq!(
            SourceKey::from_bytes(Family::Ipv4 as u32, &bytes),
            Some(key)
        );
    }

    #[test]
    fn unknown_families_carry_no_address() {
        let key = SourceKey {
            family: 9,
            address: [1; 8],
        };
        assert_eq!(key.ip(), None);
        assert_eq!(key.to_string(), "-");
        assert_eq!(address(Family::Other as u32, &[1; 16]), None);
        assert_eq!(SourceKey::from_bytes(0, &[1; 16]), None);
    }

    #[test]
    fn only_an_explicit_allow_allows() {
        assert!(SourceRule::new(1, Smtp::Allow).allows());
        assert!(!SourceRule::new(1, Smtp::Block).allows());
        assert!(
            !SourceRule {
                group: 1,
                smtp: 0,
                mode: 0
            }
            .allows()
        );
    }

    #[test]
    fn a_groups_own_mode_overrides_the_policys_and_an_unknown_one_enforces() {
        let mut monitor = Config::empty();
        monitor.flags |= crate::FLAG_MONITOR;
        let enforce = Config::empty();
        let rule = |mode| SourceRule::with_mode(1, Smtp::Block, mode);
        assert!(!rule(GroupMode::Policy).monitors(&enforce));
        assert!(rule(GroupMode::Policy).monitors(&monitor));
        assert!(rule(GroupMode::Monitor).monitors(&enforce));
        assert!(!rule(GroupMode::Enforce).monitors(&monitor));
        let unknown = SourceRule {
            mode: 7,
            ..rule(GroupMode::Policy)
        };
        assert!(!unknown.monitors(&monitor));
    }
}

/// What the replay entry point (`PROGRAM_REPLAY`) writes into the XDP metadata area in
/// front of the frame, so `replay` reads the kernel's decision from the test run's output
/// instead of diffing counters. Numbers as in [`crate::Verdict`], [`crate::Reason`],
/// [`crate::Family`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// [`REPLAY_REPORT_MAGIC`]: tells a report from frame bytes.
    pub magic: u32,
    pub verdict: u8,
    pub reason: u8,
    pub family: u8,
    pub padding: u8,
    /// Group whose prefix matched the source; 0 when none.
    pub group: u32,
}

/// "RPLY".
pub const REPLAY_REPORT_MAGIC: u32 = 0x5250_4c59;

impl ReplayReport {
    /// Reads a report from the start of a test run's output (native byte order).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        let report = ReplayReport {
            magic: word(0)?,
            verdict: bytes[4],
            reason: bytes[5],
            family: bytes[6],
            padding: bytes[7],
            group: word(8)?,
        };
        (report.magic == REPLAY_REPORT_MAGIC).then_some(report)
    }
}

const _: () = assert!(core::mem::size_of::<ReplayReport>() == 12);
