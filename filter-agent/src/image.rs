//! `MapImage`: the compiled policy, i.e. exactly what the kernel maps must hold.
//! The kernel program, the reference model and the agent's sync all read this one type.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, btree_map},
    fmt,
    iter::Peekable,
    ops::{Index, RangeInclusive},
    slice,
    sync::Arc,
};

use filter_common::{Config, MAX_RELAYS, RelayV4, RelayV6, Smtp, SourceRule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A group as userspace knows it; `MapImage::groups` maps its id to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub smtp: Smtp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapImage {
    pub config: Config,
    pub sources_v4: SourceTable<Ipv4Net>,
    pub sources_v6: SourceTable<Ipv6Net>,
    /// Group id (1..=MAX_GROUPS, stable across reloads) -> group.
    pub groups: BTreeMap<u32, GroupInfo>,
}

impl MapImage {
    pub fn new(config: Config) -> Self {
        MapImage {
            config,
            sources_v4: SourceTable::default(),
            sources_v6: SourceTable::default(),
            groups: BTreeMap::new(),
        }
    }

    /// The group with this 1-based id.
    pub fn group(&self, id: u32) -> Option<&GroupInfo> {
        self.groups.get(&id)
    }

    /// The rule of exactly this prefix, if the image holds it.
    pub fn source(&self, prefix: IpNet) -> Option<&SourceRule> {
        match prefix {
            IpNet::V4(p) => self.sources_v4.get(&p),
            IpNet::V6(p) => self.sources_v6.get(&p),
        }
    }

    pub fn insert_source(&mut self, prefix: IpNet, rule: SourceRule) {
        match prefix {
            IpNet::V4(p) => self.sources_v4.insert(p, rule),
            IpNet::V6(p) => self.sources_v6.insert(p, rule),
        };
    }

    pub fn remove_source(&mut self, prefix: IpNet) -> Option<SourceRule> {
        match prefix {
            IpNet::V4(p) => self.sources_v4.remove(&p),
            IpNet::V6(p) => self.sources_v6.remove(&p),
        }
    }

    /// Writes the relays into the config, longest prefix first per family.
    pub fn set_relays(&mut self, relays: &[IpNet]) -> Result<(), TooManyRelays> {
        let mut v4: Vec<Ipv4Net> = relays
            .iter()
            .filter_map(|r| match r {
                IpNet::V4(p) => Some(p.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
        let mut v6: Vec<Ipv6Net> = relays
            .iter()
            .filter_map(|r| match r {
                IpNet::V6(p) => Some(p.trunc()),
                IpNet::V4(_) => None,
            })
            .collect();
        if v4.len() > MAX_RELAYS || v6.len() > MAX_RELAYS {
            return Err(TooManyRelays);
        }
        v4.sort_by_key(|p| (std::cmp::Reverse(p.prefix_len()), p.network()));
        v6.sort_by_key(|p| (std::cmp::Reverse(p.prefix_len()), p.network()));
        let config = &mut self.config;
        config.relays_v4_len = v4.len() as u32;
        config.relays_v6_len = v6.len() as u32;
        for (slot, prefix) in config.relays_v4.iter_mut().zip(&v4) {
            *slot = RelayV4 {
                network: u32::from_ne_bytes(prefix.network().octets()),
                mask: u32::from_ne_bytes(prefix.netmask().octets()),
            };
        }
        for (slot, prefix) in config.relays_v6.iter_mut().zip(&v6) {
            *slot = RelayV6 {
                network: ne_words(prefix.network().octets()),
                mask: ne_words(prefix.netmask().octets()),
            };
        }
        Ok(())
    }

    /// The relay prefixes held in the config, in the order the program scans them.
    pub fn relays(&self) -> Vec<IpNet> {
        let config = &self.config;
        let v4 = config.relays_v4[..config.relays_v4_len as usize]
            .iter()
            .map(|r| {
                let mask = std::net::Ipv4Addr::from(r.mask.to_ne_bytes());
                let network = std::net::Ipv4Addr::from(r.network.to_ne_bytes());
                IpNet::V4(Ipv4Net::with_netmask(network, mask).expect("relay masks are contiguous"))
            });
        let v6 = config.relays_v6[..config.relays_v6_len as usize]
            .iter()
            .map(|r| {
                let mask = std::net::Ipv6Addr::from(ne_bytes(r.mask));
                let network = std::net::Ipv6Addr::from(ne_bytes(r.network));
                IpNet::V6(Ipv6Net::with_netmask(network, mask).expect("relay masks are contiguous"))
            });
        v4.chain(v6).collect()
    }

    /// The highest group id in use (0 when there are no groups).
    pub fn max_group_id(&self) -> u32 {
        self.groups.keys().next_back().copied().unwrap_or(0)
    }

    pub fn source_count(&self) -> usize {
        self.sources_v4.len() + self.sources_v6.len()
    }
}

/// One family's source prefixes and their rules, in prefix order, as a map.
///
/// A policy's prefixes are the bulk of the agent's memory, and several images hold them
/// at once (the policy's own, the one in force with the exemptions added, the one being
/// built on a change). So the prefixes live in a sorted array (about 20 bytes an IPv4
/// entry, a third of a `BTreeMap`'s) shared by every clone, and changes made after it was
/// built (exemptions, a test's edits) in a small overlay on top: the image in force costs
/// the policy's array once, plus its exemptions.
#[derive(Clone)]
pub struct SourceTable<P> {
    /// Sorted by prefix, each prefix once.
    base: Arc<Vec<(P, SourceRule)>>,
    /// Entries changed since `base` was built: `Some` sets the rule, `None` removes a
    /// prefix of `base`.
    overlay: BTreeMap<P, Option<SourceRule>>,
    len: usize,
}

impl<P> Default for SourceTable<P> {
    fn default() -> Self {
        SourceTable {
            base: Arc::default(),
            overlay: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<P: Ord + Copy> SourceTable<P> {
    /// A table of `entries`, in any order; of a prefix listed twice the last rule stays
    /// (as inserting them one by one would leave it).
    pub fn from_entries(mut entries: Vec<(P, SourceRule)>) -> Self {
        entries.sort_by_key(|(prefix, _)| *prefix);
        entries.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = later.1;
            }
            same
        });
        entries.shrink_to_fit();
        SourceTable {
            len: entries.len(),
            base: Arc::new(entries),
            overlay: BTreeMap::new(),
        }
    }

    fn in_base(&self, prefix: &P) -> Option<&SourceRule> {
        self.base
            .binary_search_by(|(p, _)| p.cmp(prefix))
            .ok()
            .map(|i| &self.base[i].1)
    }

    pub fn get(&self, prefix: &P) -> Option<&SourceRule> {
        match self.overlay.get(prefix) {
            Some(changed) => changed.as_ref(),
            None => self.in_base(prefix),
        }
    }

    pub fn contains_key(&self, prefix: &P) -> bool {
        self.get(prefix).is_some()
    }

    /// Sets the rule of `prefix`; returns the one it replaced.
    pub fn insert(&mut self, prefix: P, rule: SourceRule) -> Option<SourceRule> {
        let old = self.get(&prefix).copied();
        if old.is_none() {
            self.len += 1;
        }
        if self.in_base(&prefix) == Some(&rule) {
            self.overlay.remove(&prefix);
        } else {
            self.overlay.insert(prefix, Some(rule));
        }
        old
    }

    pub fn remove(&mut self, prefix: &P) -> Option<SourceRule> {
        let old = self.get(prefix).copied();
        if old.is_some() {
            self.len -= 1;
            if self.in_base(prefix).is_some() {
                self.overlay.insert(*prefix, None);
            } else {
                self.overlay.remove(prefix);
            }
        }
        old
    }

    pub fn clear(&mut self) {
        *self = SourceTable::default();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (&P, &SourceRule)> {
        Merge {
            base: self.base.iter().peekable(),
            overlay: self.overlay.range(..).peekable(),
        }
    }

    /// The entries from `range.start()` to `range.end()`, in prefix order.
    pub fn range(&self, range: RangeInclusive<P>) -> impl Iterator<Item = (&P, &SourceRule)> {
        let from = self.base.partition_point(|(p, _)| p < range.start());
        let to = self.base.partition_point(|(p, _)| p <= range.end());
        Merge {
            base: self.base[from..to].iter().peekable(),
            overlay: self.overlay.range(range).peekable(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &P> {
        self.iter().map(|(prefix, _)| prefix)
    }

    pub fn values(&self) -> impl Iterator<Item = &SourceRule> {
        self.iter().map(|(_, rule)| rule)
    }
}

/// `base` with `overlay` applied, in prefix order.
struct Merge<'t, P> {
    base: Peekable<slice::Iter<'t, (P, SourceRule)>>,
    overlay: Peekable<btree_map::Range<'t, P, Option<SourceRule>>>,
}

impl<'t, P: Ord> Iterator for Merge<'t, P> {
    type Item = (&'t P, &'t SourceRule);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let order = match (self.base.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((base, _)), Some((changed, _))) => base.cmp(changed),
            };
            if order != Ordering::Greater {
                let (prefix, rule) = self.base.next().expect("peeked");
                if order == Ordering::Less {
                    return Some((prefix, rule));
                }
            }
            if order != Ordering::Less {
                let (prefix, changed) = self.overlay.next().expect("peeked");
                if let Some(rule) = changed {
                    return Some((prefix, rule));
                }
            }
        }
    }
}

impl<P: Ord + Copy> FromIterator<(P, SourceRule)> for SourceTable<P> {
    fn from_iter<I: IntoIterator<Item = (P, SourceRule)>>(entries: I) -> Self {
        SourceTable::from_entries(entries.into_iter().collect())
    }
}

impl<P: Ord + Copy> Index<&P> for SourceTable<P> {
    type Output = SourceRule;

    fn index(&self, prefix: &P) -> &SourceRule {
        self.get(prefix).expect("no entry for this prefix")
    }
}

impl<P: Ord + Copy> PartialEq for SourceTable<P> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<P: Ord + Copy> Eq for SourceTable<P> {}

impl<P: Ord + Copy + fmt::Debug> fmt::Debug for SourceTable<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// More relay prefixes in one family than the config holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRelays;

impl fmt::Display for TooManyRelays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {MAX_RELAYS} relay prefixes per address family")
    }
}

impl std::error::Error for TooManyRelays {}

/// Network-order bytes as the two native words the program compares.
fn ne_words(octets: [u8; 16]) -> [u64; 2] {
    let (high, low) = octets.split_at(8);
    [
        u64::from_ne_bytes(high.try_into().expect("8 bytes")),
        u64::from_ne_bytes(low.try_into().expect("8 bytes")),
    ]
}

fn ne_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut octets = [0; 16];
    octets[..8].copy_from_slice(&words[0].to_ne_bytes());
    octets[8..].copy_from_slice(&words[1].to_ne_bytes());
    octets
}
