//! Bring the kernel maps to a wanted `MapImage` with the fewest operations, in an order
//! that never opens a hole.
//!
//! Prefix changes: upserts first, most specific first; then deletions, least specific
//! first. At every moment each source address is judged by its old longest match or its
//! new one, never by a third: an upsert of length n only matters to addresses whose new
//! longest match it is, and until the old entries longer than it are deleted (shortest
//! first, so the longest old match goes last) they keep giving the old verdict.
//! The config (mode, ports, relays) is switched whole, after the prefixes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, bail};
use aya::maps::{MapData, lpm_trie::Key};
use filter_common::{
    GroupName, MAX_GROUPS, Smtp, SourceRule,
    maps::{SOURCES_V4, SOURCES_V6},
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{Dataplane, batch, fixed_name, read_fixed_name};
use crate::image::{GroupInfo, MapImage, SourceTable};

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub config_changed: bool,
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prefixes added={} removed={} changed={} config_changed={}",
            self.added, self.removed, self.changed, self.config_changed
        )?;
        if !self.groups_added.is_empty() {
            write!(f, " groups_added={}", self.groups_added.join(","))?;
        }
        if !self.groups_removed.is_empty() {
            write!(f, " groups_removed={}", self.groups_removed.join(","))?;
        }
        Ok(())
    }
}

/// A prefix family as the tries hold it.
pub trait Prefix: Ord + Copy + std::fmt::Display {
    type Bytes: aya::Pod;
    fn key(&self) -> Key<Self::Bytes>;
    fn from_key(key: &Key<Self::Bytes>) -> Result<Self>;
    fn len(&self) -> u8;
}

impl Prefix for Ipv4Net {
    type Bytes = [u8; 4];
    fn key(&self) -> Key<[u8; 4]> {
        Key::new(self.prefix_len().into(), self.network().octets())
    }
    fn from_key(key: &Key<[u8; 4]>) -> Result<Self> {
        Ok(Ipv4Net::new(key.data().into(), key.prefix_len() as u8)?)
    }
    fn len(&self) -> u8 {
        self.prefix_len()
    }
}

impl Prefix for Ipv6Net {
    type Bytes = [u8; 16];
    fn key(&self) -> Key<[u8; 16]> {
        Key::new(self.prefix_len().into(), self.network().octets())
    }
    fn from_key(key: &Key<[u8; 16]>) -> Result<Self> {
        Ok(Ipv6Net::new(key.data().into(), key.prefix_len() as u8)?)
    }
    fn len(&self) -> u8 {
        self.prefix_len()
    }
}

/// Every entry of a trie, read in batches.
fn read_trie<P: Prefix>(map: &MapData) -> Result<SourceTable<P>> {
    let entries = batch::read_all::<Key<P::Bytes>, SourceRule>(map)
        .context("reading the source prefixes back from the kernel")?;
    entries
        .iter()
        .map(|(key, rule)| Ok((P::from_key(key)?, *rule)))
        .collect()
}

/// The changes that take a trie from `have` to `want`, in hole-free order (see the module
/// comment): `upserts`, then `removes`.
#[derive(Debug)]
pub struct Plan<P> {
    pub upserts: Vec<(P, SourceRule)>,
    pub removes: Vec<P>,
    /// How many of `upserts` are new prefixes (the others change a rule).
    pub added: usize,
}

/// One change of a trie, as [`diff`] finds it.
enum Change<'t, P> {
    /// `new`: the prefix is not in `have`.
    Upsert(&'t P, &'t SourceRule, bool),
    Remove(&'t P),
}

/// The changes that take `have` to `want`, in prefix order: one walk over both (they are
/// sorted).
fn diff<'t, P: Prefix>(
    have: &'t SourceTable<P>,
    want: &'t SourceTable<P>,
    mut change: impl FnMut(Change<'t, P>),
) {
    let mut old = have.iter().peekable();
    for (prefix, rule) in want.iter() {
        while let Some((gone, _)) = old.next_if(|(p, _)| *p < prefix) {
            change(Change::Remove(gone));
        }
        match old.next_if(|(p, _)| *p == prefix) {
            Some((_, kept)) if kept == rule => {}
            Some(_) => change(Change::Upsert(prefix, rule, false)),
            None => change(Change::Upsert(prefix, rule, true)),
        }
    }
    old.for_each(|(gone, _)| change(Change::Remove(gone)));
}

/// The changes that take `have` to `want`, in hole-free order. A first walk counts them,
/// so the vectors are of exactly the plan's size (at start the upserts are the whole
/// policy: a vector grown by doubling would hold up to twice that), and they are sorted
/// in place.
pub fn plan<P: Prefix>(have: &SourceTable<P>, want: &SourceTable<P>) -> Plan<P> {
    let (mut upserts, mut removes) = (0, 0);
    diff(have, want, |change| match change {
        Change::Upsert(..) => upserts += 1,
        Change::Remove(_) => removes += 1,
    });
    let mut plan = Plan {
        upserts: Vec::with_capacity(upserts),
        removes: Vec::with_capacity(removes),
        added: 0,
    };
    diff(have, want, |change| match change {
        Change::Upsert(prefix, rule, new) => {
            plan.upserts.push((*prefix, *rule));
            plan.added += usize::from(new);
        }
        Change::Remove(prefix) => plan.removes.push(*prefix),
    });
    // Within one length, address order (the kernel's trie does not care).
    plan.upserts
        .sort_unstable_by_key(|(p, _)| (std::cmp::Reverse(p.len()), *p));
    plan.removes.sort_unstable_by_key(|p| (p.len(), *p));
    plan
}

/// The element a batch stopped at (the kernel reports how many went before it).
fn at<T>(chunk: &[T], done: usize) -> &T {
    &chunk[done.min(chunk.len() - 1)]
}

/// Carries out `plan` on the trie `map`, [`batch::BATCH`] entries a system call.
fn apply<P: Prefix>(map: &MapData, plan: &Plan<P>) -> Result<()> {
    let mut keys = Vec::with_capacity(batch::BATCH.min(plan.upserts.len().max(plan.removes.len())));
    let mut rules = Vec::with_capacity(batch::BATCH.min(plan.upserts.len()));
    for chunk in plan.upserts.chunks(batch::BATCH) {
        keys.clear();
        rules.clear();
        keys.extend(chunk.iter().map(|(p, _)| p.key()));
        rules.extend(chunk.iter().map(|(_, rule)| *rule));
        batch::update(map, &keys, &rules).map_err(|partial| {
            anyhow::Error::new(partial.error).context(format!(
                "inserting source prefix {}",
                at(chunk, partial.done).0
            ))
        })?;
    }
    for chunk in plan.removes.chunks(batch::BATCH) {
        keys.clear();
        keys.extend(chunk.iter().map(|p| p.key()));
        batch::delete::<_, SourceRule>(map, &keys).map_err(|partial| {
            anyhow::Error::new(partial.error).context(format!(
                "removing source prefix {}",
                at(chunk, partial.done)
            ))
        })?;
    }
    Ok(())
}

fn encode_name(name: &str) -> Result<GroupName> {
    Ok(GroupName {
        len: name.len() as u32,
        bytes: fixed_name("group", name)?,
    })
}

impl Dataplane {
    /// Group names by id, as recorded in the kernel.
    pub fn group_ids(&mut self) -> Result<BTreeMap<String, u32>> {
        let names = self.group_names()?;
        let mut ids = BTreeMap::new();
        for id in 1..=MAX_GROUPS {
            let entry = names.get(&id, 0)?;
            if entry.len > 0 {
                ids.insert(read_fixed_name(&entry.bytes), id);
            }
        }
        Ok(ids)
    }

    /// Reads back what the maps hold, as a `MapImage` (groups' smtp from their prefixes).
    pub fn read_image(&mut self) -> Result<MapImage> {
        let mut image = MapImage::new(self.live_config()?);
        image.sources_v4 = read_trie(self.map(SOURCES_V4.name)?)?;
        image.sources_v6 = read_trie(self.map(SOURCES_V6.name)?)?;
        let rules: BTreeMap<u32, u32> = image
            .sources_v4
            .values()
            .chain(image.sources_v6.values())
            .map(|r| (r.group, r.smtp))
            .collect();
        for (name, id) in self.group_ids()? {
            let smtp = rules
                .get(&id)
                .and_then(|&code| Smtp::try_from(code).ok())
                .unwrap_or(Smtp::Block);
            image.groups.insert(id, GroupInfo { name, smtp });
        }
        Ok(image)
    }

    /// Brings the maps to `want`, touching only what differs. Refuses, changing nothing,
    /// when the tries cannot hold old and new entries together.
    pub fn sync(&mut self, want: &MapImage) -> Result<SyncReport> {
        let have = self.read_image()?;
        self.sync_from(&have, want)
    }

    /// Like `sync`, trusting `have` to be what the maps hold (the image this process
    /// applied last), so a small change costs only its own map operations.
    pub fn sync_from(&mut self, have: &MapImage, want: &MapImage) -> Result<SyncReport> {
        let plan_v4 = plan(&have.sources_v4, &want.sources_v4);
        let plan_v6 = plan(&have.sources_v6, &want.sources_v6);
        let capacity = self.capacity()?;
        let room_v4 = have.sources_v4.len() + plan_v4.added;
        let room_v6 = have.sources_v6.len() + plan_v6.added;
        if room_v4 > capacity.sources_v4 as usize || room_v6 > capacity.sources_v6 as usize {
            bail!(
                "the policy needs room for {room_v4} IPv4 and {room_v6} IPv6 prefixes during the \
                 update, the loaded maps hold {} and {}; restart the agent after `filter-agent \
                 detach` to size them anew",
                capacity.sources_v4,
                capacity.sources_v6
            );
        }

        let have_groups: BTreeMap<&str, u32> = have
            .groups
            .iter()
            .map(|(&id, g)| (g.name.as_str(), id))
            .collect();
        let want_groups: BTreeMap<&str, u32> = want
            .groups
            .iter()
            .map(|(&id, g)| (g.name.as_str(), id))
            .collect();
        let mut report = SyncReport::default();
        // New groups get their names (and zeroed counters) before any prefix points at them.
        for (name, &id) in &want_groups {
            if have_groups.get(*name) != Some(&id) {
                self.reset_group_counters(id)?;
                self.group_names()?.set(id, encode_name(name)?, 0)?;
                report.groups_added.push(name.to_string());
            }
        }
        // An address is in one family, so the two tries are independent: each is
        // written in its own order while the other is (the kernel locks each trie on its
        // own), which at start saves the smaller one's time.
        let (trie_v4, trie_v6) = (self.map(SOURCES_V4.name)?, self.map(SOURCES_V6.name)?);
        let (applied_v4, applied_v6) = std::thread::scope(|scope| {
            let v6 = scope.spawn(|| apply(trie_v6, &plan_v6));
            let v4 = apply(trie_v4, &plan_v4);
            (
                v4,
                v6.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            )
        });
        applied_v4?;
        applied_v6?;
        report.added = plan_v4.added + plan_v6.added;
        report.removed = plan_v4.removes.len() + plan_v6.removes.len();
        report.changed =
            plan_v4.upserts.len() - plan_v4.added + plan_v6.upserts.len() - plan_v6.added;
        if have.config != want.config {
            self.switch_config(&want.config)?;
            report.config_changed = true;
        }
        // Names of groups that are gone are cleared last, once no prefix refers to them.
        let live_ids: BTreeSet<u32> = want_groups.values().copied().collect();
        for (name, id) in have_groups {
            if !live_ids.contains(&id) {
                self.group_names()?.set(id, encode_name("")?, 0)?;
                report.groups_removed.push(name.to_string());
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    //! The ordering claim, checked with the reference model: applying a plan one step at a
    //! time, every address is judged by its old verdict until it switches, once, to its new
    //! one.
    use std::net::{IpAddr, Ipv4Addr};

    use filter_common::{Config, Smtp};

    use super::*;
    use crate::model::{self, Decision};

    /// One change to a trie.
    #[derive(Clone, Copy, Debug)]
    enum Op<P> {
        Upsert(P, SourceRule),
        Remove(P),
    }

    impl<P: Prefix> Plan<P> {
        /// The changes one by one, in the order they are applied.
        fn ops(&self) -> impl Iterator<Item = Op<P>> + '_ {
            let upserts = self.upserts.iter().map(|&(p, rule)| Op::Upsert(p, rule));
            upserts.chain(self.removes.iter().map(|&p| Op::Remove(p)))
        }
    }

    /// Addresses 10.0.0.0 .. 10.0.4.0: the prefixes below nest inside it.
    const SPACE: u32 = 1024;

    fn random_rules(rng: &mut fastrand::Rng) -> SourceTable<Ipv4Net> {
        // Nested prefixes in a small space, so most addresses have several matches.
        (0..rng.usize(0..12))
            .map(|_| {
                let len = rng.u8(22..=30);
                let addr = Ipv4Addr::from(0x0a00_0000 | rng.u32(0..SPACE));
                let rule = SourceRule::new(
                    rng.u32(1..4),
                    if rng.bool() { Smtp::Block } else { Smtp::Allow },
                );
                (Ipv4Net::new(addr, len).unwrap().trunc(), rule)
            })
            .collect()
    }

    fn image(sources: &SourceTable<Ipv4Net>) -> MapImage {
        let mut config = Config::empty();
        config.set_port(25);
        let mut image = MapImage::new(config);
        image.sources_v4 = sources.clone();
        image
    }

    fn verdict(image: &MapImage, addr: u32) -> Decision {
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | addr));
        model::judge_flow(image, src, "203.0.113.9".parse().unwrap(), 25)
    }

    #[test]
    fn every_address_goes_from_old_to_new_verdict_exactly_once() {
        let same = |a: &Decision, b: &Decision| {
            (a.verdict, a.reason, a.group) == (b.verdict, b.reason, b.group)
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let have = random_rules(&mut rng);
            let want = random_rules(&mut rng);
            let (old, new) = (image(&have), image(&want));
            let before: Vec<Decision> = (0..SPACE).map(|a| verdict(&old, a)).collect();
            let after: Vec<Decision> = (0..SPACE).map(|a| verdict(&new, a)).collect();
            let mut state = image(&have);
            let mut switched = vec![false; SPACE as usize];
            for op in plan(&have, &want).ops() {
                match op {
                    Op::Upsert(p, rule) => state.sources_v4.insert(p, rule),
                    Op::Remove(p) => state.sources_v4.remove(&p),
                };
                for addr in 0..SPACE {
                    let now = verdict(&state, addr);
                    let i = addr as usize;
                    if same(&now, &after[i]) {
                        switched[i] = true;
                    } else {
                        assert!(
                            same(&now, &before[i]) && !switched[i],
                            "10.0.{}.{} after {op:?}: {now:?}, old {:?}, new {:?}",
                            addr >> 8,
                            addr & 255,
                            before[i],
                            after[i]
                        );
                    }
                }
            }
            assert_eq!(state.sources_v4, want);
        }
    }
}
