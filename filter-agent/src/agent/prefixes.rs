//! `filter-agent prefixes add` and `remove`: an IPAM's prefix changes, applied to the
//! policy in force without reading the policy file again. The change is checked as the
//! policy loader would check it, written to the prefixes drop-in, patched into the
//! compiled image and written to the maps with the hole-free plan of `dataplane::sync`
//! over the changed prefixes only, then recorded as a generation. A large policy costs
//! nothing here: no parse, no compile, no diff of the whole image.

use std::{collections::BTreeSet, time::Instant};

use anyhow::{Result, bail};
use filter_common::SourceRule;
use ipnet::IpNet;
use log::{error, info};

use super::{history::Origin, state::Agent};
use crate::{
    control::protocol::{How, PrefixesChanged},
    dataplane::SyncReport,
    drop_in::{self, Change, Moved},
    image::MapImage,
    policy::Policy,
};

/// Notes in the history name this many prefixes, then count the rest.
const NOTE_PREFIXES: usize = 5;

impl Agent {
    /// Applies `change` asked for by `who`: refused with every reason, changing nothing,
    /// unless it would load as a policy file does and fits the maps.
    pub fn change_prefixes(&mut self, change: &Change, who: &str) -> Result<PrefixesChanged> {
        let started = Instant::now();
        let how = match change {
            Change::Add { .. } => How::PrefixesAdd,
            Change::Remove { .. } => How::PrefixesRemove,
        };
        self.refuse_under_url(how)?;
        let state = &self.state;
        let image = &state.policy_image;
        let group_of = |prefix: IpNet| {
            image
                .source(prefix)
                .and_then(|rule| image.group(rule.group))
                .map(|g| g.name.clone())
        };
        let (next, moves) = state.drop_in.changed(&state.policy, group_of, change)?;
        self.check_room(&moves)?;
        let Some(file) = self.state.drop_in_file() else {
            bail!("the policy comes from a URL; there is no prefixes drop-in");
        };
        let policy_file = self.state.policy_file();
        let over = policy_file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let text = next.to_text(&over)?;
        // Persisted first: a crash before the maps are written leaves a drop-in that the
        // restarted agent applies, never a change in the kernel that no file holds.
        let report = match self
            .write_drop_in(text.as_deref())
            .and_then(|()| self.apply_moves(&moves))
        {
            Ok(report) => report,
            Err(err) => {
                if let Err(restore) = self.write_drop_in(self.state.drop_in_text.as_deref()) {
                    error!("cannot put the prefixes drop-in back as it was: {restore:#}");
                }
                return Err(err.context("nothing changed"));
            }
        };
        self.state.generation = self.next_generation();
        self.state.drop_in = next;
        self.state.drop_in_text = text;
        self.state.policy_loaded_at = std::time::SystemTime::now();
        let note = note(&moves);
        self.record(Origin {
            note: Some(note.clone()),
            ..Origin::new(how, Some(who.to_string()))
        });
        let agent_ms = started.elapsed().as_secs_f64() * 1e3;
        info!(
            "{} by {who}: {note}; generation={} {report} applied_ms={agent_ms:.2}",
            how.name(),
            self.state.generation,
        );
        Ok(PrefixesChanged {
            generation: self.state.generation,
            drop_in: file,
            moved: moves,
            map_operations: report.added + report.removed + report.changed,
            agent_ms,
        })
    }

    /// Refuses prefixes the maps have no room for, and those that are a CLI exemption
    /// (the abuse desk's, which a policy prefix would override).
    fn check_room(&mut self, moves: &[Moved]) -> Result<()> {
        let mut reasons = Vec::new();
        let (mut new_v4, mut new_v6) = (0, 0);
        for moved in moves.iter().filter(|m| m.to.is_some()) {
            if let Some(exemption) = self.state.exemptions.get(moved.prefix) {
                reasons.push(format!(
                    "prefix {} is a CLI exemption ({:?}, by {}): `filter-agent exemptions remove {}` first",
                    moved.prefix, exemption.reason, exemption.added_by, moved.prefix
                ));
            }
            if self.state.applied.source(moved.prefix).is_none() {
                match moved.prefix {
                    IpNet::V4(_) => new_v4 += 1,
                    IpNet::V6(_) => new_v6 += 1,
                }
            }
        }
        let capacity = self.dataplane.capacity()?;
        let applied = &self.state.applied;
        for (family, held, new, room) in [
            (
                "IPv4",
                applied.sources_v4.len(),
                new_v4,
                capacity.sources_v4,
            ),
            (
                "IPv6",
                applied.sources_v6.len(),
                new_v6,
                capacity.sources_v6,
            ),
        ] {
            if new > 0 && held + new > room as usize {
                reasons.push(format!(
                    "the {family} prefix map holds {room} entries and {held} are in use: no room for {new} more; restart the agent after `filter-agent detach` to size the maps anew"
                ));
            }
        }
        if !reasons.is_empty() {
            bail!(drop_in::Refused(reasons));
        }
        Ok(())
    }

    /// Patches the compiled image with `moves` and brings the maps to it. When the change
    /// moves no exemption (none sits on a changed prefix, and the subscribers' exempt
    /// addresses stay the same) the maps change exactly at the moved prefixes, so only
    /// those are planned; otherwise the whole image is synced as a reload does.
    fn apply_moves(&mut self, moves: &[Moved]) -> Result<SyncReport> {
        let state = &mut self.state;
        let exempt_before: BTreeSet<IpNet> = state
            .subscribers
            .exempt_addresses(&state.policy_image)
            .into_iter()
            .collect();
        let undo = patch_image(&mut state.policy_image, &state.policy, moves);
        let exempt_after: BTreeSet<IpNet> = state
            .subscribers
            .exempt_addresses(&state.policy_image)
            .into_iter()
            .collect();
        let exemption_moves = exempt_before != exempt_after
            || moves
                .iter()
                .any(|m| state.exemptions.get(m.prefix).is_some());
        let result = if exemption_moves {
            let policy_image = state.policy_image.clone();
            self.sync(&policy_image)
        } else {
            self.sync_prefixes(moves.iter().map(|m| m.prefix))
        };
        let state = &mut self.state;
        match result {
            Ok(report) => {
                drop_in::patch(&mut state.policy, moves);
                Ok(report)
            }
            Err(err) => {
                unpatch_image(&mut state.policy_image, undo);
                Err(err)
            }
        }
    }

    /// Brings the maps from the image applied to the policy image at `prefixes`, where
    /// alone the two differ: the hole-free plan of those entries, as a sync of the whole
    /// image would order them.
    fn sync_prefixes(&mut self, prefixes: impl Iterator<Item = IpNet>) -> Result<SyncReport> {
        let state = &self.state;
        let applied = &state.applied;
        let restricted = || {
            let mut image = MapImage::new(applied.config);
            image.groups = applied.groups.clone();
            image
        };
        let (mut have, mut want) = (restricted(), restricted());
        let prefixes: Vec<IpNet> = prefixes.collect();
        for &prefix in &prefixes {
            if let Some(&rule) = applied.source(prefix) {
                have.insert_source(prefix, rule);
            }
            if let Some(&rule) = state.policy_image.source(prefix) {
                want.insert_source(prefix, rule);
            }
        }
        match self.dataplane.sync_from(&have, &want) {
            Ok(report) => {
                let applied = &mut self.state.applied;
                for prefix in prefixes {
                    match want.source(prefix) {
                        Some(&rule) => applied.insert_source(prefix, rule),
                        None => {
                            applied.remove_source(prefix);
                        }
                    }
                }
                Ok(report)
            }
            Err(err) => {
                // Part of the plan may be in the maps: learn what they hold.
                self.state.applied = self.dataplane.read_image()?;
                Err(err)
            }
        }
    }
}

/// Patches `image`, compiled from `policy` (whose groups the moves name), with `moves`
/// as compiling the moved policy would; returns what each moved prefix held before.
fn patch_image(
    image: &mut MapImage,
    policy: &Policy,
    moves: &[Moved],
) -> Vec<(IpNet, Option<SourceRule>)> {
    let mut undo = Vec::new();
    for moved in moves {
        let rule = moved.to.as_ref().map(|name| {
            let (&id, _) = image
                .groups
                .iter()
                .find(|(_, g)| &g.name == name)
                .expect("checked: the policy has the group");
            let group = policy
                .groups
                .iter()
                .find(|g| &g.name == name)
                .expect("checked: the policy has the group");
            group.rule(id)
        });
        let old = match rule {
            Some(rule) => {
                let old = image.source(moved.prefix).copied();
                image.insert_source(moved.prefix, rule);
                old
            }
            None => image.remove_source(moved.prefix),
        };
        undo.push((moved.prefix, old));
    }
    undo
}

/// Undoes [`patch_image`] with what it returned.
fn unpatch_image(image: &mut MapImage, undo: Vec<(IpNet, Option<SourceRule>)>) {
    for (prefix, old) in undo.into_iter().rev() {
        match old {
            Some(rule) => image.insert_source(prefix, rule),
            None => {
                image.remove_source(prefix);
            }
        }
    }
}

/// `residential += 198.18.0.0/24, 198.18.1.0/24` for the history and the log.
fn note(moves: &[Moved]) -> String {
    let mut by_target: Vec<(Option<&str>, Vec<String>)> = Vec::new();
    for moved in moves {
        let target = moved.to.as_deref();
        match by_target.iter_mut().find(|(t, _)| *t == target) {
            Some((_, prefixes)) => prefixes.push(moved.prefix.to_string()),
            None => by_target.push((target, vec![moved.prefix.to_string()])),
        }
    }
    by_target
        .into_iter()
        .map(|(target, prefixes)| {
            let shown = if prefixes.len() > NOTE_PREFIXES {
                format!(
                    "{} and {} more",
                    prefixes[..NOTE_PREFIXES].join(", "),
                    prefixes.len() - NOTE_PREFIXES
                )
            } else {
                prefixes.join(", ")
            };
            match target {
                Some(group) => format!("{group} += {shown}"),
                None => format!("removed {shown}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drop_in::DropIn;

    const POLICY: &str = "
version: 1
groups:
  - name: residential
    smtp: block
    prefixes: [100.64.0.0/10, 2001:db8:1000::/36]
  - name: new-area
    smtp: block
    mode: monitor
    prefixes: [100.72.0.0/16]
  - name: leased-line
    smtp: allow
    prefixes: [198.51.100.128/25]
";

    /// The fast path's image is the one a reload of the files it wrote would compile.
    #[test]
    fn a_patched_image_is_the_compiled_image_of_the_changed_policy() {
        let net = |t: &str| t.parse::<IpNet>().unwrap();
        let layered = drop_in::parse(POLICY, "p.yaml", None).unwrap();
        let mut policy = layered.policy;
        let mut drop_in: DropIn = layered.drop_in;
        let mut image = policy.compile();
        let changes = [
            Change::Add {
                group: "new-area".into(),
                prefixes: vec![net("198.18.0.0/24"), net("2001:db8:5000::/40")],
            },
            Change::Remove {
                prefixes: vec![net("100.64.0.0/10"), net("198.18.0.0/24")],
            },
            Change::Add {
                group: "leased-line".into(),
                prefixes: vec![net("100.64.0.0/10")],
            },
        ];
        for change in &changes {
            let group_of = |prefix| {
                image
                    .source(prefix)
                    .and_then(|r| image.group(r.group))
                    .map(|g| g.name.clone())
            };
            let (next, moves) = drop_in.changed(&policy, group_of, change).unwrap();
            let before = image.clone();
            let undo = patch_image(&mut image, &policy, &moves);
            drop_in::patch(&mut policy, &moves);
            drop_in = next;
            let text = drop_in.to_text("p.yaml").unwrap().unwrap();
            let reloaded = drop_in::parse(POLICY, "p.yaml", Some((&text, "d.yaml"))).unwrap();
            assert_eq!(reloaded.policy.compile(), image, "{change:?}");
            // And undone, it is the image before.
            let mut undone = image.clone();
            unpatch_image(&mut undone, undo);
            assert_eq!(undone, before);
        }
    }

    #[test]
    fn notes_name_a_few_prefixes_per_group() {
        let moved = |p: String, to: Option<&str>| Moved {
            prefix: p.parse().unwrap(),
            from: None,
            to: to.map(Into::into),
        };
        let mut moves: Vec<Moved> = (0..7)
            .map(|i| moved(format!("198.18.{i}.0/24"), Some("residential")))
            .collect();
        moves.push(moved("10.0.0.0/8".into(), None));
        assert_eq!(
            note(&moves),
            "residential += 198.18.0.0/24, 198.18.1.0/24, 198.18.2.0/24, 198.18.3.0/24, \
             198.18.4.0/24 and 2 more; removed 10.0.0.0/8"
        );
    }
}
