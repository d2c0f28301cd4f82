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
    image::{GroupInfo, MapImage},
};
use filter_common::{Action, Config, Smtp, SourceRule};
use filter_testkit::{
    frames::Frame,
    lab::{RELAY_V4, REMOTE_V4},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

const POLICY_SIZES: [usize; 3] = [10, 10_000, 100_000];
const SECOND: u64 = 1_000_000_000;
/// Single runs per sample of the reject case.
const SINGLE_RUNS: u32 = 20_000;
const ROUNDS: usize = 7;
const REPEAT: u32 = 1_000_000;

const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 1, 2);
const EXEMPT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 200, 9);
/// Outside every generated prefix (they all lie in 1.0.0.0-99.255.255.255).
const UNMANAGED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CUSTOMER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1000, 0, 0, 0, 0, 5);
const REMOTE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xeeee, 0, 0, 0, 0, 9);

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    smtp: bool,
    /// Run against the policy with `action: reject` and a relay limit.
    reject_policy: bool,
    /// The program drops it: also compared with the drop-only program.
    drops: bool,
}

fn cases() -> Vec<Case> {
    let v4 = |a: Ipv4Addr| IpAddr::V4(a);
    let tcp = |src, dst, port| Frame::tcp(src, dst, port).syn().build();
    vec![
        Case {
            name: "arp",
            frame: Frame::arp().build(),
            smtp: false,
            reject_policy: false,
            drops: false,
        },
        Case {
            name: "ipv4 tcp/443",
            frame: tcp(v4(BLOCKED_V4), REMOTE_V4, 443),
            smtp: false,
            reject_policy: false,
            drops: false,
        },
        Case {
            name: "ipv6 tcp/443",
            frame: tcp(IpAddr::V6(CUSTOMER_V6), IpAddr::V6(REMOTE_V6), 443),
            smtp: false,
            reject_policy: false,
            drops: false,
        },
        Case {
            name: "tcp/25 unmanaged",
            frame: tcp(v4(UNMANAGED_V4), REMOTE_V4, 25),
            smtp: true,
            reject_policy: false,
            drops: false,
        },
        Case {
            name: "tcp/25 blocked",
            frame: tcp(v4(BLOCKED_V4), REMOTE_V4, 25),
            smtp: true,
            reject_policy: false,
            drops: true,
        },
        Case {
            name: "tcp/25 relay",
            frame: tcp(v4(BLOCKED_V4), RELAY_V4, 25),
            smtp: true,
            reject_policy: false,
            drops: false,
        },
        Case {
            name: "tcp/25 exempt",
            frame: tcp(v4(EXEMPT_V4), REMOTE_V4, 25),
            smtp: true,
            reject_policy: false,
            drops: false,
        },
        // After the first few runs the source's relay bucket is empty: every run after
        // that takes the rate-limited drop path.
        Case {
            name: "tcp/25 rate-limited",
            frame: tcp(v4(BLOCKED_V4), RELAY_V4, 25),
            smtp: true,
            reject_policy: true,
            drops: true,
        },
        // Not measurable with repeated runs: the first run turns the frame into the reset,
        // which later runs would judge. Each sample is the mean of single runs instead.
        Case {
            name: "tcp/25 reject",
            frame: tcp(v4(BLOCKED_V4), REMOTE_V4, 25),
            smtp: true,
            reject_policy: true,
            drops: true,
        },
    ]
}

/// A policy of `size` source prefixes: the fixed ones the cases need, the rest random
/// IPv4 (/16../28) and IPv6 (/32../64) prefixes so the tries have realistic depth.
/// Offender tracking and drop events are on as a production policy has them (events at
/// the default 10 a second, so nearly every blocked frame is only counted as suppressed).
/// `reject`: `action: reject` and a relay limit of 60 SYNs a minute, burst 10.
fn policy(size: usize, reject: bool) -> MapImage {
    let mut config = Config::empty();
    config.set_port(25);
    config.offender_alert_after = 100;
    config.offender_window_ns = 600 * SECOND;
    config.event_interval_ns = SECOND / 10;
    config.event_tolerance_ns = 9 * config.event_interval_ns;
    if reject {
        config.action = Action::Reject as u32;
        config.relay_interval_ns = SECOND;
        config.relay_tolerance_ns = 9 * SECOND;
    }
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
    let block = SourceRule::new(1, Smtp::Block);
    let allow = SourceRule::new(2, Smtp::Allow);
    image.insert_source("100.64.0.0/10".parse().unwrap(), block);
    image.insert_source("100.64.200.0/24".parse().unwrap(), allow);
    image.insert_source("2001:db8:1000::/36".parse().unwrap(), block);
    image.set_relays(&[RELAY_V4.into()]).unwrap();
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
    /// For frames the program drops: the ratio to the drop-only program.
    ratio_to_drop_only: Option<f64>,
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
    let dataplanes: Vec<(usize, [Dataplane; 2])> = sizes
        .iter()
        .map(|&size| {
            let drop = Dataplane::load_with(&policy(size, false))?;
            let reject = Dataplane::load_with(&policy(size, true))?;
            Ok((size, [drop, reject]))
        })
        .collect::<Result<_>>()?;
    // samples[policy][case] = (filter ns, pass-only ns, drop-only ns) per round,
    // interleaved so drift in machine load hits all alike.
    let mut samples =
        vec![vec![(Vec::new(), Vec::new(), Vec::new()); cases.len()]; dataplanes.len()];
    for _ in 0..rounds {
        for (p, (_, pair)) in dataplanes.iter().enumerate() {
            for (c, case) in cases.iter().enumerate() {
                let dataplane = &pair[case.reject_policy as usize];
                let sample = &mut samples[p][c];
                if case.name == "tcp/25 reject" {
                    let mean = |run: &dyn Fn() -> Result<Duration>| -> Result<f64> {
                        let mut total = Duration::ZERO;
                        for _ in 0..SINGLE_RUNS {
                            total += run()?;
                        }
                        Ok(nanos(total) / SINGLE_RUNS as f64)
                    };
                    sample.1.push(mean(&|| {
                        Ok(dataplane.test_run_baseline(&case.frame, 1)?.1)
                    })?);
                    sample
                        .0
                        .push(mean(&|| Ok(dataplane.test_run(&case.frame, 1)?.1))?);
                    sample.2.push(mean(&|| {
                        Ok(dataplane.test_run_drop_baseline(&case.frame, 1)?.1)
                    })?);
                    continue;
                }
                let (_, base) = dataplane.test_run_baseline(&case.frame, REPEAT)?;
                let (_, filter) = dataplane.test_run(&case.frame, REPEAT)?;
                sample.0.push(nanos(filter));
                sample.1.push(nanos(base));
                if case.drops {
                    let (_, drop) = dataplane.test_run_drop_baseline(&case.frame, REPEAT)?;
                    sample.2.push(nanos(drop));
                }
            }
        }
    }
    let mut results = Vec::new();
    for (p, (prefixes, _)) in dataplanes.iter().enumerate() {
        for (c, case) in cases.iter().enumerate() {
            let (filter, base, drop) = &samples[p][c];
            let ratio_to =
                |other: &Vec<f64>| median(filter.iter().zip(other).map(|(f, b)| f / b).collect());
            let ratio = ratio_to(base);
            let target = target(case, *prefixes);
            results.push(Measurement {
                case: case.name,
                prefixes: *prefixes,
                ns_per_frame: median(filter.clone()),
                baseline_ns_per_frame: median(base.clone()),
                ratio_to_baseline: ratio,
                ratio_to_drop_only: case.drops.then(|| ratio_to(drop)),
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
        "{:<20} {:>9} {:>10} {:>12} {:>7} {:>9}  target",
        "case", "prefixes", "ns/frame", "baseline ns", "ratio", "vs drop"
    );
    for m in &results {
        let target = match (m.target_ratio, m.target_met) {
            (Some(t), Some(true)) => format!("<= {t}x met"),
            (Some(t), _) => format!("<= {t}x MISSED"),
            _ => String::new(),
        };
        let vs_drop = m
            .ratio_to_drop_only
            .map(|r| format!("{r:.2}x"))
            .unwrap_or_default();
        println!(
            "{:<20} {:>9} {:>10.1} {:>12.1} {:>6.2}x {:>9}  {target}",
            m.case,
            m.prefixes,
            m.ns_per_frame,
            m.baseline_ns_per_frame,
            m.ratio_to_baseline,
            vs_drop
        );
    }
    println!(
        "\nbaseline: the pass-only program; vs drop: the drop-only program. tcp/25 reject: \
         mean of {SINGLE_RUNS} single runs per round (a repeated run would judge its own reply)."
    );
    println!("\nmedian of {rounds} interleaved rounds, {REPEAT} runs each, measured by the kernel");
    Ok(())
}
