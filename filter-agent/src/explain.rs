//! `explain`: the reference model's verdict on one flow, and what decided it.

use std::{fmt::Write as _, net::IpAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    image::{MapImage, Smtp},
    model,
};

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Explanation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
    pub verdict: String,
    pub reason: String,
    /// The longest source prefix over all groups, with its group.
    pub source_prefix: Option<IpNet>,
    pub group: Option<String>,
    pub smtp: Option<Smtp>,
    pub relay_prefix: Option<IpNet>,
    pub port_filtered: bool,
    pub monitor: bool,
}

pub fn explain(image: &MapImage, src: IpAddr, dst: IpAddr, dport: u16) -> Explanation {
    let decision = model::judge_flow(image, src, dst, dport);
    let matched = model::lookup_source(image, src);
    let group = matched.and_then(|(_, rule)| image.group(rule.group));
    Explanation {
        src,
        dst,
        dport,
        verdict: decision.verdict.name().to_string(),
        reason: decision.reason.name().to_string(),
        source_prefix: matched.map(|(prefix, _)| prefix),
        group: group.map(|g| g.name.clone()),
        smtp: group.map(|g| g.smtp),
        relay_prefix: model::lookup_relay(image, dst),
        port_filtered: image.config.port_filtered(dport),
        monitor: image.config.monitor(),
    }
}

impl Explanation {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let dst = match self.dst {
            IpAddr::V4(a) => format!("{a}:{}", self.dport),
            IpAddr::V6(a) => format!("[{a}]:{}", self.dport),
        };
        let _ = writeln!(out, "flow      {} -> {dst} (tcp)", self.src);
        let _ = writeln!(out, "verdict   {} {}", self.verdict, self.reason);
        let port = if self.port_filtered {
            format!("{} is filtered by the policy", self.dport)
        } else {
            format!(
                "{} is not filtered: the source is not even looked up",
                self.dport
            )
        };
        let _ = writeln!(out, "port      {port}");
        let source = match (&self.source_prefix, &self.group, self.smtp) {
            (Some(prefix), Some(group), Some(smtp)) => {
                let smtp = match smtp {
                    Smtp::Block => "block",
                    Smtp::Allow => "allow",
                };
                format!("{prefix} in group \"{group}\" (smtp: {smtp}), the longest match")
            }
            _ => format!("{} is in no group (unmanaged)", self.src),
        };
        let _ = writeln!(out, "source    {source}");
        let relay = match self.relay_prefix {
            Some(prefix) => format!("{} is a relay ({prefix})", self.dst),
            None => format!("{} is not a relay", self.dst),
        };
        let _ = writeln!(out, "relay     {relay}");
        if self.monitor {
            let _ = writeln!(
                out,
                "mode      monitor: would-be drops are counted and passed"
            );
        }
        out
    }
}
