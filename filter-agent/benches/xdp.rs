//! Kernel-measured cost per frame of the filter (BPF_PROG_TEST_RUN), as a ratio to a
//! pass-only XDP program run on the same frames in the same round: one frame with a large
//! repeat (cache-hot), and floods of 65,536 customers, one run per distinct frame (a
//! cache-cold lookup), the same frame run that way for comparison.
//! Run with `cargo xtask bench [--json] [--quick]` (root).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Result, bail};
use filter_agent::{dataplane::Dataplane, image::MapImage};
use filter_common::{Action, Config, Smtp, SourceRule};
use filter_testkit::{
    bench::{EXEMPT_SOURCE, MANY_SOURCES, Mix, Policy, SOURCE},
    frames::Frame,
    lab::{RELAY_V4, REMOTE_V4},
};
use serde::Serialize;

const POLICY_SIZES: [usize; 4] = [10, 10_000, 100_000, 1_000_000];
/// Policy sizes of the many-source floods.
const MANY_SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
const XDP_DROP: u32 = 1;
const SECOND: u64 = 1_000_000_000;
/// Single runs per sample of the reject case.
const SINGLE_RUNS: u32 = 20_000;
const ROUNDS: usize = 7;
const REPEAT: u32 = 1_000_000;

const BLOCKED_V4: Ipv4Addr = SOURCE;
const EXEMPT_V4: Ipv4Addr = EXEMPT_SOURCE;
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

/// The benchmarks' policy of `size` prefixes (filter_testkit::bench::Policy) with
/// 2001:db8:1000::/36 blocked too. Offender tracking and drop events are on as a
/// production policy has them (events at the default 10 a second, so nearly every blocked
/// frame is only counted as suppressed).
/// `reject`: `action: reject` and a relay limit of 60 SYNs a minute, burst 10.
fn policy(policy: &Policy, reject: bool) -> MapImage {
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
    let mut image = policy.map_image(config);
    image.insert_source(
        "2001:db8:1000::/36".parse().unwrap(),
        SourceRule::new(1, Smtp::Block),
    );
    image
}

/// A flood through the drop policy, one test run per frame.
struct Flood {
    case: &'static str,
    prefixes: usize,
    sources: u32,
    frames: Vec<Vec<u8>>,
    /// Frames the filter must drop; checked in every round.
    dropped: usize,
}

fn floods(prefixes: usize, policy: &Policy) -> Vec<Flood> {
    let syn = |(source, destination)| {
        Frame::tcp(IpAddr::V4(source), destination, 25)
            .syn()
            .build()
    };
    let many = |case, mix: Mix| {
        let customers = policy.customers(mix, MANY_SOURCES);
        Flood {
            case,
            prefixes,
            sources: MANY_SOURCES,
            dropped: (0..MANY_SOURCES).filter(|&i| mix.dropped(i)).count(),
            frames: customers.into_iter().map(syn).collect(),
        }
    };
    vec![
        // The single-source frame run the same way: what the method itself adds.
        Flood {
            case: "tcp/25 blocked",
            prefixes,
            sources: 1,
            frames: vec![syn((SOURCE, REMOTE_V4)); MANY_SOURCES as usize],
            dropped: MANY_SOURCES as usize,
        },
        many("tcp/25 blocked", Mix::Blocked),
        many("tcp/25 mixed", Mix::Mixed),
    ]
}

/// Mean kernel-measured ns per frame of `run` over `frames`, one run each, and how many it
/// dropped.
fn single_runs(
    frames: &[Vec<u8>],
    run: impl Fn(&[u8]) -> Result<(u32, Duration)>,
) -> Result<(f64, usize)> {
    let mut total = Duration::ZERO;
    let mut dropped = 0;
    for frame in frames {
        let (action, duration) = run(frame)?;
        total += duration;
        dropped += usize::from(action == XDP_DROP);
    }
    Ok((nanos(total) / frames.len() as f64, dropped))
}

#[derive(Serialize)]
struct Measurement {
    case: &'static str,
    prefixes: usize,
    /// Distinct source addresses among the frames: 1, or 65,536 for a many-source flood.
    sources: u32,
    /// Runs per BPF_PROG_TEST_RUN call: the large repeat of one frame, or 1 (the reject
    /// case and the floods, whose frames each run once per round).
    repeat_per_call: u32,
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

/// Per round: (filter ns, pass-only ns, drop-only ns).
#[derive(Clone, Default)]
struct Samples(Vec<f64>, Vec<f64>, Vec<f64>);

impl Samples {
    fn measurement(
        &self,
        case: &'static str,
        prefixes: usize,
        sources: u32,
        repeat_per_call: u32,
        drops: bool,
        target: Option<f64>,
    ) -> Measurement {
        let Samples(filter, base, drop) = self;
        let ratio_to =
            |other: &Vec<f64>| median(filter.iter().zip(other).map(|(f, b)| f / b).collect());
        let ratio = ratio_to(base);
        Measurement {
            case,
            prefixes,
            sources,
            repeat_per_call,
            ns_per_frame: median(filter.clone()),
            baseline_ns_per_frame: median(base.clone()),
            ratio_to_baseline: ratio,
            ratio_to_drop_only: drops.then(|| ratio_to(drop)),
            target_ratio: target,
            target_met: target.map(|t| ratio <= t),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// The targets: non-SMTP frames at most 1.2x the baseline, SMTP paths at most 3x
/// at 10,000 prefixes, and 4x at 1,000,000 with many sources.
fn target(smtp: bool, prefixes: usize, sources: u32) -> Option<f64> {
    match (smtp, prefixes) {
        (false, _) => Some(1.2),
        (true, 10_000) => Some(3.0),
        (true, 1_000_000) if sources > 1 => Some(4.0),
        _ => None,
    }
}

fn main() -> Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    // --quick: the 10,000-prefix policy, three rounds; for trying out a change, not for
    // reporting.
    let quick = std::env::args().any(|a| a == "--quick");
    let (sizes, rounds) = if quick {
        (&POLICY_SIZES[1..2], 3)
    } else {
        (&POLICY_SIZES[..], ROUNDS)
    };
    let cases = cases();
    let mut dataplanes: Vec<(usize, [Dataplane; 2])> = Vec::new();
    let mut floods_by_size: Vec<Vec<Flood>> = Vec::new();
    for &size in sizes {
        let shared = Policy::new(size);
        let drop = Dataplane::load_with(&policy(&shared, false))?;
        let reject = Dataplane::load_with(&policy(&shared, true))?;
        dataplanes.push((size, [drop, reject]));
        floods_by_size.push(if MANY_SIZES.contains(&size) {
            floods(size, &shared)
        } else {
            Vec::new()
        });
    }
    // samples[policy][case], interleaved so drift in machine load hits all alike.
    let mut samples = vec![vec![Samples::default(); cases.len()]; dataplanes.len()];
    let mut flood_samples: Vec<Vec<Samples>> = floods_by_size
        .iter()
        .map(|f| vec![Samples::default(); f.len()])
        .collect();
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
            let dataplane = &pair[0];
            for (f, flood) in floods_by_size[p].iter().enumerate() {
                let sample = &mut flood_samples[p][f];
                let (filter, dropped) =
                    single_runs(&flood.frames, |frame| dataplane.test_run(frame, 1))?;
                if dropped != flood.dropped {
                    bail!(
                        "{} from {} sources at {} prefixes: the filter dropped {dropped} of {} \
                         frames, expected {}",
                        flood.case,
                        flood.sources,
                        flood.prefixes,
                        flood.frames.len(),
                        flood.dropped
                    );
                }
                sample.0.push(filter);
                sample.1.push(
                    single_runs(&flood.frames, |frame| dataplane.test_run_baseline(frame, 1))?.0,
                );
                sample.2.push(
                    single_runs(&flood.frames, |frame| {
                        dataplane.test_run_drop_baseline(frame, 1)
                    })?
                    .0,
                );
            }
        }
    }
    let mut results = Vec::new();
    for (p, (prefixes, _)) in dataplanes.iter().enumerate() {
        for (c, case) in cases.iter().enumerate() {
            let repeat = if case.name == "tcp/25 reject" {
                1
            } else {
                REPEAT
            };
            results.push(samples[p][c].measurement(
                case.name,
                *prefixes,
                1,
                repeat,
                case.drops,
                target(case.smtp, *prefixes, 1),
            ));
        }
    }
    let single_source_rows = results.len();
    for (p, floods) in floods_by_size.iter().enumerate() {
        for (f, flood) in floods.iter().enumerate() {
            results.push(flood_samples[p][f].measurement(
                flood.case,
                flood.prefixes,
                flood.sources,
                1,
                true,
                target(true, flood.prefixes, flood.sources),
            ));
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
    let row = |m: &Measurement| {
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
            "{:<20} {:>9} {:>7} {:>10.1} {:>12.1} {:>6.2}x {:>9}  {target}",
            m.case,
            m.prefixes,
            m.sources,
            m.ns_per_frame,
            m.baseline_ns_per_frame,
            m.ratio_to_baseline,
            vs_drop
        );
    };
    let header = || {
        println!(
            "{:<20} {:>9} {:>7} {:>10} {:>12} {:>7} {:>9}  target",
            "case", "prefixes", "sources", "ns/frame", "baseline ns", "ratio", "vs drop"
        )
    };
    header();
    results[..single_source_rows].iter().for_each(row);
    println!(
        "\nbaseline: the pass-only program; vs drop: the drop-only program. tcp/25 reject: \
         mean of {SINGLE_RUNS} single runs per round (a repeated run would judge its own reply)."
    );
    println!("median of {rounds} interleaved rounds, {REPEAT} runs each, measured by the kernel");
    if results.len() > single_source_rows {
        println!(
            "\nfloods through the drop policy, one run per frame ({MANY_SOURCES} frames a round; \
             sources 1: one frame that many times; mixed: 10 % to a relay, 10 % from exempt \
             prefixes)"
        );
        header();
        results[single_source_rows..].iter().for_each(row);
        println!(
            "\nthe baselines run the same frames the same way; median of {rounds} interleaved rounds"
        );
    }
    Ok(())
}
