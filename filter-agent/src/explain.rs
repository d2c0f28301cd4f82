//! `explain`: the reference model's verdict on one flow, and what decided it.

use std::{fmt::Write as _, net::IpAddr};

use filter_common::{Action, GroupMode, Smtp};

use crate::{
    control::protocol::{Explanation, RelayLimit},
    image::MapImage,
    model,
    policy::Mode,
};

pub fn explain(image: &MapImage, src: IpAddr, dst: IpAddr, dport: u16) -> Explanation {
    let decision = model::judge_flow(image, src, dst, dport);
    let matched = model::lookup_source(image, src);
    let group = matched.and_then(|(_, rule)| image.group(rule.group));
    Explanation {
        src,
        dst,
        dport,
        verdict: decision.verdict,
        reason: decision.reason,
        source_prefix: matched.map(|(prefix, _)| prefix),
        group: group.map(|g| g.name.clone()),
        smtp: group.map(|g| g.smtp),
        relay_prefix: model::lookup_relay(image, dst),
        port_filtered: image.config.port_filtered(dport),
        monitor: image.config.monitor(),
        group_mode: matched.and_then(|(_, rule)| match GroupMode::try_from(rule.mode) {
            Ok(GroupMode::Enforce) => Some(Mode::Enforce),
            Ok(GroupMode::Monitor) => Some(Mode::Monitor),
            _ => None,
        }),
        action: if image.config.reject() {
            Action::Reject
        } else {
            Action::Drop
        },
        relay_limit: RelayLimit::of(&image.config),
        subscriber: None,
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
                format!("{prefix} in group \"{group}\" (smtp: {smtp}), the longest match")
            }
            _ => format!("{} is in no group (unmanaged)", self.src),
        };
        let _ = writeln!(out, "source    {source}");
        if let Some(subscriber) = &self.subscriber {
            let _ = writeln!(
                out,
                "session   subscriber={subscriber} holds {} now",
                self.src
            );
        }
        let relay = match self.relay_prefix {
            Some(prefix) => format!("{} is a relay ({prefix})", self.dst),
            None => format!("{} is not a relay", self.dst),
        };
        let _ = writeln!(out, "relay     {relay}");
        let blocked = self.smtp == Some(Smtp::Block) && self.port_filtered;
        let monitor = self.mode() == Mode::Monitor;
        if let (Some(limit), Some(_), true) = (self.relay_limit, self.relay_prefix, blocked) {
            let over = if monitor {
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
        if self.action == Action::Reject && blocked && self.relay_prefix.is_none() {
            let action = if monitor {
                "reject, but monitor mode sends no resets"
            } else {
                "reject: a SYN gets a TCP reset (RST+ACK, \"connection refused\"); \
                 other segments are dropped"
            };
            let _ = writeln!(out, "action    {action}");
        }
        let policy = if self.monitor { "monitor" } else { "enforce" };
        let from = match (&self.group, self.group_mode) {
            (Some(group), Some(_)) => {
                format!("group \"{group}\"'s own mode (the policy's is {policy})")
            }
            _ => "the policy's mode".to_string(),
        };
        let effect = if monitor {
            ": would-be drops are counted and passed"
        } else {
            ""
        };
        let _ = writeln!(out, "mode      {}, {from}{effect}", self.mode().name());
        out
    }
}

#[cfg(test)]
mod tests {
    use filter_common::{Reason, Verdict};

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
        assert_eq!((e.verdict, e.reason), (Verdict::Reject, Reason::Blocked));
        assert_eq!(e.action, Action::Reject);
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
        assert_eq!((drop.verdict, drop.action), (Verdict::Drop, Action::Drop));
        assert!(!drop.render().contains("action "));
    }

    #[test]
    fn the_relay_limit_is_explained_for_blocked_sources_to_relays() {
        let image = image("relay_limit: { syn_per_minute: 7, burst: 3 }\n");
        let e = explain(&image, ip("100.64.9.9"), ip("203.0.113.25"), 25);
        assert_eq!((e.verdict, e.reason), (Verdict::Pass, Reason::Relay));
        assert_eq!(
            e.relay_limit,
            Some(RelayLimit {
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
    fn the_mode_that_applied_and_where_it_came_from_are_explained() {
        let pilot =
            "  - name: pilot\n    smtp: block\n    mode: monitor\n    prefixes: [198.18.0.0/15]\n";
        let image = |mode: &str| {
            let source = format!(
                "version: 1\nmode: {mode}\naction: reject\ngroups:\n  - name: residential\n    smtp: block\n    prefixes: [100.64.0.0/10]\n{pilot}  - name: strict\n    smtp: block\n    mode: enforce\n    prefixes: [198.20.0.0/16]\n"
            );
            policy::parse(&source, "test.yaml")
                .unwrap_or_else(|e| panic!("{e}"))
                .policy
                .compile()
        };
        let enforce = image("enforce");
        let e = explain(&enforce, ip("198.18.0.9"), ip("203.0.113.9"), 25);
        assert_eq!((e.verdict, e.reason), (Verdict::Pass, Reason::Monitored));
        assert_eq!(
            (e.mode(), e.group_mode),
            (Mode::Monitor, Some(Mode::Monitor))
        );
        let text = e.render();
        assert!(
            text.contains("mode      monitor, group \"pilot\"'s own mode (the policy's is enforce): would-be drops are counted and passed\n"),
            "{text}"
        );
        assert!(
            text.contains("action    reject, but monitor mode sends no resets\n"),
            "{text}"
        );
        let e = explain(&enforce, ip("100.64.0.9"), ip("203.0.113.9"), 25);
        assert_eq!((e.verdict, e.reason), (Verdict::Reject, Reason::Blocked));
        assert!(
            e.render()
                .contains("mode      enforce, the policy's mode\n"),
            "{}",
            e.render()
        );
        // The other direction: a policy in monitor mode with one group enforcing.
        let monitor = image("monitor");
        let e = explain(&monitor, ip("198.20.0.9"), ip("203.0.113.9"), 25);
        assert_eq!((e.verdict, e.reason), (Verdict::Reject, Reason::Blocked));
        assert!(
            e.render().contains(
                "mode      enforce, group \"strict\"'s own mode (the policy's is monitor)\n"
            ),
            "{}",
            e.render()
        );
        let e = explain(&monitor, ip("100.64.0.9"), ip("203.0.113.9"), 25);
        assert_eq!((e.verdict, e.reason), (Verdict::Pass, Reason::Monitored));
        assert!(e.render().contains(
            "mode      monitor, the policy's mode: would-be drops are counted and passed\n"
        ));
    }

    #[test]
    fn an_older_agents_json_still_reads() {
        let e = explain(&image(""), ip("100.64.9.9"), ip("203.0.113.9"), 25);
        let mut json = serde_json::to_value(&e).unwrap();
        let object = json.as_object_mut().unwrap();
        object.remove("action");
        object.remove("relay_limit");
        object.remove("group_mode");
        let back: Explanation = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(
            (back.action, back.relay_limit, back.group_mode),
            (Action::Drop, None, None)
        );
    }
}
