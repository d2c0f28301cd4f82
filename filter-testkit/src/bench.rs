//! What the benchmarks share: finding the namespaces and pins of killed earlier runs
//! (each run names them after its pid), medians, and the policies and many-source floods
//! that `bench-live` sends live and `bench` runs through BPF_PROG_TEST_RUN.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use filter_agent::image::{GroupInfo, MapImage};
use filter_common::{Config, Smtp, SourceRule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::lab::{RELAY_V4, RELAY_V6, REMOTE_V4};

/// Pids of earlier runs killed without a chance to clean up: the numbers that follow
/// `prefix` in the names of the entries of each `(directory, prefix)`, for processes
/// that no longer exist.
pub fn stale_runs(places: &[(&str, &str)]) -> Vec<u32> {
    let mut pids = Vec::new();
    for (dir, prefix) in places {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(pid) = digits.parse::<u32>() {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists());
    pids
}

/// The median of `values` (the mean of the middle two for an even count); not empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The restricted prefix every benchmark policy starts with; it holds [`SOURCE`].
pub const RESTRICTED: &str = "100.64.0.0/10";
/// The single-source floods' source: in the half of [`RESTRICTED`] that no exempt prefix
/// covers, so blocked.
pub const SOURCE: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
/// A source in the exempt upper half of [`RESTRICTED`] (see [`EXEMPT_EVERY`]).
pub const EXEMPT_SOURCE: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 9);
/// Customers in a many-source flood: as many as an ISP's flood from infected hosts might
/// count, so the prefix tries are not cache-hot.
pub const MANY_SOURCES: u32 = 65_536;
/// One restricted IPv4 prefix in this many holds an exempt prefix (its upper half).
pub const EXEMPT_EVERY: usize = 10;

/// What the customers of a many-source flood send: SYNs to tcp/25.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mix {
    /// All from blocked customers to a remote host: the filter drops every one.
    Blocked,
    /// 80 % as [`Mix::Blocked`]; 10 % from blocked customers to a relay and 10 % from
    /// customers of exempt prefixes (both passed).
    Mixed,
}

impl Mix {
    /// Whether the filter drops the `index`th customer's SYN (under a policy without a
    /// relay limit).
    pub fn dropped(self, index: u32) -> bool {
        self == Mix::Blocked || index % 10 >= 2
    }
}

/// A policy of `size` restricted prefixes, and the exempt prefixes inside some of them:
/// what `bench-live` and `bench` load.
pub struct Policy {
    pub restricted: Vec<IpNet>,
    /// The upper half of every [`EXEMPT_EVERY`]th restricted IPv4 prefix: an allow group.
    pub exempt: Vec<Ipv4Net>,
}

impl Policy {
    pub fn new(size: usize) -> Policy {
        let restricted = restricted_prefixes(size);
        let exempt = restricted
            .iter()
            .filter_map(|p| match p {
                IpNet::V4(net) if net.prefix_len() < 32 => Some(*net),
                _ => None,
            })
            .step_by(EXEMPT_EVERY)
            .map(|net| net.subnets(net.prefix_len() + 1).unwrap().nth(1).unwrap())
            .collect();
        Policy { restricted, exempt }
    }

    /// The restricted address ranges that no exempt prefix covers: what nftables' set
    /// holds, and where the blocked customers of a flood are.
    pub fn blocked(&self) -> Vec<IpNet> {
        let exempt: BTreeSet<Ipv4Net> = self.exempt.iter().copied().collect();
        self.restricted
            .iter()
            .map(|p| match p {
                IpNet::V4(net) if net.prefix_len() < 32 => {
                    let mut halves = net.subnets(net.prefix_len() + 1).unwrap();
                    let (lower, upper) = (halves.next().unwrap(), halves.next().unwrap());
                    IpNet::V4(if exempt.contains(&upper) { lower } else { *net })
                }
                other => *other,
            })
            .collect()
    }

    /// (source, destination) of `count` distinct customers sending `mix`, at random in the
    /// policy's blocked IPv4 ranges (and, for [`Mix::Mixed`], its exempt prefixes); the
    /// `index`th is dropped as [`Mix::dropped`] says.
    pub fn customers(&self, mix: Mix, count: u32) -> Vec<(Ipv4Addr, IpAddr)> {
        let blocked: Vec<Ipv4Net> = self
            .blocked()
            .into_iter()
            .filter_map(|p| match p {
                IpNet::V4(net) => Some(net),
                IpNet::V6(_) => None,
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(u64::from(count));
        let mut used = BTreeSet::new();
        // A prefix at random, then a host in it not drawn before: the many small prefixes
        // would otherwise repeat hosts.
        let mut host = |nets: &[Ipv4Net]| loop {
            let net = nets[rng.usize(..nets.len())];
            let offset = rng.u32(..=(!0u32 >> net.prefix_len()));
            let host = Ipv4Addr::from(u32::from(net.network()) | offset);
            if used.insert(host) {
                break host;
            }
        };
        (0..count)
            .map(|i| match (mix, i % 10) {
                (Mix::Mixed, 0) => (host(&blocked), RELAY_V4),
                (Mix::Mixed, 1) => (host(&self.exempt), REMOTE_V4),
                _ => (host(&blocked), REMOTE_V4),
            })
            .collect()
    }

    /// The filter's maps for the policy under `config`: a block group (the restricted
    /// prefixes), an allow group (the exempt ones), relays [`RELAY_V4`] and [`RELAY_V6`].
    pub fn map_image(&self, config: Config) -> MapImage {
        let mut image = MapImage::new(config);
        let group = |name: &str, smtp| GroupInfo {
            name: name.into(),
            smtp,
        };
        image.groups = [
            (1, group("restricted", Smtp::Block)),
            (2, group("exempt", Smtp::Allow)),
        ]
        .into();
        let block = SourceRule::new(1, Smtp::Block);
        for &prefix in &self.restricted {
            image.insert_source(prefix, block);
        }
        let allow = SourceRule::new(2, Smtp::Allow);
        for &prefix in &self.exempt {
            image.insert_source(IpNet::V4(prefix), allow);
        }
        image
            .set_relays(&[RELAY_V4.into(), RELAY_V6.into()])
            .expect("two relays fit");
        image
    }
}

/// Prefixes of a policy of `size`: [`RESTRICTED`], then random IPv4 and IPv6 (/32../64)
/// prefixes, none overlapping another, so an nftables interval set holds exactly the same
/// entries as the filter's tries. IPv4 prefixes are /16../28, or /20../28 in policies above
/// 100,000 prefixes, whose 500,000 IPv4 prefixes would not fit otherwise.
fn restricted_prefixes(size: usize) -> Vec<IpNet> {
    fn overlaps<T: Ord + Copy>(ranges: &BTreeMap<T, T>, start: T, end: T) -> bool {
        ranges
            .range(..=end)
            .next_back()
            .is_some_and(|(_, &last)| last >= start)
    }
    let restricted: Ipv4Net = RESTRICTED.parse().unwrap();
    let mut v4 = BTreeMap::from([(
        u32::from(restricted.network()),
        u32::from(restricted.broadcast()),
    )]);
    let mut v6: BTreeMap<u128, u128> = BTreeMap::new();
    let mut prefixes = vec![IpNet::V4(restricted)];
    let mut rng = fastrand::Rng::with_seed(25);
    let v4_lengths = if size > 100_000 { 20..=28 } else { 16..=28 };
    while prefixes.len() < size {
        if rng.bool() {
            let addr = Ipv4Addr::from(rng.u32(0x0100_0000..0x6400_0000));
            let net = Ipv4Net::new(addr, rng.u8(v4_lengths.clone()))
                .unwrap()
                .trunc();
            let (start, end) = (u32::from(net.network()), u32::from(net.broadcast()));
            if !overlaps(&v4, start, end) {
                v4.insert(start, end);
                prefixes.push(IpNet::V4(net));
            }
        } else {
            let addr = Ipv6Addr::from(rng.u128(..) & !(0xffffu128 << 112) | (0x2a00u128 << 112));
            let net = Ipv6Net::new(addr, rng.u8(32..=64)).unwrap().trunc();
            let (start, end) = (u128::from(net.network()), u128::from(net.broadcast()));
            if !overlaps(&v6, start, end) {
                v6.insert(start, end);
                prefixes.push(IpNet::V6(net));
            }
        }
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use filter_agent::model::judge_flow;
    use filter_common::Verdict;

    use super::*;

    /// The floods' customers are what the benchmarks count them as: the reference model
    /// drops exactly those [`Mix::dropped`] says, no source repeats, and the single-source and exempt
    /// constants are blocked and exempt.
    #[test]
    fn customers_are_dropped_as_the_mix_says() {
        let policy = Policy::new(10_000);
        let mut config = Config::empty();
        config.set_port(25);
        let image = policy.map_image(config);
        let verdict = |source: Ipv4Addr, destination| {
            judge_flow(&image, IpAddr::V4(source), destination, 25).verdict
        };
        assert_eq!(verdict(SOURCE, REMOTE_V4), Verdict::Drop);
        assert_eq!(verdict(EXEMPT_SOURCE, REMOTE_V4), Verdict::Pass);
        for mix in [Mix::Blocked, Mix::Mixed] {
            let customers = policy.customers(mix, MANY_SOURCES);
            assert_eq!(customers.len(), MANY_SOURCES as usize);
            for (i, &(source, destination)) in customers.iter().enumerate() {
                let expected = if mix.dropped(i as u32) {
                    Verdict::Drop
                } else {
                    Verdict::Pass
                };
                assert_eq!(
                    verdict(source, destination),
                    expected,
                    "{mix:?} customer {i}: {source} -> {destination}"
                );
            }
            let distinct: BTreeSet<Ipv4Addr> = customers.iter().map(|c| c.0).collect();
            assert_eq!(distinct.len(), customers.len(), "{mix:?}: sources repeat");
        }
    }
}
