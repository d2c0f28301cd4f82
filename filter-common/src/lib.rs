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
    EXEMPTION_GROUP_NAME, GROUP_STATS_ENTRIES, IFINDEX_SLOTS_ENTRIES, MAP_FLAG_MMAPABLE,
    MAX_GROUPS, MAX_INTERFACES, MapSpec, OFFENDER_SETS, OFFENDERS_ENTRIES, REASON_STATS_ENTRIES,
    RECENT_SOURCES_ENTRIES, RELAY_BUCKETS_ENTRIES, group_counter_index, reason_counter_index,
};
pub use records::{
    Counter, DESTINATION_SKETCH_BITS, Event, GROUP_NAME_MAX, GroupName, INTERFACE_NAME_MAX,
    InterfaceSlot, OFFENDER_WAYS, Offender, OffenderSet, OffenderSlot, REPLAY_REPORT_MAGIC,
    RecentSource, ReplayReport, SourceKey, SourceRule,
};
pub use verdict::{
    Action, ActionStat, EventKind, FAMILY_COUNT, Family, GroupMode, REASON_COUNT, Reason, Smtp,
    Verdict,
};

/// The XDP entry point that filters.
pub const PROGRAM_FILTER: &str = "smtp_filter";
/// The filter as `replay` runs it (BPF_PROG_TEST_RUN only, never attached): the same
/// decision, counters and records, plus a [`ReplayReport`] in the metadata area.
pub const PROGRAM_REPLAY: &str = "smtp_filter_replay";
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
    unsafe impl aya::Pod for super::OffenderSet {}
    unsafe impl aya::Pod for super::RecentSource {}
    unsafe impl aya::Pod for super::Event {}
}
