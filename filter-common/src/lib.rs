//! The contract between the XDP program and userspace: the shared vocabulary (verdicts,
//! reasons, families...), the `#[repr(C)]` keys and values stored in the maps, the map
//! specs, the protocol constants fixed by `docs/semantics.md`, and the pure helpers both
//! sides run (GCRA, checksums, header lengths).
//!
//! Everything the kernel program reads is precomputed by the agent into these types, so
//! the program and the reference model read the same plain data. `no_std` for the
//! kernel; its unit tests run on the host (`cargo test -p filter-common`).
#![cfg_attr(not(test), no_std)]

pub mod checksum;
pub mod config;
pub mod limit;
pub mod maps;
pub mod records;
pub mod verdict;
pub mod wire;

pub use config::{Config, FLAG_MONITOR, MAX_RELAYS, PORT_WORDS, RelayV4, RelayV6};
pub use limit::gcra;
pub use maps::{
    ACTION_STATS_ENTRIES, DEFAULT_PREFIX_CAPACITY, EVENTS_RING_BYTES, EXEMPTION_GROUP,
    EXEMPTION_GROUP_NAME, GROUP_STATS_ENTRIES, IFINDEX_SLOTS_ENTRIES, MAX_GROUPS, MAX_INTERFACES,
    MapSpec, OFFENDERS_ENTRIES, REASON_STATS_ENTRIES, RELAY_BUCKETS_ENTRIES, group_counter_index,
    reason_counter_index,
};
pub use records::{
    Counter, DESTINATION_SKETCH_BITS, Event, GROUP_NAME_MAX, GroupName, INTERFACE_NAME_MAX,
    InterfaceSlot, Offender, SourceKey, SourceRule,
};
pub use verdict::{
    Action, ActionStat, EventKind, FAMILY_COUNT, Family, REASON_COUNT, Reason, Smtp, Verdict,
};

/// The XDP entry point that filters.
pub const PROGRAM_FILTER: &str = "smtp_filter";
/// An XDP program that only returns `XDP_PASS`: the benchmark baseline.
pub const PROGRAM_PASS_BASELINE: &str = "pass_baseline";
/// An XDP program that only returns `XDP_DROP`: the floor of any drop path.
pub const PROGRAM_DROP_BASELINE: &str = "drop_baseline";

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

// Transitional spellings while the agent moves to the types above; removed in the same
// series of commits.
pub const MAP_CONFIG: &str = maps::FILTER_CONFIG.name;
pub const MAP_CONFIG_SLOT: &str = maps::CONFIG_SLOT.name;
pub const MAP_SOURCES_V4: &str = maps::SOURCES_V4.name;
pub const MAP_SOURCES_V6: &str = maps::SOURCES_V6.name;
pub const MAP_GROUP_NAMES: &str = maps::GROUP_NAMES.name;
pub const MAP_IFINDEX_SLOTS: &str = maps::IFINDEX_SLOTS.name;
pub const MAP_INTERFACE_SLOTS: &str = maps::INTERFACE_SLOTS.name;
pub const MAP_REASON_STATS: &str = maps::REASON_STATS.name;
pub const MAP_GROUP_STATS: &str = maps::GROUP_STATS.name;
pub const MAP_RELAY_BUCKETS: &str = maps::RELAY_BUCKETS.name;
pub const MAP_OFFENDERS: &str = maps::OFFENDERS.name;
pub const MAP_EVENTS: &str = maps::EVENTS.name;
pub const MAP_EVENT_LIMIT: &str = maps::EVENT_LIMIT.name;
pub const MAP_ACTION_STATS: &str = maps::ACTION_STATS.name;
pub const SMTP_BLOCK: u32 = Smtp::Block as u32;
pub const SMTP_ALLOW: u32 = Smtp::Allow as u32;
pub const ACTION_DROP: u32 = Action::Drop as u32;
pub const ACTION_REJECT: u32 = Action::Reject as u32;
pub const VERDICT_PASS: u32 = Verdict::Pass as u32;
pub const VERDICT_DROP: u32 = Verdict::Drop as u32;
pub const VERDICT_REJECT: u32 = Verdict::Reject as u32;
pub const EVENT_SAMPLE: u32 = EventKind::Sample as u32;
pub const EVENT_OFFENDER: u32 = EventKind::Offender as u32;
