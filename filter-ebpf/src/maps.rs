//! Every map the program uses, declared in one place; names come from filter-common.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use filter_common::{
    Config, Counter, DEFAULT_PREFIX_CAPACITY, GROUP_STATS_ENTRIES, GroupName,
    IFINDEX_SLOTS_ENTRIES, InterfaceSlot, MAX_GROUPS, MAX_INTERFACES, REASON_STATS_ENTRIES,
    SourceRule, group_counter_index, reason_counter_index,
};

use crate::decide::Decision;

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
