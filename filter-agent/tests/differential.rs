//! The kernel program and the reference model must agree on every frame: verdict, reason,
//! family, and the per-group counters. Seeded; set DIFF_SEED to reproduce or explore.

use filter_agent::{
    dataplane::Dataplane,
    fixtures::{all_truncations, corpus, corpus_dir, random_frame},
    image::MapImage,
    model, policy,
};
use filter_common::{FLAG_MONITOR, REASON_COUNT};

const RANDOM_FRAMES: usize = 12_000;

fn corpus_image(monitor: bool) -> MapImage {
    let mut image = policy::load(&corpus_dir().join("policy.yaml"))
        .unwrap()
        .policy
        .compile();
    if monitor {
        image.config.flags |= FLAG_MONITOR;
    }
    image
}

fn seed() -> u64 {
    std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0025)
}

/// Runs every frame through kernel and model; returns the disagreements.
fn compare(image: &MapImage, frames: &[Vec<u8>]) -> Vec<String> {
    let dataplane = Dataplane::load_with(image).expect("load the XDP program (root?)");
    let mut expected_groups =
        vec![0u64; (image.max_group_id() + 1) as usize * REASON_COUNT as usize];
    let mut problems = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let kernel = dataplane.judge(frame).unwrap();
        let model = model::judge_frame(image, frame);
        if kernel.verdict != model.verdict
            || kernel.reason != model.reason
            || kernel.family != model.family
        {
            problems.push(format!(
                "frame {i} ({} bytes): kernel {} {} {:?}, model {} {} {:?}\n  {}",
                frame.len(),
                kernel.verdict.name(),
                kernel.reason.name(),
                kernel.family,
                model.verdict.name(),
                model.reason.name(),
                model.family,
                hex(frame)
            ));
        }
        if model.group != 0 {
            expected_groups[(model.group * REASON_COUNT + model.reason as u32) as usize] += 1;
        }
    }
    let kernel_groups: Vec<u64> = (0..=image.max_group_id())
        .flat_map(|group| dataplane.group_counters(group).unwrap())
        .map(|c| c.packets)
        .collect();
    if kernel_groups != expected_groups {
        problems.push(format!(
            "per-group counters differ:\n  kernel {kernel_groups:?}\n  model  {expected_groups:?}"
        ));
    }
    problems
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_agree(image: &MapImage, frames: &[Vec<u8>], what: &str) {
    let problems = compare(image, frames);
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
}

#[test]
fn kernel_and_model_agree_on_random_frames() {
    let mut rng = fastrand::Rng::with_seed(seed());
    let frames: Vec<Vec<u8>> = (0..RANDOM_FRAMES).map(|_| random_frame(&mut rng)).collect();
    assert_agree(&corpus_image(false), &frames, "enforce mode");
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
