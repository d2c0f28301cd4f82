//! Every map the program uses, declared in one place, with its accessors. Names, sizes
//! and capacities are `filter_common::maps`' (the `#[map]` attribute needs literals).

use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use filter_common::{
    ACTION_STATS_ENTRIES, ActionStat, Config, Counter, DEFAULT_PREFIX_CAPACITY, EVENTS_RING_BYTES,
    GROUP_STATS_ENTRIES, GroupName, IFINDEX_SLOTS_ENTRIES, InterfaceSlot, MAX_GROUPS,
    MAX_INTERFACES, OFFENDERS_ENTRIES, Offender, REASON_STATS_ENTRIES, RELAY_BUCKETS_ENTRIES,
    SourceKey, SourceRule, group_counter_index, reason_counter_index,
};

use crate::decision::Decision;

#[map(name = "FILTER_CONFIG")]
static FILTER_CONFIG: Array<Config> = Array::with_max_entries(2, 0);

#[map(name = "CONFIG_SLOT")]
static CONFIG_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// Userspace bookkeeping (group id -> name), declared here so it is created and pinned
/// with the others.
#[map(name = "GROUP_NAMES")]
static GROUP_NAMES: Array<GroupName> = Array::with_max_entries(MAX_GROUPS + 1, 0);

/// The live config slot.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let slot = *CONFIG_SLOT.get(0)? & 1;
    FILTER_CONFIG.get(slot)
}

// The agent resizes the tries to the policy before loading.
#[map(name = "SOURCES_V4")]
pub static SOURCES_V4: LpmTrie<[u8; 4], SourceRule> =
    LpmTrie::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map(name = "SOURCES_V6")]
pub static SOURCES_V6: LpmTrie<[u8; 16], SourceRule> =
    LpmTrie::with_max_entries(DEFAULT_PREFIX_CAPACITY, 0);

#[map(name = "IFINDEX_SLOTS")]
static IFINDEX_SLOTS: Array<u32> = Array::with_max_entries(IFINDEX_SLOTS_ENTRIES, 0);

/// Userspace bookkeeping (slot -> interface), created and pinned with the others.
#[map(name = "INTERFACE_SLOTS")]
static INTERFACE_SLOTS: Array<InterfaceSlot> = Array::with_max_entries(MAX_INTERFACES + 1, 0);

/// The counter slot of the interface the frame arrived on.
#[inline(always)]
pub fn interface_slot(ifindex: u32) -> u32 {
    match IFINDEX_SLOTS.get(ifindex) {
        Some(&slot) if slot <= MAX_INTERFACES => slot,
        _ => 0,
    }
}

#[map(name = "REASON_STATS")]
static REASON_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_STATS_ENTRIES, 0);

#[map(name = "GROUP_STATS")]
static GROUP_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(GROUP_STATS_ENTRIES, 0);

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
fn bump(map: &PerCpuArray<Counter>, index: u32, bytes: u64) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[map(name = "ACTION_STATS")]
static ACTION_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ACTION_STATS_ENTRIES, 0);

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

#[map(name = "RELAY_BUCKETS")]
pub static RELAY_BUCKETS: LruHashMap<SourceKey, u64> =
    LruHashMap::with_max_entries(RELAY_BUCKETS_ENTRIES, 0);

#[map(name = "OFFENDERS")]
pub static OFFENDERS: LruHashMap<SourceKey, Offender> =
    LruHashMap::with_max_entries(OFFENDERS_ENTRIES, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// The drop-event sampler's bucket (GCRA timestamp), shared by all CPUs.
#[map(name = "EVENT_LIMIT")]
pub static EVENT_LIMIT: Array<u64> = Array::with_max_entries(1, 0);

/// Per-CPU scratch room for the decision of the frame being handled (see `act`).
#[map(name = "DECISION_SCRATCH")]
static DECISION_SCRATCH: PerCpuArray<Decision> = PerCpuArray::with_max_entries(1, 0);

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
