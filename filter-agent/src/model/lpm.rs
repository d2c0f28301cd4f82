//! Longest-prefix match over the `MapImage` tables, as the kernel's LPM tries answer it.
//!
//! The image stores prefixes truncated, so truncating the address to each length, longest
//! first, and probing the map finds the longest match: at most 33 (IPv4) or 129 (IPv6)
//! logarithmic lookups, independent of the number of prefixes.

use std::net::IpAddr;

use filter_common::SourceRule;
use ipnet::IpNet;

use crate::image::MapImage;

/// Every prefix containing `addr`, longest first.
fn prefixes(addr: IpAddr) -> impl Iterator<Item = IpNet> {
    let host = IpNet::from(addr);
    (0..=host.max_prefix_len()).rev().map(move |len| {
        IpNet::new(addr, len)
            .expect("length is at most the family's maximum")
            .trunc()
    })
}

/// The longest source prefix containing `addr`, and its rule.
pub fn lookup_source(image: &MapImage, addr: IpAddr) -> Option<(IpNet, SourceRule)> {
    prefixes(addr).find_map(|prefix| {
        let rule = match prefix {
            IpNet::V4(p) => image.sources_v4.get(&p),
            IpNet::V6(p) => image.sources_v6.get(&p),
        };
        rule.map(|rule| (prefix, *rule))
    })
}

/// The rule of the longest source prefix containing all of `prefix` (itself included):
/// what decides for every address in it that no more specific entry covers.
pub fn lookup_covering(image: &MapImage, prefix: IpNet) -> Option<SourceRule> {
    (0..=prefix.prefix_len()).rev().find_map(|len| {
        let covering = IpNet::new(prefix.network(), len)
            .expect("length is at most the prefix's own")
            .trunc();
        image.source(covering).copied()
    })
}

/// The longest relay prefix containing `addr`.
pub fn lookup_relay(image: &MapImage, addr: IpAddr) -> Option<IpNet> {
    image
        .relays()
        .into_iter()
        .filter(|relay| relay.contains(&addr))
        .max_by_key(IpNet::prefix_len)
}
