//! `MapImage`: the compiled policy, i.e. exactly what the kernel maps must hold.
//! The kernel program, the reference model and the agent's sync all read this one type.

use std::{collections::BTreeMap, fmt};

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
    pub sources_v4: BTreeMap<Ipv4Net, SourceRule>,
    pub sources_v6: BTreeMap<Ipv6Net, SourceRule>,
    /// Group id (1..=MAX_GROUPS, stable across reloads) -> group.
    pub groups: BTreeMap<u32, GroupInfo>,
}

impl MapImage {
    pub fn new(config: Config) -> Self {
        MapImage {
            config,
            sources_v4: BTreeMap::new(),
            sources_v6: BTreeMap::new(),
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
