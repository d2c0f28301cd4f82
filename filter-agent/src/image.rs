//! `MapImage`: the compiled policy, i.e. exactly what the kernel maps must hold.
//! The kernel program, the reference model and the agent's sync all read this one type.

use std::collections::{BTreeMap, BTreeSet};

use filter_common::{Config, SMTP_ALLOW, SMTP_BLOCK, SourceRule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What a group does with port-25 traffic from its prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Smtp {
    Block,
    Allow,
}

impl Smtp {
    pub fn code(self) -> u32 {
        match self {
            Smtp::Block => SMTP_BLOCK,
            Smtp::Allow => SMTP_ALLOW,
        }
    }

    pub fn from_code(code: u32) -> Option<Smtp> {
        match code {
            SMTP_BLOCK => Some(Smtp::Block),
            SMTP_ALLOW => Some(Smtp::Allow),
            _ => None,
        }
    }
}

/// A group as userspace knows it; its id is its index in `MapImage::groups` plus one.
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
    pub relays_v4: BTreeSet<Ipv4Net>,
    pub relays_v6: BTreeSet<Ipv6Net>,
    pub groups: Vec<GroupInfo>,
}

impl MapImage {
    pub fn new(config: Config) -> Self {
        MapImage {
            config,
            sources_v4: BTreeMap::new(),
            sources_v6: BTreeMap::new(),
            relays_v4: BTreeSet::new(),
            relays_v6: BTreeSet::new(),
            groups: Vec::new(),
        }
    }

    /// The group with this 1-based id.
    pub fn group(&self, id: u32) -> Option<&GroupInfo> {
        self.groups.get((id as usize).checked_sub(1)?)
    }

    pub fn insert_source(&mut self, prefix: IpNet, rule: SourceRule) {
        match prefix {
            IpNet::V4(p) => self.sources_v4.insert(p, rule),
            IpNet::V6(p) => self.sources_v6.insert(p, rule),
        };
    }

    pub fn insert_relay(&mut self, prefix: IpNet) {
        match prefix {
            IpNet::V4(p) => self.relays_v4.insert(p),
            IpNet::V6(p) => self.relays_v6.insert(p),
        };
    }

    pub fn source_count(&self) -> usize {
        self.sources_v4.len() + self.sources_v6.len()
    }

    pub fn relay_count(&self) -> usize {
        self.relays_v4.len() + self.relays_v6.len()
    }
}
