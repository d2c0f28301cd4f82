//! Kernel-measured cost per frame of the filter (BPF_PROG_TEST_RUN, large repeat), as a
//! ratio to a pass-only XDP program run on the same frame in the same round.
//! Run with `cargo xtask bench [--json]` (root).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Result;
use filter_agent::{
    dataplane::Dataplane,
    fixtures::Frame,
    image::{GroupInfo, MapImage, Smtp},
};
use filter_common::{Config, SMTP_ALLOW, SMTP_BLOCK, SourceRule};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

const POLICY_SIZES: [usize; 3] = [10, 10_000, 100_000];
const ROUNDS: usize = 7;
const REPEAT: u32 = 1_000_000;

const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
const EXEMPT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 200, 9);
/// Outside every generated prefix (they all lie in 1.0.0.0-99.255.255.255).
const UNMANAGED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const RELAY_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 25);
const REMOTE_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const CUSTOMER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 5);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xeeee, 0, 0, 0, 0, 9);

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    smtp: bool,
}

fn cases() -> Vec<Case> {
    let v4 = |a: Ipv4Addr| IpAddr::V4(a);
    let tcp = |src, dst, port| Frame::tcp(src, dst, port).syn().build();
    vec![
        Case {
            name: "arp",
            frame: Frame::arp().build(),
            smtp: false,
        },
        Case {
            name: "ipv4 tcp/443",
            frame: tcp(v4(BLOCKED_V4), v4(REMOTE_V4), 443),
            smtp: false,
        },
        Case {
            name: "ipv6 tcp/443",
            frame: tcp(IpAddr::V6(CUSTOMER_V6), IpAddr::V6(REMOTE_V6), 443),
            smtp: false,
        },
        Case {
            name: "tcp/25 unmanaged",
            frame: tcp(v4(UNMANAGED_V4), v4(REMOTE_V4), 25),
            smtp: true,
        },
        Case {
            name: "tcp/25 blocked",
            frame: tcp(v4(BLOCKED_V4), v4(REMOTE_V4), 25),
            smtp: true,
        },
        Case {
            name: "tcp/25 relay",
            frame: tcp(v4(BLOCKED_V4), v4(RELAY_V4), 25),
            smtp: true,
        },
        Case {
            name: "tcp/25 exempt",
            frame: tcp(v4(EXEMPT_V4), v4(REMOTE_V4), 25),
            smtp: true,
        },
    ]
}

/// A policy of `size` source prefixes: the fixed ones the cases need, the rest random
/// IPv4 (/16../28) and IPv6 (/32../64) prefixes so the tries have realistic depth.
fn policy(size: usize) -> MapImage {
    let mut config = Config::empty();
    config.set_port(25);
    let mut image = MapImage::new(config);
    let group = |name: &str, smtp| GroupInfo {
        name: name.into(),
        smtp,
    };
    image.groups = [
        (1, group("residential", Smtp::Block)),
        (2, group("business-ethernet", Smtp::Allow)),
    ]
    .into();
    let block = SourceRule {
        group: 1,
        smtp: SMTP_BLOCK,
    };
    let allow = SourceRule {
        group: 2,
        smtp: SMTP_ALLOW,
    };
    image.insert_source("100.64.0.0/10".parse().unwrap(), block);
    image.insert_source("100.64.200.0/24".parse().unwrap(), allow);
    image.insert_source("2001:db8:1000::/36".parse().unwrap(), block);
    image
        .set_relays(&["203.0.113.25/32".parse().unwrap()])
        .unwrap();
    let mut rng = fastrand::Rng::with_seed(25);
    while image.source_count() < size {
        let rule = if rng.u8(..10) == 0 { allow } else { block };
        let prefix = if rng.bool() {
            let addr = Ipv4Addr::from(rng.u32(0x0100_0000..0x6400_0000));
            IpNet::V4(Ipv4Net::new(addr, rng.u8(16..=28)).unwrap().trunc())
        } else {
            let addr = Ipv6Addr::from(rng.u128(..) & !(0xffffu128 << 112) | (0x2a00u128 << 112));
            IpNet::V6(Ipv6Net::new(addr, rng.u8(32..=64)).unwrap().trunc())
        };
        image.insert_source(prefix, rule);
    }
    image
}

#[derive(Serialize)]
struct Measurement {
    case: &'static str,
    prefixes: usize,
    ns_per_frame: f64,
    baseline_ns_per_frame: f64,
    ratio_to_baseline: f64,
    target_ratio: Option<f64>,
    target_met: Option<bool>,
}

#[derive(Serialize)]
struct Report {
    baseline: &'static str,
    repeat: u32,
    rounds: usize,
    statistic: &'static str,
    results: Vec<Measurement>,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// The targets: non-SMTP frames at most 1.2x the baseline, SMTP paths at most 3x
/// at 10,000 prefixes.
fn target(case: &Case, prefixes: usize) -> Option<f64> {
    match (case.smtp, prefixes) {
        (false, _) => Some(1.2),
        (true, 10_000) => Some(3.0),
        _ => None,
    }
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    // --quick: one small policy, three rounds; for trying out a change, not for reporting.
    let quick = std::env::args().any(|a| a == "--quick");
    let (sizes, rounds) = if quick {
        (&POLICY_SIZES[..1], 3)
    } else {
        (&POLICY_SIZES[..], ROUNDS)
    };
    let cases = cases();
    let dataplanes: Vec<(usize, Dataplane)> = sizes
        .iter()
        .map(|&size| Ok((size, Dataplane::load_with(&policy(size))?)))
        .collect::<Result<_>>()?;
    // samples[policy][case] = (filter ns, baseline ns) per round, interleaved so drift
    // in machine load hits both alike.
    let mut samples = vec![vec![(Vec::new(), Vec::new()); cases.len()]; dataplanes.len()];
    for _ in 0..rounds {
        for (p, (_, dataplane)) in dataplanes.iter().enumerate() {
            for (c, case) in cases.iter().enumerate() {
                let (_, base) = dataplane.test_run_baseline(&case.frame, REPEAT)?;
                let (_, filter) = dataplane.test_run(&case.frame, REPEAT)?;
                samples[p][c].0.push(nanos(filter));
                samples[p][c].1.push(nanos(base));
            }
        }
    }
    let mut results = Vec::new();
    for (p, (prefixes, _)) in dataplanes.iter().enumerate() {
        for (c, case) in cases.iter().enumerate() {
            let (filter, base) = &samples[p][c];
            let ratios = filter.iter().zip(base).map(|(f, b)| f / b).collect();
            let ratio = median(ratios);
            let target = target(case, *prefixes);
            results.push(Measurement {
                case: case.name,
                prefixes: *prefixes,
                ns_per_frame: median(filter.clone()),
                baseline_ns_per_frame: median(base.clone()),
                ratio_to_baseline: ratio,
                target_ratio: target,
                target_met: target.map(|t| ratio <= t),
            });
        }
    }
    if json {
        let report = Report {
            baseline: "pass_baseline (XDP program that only returns XDP_PASS)",
            repeat: REPEAT,
            rounds,
            statistic: "median over rounds; ratio is the median of per-round ratios",
            results,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<18} {:>9} {:>10} {:>12} {:>7}  target",
        "case", "prefixes", "ns/frame", "baseline ns", "ratio"
    );
    for m in &results {
        let target = match (m.target_ratio, m.target_met) {
            (Some(t), Some(true)) => format!("<= {t}x met"),
            (Some(t), _) => format!("<= {t}x MISSED"),
            _ => String::new(),
        };
        println!(
            "{:<18} {:>9} {:>10.1} {:>12.1} {:>6.2}x  {target}",
            m.case, m.prefixes, m.ns_per_frame, m.baseline_ns_per_frame, m.ratio_to_baseline
        );
    }
    println!("\nmedian of {rounds} interleaved rounds, {REPEAT} runs each, measured by the kernel");
    Ok(())
}
