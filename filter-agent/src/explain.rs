//! `explain`: the reference model's verdict on one flow, and what decided it.

use std::{fmt::Write as _, net::IpAddr};

use filter_common::Config;
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
    /// The policy's action, "drop" or "reject" (an older agent sends none: drop).
    #[serde(default = "drop_action")]
    pub action: String,
    /// The relay limit, when the policy sets one.
    #[serde(default)]
    pub relay_limit: Option<RelayLimitView>,
}

/// The relay limit as `relay_limit:` writes it, recovered from the compiled config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RelayLimitView {
    pub syn_per_minute: u64,
    pub burst: u64,
}

impl RelayLimitView {
    fn from_config(config: &Config) -> Option<Self> {
        let interval = config.relay_interval_ns;
        if interval == 0 {
            return None;
        }
        // 60 s / interval, to the nearest: the interval was rounded down from it.
        let per_minute = (60_000_000_000 + interval / 2) / interval;
        Some(RelayLimitView {
            syn_per_minute: per_minute,
            burst: config.relay_tolerance_ns / interval + 1,
        })
    }
}

fn drop_action() -> String {
    "drop".to_string()
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
        action: if image.config.reject() {
            "reject"
        } else {
            "drop"
        }
        .to_string(),
        relay_limit: RelayLimitView::from_config(&image.config),
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
        let blocked = self.smtp == Some(Smtp::Block) && self.port_filtered;
        if let (Some(limit), Some(_), true) = (self.relay_limit, self.relay_prefix, blocked) {
            let over = if self.monitor {
                "counted as monitored"
            } else {
                "dropped as rate-limited"
            };
            let _ = writeln!(
                out,
                "limit     SYN to a relay: limited to {} per minute per customer \
                 (IPv4 address, IPv6 /64), burst {}; SYNs over the limit are {over}",
                limit.syn_per_minute, limit.burst
            );
        }
        if self.action == "reject" && blocked && self.relay_prefix.is_none() {
            let action = if self.monitor {
                "reject, but monitor mode sends no resets"
            } else {
                "reject: a SYN gets a TCP reset (RST+ACK, \"connection refused\"); \
                 other segments are dropped"
            };
            let _ = writeln!(out, "action    {action}");
        }
        if self.monitor {
            let _ = writeln!(
                out,
                "mode      monitor: would-be drops are counted and passed"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    fn image(extra: &str) -> MapImage {
        let source = format!(
            "version: 1\n{extra}groups:\n  - name: residential\n    smtp: block\n    prefixes: [100.64.0.0/10]\n  - name: business\n    smtp: allow\n    prefixes: [100.64.1.0/24]\nrelays: [203.0.113.25]\n"
        );
        policy::parse(&source, "test.yaml")
            .unwrap_or_else(|e| panic!("{e}"))
            .policy
            .compile()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn reject_is_explained_for_blocked_syns() {
        let image = image("action: reject\n");
        let e = explain(&image, ip("100.64.9.9"), ip("203.0.113.9"), 25);
        assert_eq!(
            (e.verdict.as_str(), e.reason.as_str()),
            ("reject", "blocked")
        );
        assert_eq!(e.action, "reject");
        let text = e.render();
        assert!(text.contains("verdict   reject blocked\n"), "{text}");
        assert!(
            text.contains("action    reject: a SYN gets a TCP reset (RST+ACK, \"connection refused\"); other segments are dropped\n"),
            "{text}"
        );
        // Not where the action does not apply: exempt sources, relays, other ports.
        for (src, dst, port) in [
            ("100.64.1.9", "203.0.113.9", 25),
            ("100.64.9.9", "203.0.113.25", 25),
            ("100.64.9.9", "203.0.113.9", 587),
        ] {
            let text = explain(&image, ip(src), ip(dst), port).render();
            assert!(!text.contains("action "), "{text}");
        }
        let drop = explain(&self::image(""), ip("100.64.9.9"), ip("203.0.113.9"), 25);
        assert_eq!(
            (drop.verdict.as_str(), drop.action.as_str()),
            ("drop", "drop")
        );
        assert!(!drop.render().contains("action "));
    }

    #[test]
    fn the_relay_limit_is_explained_for_blocked_sources_to_relays() {
        let image = image("relay_limit: { syn_per_minute: 7, burst: 3 }\n");
        let e = explain(&image, ip("100.64.9.9"), ip("203.0.113.25"), 25);
        assert_eq!((e.verdict.as_str(), e.reason.as_str()), ("pass", "relay"));
        assert_eq!(
            e.relay_limit,
            Some(RelayLimitView {
                syn_per_minute: 7,
                burst: 3
            })
        );
        let text = e.render();
        assert!(
            text.contains("limit     SYN to a relay: limited to 7 per minute per customer (IPv4 address, IPv6 /64), burst 3; SYNs over the limit are dropped as rate-limited\n"),
            "{text}"
        );
        let exempt = explain(&image, ip("100.64.1.9"), ip("203.0.113.25"), 25).render();
        assert!(!exempt.contains("limit "), "{exempt}");
        let elsewhere = explain(&image, ip("100.64.9.9"), ip("203.0.113.9"), 25).render();
        assert!(!elsewhere.contains("limit "), "{elsewhere}");

        let monitor = self::image(
            "mode: monitor\naction: reject\nrelay_limit: { syn_per_minute: 60000000, burst: 1 }\n",
        );
        let e = explain(&monitor, ip("100.64.9.9"), ip("203.0.113.25"), 25);
        assert_eq!(e.relay_limit.unwrap().syn_per_minute, 60_000_000);
        assert!(
            e.render()
                .contains("burst 1; SYNs over the limit are counted as monitored")
        );
        let text = explain(&monitor, ip("100.64.9.9"), ip("203.0.113.9"), 25).render();
        assert!(
            text.contains("action    reject, but monitor mode sends no resets\n"),
            "{text}"
        );
    }

    #[test]
    fn an_older_agents_json_still_reads() {
        let e = explain(&image(""), ip("100.64.9.9"), ip("203.0.113.9"), 25);
        let mut json = serde_json::to_value(&e).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("action");
        object.remove("relay_limit");
        let back: Explanation = serde_json::from_value(json).unwrap();
        assert_eq!((back.action.as_str(), back.relay_limit), ("drop", None));
    }
}
