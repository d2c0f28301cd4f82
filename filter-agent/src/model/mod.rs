//! The reference model: a plain-Rust implementation of `docs/semantics.md` that the XDP
//! program is differentially tested against. It reads the same [`MapImage`] the kernel maps
//! are filled from, and is split like the kernel program: link/IP parsing in [`parse`],
//! the port/source/relay decision in [`decide`], longest-prefix match in [`lpm`].

mod decide;
mod lpm;
pub mod parse;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use filter_common::{Family, Reason};
use ipnet::IpNet;

use crate::image::MapImage;
use parse::Parsed;

pub use lpm::{lookup_relay, lookup_source};

/// What happens to the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Drop,
    /// Dropped, and answered with a TCP RST+ACK sent back out of the interface (XDP_TX).
    Reject,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
        }
    }
}

/// The verdict on one frame and everything the counters and `explain` need about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    pub family: Family,
    /// 1-based group id whose prefix matched the source (0: none / not looked up)
    pub group: u32,
    /// the source prefix that decided (longest match), if a lookup matched
    pub source_prefix: Option<IpNet>,
    /// the relay prefix that matched the destination, when reason is Relay
    pub relay_prefix: Option<IpNet>,
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
        }
    }
}

/// Judge one raw Ethernet frame.
pub fn judge_frame(image: &MapImage, frame: &[u8]) -> Decision {
    match parse::parse(frame) {
        Parsed::Pass { family, reason } => Decision::pass(family, reason),
        Parsed::Malformed { family, source } => decide::malformed(image, family, source),
        Parsed::Tcp {
            family,
            source,
            destination,
            dport,
        } => decide::decide(image, family, source, destination, dport),
    }
}

/// Judge an abstract flow (for `explain`): TCP from src to dst:dport, as if a well-formed frame.
///
/// The family is the source's; a destination of the other family is looked up in its own
/// family's relay prefixes (no real frame can mix families).
pub fn judge_flow(image: &MapImage, src: IpAddr, dst: IpAddr, dport: u16) -> Decision {
    let family = match src {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    };
    decide::decide(image, family, src, dst, dport)
}
