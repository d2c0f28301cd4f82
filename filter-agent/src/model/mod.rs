//! The reference model: a plain-Rust implementation of `docs/semantics.md` that the XDP
//! program is differentially tested against. It reads the same [`MapImage`] the kernel maps
//! are filled from, and is split like the kernel program: link/IP parsing in [`parse`],
//! the port/source/relay decision in [`decide`], longest-prefix match in [`lpm`], the
//! relay limit's buckets in [`limit`] and the reject action's reply frame in [`reply`].
//!
//! The relay limit makes the verdict depend on what came before: [`Model`] holds the
//! buckets and takes the clock as an argument. [`judge_frame`] is the stateless view (every
//! bucket empty), which is what a frame gets whenever the relay limit is not in play.

mod decide;
mod limit;
mod lpm;
pub mod parse;
pub mod reply;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use filter_common::{Family, Reason, Verdict};
use ipnet::IpNet;

use crate::image::MapImage;
use decide::Flow;
use parse::Parsed;

pub use limit::RelayLimiter;
pub use lpm::{lookup_covering, lookup_relay, lookup_source};
pub use reply::build_reply;

/// The verdict on one frame and everything the counters and `explain` need about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    pub family: Family,
    /// 1-based group id whose prefix matched the source (0: none / not looked up)
    pub group: u32,
    /// the source prefix that decided (longest match), if a lookup matched
    pub source_prefix: Option<IpNet>,
    /// the relay prefix that matched the destination, when reason is Relay (or the relay
    /// limit decided: RateLimited, or Monitored in monitor mode)
    pub relay_prefix: Option<IpNet>,
    /// The frame sent back for `Verdict::Reject`: a TCP RST+ACK, see [`reply`].
    pub reply: Option<Vec<u8>>,
}

impl Decision {
    /// A verdict reached without (a matching) source lookup.
    fn pass(family: Family, reason: Reason) -> Self {
        Decision {
            verdict: Verdict::Pass,
            reason,
            family,
            group: 0,
            source_prefix: None,
            relay_prefix: None,
            reply: None,
        }
    }
}

/// The reference model with the state the kernel keeps between frames: the relay limit's
/// buckets. Judge frames in the order the kernel sees them, each with the time it arrives
/// (nanoseconds on any clock that only moves forward; the kernel's is CLOCK_MONOTONIC).
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub limiter: RelayLimiter,
}

impl Model {
    /// A model whose buckets are all empty, as in a freshly loaded program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Judges one raw Ethernet frame arriving at `now_ns`.
    pub fn judge_frame(&mut self, image: &MapImage, frame: &[u8], now_ns: u64) -> Decision {
        match parse::parse(frame) {
            Parsed::Pass { family, reason } => Decision::pass(family, reason),
            Parsed::Malformed { family, source } => decide::malformed(image, family, source),
            Parsed::Tcp {
                family,
                source,
                destination,
                dport,
                segment,
            } => {
                let flow = Flow {
                    family,
                    source,
                    destination,
                    dport,
                    connection_request: segment.is_connection_request(),
                    rejectable: segment.can_be_rejected(),
                };
                let mut decision = decide::decide(image, &mut self.limiter, now_ns, &flow);
                if decision.verdict == Verdict::Reject {
                    decision.reply = Some(build_reply(frame, family, &segment));
                }
                decision
            }
        }
    }
}

/// The RST+ACK that `action: reject` answers `frame` with, whatever the policy: `None`
/// unless the frame is a well-formed TCP connection request (first or only fragment) with
/// its whole header inside the frame.
pub fn reply_to(frame: &[u8]) -> Option<Vec<u8>> {
    match parse::parse(frame) {
        Parsed::Tcp {
            family, segment, ..
        } if segment.can_be_rejected() => Some(build_reply(frame, family, &segment)),
        _ => None,
    }
}

/// Judges one raw Ethernet frame as the first the program sees: every relay bucket is
/// empty, so a SYN to a relay is within any limit.
pub fn judge_frame(image: &MapImage, frame: &[u8]) -> Decision {
    Model::new().judge_frame(image, frame, 0)
}

/// Judges an abstract flow (for `explain`): the connection request (SYN) from src to
/// dst:dport, as if a well-formed frame, from a source within its relay limit. A flow has
/// no frame, so a `Reject` decision carries no reply.
///
/// The family is the source's; a destination of the other family is looked up in its own
/// family's relay prefixes (no real frame can mix families).
pub fn judge_flow(image: &MapImage, src: IpAddr, dst: IpAddr, dport: u16) -> Decision {
    let family = match src {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    };
    let flow = Flow {
        family,
        source: src,
        destination: dst,
        dport,
        connection_request: true,
        rejectable: true,
    };
    decide::decide(image, &mut RelayLimiter::new(), 0, &flow)
}
