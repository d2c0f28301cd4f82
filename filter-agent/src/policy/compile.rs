//! Policy -> `MapImage`: what the kernel maps must hold for this policy.

use std::collections::{BTreeMap, BTreeSet};

use filter_common::{Config, FLAG_MONITOR, SourceRule};
use ipnet::IpNet;

use super::schema::{Events, Group, Mode, Offenders, Policy, RelayLimit};
use crate::image::{GroupInfo, MapImage, SourceTable};

impl Policy {
    /// Compiles with group ids numbered 1.. in policy order.
    pub fn compile(&self) -> MapImage {
        self.compile_with_ids(&BTreeMap::new())
    }

    /// Compiles keeping the ids of groups that already have one (by name), so a reload
    /// rewrites no prefix of an unchanged group and its counters stay its own. New groups
    /// take the lowest free ids.
    pub fn compile_with_ids(&self, existing: &BTreeMap<String, u32>) -> MapImage {
        let mut config = Config::empty();
        if self.mode == Mode::Monitor {
            config.flags |= FLAG_MONITOR;
        }
        config.action = self.action as u32;
        if let Some(limit) = self.relay_limit {
            (config.relay_interval_ns, config.relay_tolerance_ns) = limit.gcra();
        }
        if let Some(offenders) = self.offenders {
            (config.offender_alert_after, config.offender_window_ns) = offenders.config();
        }
        (config.event_interval_ns, config.event_tolerance_ns) = self.events.gcra();
        for &port in &self.ports {
            config.set_port(port);
        }
        let mut image = MapImage::new(config);
        let ids = assign_ids(self.groups.iter().map(|g| g.name.as_str()), existing);
        // Sized exactly: at a million prefixes a doubling vector would waste megabytes.
        let count_v4 = self
            .groups
            .iter()
            .flat_map(|g| &g.prefixes)
            .filter(|p| matches!(p, IpNet::V4(_)))
            .count();
        let mut v4 = Vec::with_capacity(count_v4);
        let mut v6 = Vec::with_capacity(self.prefix_count() - count_v4);
        for (&id, group) in ids.iter().zip(&self.groups) {
            image.groups.insert(
                id,
                GroupInfo {
                    name: group.name.clone(),
                    smtp: group.smtp,
                },
            );
            let rule = group.rule(id);
            for &prefix in &group.prefixes {
                match prefix {
                    IpNet::V4(p) => v4.push((p, rule)),
                    IpNet::V6(p) => v6.push((p, rule)),
                }
            }
        }
        image.sources_v4 = SourceTable::from_entries(v4);
        image.sources_v6 = SourceTable::from_entries(v6);
        image
            .set_relays(&self.relays)
            .expect("validation caps relays per family at MAX_RELAYS");
        image
    }
}

impl Group {
    /// What each prefix of the group holds in the kernel, the group having id `id`. The
    /// group's mode goes into each of its rules, so the kernel learns it from the lookup
    /// that finds the group.
    pub fn rule(&self, id: u32) -> SourceRule {
        SourceRule::with_mode(id, self.smtp, Mode::of_group(self.mode))
    }
}

const NS_PER_SECOND: u64 = 1_000_000_000;
const NS_PER_MINUTE: u64 = 60 * NS_PER_SECOND;

/// GCRA parameters of `rate` requests per `period_ns` with bursts of `burst`: the interval
/// between requests and how far ahead of now the bucket may run, `(burst - 1) * interval`.
fn gcra_parameters(period_ns: u64, rate: u32, burst: u32) -> (u64, u64) {
    let interval = period_ns / u64::from(rate);
    (interval, u64::from(burst - 1) * interval)
}

impl RelayLimit {
    /// `(relay_interval_ns, relay_tolerance_ns)`: 60 s / syn_per_minute, (burst - 1) * that.
    pub fn gcra(&self) -> (u64, u64) {
        gcra_parameters(NS_PER_MINUTE, self.syn_per_minute, self.burst)
    }
}

impl Offenders {
    /// `(offender_alert_after, offender_window_ns)`.
    pub fn config(&self) -> (u64, u64) {
        let window = u64::try_from(self.window.as_nanos()).expect("validation caps the window");
        (self.alert_after, window)
    }
}

impl Events {
    /// `(event_interval_ns, event_tolerance_ns)`: 1 s / per_second with a burst of one
    /// second's worth; `(0, 0)` (no events) for 0.
    pub fn gcra(&self) -> (u64, u64) {
        match self.per_second {
            0 => (0, 0),
            rate => gcra_parameters(NS_PER_SECOND, rate, rate),
        }
    }
}

/// Ids for `names` in order: kept from `existing` where the name has one, otherwise the
/// lowest id neither kept nor already handed out.
fn assign_ids<'a>(
    names: impl Iterator<Item = &'a str>,
    existing: &BTreeMap<String, u32>,
) -> Vec<u32> {
    let names: Vec<&str> = names.collect();
    let mut taken: BTreeSet<u32> = names
        .iter()
        .filter_map(|n| existing.get(*n).copied())
        .collect();
    let mut next_free = 1u32..;
    names
        .iter()
        .map(|name| match existing.get(*name) {
            Some(&id) => id,
            None => {
                let id = next_free
                    .by_ref()
                    .find(|id| !taken.contains(id))
                    .expect("ids are unbounded");
                taken.insert(id);
                id
            }
        })
        .collect()
}
