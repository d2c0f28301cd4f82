//! Every map the program shares with userspace: its name, its key and value sizes and
//! its capacity. The kernel declares the maps (its `#[map]` attributes need literal
//! names); the agent pins and adopts them by these specs and refuses a pinned map whose
//! sizes differ, so a layout change cannot be adopted silently.

use core::mem::size_of;

use crate::records::OFFENDER_WAYS;

use crate::{
    config::Config,
    records::{
        Counter, GroupName, InterfaceSlot, Offender, OffenderSet, RecentSource, SourceKey,
        SourceRule,
    },
    verdict::{ActionStat, FAMILY_COUNT, Family, REASON_COUNT, Reason},
};

/// The name and the key and value sizes of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
}

impl MapSpec {
    const fn of<K, V>(name: &'static str) -> MapSpec {
        MapSpec {
            name,
            key_size: size_of::<K>(),
            value_size: size_of::<V>(),
        }
    }
}

/// An LPM trie key: the prefix length (u32) followed by the address bytes.
#[repr(C)]
struct LpmKey<const N: usize> {
    prefix_len: u32,
    address: [u8; N],
}

/// Two-slot array holding [`Config`]: the agent writes the idle slot, then flips
/// [`CONFIG_SLOT`], so a config change is seen whole or not at all.
pub const FILTER_CONFIG: MapSpec = MapSpec::of::<u32, Config>("FILTER_CONFIG");
/// Single-entry array: the index (0 or 1) of the live slot of [`FILTER_CONFIG`].
pub const CONFIG_SLOT: MapSpec = MapSpec::of::<u32, u32>("CONFIG_SLOT");
/// LPM trie: IPv4 source prefix (network-order bytes) -> [`SourceRule`].
pub const SOURCES_V4: MapSpec = MapSpec::of::<LpmKey<4>, SourceRule>("SOURCES_V4");
/// LPM trie: IPv6 source prefix (network-order bytes) -> [`SourceRule`].
pub const SOURCES_V6: MapSpec = MapSpec::of::<LpmKey<16>, SourceRule>("SOURCES_V6");
/// Array of [`GroupName`] by group id. Only the agent reads it: it keeps group ids (and
/// so their counters) stable across reloads and restarts.
pub const GROUP_NAMES: MapSpec = MapSpec::of::<u32, GroupName>("GROUP_NAMES");
/// Array: ingress ifindex -> interface slot (0: an interface the agent did not attach).
pub const IFINDEX_SLOTS: MapSpec = MapSpec::of::<u32, u32>("IFINDEX_SLOTS");
/// Array of [`InterfaceSlot`] by slot: which interface a slot's counters belong to. Only
/// the agent reads it.
pub const INTERFACE_SLOTS: MapSpec = MapSpec::of::<u32, InterfaceSlot>("INTERFACE_SLOTS");
/// Per-CPU array of [`Counter`], indexed by [`reason_counter_index`].
pub const REASON_STATS: MapSpec = MapSpec::of::<u32, Counter>("REASON_STATS");
/// Per-CPU array of [`Counter`], indexed by [`group_counter_index`].
pub const GROUP_STATS: MapSpec = MapSpec::of::<u32, Counter>("GROUP_STATS");
/// LRU hash: [`SourceKey`] -> u64, the relay rate limit's theoretical arrival time (GCRA,
/// `bpf_ktime_get_ns` clock): a SYN to a relay may pass while it is at most
/// `Config::relay_tolerance_ns` ahead of now.
pub const RELAY_BUCKETS: MapSpec = MapSpec::of::<SourceKey, u64>("RELAY_BUCKETS");
/// Array of [`OffenderSet`] by [`OffenderSet::index`], updated on every blocked attempt;
/// memory-mappable (BPF_F_MMAPABLE), so the agent reads all of it without a system call
/// per entry.
pub const OFFENDERS: MapSpec = MapSpec::of::<u32, OffenderSet>("OFFENDERS");
/// LRU hash: [`SourceKey`] -> [`RecentSource`], updated on every connection request to a
/// filtered port that is not a blocked attempt (those update [`OFFENDERS`]); `plan` reads
/// both.
pub const RECENT_SOURCES: MapSpec = MapSpec::of::<SourceKey, RecentSource>("RECENT_SOURCES");
/// Ring buffer of [`crate::Event`]: sampled drops and offender alerts, read by the
/// agent. Ring buffers have neither keys nor values.
pub const EVENTS: MapSpec = MapSpec {
    name: "EVENTS",
    key_size: 0,
    value_size: 0,
};
/// Single-entry array: u64 theoretical arrival time of the drop-event sampler (GCRA).
pub const EVENT_LIMIT: MapSpec = MapSpec::of::<u32, u64>("EVENT_LIMIT");
/// Per-CPU array of u64 by [`ActionStat`]: what the program did besides pass and drop.
pub const ACTION_STATS: MapSpec = MapSpec::of::<u32, u64>("ACTION_STATS");

/// Every shared map, in the order they are pinned and checked.
pub const ALL: [MapSpec; 15] = [
    FILTER_CONFIG,
    CONFIG_SLOT,
    SOURCES_V4,
    SOURCES_V6,
    GROUP_NAMES,
    IFINDEX_SLOTS,
    INTERFACE_SLOTS,
    REASON_STATS,
    GROUP_STATS,
    RELAY_BUCKETS,
    OFFENDERS,
    RECENT_SOURCES,
    EVENTS,
    EVENT_LIMIT,
    ACTION_STATS,
];

/// The maps that hold only what the kernel observed (offender records, recent sources,
/// relay buckets): an agent that finds one pinned with another version's layout pins a
/// fresh one instead of refusing the pins, so an upgrade that changes them keeps the
/// filter enforcing and loses nothing but those records.
pub const OBSERVATIONS: [MapSpec; 3] = [RELAY_BUCKETS, OFFENDERS, RECENT_SOURCES];

// The layouts userspace and the kernel agree on; a change here is a change of the pinned
// format (the agent then refuses old pins and asks for `detach`, or for an
// [`OBSERVATIONS`] map pins a fresh one).
const _: () = {
    assert!(size_of::<SourceRule>() == 12);
    assert!(size_of::<SourceKey>() == 12);
    assert!(size_of::<Counter>() == 16);
    assert!(size_of::<GroupName>() == 64);
    assert!(size_of::<InterfaceSlot>() == 20);
    assert!(size_of::<Offender>() == 72);
    assert!(size_of::<OffenderSet>() == 176);
    assert!(size_of::<RecentSource>() == 24);
    assert!(size_of::<crate::Event>() == 80);
    assert!(SOURCES_V4.key_size == 8 && SOURCES_V6.key_size == 20);
};

/// Group ids run 1..=MAX_GROUPS; 0 means "no group". Policy groups use 1..MAX_GROUPS.
pub const MAX_GROUPS: u32 = 1023;
/// The group id of exemptions granted from the CLI (`filter-agent exemptions add`).
pub const EXEMPTION_GROUP: u32 = MAX_GROUPS;
/// The name the CLI exemptions' group goes by in counters and metrics.
pub const EXEMPTION_GROUP_NAME: &str = "exemptions";
/// Default capacity of the prefix tries when the loader does not size them.
pub const DEFAULT_PREFIX_CAPACITY: u32 = 1024;

/// Interfaces with counters of their own: slots 1..=MAX_INTERFACES; slot 0 counts the
/// rest (and BPF_PROG_TEST_RUN).
pub const MAX_INTERFACES: u32 = 63;
/// ifindex values below this map to a slot; higher ones count under slot 0.
pub const IFINDEX_SLOTS_ENTRIES: u32 = 65536;

pub const REASON_STATS_ENTRIES: u32 = (MAX_INTERFACES + 1) * FAMILY_COUNT * REASON_COUNT;
pub const GROUP_STATS_ENTRIES: u32 = (MAX_GROUPS + 1) * REASON_COUNT;
/// Room for more [`ActionStat`]s without a change of layout.
pub const ACTION_STATS_ENTRIES: u32 = 8;
const _: () = assert!(ActionStat::COUNT as u32 <= ACTION_STATS_ENTRIES);

/// Capacity of the LRU maps keyed by [`SourceKey`].
pub const RELAY_BUCKETS_ENTRIES: u32 = 65_536;
pub const RECENT_SOURCES_ENTRIES: u32 = 65_536;

/// Offender records: [`OFFENDER_SETS`] sets of [`OFFENDER_WAYS`] ways.
pub const OFFENDERS_ENTRIES: u32 = 65_536;
pub const OFFENDER_SETS: u32 = OFFENDERS_ENTRIES / OFFENDER_WAYS as u32;
const _: () = assert!(OFFENDER_SETS.is_power_of_two());
/// BPF_F_MMAPABLE: an array userspace can map into its memory.
pub const MAP_FLAG_MMAPABLE: usize = 1 << 10;

/// Size of the ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

#[inline(always)]
pub const fn reason_counter_index(slot: u32, family: Family, reason: Reason) -> u32 {
    (slot * FAMILY_COUNT + family as u32) * REASON_COUNT + reason as u32
}

#[inline(always)]
pub const fn group_counter_index(group: u32, reason: Reason) -> u32 {
    group * REASON_COUNT + reason as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn counter_indexes_stay_inside_their_maps() {
        let last = reason_counter_index(MAX_INTERFACES, Family::Ipv6, Reason::RateLimited);
        assert_eq!(last, REASON_STATS_ENTRIES - 1);
        assert_eq!(
            group_counter_index(MAX_GROUPS, Reason::RateLimited),
            GROUP_STATS_ENTRIES - 1
        );
    }
}
