//! The kernel program and the reference model must agree on every frame: verdict, reason,
//! family, the reply frame of a reject, and the per-group counters. Seeded; set DIFF_SEED
//! to reproduce or explore.
//!
//! The relay limit makes verdicts depend on earlier frames and on time. Each run loads a
//! fresh program (empty relay buckets) and a fresh model and feeds both the same frames in
//! the same order. The kernel stamps each SYN with its own clock, the model with one fixed
//! `now`: they agree as long as no token comes back during the run. The limited policy
//! allows 1 SYN a minute (a token every 60 s) with a small burst, and a bucket that
//! conforms is ahead of the kernel's clock by whole intervals, so within a run shorter
//! than 60 s "conforms" means the same for both: the first `burst` SYNs per source pass,
//! the rest are limited. `compare` checks that the run was shorter than the interval.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use filter_agent::{
    dataplane::Dataplane,
    image::MapImage,
    model::Model,
    policy::{self, Mode},
    replay::hex,
};
use filter_common::{FLAG_MONITOR, REASON_COUNT, Reason, Verdict};
use filter_testkit::{
    corpus::{REJECT_CORPUS, corpus, corpus_dir, reject_corpus},
    random::{all_truncations, customer_segment, random_frame},
};

const RANDOM_FRAMES: usize = 12_000;

/// The model's clock: fixed for the whole run (see the module comment).
const MODEL_NOW_NS: u64 = 1_000_000_000;

fn load_image(name: &str, monitor: bool) -> MapImage {
    let mut image = policy::load(&corpus_dir().join(name))
        .unwrap()
        .policy
        .compile();
    if monitor {
        image.config.flags |= FLAG_MONITOR;
    }
    image
}

fn corpus_image(monitor: bool) -> MapImage {
    load_image("policy.yaml", monitor)
}

/// tests/corpus/reject.yaml: the corpus policy with `action: reject` and
/// `relay_limit: { syn_per_minute: 1, burst: 2 }`.
fn reject_image(monitor: bool) -> MapImage {
    let image = load_image(REJECT_CORPUS.policy, monitor);
    assert!(image.config.reject());
    assert_eq!(image.config.relay_interval_ns, 60_000_000_000);
    image
}

fn seed() -> u64 {
    std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0025)
}

/// How often the kernel gave each (verdict, reason) in a run.
type Tally = HashMap<(Verdict, Reason), usize>;

/// Runs every frame through kernel and model; returns the disagreements and the tally.
fn compare(image: &MapImage, frames: &[Vec<u8>]) -> (Vec<String>, Tally) {
    let dataplane = Dataplane::load_with(image).expect("load the XDP program (root?)");
    let mut model = Model::new();
    let mut expected_groups =
        vec![0u64; (image.max_group_id() + 1) as usize * REASON_COUNT as usize];
    let mut problems = Vec::new();
    let mut tally = Tally::new();
    let started = Instant::now();
    for (i, frame) in frames.iter().enumerate() {
        let kernel = dataplane.judge(frame).unwrap();
        let model = model.judge_frame(image, frame, MODEL_NOW_NS);
        *tally.entry((kernel.verdict, kernel.reason)).or_default() += 1;
        if kernel.verdict != model.verdict
            || kernel.reason != model.reason
            || kernel.family != model.family
            || kernel.reply != model.reply
        {
            problems.push(format!(
                "frame {i} ({} bytes): kernel {} {} {:?}, model {} {} {:?}\n  frame  {}\n  \
                 kernel reply {}\n  model reply  {}",
                frame.len(),
                kernel.verdict.name(),
                kernel.reason.name(),
                kernel.family,
                model.verdict.name(),
                model.reason.name(),
                model.family,
                hex(frame),
                kernel.reply.as_deref().map_or("none".into(), hex),
                model.reply.as_deref().map_or("none".into(), hex),
            ));
        }
        if model.group != 0 {
            expected_groups[(model.group * REASON_COUNT + model.reason as u32) as usize] += 1;
        }
    }
    let elapsed = started.elapsed();
    let interval = Duration::from_nanos(image.config.relay_interval_ns);
    assert!(
        interval.is_zero() || elapsed < interval,
        "the run took {elapsed:?}, longer than a relay token ({interval:?}): the kernel's \
         buckets refilled and the fixed-clock model no longer applies; run fewer frames"
    );
    let kernel_groups: Vec<u64> = (0..=image.max_group_id())
        .flat_map(|group| dataplane.group_counters(group).unwrap())
        .map(|c| c.packets)
        .collect();
    if kernel_groups != expected_groups {
        problems.push(format!(
            "per-group counters differ:\n  kernel {kernel_groups:?}\n  model  {expected_groups:?}"
        ));
    }
    (problems, tally)
}

fn assert_agree(image: &MapImage, frames: &[Vec<u8>], what: &str) -> Tally {
    let (problems, tally) = compare(image, frames);
    assert!(
        problems.is_empty(),
        "{what}: kernel and model disagree on {} of {} frames (seed {}):\n{}",
        problems.len(),
        frames.len(),
        seed(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut counts: Vec<(usize, String)> = tally
        .iter()
        .map(|((verdict, reason), n)| (*n, format!("{n} {} {}", verdict.name(), reason.name())))
        .collect();
    counts.sort_by(|a, b| b.cmp(a));
    let counts: Vec<String> = counts.into_iter().map(|(_, text)| text).collect();
    eprintln!(
        "{what}: {} frames agree: {}",
        frames.len(),
        counts.join(", ")
    );
    tally
}

/// How many frames got `verdict` for `reason`.
fn count(tally: &Tally, verdict: Verdict, reason: Reason) -> usize {
    tally.get(&(verdict, reason)).copied().unwrap_or(0)
}

/// Random frames, one in four a segment from a few repeated customers (to a relay, so
/// their buckets run dry, or to another server, to be rejected).
fn mixed_frames(rng: &mut fastrand::Rng, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            if rng.u8(0..4) == 0 {
                customer_segment(rng)
            } else {
                random_frame(rng)
            }
        })
        .collect()
}

#[test]
fn kernel_and_model_agree_on_random_frames() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let frames: Vec<Vec<u8>> = (0..RANDOM_FRAMES).map(|_| random_frame(&mut rng)).collect();
    let tally = assert_agree(&corpus_image(false), &frames, "enforce mode");
    assert_eq!(count(&tally, Verdict::Reject, Reason::Blocked), 0);
}

#[test]
fn kernel_and_model_agree_in_monitor_mode() {
    let mut rng = fastrand::Rng::with_seed(seed() ^ 0xff);
    let frames: Vec<Vec<u8>> = (0..3_000).map(|_| random_frame(&mut rng)).collect();
    assert_agree(&corpus_image(true), &frames, "monitor mode");
}

#[test]
fn kernel_and_model_agree_on_every_truncation_of_every_corpus_frame() {
    let frames: Vec<Vec<u8>> = corpus()
        .iter()
        .flat_map(|c| {
            all_truncations(&c.frame)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(frames.len() > 5_000, "{} truncations", frames.len());
    assert_agree(&corpus_image(false), &frames, "truncations");
}

#[test]
fn kernel_and_model_agree_with_reject_and_a_relay_limit() {
    let mut rng = fastrand::Rng::with_seed(seed() ^ 0x25);
    let frames = mixed_frames(&mut rng, 10_000);
    let tally = assert_agree(&reject_image(false), &frames, "reject and relay limit");
    // Not vacuous: resets were built and compared, SYNs were limited and others passed.
    let rejects = count(&tally, Verdict::Reject, Reason::Blocked);
    let limited = count(&tally, Verdict::Drop, Reason::RateLimited);
    let relayed = count(&tally, Verdict::Pass, Reason::Relay);
    assert!(rejects > 100, "{rejects} rejects: {tally:?}");
    assert!(limited > 200, "{limited} rate-limited: {tally:?}");
    assert!(relayed > 50, "{relayed} relay passes: {tally:?}");
    assert!(
        count(&tally, Verdict::Drop, Reason::Blocked) > 50,
        "{tally:?}"
    );
}

#[test]
fn kernel_and_model_agree_with_reject_and_a_relay_limit_in_monitor_mode() {
    let mut rng = fastrand::Rng::with_seed(seed() ^ 0x26);
    let frames = mixed_frames(&mut rng, 3_000);
    let tally = assert_agree(
        &reject_image(true),
        &frames,
        "reject and limit, monitor mode",
    );
    assert!(
        count(&tally, Verdict::Pass, Reason::Monitored) > 100,
        "{tally:?}"
    );
    assert_eq!(count(&tally, Verdict::Reject, Reason::Blocked), 0);
    assert_eq!(count(&tally, Verdict::Drop, Reason::RateLimited), 0);
}

/// A corpus policy with the given top-level mode and per-group modes (in group order;
/// `None`: the policy's).
fn with_modes(name: &str, mode: Mode, groups: &[Option<Mode>]) -> MapImage {
    let mut policy = policy::load(&corpus_dir().join(name)).unwrap().policy;
    policy.mode = mode;
    assert_eq!(policy.groups.len(), groups.len(), "{name}'s groups");
    for (group, &mode) in policy.groups.iter_mut().zip(groups) {
        group.mode = mode;
    }
    policy.compile()
}

#[test]
fn kernel_and_model_agree_with_random_per_group_modes() {
    let mut rng = fastrand::Rng::with_seed(seed() ^ 0x6d6f);
    let modes = [None, Some(Mode::Enforce), Some(Mode::Monitor)];
    let top = [Mode::Enforce, Mode::Monitor];
    // Both directions first (residential and business-broadband block, the others allow),
    // then random policies.
    let mut policies = vec![
        (Mode::Enforce, [Some(Mode::Monitor), None, None, None]),
        (
            Mode::Monitor,
            [Some(Mode::Enforce), None, Some(Mode::Monitor), None],
        ),
    ];
    for _ in 0..4 {
        let mut groups = [None; 4];
        for group in &mut groups {
            *group = modes[rng.usize(0..modes.len())];
        }
        policies.push((top[rng.usize(0..2)], groups));
    }
    for (round, (mode, groups)) in policies.iter().enumerate() {
        let what = format!("policy mode {mode:?}, group modes {groups:?}");
        let frames = mixed_frames(&mut rng, 2_000);
        let tally = assert_agree(
            &with_modes("policy.yaml", *mode, groups),
            &frames,
            &format!("drop, {what}"),
        );
        let reject = assert_agree(
            &with_modes(REJECT_CORPUS.policy, *mode, groups),
            &frames,
            &format!("reject and limit, {what}"),
        );
        if round < 2 {
            // Not vacuous: one block group monitored while the other blocked, in one run.
            for tally in [&tally, &reject] {
                assert!(
                    count(tally, Verdict::Pass, Reason::Monitored) > 50,
                    "{tally:?}"
                );
                let stopped = count(tally, Verdict::Drop, Reason::Blocked)
                    + count(tally, Verdict::Reject, Reason::Blocked);
                assert!(stopped > 50, "{tally:?}");
            }
        }
    }
}

/// A jumbo frame's length: in the kernel it arrives in several buffers (the first holds
/// about 3.5 KB), as on a port with MTU 9000.
const JUMBO_FRAME: usize = 9_014;

/// `frame` padded with zeros to a jumbo frame (the IP lengths stay as they were).
fn jumbo(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame.resize(JUMBO_FRAME, 0);
    frame
}

#[test]
fn kernel_and_model_agree_on_multi_buffer_frames() {
    let frames: Vec<Vec<u8>> = corpus().iter().map(|c| jumbo(&c.frame)).collect();
    assert_agree(&corpus_image(false), &frames, "multi-buffer frames");
    // Rejects of multi-buffer frames shrink them to a single-buffer reply.
    let frames: Vec<Vec<u8>> = reject_corpus().iter().map(|c| jumbo(&c.frame)).collect();
    let tally = assert_agree(&reject_image(false), &frames, "multi-buffer frames, reject");
    assert!(
        count(&tally, Verdict::Reject, Reason::Blocked) >= 10,
        "{tally:?}"
    );
}

#[test]
fn kernel_and_model_agree_on_every_truncation_of_every_reject_corpus_frame() {
    let frames: Vec<Vec<u8>> = reject_corpus()
        .iter()
        .flat_map(|c| {
            all_truncations(&c.frame)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(frames.len() > 5_000, "{} truncations", frames.len());
    let tally = assert_agree(&reject_image(false), &frames, "reject corpus truncations");
    assert!(
        count(&tally, Verdict::Reject, Reason::Blocked) >= 100,
        "{tally:?}"
    );
    assert!(
        count(&tally, Verdict::Drop, Reason::RateLimited) >= 100,
        "{tally:?}"
    );
}
