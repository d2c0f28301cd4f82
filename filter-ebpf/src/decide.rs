//! From parsed headers to a verdict: port check, source longest-prefix match, relay check.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use filter_common::{Config, Family, Reason, SMTP_ALLOW, SourceRule};

use crate::{
    maps::{self, SOURCES_V4, SOURCES_V6},
    parse::{Cursor, IPPROTO_TCP, Ipv4Header, Ipv6Header, Stop, parse},
};

pub struct Decision {
    pub drop: bool,
    pub reason: Reason,
    pub family: Family,
    /// Group whose prefix matched the source; 0 when none was looked up or matched.
    pub group: u32,
}

impl Decision {
    #[inline(always)]
    fn pass(family: Family, reason: Reason) -> Self {
        Decision {
            drop: false,
            reason,
            family,
            group: 0,
        }
    }
}

#[inline(always)]
pub fn judge(ctx: &XdpContext) -> Decision {
    let cur = Cursor::new(ctx);
    let packet = match parse(&cur) {
        Ok(packet) => packet,
        Err(Stop::NotIp) => return Decision::pass(Family::Other, Reason::NotIp),
        Err(Stop::Malformed { family, l3 }) => return malformed(&cur, family, l3),
    };
    let family = packet.family;
    if packet.protocol != IPPROTO_TCP {
        return Decision::pass(family, Reason::NotTcp);
    }
    if packet.non_first_fragment {
        return Decision::pass(family, Reason::Fragment);
    }
    let Some(dport) = cur.tcp_destination_port(packet.l4) else {
        return malformed(&cur, family, Some(packet.l3));
    };
    let Some(config) = maps::config() else {
        return Decision::pass(family, Reason::Port);
    };
    if !config.port_filtered(dport) {
        return Decision::pass(family, Reason::Port);
    }
    let Some(rule) = source_rule(&cur, family, packet.l3) else {
        return Decision::pass(family, Reason::Unmanaged);
    };
    // Anything not explicitly `allow` is treated as `block`: fail closed.
    let reason = if rule.smtp == SMTP_ALLOW {
        Reason::Exempt
    } else if is_relay(config, &cur, family, packet.l3) {
        Reason::Relay
    } else {
        return enforce(config, family, rule.group, Reason::Blocked);
    };
    Decision {
        drop: false,
        reason,
        family,
        group: rule.group,
    }
}

/// Drop from a `block` group, or only count it in monitor mode.
#[inline(always)]
fn enforce(config: &Config, family: Family, group: u32, reason: Reason) -> Decision {
    let monitor = config.monitor();
    Decision {
        drop: !monitor,
        reason: if monitor { Reason::Monitored } else { reason },
        family,
        group,
    }
}

/// A malformed frame is dropped only when its source is readable and blocked.
#[inline(always)]
fn malformed(cur: &Cursor, family: Family, l3: Option<usize>) -> Decision {
    let rule = match l3 {
        Some(l3) => source_rule(cur, family, l3),
        None => None,
    };
    let Some(rule) = rule else {
        return Decision::pass(family, Reason::Malformed);
    };
    if rule.smtp != SMTP_ALLOW
        && let Some(config) = maps::config()
    {
        return enforce(config, family, rule.group, Reason::Malformed);
    }
    Decision {
        drop: false,
        reason: Reason::Malformed,
        family,
        group: rule.group,
    }
}

#[inline(always)]
fn source_rule(cur: &Cursor, family: Family, l3: usize) -> Option<SourceRule> {
    // A malformed header may be shorter than its fixed part: read only the address.
    match family {
        Family::Ipv4 => {
            let source = cur.header::<[u16; 2]>(l3 + 12)?;
            SOURCES_V4.get(Key::new(32, v4_bytes(*source))).copied()
        }
        Family::Ipv6 => {
            let source = cur.header::<[u16; 8]>(l3 + 8)?;
            SOURCES_V6.get(Key::new(128, v6_bytes(*source))).copied()
        }
        Family::Other => None,
    }
}

#[inline(always)]
fn is_relay(config: &Config, cur: &Cursor, family: Family, l3: usize) -> bool {
    match family {
        Family::Ipv4 => cur
            .header::<Ipv4Header>(l3)
            .is_some_and(|ip| config.is_relay_v4(u32::from_ne_bytes(v4_bytes(ip.destination)))),
        Family::Ipv6 => cur.header::<Ipv6Header>(l3).is_some_and(|ip| {
            // SAFETY: same size, plain integers; matching is on the bytes as read.
            let words: [u64; 2] = unsafe { core::mem::transmute(ip.destination) };
            config.is_relay_v6(words)
        }),
        Family::Other => false,
    }
}

/// Addresses are read as 16-bit words; the tries are keyed by the same bytes.
#[inline(always)]
fn v4_bytes(words: [u16; 2]) -> [u8; 4] {
    // SAFETY: same size, both plain integers; the byte order is kept as read.
    unsafe { core::mem::transmute(words) }
}

#[inline(always)]
fn v6_bytes(words: [u16; 8]) -> [u8; 16] {
    // SAFETY: as above.
    unsafe { core::mem::transmute(words) }
}
