//! The policy as the agent uses it, once validated.

use ipnet::IpNet;
use serde::Serialize;

use crate::image::Smtp;

/// The only policy version this agent understands.
pub const VERSION: u32 = 1;

/// Ports filtered when a policy does not list any.
pub const DEFAULT_PORTS: [u16; 1] = [25];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    pub version: u32,
    pub mode: Mode,
    pub action: Action,
    /// TCP destination ports that are filtered.
    pub ports: Vec<u16>,
    /// In policy order: a group's id is its index plus one.
    pub groups: Vec<Group>,
    /// Host addresses are stored as /32 or /128 prefixes.
    pub relays: Vec<IpNet>,
    pub interfaces: Vec<Interface>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    pub smtp: Smtp,
    /// Networks with their host bits clear; a bare address is a /32 or /128.
    pub prefixes: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Interface {
    pub name: String,
    pub xdp_mode: XdpMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Filtered traffic is dropped.
    Enforce,
    /// Filtered traffic is only counted.
    Monitor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    Auto,
    Native,
    Generic,
}

impl Policy {
    /// The number of group prefixes, over all groups.
    pub fn prefix_count(&self) -> usize {
        self.groups.iter().map(|g| g.prefixes.len()).sum()
    }
}
