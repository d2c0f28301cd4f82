//! `plan` and `diff`: what changes between two policies, and the traffic it would move.
//! A pure computation over two policies and their compiled images (each with the CLI
//! exemptions applied, as the kernel would hold them) and the sources the kernel saw
//! sending to a filtered port recently.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use filter_common::{SourceKey, SourceRule};
use ipnet::IpNet;

use crate::{
    control::protocol::{
        Impact, ImpactSource, OffenderAlerts, Plan, PlanSummary, PolicyChange, RelayLimit, Side,
        SmtpVerdict, timestamp,
    },
    image::MapImage,
    model,
    policy::{Group, Mode, Policy},
};

/// One side of a comparison: a policy and the image the kernel would hold for it.
pub struct Compared<'a> {
    pub policy: &'a Policy,
    pub image: &'a MapImage,
    /// What the summary calls it, e.g. `generation 7 (in force)`.
    pub label: String,
}

/// A source the kernel remembers sending connection requests to a filtered port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenSource {
    pub key: SourceKey,
    pub attempts: u64,
    pub last_seen: SystemTime,
}

/// The changes from `old` to `new`, and the sources seen within `window` before `now`
/// whose verdict they change.
pub fn plan(
    old: &Compared,
    new: &Compared,
    seen: &[SeenSource],
    window: Duration,
    now: SystemTime,
) -> Plan {
    let renamed = renamed_groups(&old.policy.groups, &new.policy.groups);
    let mut changes = group_changes(old.policy, new.policy, &renamed);
    let prefixes = prefix_changes(old.image, new.image, &renamed);
    let changed: BTreeSet<IpNet> = prefixes.iter().map(|(prefix, ..)| *prefix).collect();
    changes.extend(
        prefixes
            .into_iter()
            .map(|(prefix, from, to)| PolicyChange::Prefix { prefix, from, to }),
    );
    changes.extend(setting_changes(old.policy, new.policy));
    let recent = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut sources: Vec<ImpactSource> = seen
        .iter()
        .filter(|s| s.last_seen >= recent)
        .filter_map(|s| impact(old.image, new.image, &renamed, &changed, s))
        .collect();
    sources.sort_by(|a, b| {
        b.attempts
            .cmp(&a.attempts)
            .then_with(|| a.source.cmp(&b.source))
    });
    let summary = PlanSummary {
        same: changes.is_empty(),
        from: old.label.clone(),
        to: new.label.clone(),
        changes: changes.len(),
        prefixes: changed.len(),
        sources: sources.len(),
        attempts: sources.iter().map(|s| s.attempts).sum(),
        sources_remembered: seen.len(),
    };
    Plan {
        changes,
        impact: Impact {
            window_seconds: window.as_secs(),
            sources,
        },
        summary,
    }
}

/// Groups that only changed their name: gone from `old`'s names, new in `new`'s, with
/// the same verdict and prefixes. Old name -> new name.
fn renamed_groups(old: &[Group], new: &[Group]) -> BTreeMap<String, String> {
    let prefixes = |g: &Group| g.prefixes.iter().copied().collect::<BTreeSet<IpNet>>();
    let mut renamed = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for gone in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
        let twin = new.iter().find(|n| {
            !old.iter().any(|o| o.name == n.name)
                && !taken.contains(&n.name)
                && n.smtp == gone.smtp
                && n.mode == gone.mode
                && prefixes(n) == prefixes(gone)
        });
        if let Some(twin) = twin {
            taken.insert(twin.name.clone());
            renamed.insert(gone.name.clone(), twin.name.clone());
        }
    }
    renamed
}

fn group_changes(
    old: &Policy,
    new: &Policy,
    renamed: &BTreeMap<String, String>,
) -> Vec<PolicyChange> {
    let mut changes = Vec::new();
    for (from, to) in renamed {
        changes.push(PolicyChange::GroupRenamed {
            from: from.clone(),
            to: to.clone(),
        });
    }
    let renamed_to: BTreeSet<&String> = renamed.values().collect();
    for group in &new.groups {
        match old.groups.iter().find(|o| o.name == group.name) {
            None if !renamed_to.contains(&group.name) => changes.push(PolicyChange::GroupAdded {
                group: group.name.clone(),
                smtp: group.smtp,
                mode: group.mode,
                prefixes: group.prefixes.len(),
            }),
            Some(before) => {
                if before.smtp != group.smtp {
                    changes.push(PolicyChange::GroupSmtp {
                        group: group.name.clone(),
                        from: before.smtp,
                        to: group.smtp,
                    });
                }
                if before.mode != group.mode {
                    changes.push(PolicyChange::GroupMode {
                        group: group.name.clone(),
                        from: before.mode,
                        to: group.mode,
                    });
                }
            }
            None => {}
        }
    }
    for group in &old.groups {
        if !new.groups.iter().any(|n| n.name == group.name) && !renamed.contains_key(&group.name) {
            changes.push(PolicyChange::GroupRemoved {
                group: group.name.clone(),
                smtp: group.smtp,
                prefixes: group.prefixes.len(),
            });
        }
    }
    changes
}

/// Who decides for `rule`'s group, named as on the new side (a renamed group is the
/// same group).
fn side(image: &MapImage, rule: Option<SourceRule>, renamed: &BTreeMap<String, String>) -> Side {
    let Some(rule) = rule else {
        return Side {
            group: None,
            verdict: SmtpVerdict::Unmanaged,
            mode: None,
        };
    };
    let block = !rule.allows();
    let mode = block.then(|| {
        if rule.monitors(&image.config) {
            Mode::Monitor
        } else {
            Mode::Enforce
        }
    });
    let name = image
        .group(rule.group)
        .map(|g| g.name.clone())
        .unwrap_or_else(|| format!("group-{}", rule.group));
    Side {
        group: Some(renamed.get(&name).cloned().unwrap_or(name)),
        verdict: if block {
            SmtpVerdict::Block
        } else {
            SmtpVerdict::Allow
        },
        mode,
    }
}

/// Old group names shown as they were, for the `from` side.
fn as_was(side: Side, renamed: &BTreeMap<String, String>) -> Side {
    let group = side.group.map(|name| {
        renamed
            .iter()
            .find(|(_, to)| **to == name)
            .map_or(name, |(from, _)| from.clone())
    });
    Side { group, ..side }
}

/// Every prefix of either image whose longest match (the prefix itself or one around it)
/// changes group or verdict: IPv4 first, most specific first. A mode that changes alone
/// is one change of the group's or the policy's, not one per prefix.
fn prefix_changes(
    old: &MapImage,
    new: &MapImage,
    renamed: &BTreeMap<String, String>,
) -> Vec<(IpNet, Side, Side)> {
    let prefixes: BTreeSet<IpNet> = [old, new]
        .iter()
        .flat_map(|image| {
            image
                .sources_v4
                .keys()
                .map(|&p| IpNet::V4(p))
                .chain(image.sources_v6.keys().map(|&p| IpNet::V6(p)))
        })
        .collect();
    let mut changes: Vec<(IpNet, Side, Side)> = prefixes
        .into_iter()
        .filter_map(|prefix| {
            let from = side(old, model::lookup_covering(old, prefix), renamed);
            let to = side(new, model::lookup_covering(new, prefix), renamed);
            let moved = (&from.group, from.verdict) != (&to.group, to.verdict);
            moved.then(|| (prefix, as_was(from, renamed), to))
        })
        .collect();
    changes.sort_by_key(|(prefix, ..)| {
        (
            matches!(prefix, IpNet::V6(_)),
            std::cmp::Reverse(prefix.prefix_len()),
            *prefix,
        )
    });
    changes
}

/// The source's verdict on both sides, if it changes: block, allow or unmanaged, or the
/// mode a block is carried out in (a group's or the policy's mode change moves traffic).
fn impact(
    old: &MapImage,
    new: &MapImage,
    renamed: &BTreeMap<String, String>,
    changed: &BTreeSet<IpNet>,
    seen: &SeenSource,
) -> Option<ImpactSource> {
    let address: IpAddr = seen.key.ip()?;
    let before = model::lookup_source(old, address);
    let after = model::lookup_source(new, address);
    let from = side(old, before.map(|(_, rule)| rule), renamed);
    let to = side(new, after.map(|(_, rule)| rule), renamed);
    if (from.verdict, from.mode) == (to.verdict, to.mode) {
        return None;
    }
    let prefix = [after, before]
        .into_iter()
        .flatten()
        .map(|(prefix, _)| prefix)
        .find(|prefix| changed.contains(prefix));
    Some(ImpactSource {
        source: seen.key.to_string(),
        from: as_was(from, renamed),
        to,
        attempts: seen.attempts,
        last_seen: timestamp(seen.last_seen),
        prefix,
    })
}

/// Relays, ports, mode, action, limits and interfaces.
fn setting_changes(old: &Policy, new: &Policy) -> Vec<PolicyChange> {
    let mut changes = Vec::new();
    let relays = |p: &Policy| p.relays.iter().copied().collect::<BTreeSet<IpNet>>();
    let (old_relays, new_relays) = (relays(old), relays(new));
    for &relay in new_relays.difference(&old_relays) {
        changes.push(PolicyChange::RelayAdded { relay });
    }
    for &relay in old_relays.difference(&new_relays) {
        changes.push(PolicyChange::RelayRemoved { relay });
    }
    let ports = |p: &Policy| p.ports.iter().copied().collect::<BTreeSet<u16>>();
    if ports(old) != ports(new) {
        changes.push(PolicyChange::Ports {
            from: ports(old).into_iter().collect(),
            to: ports(new).into_iter().collect(),
        });
    }
    if old.mode != new.mode {
        changes.push(PolicyChange::Mode {
            from: old.mode,
            to: new.mode,
        });
    }
    if old.action != new.action {
        changes.push(PolicyChange::Action {
            from: old.action,
            to: new.action,
        });
    }
    let limit = |p: &Policy| {
        p.relay_limit.map(|l| RelayLimit {
            syn_per_minute: l.syn_per_minute.into(),
            burst: l.burst.into(),
        })
    };
    if limit(old) != limit(new) {
        changes.push(PolicyChange::RelayLimit {
            from: limit(old),
            to: limit(new),
        });
    }
    let alerts = |p: &Policy| {
        p.offenders.map(|o| OffenderAlerts {
            alert_after: o.alert_after,
            window: humantime::format_duration(o.window).to_string(),
        })
    };
    if alerts(old) != alerts(new) {
        changes.push(PolicyChange::Offenders {
            from: alerts(old),
            to: alerts(new),
        });
    }
    if old.events != new.events {
        changes.push(PolicyChange::Events {
            from: old.events.per_second,
            to: new.events.per_second,
        });
    }
    for interface in &new.interfaces {
        match old.interfaces.iter().find(|i| i.name == interface.name) {
            None => changes.push(PolicyChange::InterfaceAdded {
                interface: interface.name.clone(),
            }),
            Some(before) if before.xdp_mode != interface.xdp_mode => {
                changes.push(PolicyChange::InterfaceXdpMode {
                    interface: interface.name.clone(),
                    from: before.xdp_mode.name().to_string(),
                    to: interface.xdp_mode.name().to_string(),
                })
            }
            Some(_) => {}
        }
    }
    for interface in &old.interfaces {
        if !new.interfaces.iter().any(|i| i.name == interface.name) {
            changes.push(PolicyChange::InterfaceRemoved {
                interface: interface.name.clone(),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    const OLD: &str = "version: 1
ports: [25]
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]
  - name: business-ethernet
    smtp: allow
    prefixes: [192.0.2.128/26]
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25]
relays: [203.0.113.25]
";

    /// 100.64.7.0/24 moves to leased-line, business-ethernet is renamed, a relay and a
    /// port are added.
    const NEW: &str = "version: 1
ports: [25, 2525]
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]
  - name: business-fibre
    smtp: allow
    prefixes: [192.0.2.128/26]
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25, 100.64.7.0/24]
relays: [203.0.113.25, 203.0.113.26]
";

    fn parsed(text: &str) -> Policy {
        policy::parse(text, "p.yaml").unwrap().policy
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn seen(address: &str, attempts: u64, last_seen: u64) -> SeenSource {
        SeenSource {
            key: SourceKey::from_ip(address.parse().unwrap()),
            attempts,
            last_seen: at(last_seen),
        }
    }

    fn side(group: Option<&str>, verdict: SmtpVerdict) -> Side {
        Side {
            group: group.map(Into::into),
            verdict,
            mode: (verdict == SmtpVerdict::Block).then_some(Mode::Enforce),
        }
    }

    fn compare(old: &str, new: &str, sources: &[SeenSource]) -> Plan {
        let (old, new) = (parsed(old), parsed(new));
        let (old_image, new_image) = (old.compile(), new.compile());
        plan(
            &Compared {
                policy: &old,
                image: &old_image,
                label: "generation 1".into(),
            },
            &Compared {
                policy: &new,
                image: &new_image,
                label: "new.yaml".into(),
            },
            sources,
            Duration::from_secs(3600),
            at(10_000),
        )
    }

    #[test]
    fn a_moved_prefix_and_the_sources_seen_in_it_are_named_and_nothing_else() {
        let sources = [
            // In the moved prefix: blocked, then allowed.
            seen("100.64.7.9", 3_410, 9_000),
            seen("100.64.7.10", 12, 9_500),
            // Seen too long ago.
            seen("100.64.7.11", 50, 1_000),
            // Verdicts that stay: residential, the renamed group, unmanaged, IPv6.
            seen("100.64.0.10", 99, 9_900),
            seen("192.0.2.130", 7, 9_900),
            seen("198.18.0.10", 5, 9_900),
            seen("2001:db8:1000::10", 4, 9_900),
        ];
        let plan = compare(OLD, NEW, &sources);
        let block = SmtpVerdict::Block;
        let allow = SmtpVerdict::Allow;
        assert_eq!(
            plan.changes,
            [
                PolicyChange::GroupRenamed {
                    from: "business-ethernet".into(),
                    to: "business-fibre".into()
                },
                PolicyChange::Prefix {
                    prefix: "100.64.7.0/24".parse().unwrap(),
                    from: side(Some("residential"), block),
                    to: side(Some("leased-line"), allow),
                },
                PolicyChange::RelayAdded {
                    relay: "203.0.113.26/32".parse().unwrap()
                },
                PolicyChange::Ports {
                    from: vec![25],
                    to: vec![25, 2525]
                },
            ]
        );
        let moved: Vec<(&str, u64, Option<IpNet>)> = plan
            .impact
            .sources
            .iter()
            .map(|s| (s.source.as_str(), s.attempts, s.prefix))
            .collect();
        let prefix = Some("100.64.7.0/24".parse().unwrap());
        assert_eq!(
            moved,
            [("100.64.7.9", 3_410, prefix), ("100.64.7.10", 12, prefix)]
        );
        let first = &plan.impact.sources[0];
        assert_eq!(first.from, side(Some("residential"), block));
        assert_eq!(first.to, side(Some("leased-line"), allow));
        assert_eq!(first.last_seen, "1970-01-01T02:30:00Z");
        assert_eq!(plan.impact.window_seconds, 3600);
        let summary = &plan.summary;
        assert!(!summary.same);
        assert_eq!(
            (
                summary.changes,
                summary.prefixes,
                summary.sources,
                summary.attempts
            ),
            (4, 1, 2, 3_422)
        );
        assert_eq!(summary.sources_remembered, 7);
    }

    #[test]
    fn a_group_mode_change_is_one_change_and_moves_its_seen_sources_only() {
        let watched = OLD.replacen(
            "  - name: residential\n    smtp: block\n",
            "  - name: residential\n    smtp: block\n    mode: monitor\n",
            1,
        );
        let sources = [seen("100.64.0.10", 9, 9_900), seen("192.0.2.130", 7, 9_900)];
        let plan = compare(OLD, &watched, &sources);
        assert_eq!(
            plan.changes,
            [PolicyChange::GroupMode {
                group: "residential".into(),
                from: None,
                to: Some(Mode::Monitor)
            }]
        );
        assert_eq!(plan.impact.sources.len(), 1, "{:?}", plan.impact.sources);
        let source = &plan.impact.sources[0];
        assert_eq!(source.source, "100.64.0.10");
        assert_eq!(
            (source.from.mode, source.to.mode, source.prefix),
            (Some(Mode::Enforce), Some(Mode::Monitor), None)
        );
        assert_eq!(
            (source.from.outcome(), source.to.outcome()),
            ("block", "monitored")
        );
        // The policy's mode flips too: residential keeps its own, the rest follows.
        let both = watched.replacen("version: 1\n", "version: 1\nmode: monitor\n", 1);
        let plan = compare(&watched, &both, &sources);
        assert_eq!(
            plan.changes,
            [PolicyChange::Mode {
                from: Mode::Enforce,
                to: Mode::Monitor
            }]
        );
        assert_eq!(plan.impact.sources, []);
        // A new group rolled out watched says so.
        let added = OLD.replacen(
            "relays:",
            "  - name: pilot\n    smtp: block\n    mode: monitor\n    prefixes: [198.18.0.0/15]\nrelays:",
            1,
        );
        let plan = compare(OLD, &added, &[seen("198.18.0.10", 3, 9_900)]);
        assert_eq!(
            plan.changes[0],
            PolicyChange::GroupAdded {
                group: "pilot".into(),
                smtp: filter_common::Smtp::Block,
                mode: Some(Mode::Monitor),
                prefixes: 1
            }
        );
        let source = &plan.impact.sources[0];
        assert_eq!(
            (source.from.outcome(), source.to.outcome()),
            ("unmanaged", "monitored")
        );
    }

    #[test]
    fn the_same_policy_in_effect_is_no_change() {
        let reordered = "version: 1
# comments, order and spelling do not matter
groups:
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25]
  - name: business-ethernet
    smtp: allow
    prefixes: [192.0.2.128/26]
  - name: residential
    smtp: block
    prefixes: [\"2001:db8:1000::/36\", 100.64.0.0/10]
relays: [203.0.113.25/32]
";
        let plan = compare(OLD, reordered, &[seen("100.64.0.10", 1, 9_999)]);
        assert_eq!(plan.changes, []);
        assert!(plan.summary.same);
        assert_eq!(plan.impact.sources, []);
    }

    #[test]
    fn removed_groups_unmanage_their_sources_and_verdict_flips_are_listed_per_prefix() {
        let new = "version: 1
groups:
  - name: residential
    smtp: allow
    prefixes: [100.64.0.0/10, \"2001:db8:1000::/36\"]
  - name: business-ethernet
    smtp: allow
    prefixes: [192.0.2.128/26]
relays: [203.0.113.25]
";
        let plan = compare(OLD, new, &[seen("198.51.100.130", 8, 9_999)]);
        let allow = SmtpVerdict::Allow;
        assert_eq!(
            plan.changes,
            [
                PolicyChange::GroupSmtp {
                    group: "residential".into(),
                    from: filter_common::Smtp::Block,
                    to: filter_common::Smtp::Allow
                },
                PolicyChange::GroupRemoved {
                    group: "leased-line".into(),
                    smtp: filter_common::Smtp::Allow,
                    prefixes: 1
                },
                PolicyChange::Prefix {
                    prefix: "198.51.100.128/25".parse().unwrap(),
                    from: side(Some("leased-line"), allow),
                    to: side(None, SmtpVerdict::Unmanaged),
                },
                PolicyChange::Prefix {
                    prefix: "100.64.0.0/10".parse().unwrap(),
                    from: side(Some("residential"), SmtpVerdict::Block),
                    to: side(Some("residential"), allow),
                },
                PolicyChange::Prefix {
                    prefix: "2001:db8:1000::/36".parse().unwrap(),
                    from: side(Some("residential"), SmtpVerdict::Block),
                    to: side(Some("residential"), allow),
                },
            ]
        );
        let source = &plan.impact.sources[0];
        assert_eq!(
            (source.from.verdict, source.to.verdict, source.prefix),
            (
                allow,
                SmtpVerdict::Unmanaged,
                Some("198.51.100.128/25".parse().unwrap())
            )
        );
    }
}
