//! Every map the program uses, declared in one place, with its accessors. Names, sizes
//! and capacities are `filter_common::maps`'.
//!
//! Only BTF-defined maps (`#[btf_map]`, the `.maps` section): libbpf, through which libxdp
//! loads the filter as a dispatcher component, refuses objects with legacy `maps`
//! definitions (the `libbpf_opens_the_filter_object` test checks it).

use aya_ebpf::{
    btf_maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::btf_map,
};
use filter_common::{
    ACTION_STATS_ENTRIES, ActionStat, Config, Counter, DEFAULT_PREFIX_CAPACITY, EVENTS_RING_BYTES,
    GROUP_STATS_ENTRIES, GroupName, IFINDEX_SLOTS_ENTRIES, InterfaceSlot, MAP_FLAG_MMAPABLE,
    MAX_GROUPS, MAX_INTERFACES, OFFENDER_SETS, OffenderSet, REASON_STATS_ENTRIES,
    RECENT_SOURCES_ENTRIES, RELAY_BUCKETS_ENTRIES, RecentSource, SourceKey, SourceRule,
    group_counter_index, reason_counter_index,
};

use crate::decision::Decision;

#[btf_map]
static FILTER_CONFIG: Array<Config, 2> = Array::new();

#[btf_map]
static CONFIG_SLOT: Array<u32, 1> = Array::new();

/// Userspace bookkeeping (group id -> name), declared here so it is created and pinned
/// with the others.
#[btf_map]
static GROUP_NAMES: Array<GroupName, { MAX_GROUPS as usize + 1 }> = Array::new();

/// The live config slot.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let slot = *CONFIG_SLOT.get(0)? & 1;
    FILTER_CONFIG.get(slot)
}

// The agent resizes the tries to the policy before loading.
#[btf_map]
pub static SOURCES_V4: LpmTrie<[u8; 4], SourceRule, { DEFAULT_PREFIX_CAPACITY as usize }> =
    LpmTrie::new();

#[btf_map]
pub static SOURCES_V6: LpmTrie<[u8; 16], SourceRule, { DEFAULT_PREFIX_CAPACITY as usize }> =
    LpmTrie::new();

#[btf_map]
static IFINDEX_SLOTS: Array<u32, { IFINDEX_SLOTS_ENTRIES as usize }> = Array::new();

/// Userspace bookkeeping (slot -> interface), created and pinned with the others.
#[btf_map]
static INTERFACE_SLOTS: Array<InterfaceSlot, { MAX_INTERFACES as usize + 1 }> = Array::new();

/// The counter slot of the interface the frame arrived on.
#[inline(always)]
pub fn interface_slot(ifindex: u32) -> u32 {
    match IFINDEX_SLOTS.get(ifindex) {
        Some(&slot) if slot <= MAX_INTERFACES => slot,
        _ => 0,
    }
}

#[btf_map]
static REASON_STATS: PerCpuArray<Counter, { REASON_STATS_ENTRIES as usize }> = PerCpuArray::new();

#[btf_map]
static GROUP_STATS: PerCpuArray<Counter, { GROUP_STATS_ENTRIES as usize }> = PerCpuArray::new();

/// Counts one frame: always under (interface, family, reason), and under its group when
/// one matched.
#[inline(always)]
pub fn count(decision: &Decision, slot: u32, bytes: u64) {
    bump(
        &REASON_STATS,
        reason_counter_index(slot, decision.family, decision.reason),
        bytes,
    );
    if decision.group != 0 {
        bump(
            &GROUP_STATS,
            group_counter_index(decision.group, decision.reason),
            bytes,
        );
    }
}

#[inline(always)]
fn bump<const N: usize>(map: &PerCpuArray<Counter, N>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[btf_map]
static ACTION_STATS: PerCpuArray<u64, { ACTION_STATS_ENTRIES as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count_action(stat: ActionStat) {
    if let Some(value) = ACTION_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, as in `bump`.
        unsafe { *value += 1 };
    }
}

/// The kernel's monotonic clock, for the relay limit's buckets.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// The same clock at tick resolution (a few ms), for offender records and events: it
/// costs a fraction of the precise one, which here is a large part of a blocked frame.
#[inline(always)]
pub fn coarse_now_ns() -> u64 {
    // SAFETY: as above.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[btf_map]
pub static RELAY_BUCKETS: LruHashMap<SourceKey, u64, { RELAY_BUCKETS_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map]
pub static OFFENDERS: Array<OffenderSet, { OFFENDER_SETS as usize }, MAP_FLAG_MMAPABLE> =
    Array::new();

#[btf_map]
pub static RECENT_SOURCES: LruHashMap<
    SourceKey,
    RecentSource,
    { RECENT_SOURCES_ENTRIES as usize },
> = LruHashMap::new();

#[btf_map]
pub static EVENTS: RingBuf<(), { EVENTS_RING_BYTES as usize }> = RingBuf::new();

/// The drop-event sampler's bucket (GCRA timestamp), shared by all CPUs.
#[btf_map]
pub static EVENT_LIMIT: Array<u64, 1> = Array::new();

/// Per-CPU scratch room for the decision of the frame being handled (see `act`).
#[btf_map]
static DECISION_SCRATCH: PerCpuArray<Decision, 1> = PerCpuArray::new();

/// Stores `decision` in the scratch slot; its fields read back as unknown values.
#[inline(always)]
pub fn stash(decision: Decision) -> Option<&'static mut Decision> {
    let slot = DECISION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, used only while this program runs on this CPU.
    unsafe {
        slot.write(decision);
        Some(&mut *slot)
    }
}
