//! Steps 4.2, 5 and 6 of `docs/semantics.md`: port, source, relay, and the malformed verdict.

use std::net::IpAddr;

use filter_common::{Family, Reason, SMTP_ALLOW, SourceRule};

use super::{Decision, Verdict, lookup_relay, lookup_source};
use crate::image::MapImage;

/// Anything but an explicit `allow` blocks, so a corrupt rule can never let port 25 through.
fn blocks(rule: SourceRule) -> bool {
    rule.smtp != SMTP_ALLOW
}

/// The verdict for a frame the policy wants dropped: monitor mode only counts it.
fn enforce(image: &MapImage, reason: Reason) -> (Verdict, Reason) {
    if image.config.monitor() {
        (Verdict::Pass, Reason::Monitored)
    } else {
        (Verdict::Drop, reason)
    }
}

/// A well-formed TCP frame (or an abstract flow) to `destination:dport`.
pub(super) fn decide(
    image: &MapImage,
    family: Family,
    source: IpAddr,
    destination: IpAddr,
    dport: u16,
) -> Decision {
    if !image.config.port_filtered(dport) {
        return Decision::pass(family, Reason::Port);
    }
    let Some((prefix, rule)) = lookup_source(image, source) else {
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
    match lookup_relay(image, destination) {
        Some(relay) => {
            decision.reason = Reason::Relay;
            decision.relay_prefix = Some(relay);
        }
        None => (decision.verdict, decision.reason) = enforce(image, Reason::Blocked),
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
            (decision.verdict, decision.reason) = enforce(image, Reason::Malformed);
        }
    }
    decision
}
