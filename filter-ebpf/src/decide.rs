//! From parsed headers to a verdict (semantics steps 4 to 8): port check, source
//! longest-prefix match, relay check (with the relay rate limit), and the block action
//! (drop or reject).

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use filter_common::{
    Config, Family, Reason, SourceKey, SourceRule, Verdict,
    wire::{IPPROTO_TCP, TCP_MIN_HEADER_LEN, is_connection_request},
};

use crate::{
    cursor::Cursor,
    decision::{Decision, Judged},
    headers::{Ipv4Header, Ipv6Header, TcpHeader, v4_bytes, v6_bytes},
    limit,
    maps::{self, SOURCES_V4, SOURCES_V6},
    parse::{Stop, parse},
};

#[inline(always)]
pub fn judge(ctx: &XdpContext) -> Judged {
    let cur = Cursor::new(ctx);
    let packet = match parse(&cur) {
        Ok(packet) => packet,
        Err(Stop::NotIp) => return Judged::Passed(Decision::pass(Family::Other, Reason::NotIp)),
        Err(Stop::Malformed { family, l3 }) => return malformed(family, l3),
    };
    let family = packet.family;
    if packet.protocol != IPPROTO_TCP {
        return Judged::Passed(Decision::pass(family, Reason::NotTcp));
    }
    if packet.non_first_fragment {
        return Judged::Passed(Decision::pass(family, Reason::Fragment));
    }
    let Some(dport) = cur.tcp_destination_port(packet.l4) else {
        return malformed(family, Some(packet.l3));
    };
    let filtered = maps::config().is_some_and(|config| config.port_filtered(dport));
    if !filtered {
        return Judged::Passed(Decision::pass(family, Reason::Port));
    }
    Judged::NeedsSource(Decision {
        pppoe: packet.pppoe,
        l3: packet.l3,
        l4: packet.l4,
        ..Decision::pass(family, Reason::Port)
    })
}

/// A malformed frame is judged by its source when the address is readable.
#[inline(always)]
fn malformed(family: Family, l3: Option<usize>) -> Judged {
    let decision = Decision::pass(family, Reason::Malformed);
    match l3 {
        Some(l3) => Judged::NeedsSource(Decision { l3, ..decision }),
        None => Judged::Passed(decision),
    }
}

/// Completes a [`Judged::NeedsSource`] decision: source longest-prefix match, relay check
/// with the relay limit, and the block action (drop or reject). A malformed frame is
/// dropped only when its source is blocked.
#[inline(always)]
pub fn decide_source(cur: &Cursor, config: Option<&Config>, decision: &mut Decision) {
    let malformed = matches!(decision.reason, Reason::Malformed);
    let (Some(rule), Some(config)) = (source_rule(cur, decision.family, decision.l3), config)
    else {
        if !malformed {
            decision.reason = Reason::Unmanaged;
        }
        return;
    };
    decision.group = rule.group;
    if rule.allows() {
        if !malformed {
            decision.reason = Reason::Exempt;
        }
        return;
    }
    // The group's mode came with its rule: no lookup beyond the one that found it.
    let monitor = rule.monitors(config);
    if malformed {
        enforce(monitor, decision, Reason::Malformed);
        return;
    }
    let (family, l3, l4) = (decision.family, decision.l3, decision.l4);
    if is_relay(config, cur, family, l3) {
        if config.relay_interval_ns != 0
            && cur.tcp_flags(l4).is_some_and(is_connection_request)
            && !relay_conforms(config, cur, family, l3)
        {
            enforce(monitor, decision, Reason::RateLimited);
        } else {
            decision.reason = Reason::Relay;
        }
        return;
    }
    enforce(monitor, decision, Reason::Blocked);
    decision.blocked_attempt = true;
    if matches!(decision.verdict, Verdict::Drop) && config.reject() && can_reject(cur, l4) {
        decision.verdict = Verdict::Reject;
    }
}

/// Drop for `reason`, or in monitor mode (the group's, else the policy's) only count it
/// as monitored.
#[inline(always)]
fn enforce(monitor: bool, decision: &mut Decision, reason: Reason) {
    if monitor {
        decision.reason = Reason::Monitored;
    } else {
        decision.verdict = Verdict::Drop;
        decision.reason = reason;
    }
}

/// A reset needs the whole fixed TCP header (sequence number, data offset) in the frame.
#[inline(always)]
fn can_reject(cur: &Cursor, l4: usize) -> bool {
    cur.header::<TcpHeader>(l4).is_some_and(|tcp| {
        (tcp.offset_flags[0] >> 4) as usize * 4 >= TCP_MIN_HEADER_LEN
            && is_connection_request(tcp.offset_flags[1])
    })
}

/// Takes a token from the source's relay bucket; false when it has none left.
#[inline(always)]
fn relay_conforms(config: &Config, cur: &Cursor, family: Family, l3: usize) -> bool {
    let Some(key) = source_key(cur, family, l3) else {
        return true;
    };
    limit::relay_bucket_take(&key, config.relay_interval_ns, config.relay_tolerance_ns)
}

#[inline(always)]
fn source_rule(cur: &Cursor, family: Family, l3: usize) -> Option<SourceRule> {
    // A malformed header may be shorter than its fixed part: read only the address.
    match family {
        Family::Ipv4 => {
            let source = cur.header::<[u16; 2]>(l3 + 12)?;
            SOURCES_V4.get(&Key::new(32, v4_bytes(*source))).copied()
        }
        Family::Ipv6 => {
            let source = cur.header::<[u16; 8]>(l3 + 8)?;
            SOURCES_V6.get(&Key::new(128, v6_bytes(*source))).copied()
        }
        Family::Other => None,
    }
}

/// The rate-limit and offender key of the source: its IPv4 address, or its IPv6 /64.
#[inline(always)]
pub fn source_key(cur: &Cursor, family: Family, l3: usize) -> Option<SourceKey> {
    // Built from 16-bit words as read: byte arrays would be copied a byte at a time.
    let words: [u16; 4] = match family {
        Family::Ipv4 => {
            let source = cur.header::<[u16; 2]>(l3 + 12)?;
            [source[0], source[1], 0, 0]
        }
        Family::Ipv6 => *cur.header::<[u16; 4]>(l3 + 8)?,
        Family::Other => return None,
    };
    Some(SourceKey {
        family: family as u32,
        // SAFETY: same size, plain integers; byte order kept as read.
        address: unsafe { core::mem::transmute::<[u16; 4], [u8; 8]>(words) },
    })
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
