//! Policy -> `MapImage`: what the kernel maps must hold for this policy.

use std::collections::{BTreeMap, BTreeSet};

use filter_common::{ACTION_DROP, Config, FLAG_MONITOR, SourceRule};

use super::schema::{Action, Mode, Policy};
use crate::image::{GroupInfo, MapImage};

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
        config.action = match self.action {
            Action::Drop => ACTION_DROP,
        };
        for &port in &self.ports {
            config.set_port(port);
        }
        let mut image = MapImage::new(config);
        let ids = assign_ids(self.groups.iter().map(|g| g.name.as_str()), existing);
        for (&id, group) in ids.iter().zip(&self.groups) {
            image.groups.insert(
                id,
                GroupInfo {
                    name: group.name.clone(),
                    smtp: group.smtp,
                },
            );
            let rule = SourceRule {
                group: id,
                smtp: group.smtp.code(),
            };
            for &prefix in &group.prefixes {
                image.insert_source(prefix, rule);
            }
        }
        image
            .set_relays(&self.relays)
            .expect("validation caps relays per family at MAX_RELAYS");
        image
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
