//! Steps 4.2, 5 and 6 of `docs/semantics.md`: port, source, relay (and its limit), the
//! reject action, and the malformed verdict.

use std::net::IpAddr;

use filter_common::{Family, Reason, SourceKey, SourceRule, Verdict};

use super::{Decision, RelayLimiter, lookup_relay, lookup_source};
use crate::image::MapImage;

/// A well-formed TCP segment (or an abstract flow), as far as the decision reads it.
pub(super) struct Flow {
    pub family: Family,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub dport: u16,
    /// SYN without ACK and RST: counted by the relay limit.
    pub connection_request: bool,
    /// A connection request whose whole TCP header is in the frame: `reject` answers it.
    pub rejectable: bool,
}

/// Anything but an explicit `allow` blocks, so a corrupt rule can never let port 25 through.
fn blocks(rule: SourceRule) -> bool {
    !rule.allows()
}

/// The verdict for a frame the policy wants dropped: monitor mode (the group's own, else
/// the policy's) only counts it.
fn enforce(image: &MapImage, rule: SourceRule, reason: Reason) -> (Verdict, Reason) {
    if rule.monitors(&image.config) {
        (Verdict::Pass, Reason::Monitored)
    } else {
        (Verdict::Drop, reason)
    }
}

/// A well-formed TCP frame (or an abstract flow) to `destination:dport`; a connection
/// request to a relay is checked against (and counted in) `limiter` at `now_ns`.
pub(super) fn decide(
    image: &MapImage,
    limiter: &mut RelayLimiter,
    now_ns: u64,
    flow: &Flow,
) -> Decision {
    let family = flow.family;
    if !image.config.port_filtered(flow.dport) {
        return Decision::pass(family, Reason::Port);
    }
    let Some((prefix, rule)) = lookup_source(image, flow.source) else {
        return Decision::pass(family, Reason::Unmanaged);
    };
    let mut decision = Decision {
        group: rule.group,
        source_prefix: Some(prefix),
        ..Decision::pass(family, Reason::Exempt)
    };
    if !blocks(rule) {
        return decision;
    }
    let config = &image.config;
    match lookup_relay(image, flow.destination) {
        Some(relay) => {
            decision.reason = Reason::Relay;
            decision.relay_prefix = Some(relay);
            // Only new connections are limited; the limiter ignores them without a limit.
            if flow.connection_request
                && !limiter.admit(config, SourceKey::from_ip(flow.source), now_ns)
            {
                (decision.verdict, decision.reason) = enforce(image, rule, Reason::RateLimited);
            }
        }
        None if config.reject() && !rule.monitors(config) && flow.rejectable => {
            (decision.verdict, decision.reason) = (Verdict::Reject, Reason::Blocked);
        }
        None => (decision.verdict, decision.reason) = enforce(image, rule, Reason::Blocked),
    }
    decision
}

/// A malformed frame of a known family; `source` is the source address if it was wholly
/// inside the frame.
pub(super) fn malformed(image: &MapImage, family: Family, source: Option<IpAddr>) -> Decision {
    let mut decision = Decision::pass(family, Reason::Malformed);
    if let Some((prefix, rule)) = source.and_then(|addr| lookup_source(image, addr)) {
        decision.group = rule.group;
        decision.source_prefix = Some(prefix);
        if blocks(rule) {
            (decision.verdict, decision.reason) = enforce(image, rule, Reason::Malformed);
        }
    }
    decision
}
