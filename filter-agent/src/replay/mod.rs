//! `replay`: captures in -> the real program (BPF_PROG_TEST_RUN of its replay entry, see
//! `Dataplane::judge_replay`) -> verdicts out, one record at a time in constant memory.
//! Verdict, reason and group come from the kernel's own report, never the model (unless
//! `--engine model` asks for it, which every output then says); so does the reply frame
//! of a `reject` (what the program left to XDP_TX).
//!
//! All captures are judged by one freshly loaded program, in order: the relay limit's
//! buckets carry from frame to frame (and capture to capture) as they would on the wire,
//! only much faster, so no bucket refills during a replay of a few seconds. With a
//! baseline, a second program with the baseline policy judges every frame too.

mod baseline;
mod output;

pub use output::{Ending, Format};

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};
use filter_common::{Family, Reason, Verdict};
use serde::Serialize;

pub use baseline::Changes;
pub use output::{ExpectCheck, Output, Sink, hex};

use crate::{
    capture::{self, CaptureEnd, LinkType, Outcome},
    dataplane::{Dataplane, Judgement, MAX_TEST_FRAME_LEN, MIN_FRAME_LEN},
    image::MapImage,
    model::Model,
};

/// Who judges: the kernel program (the default and the point), or the reference model
/// for runners without root or BPF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Kernel,
    Model,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Kernel => "kernel",
            Engine::Model => "model",
        }
    }
}

/// One policy's judge: a loaded program with its maps, or the model with its state.
pub struct Judge {
    image: MapImage,
    engine: JudgeEngine,
}

enum JudgeEngine {
    Kernel {
        dataplane: Box<Dataplane>,
        output: Vec<u8>,
    },
    Model {
        model: Model,
        started: Instant,
        reply: Option<Vec<u8>>,
    },
}

impl Judge {
    /// Loads `image` into a fresh program (kernel) or a fresh model.
    pub fn new(image: MapImage, engine: Engine) -> Result<Self> {
        let engine = match engine {
            Engine::Kernel => JudgeEngine::Kernel {
                dataplane: Box::new(Dataplane::load_with(&image)?),
                output: Vec::new(),
            },
            Engine::Model => JudgeEngine::Model {
                model: Model::new(),
                started: Instant::now(),
                reply: None,
            },
        };
        Ok(Judge { image, engine })
    }

    pub fn image(&self) -> &MapImage {
        &self.image
    }

    /// Judges one frame (any length: runts and jumbo frames are handled as notes say).
    fn judge(&mut self, frame: &[u8]) -> Result<(Decision<'_>, Option<&'static str>)> {
        let Judge { image, engine } = self;
        if frame.len() < MIN_FRAME_LEN {
            // No driver hands XDP a runt; report it without pretending anyone judged it.
            let runt = Judgement {
                verdict: Verdict::Pass,
                reason: Reason::Malformed,
                family: Family::Other,
                group: 0,
                reply: None,
            };
            return Ok((decision(image, runt), Some(RUNT_NOTE)));
        }
        let (frame, note) = if frame.len() > MAX_TEST_FRAME_LEN {
            (&frame[..MAX_TEST_FRAME_LEN], Some(LONG_NOTE))
        } else {
            (frame, None)
        };
        let judgement = match engine {
            JudgeEngine::Kernel { dataplane, output } => dataplane.judge_replay(frame, output)?,
            JudgeEngine::Model {
                model,
                started,
                reply,
            } => {
                // The model's clock runs as the kernel's does during a replay.
                let now = started.elapsed().as_nanos() as u64;
                let decided = model.judge_frame(image, frame, now);
                *reply = decided.reply;
                Judgement {
                    verdict: decided.verdict,
                    reason: decided.reason,
                    family: decided.family,
                    group: decided.group,
                    reply: reply.as_deref(),
                }
            }
        };
        Ok((decision(image, judgement), note))
    }
}

const RUNT_NOTE: &str = "shorter than an Ethernet header: never reaches XDP";
const LONG_NOTE: &str = "judged on its first 3520 bytes";

/// One policy's decision on a frame, as the outputs print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Decision<'a> {
    #[serde(serialize_with = "output::outcome_name")]
    pub verdict: Outcome,
    /// `None` for a skipped record.
    pub reason: Option<Reason>,
    #[serde(skip)]
    pub family: Option<Family>,
    pub group: Option<&'a str>,
    #[serde(skip)]
    pub reply: Option<&'a [u8]>,
}

impl Decision<'_> {
    const SKIPPED: Decision<'static> = Decision {
        verdict: Outcome::Skipped,
        reason: None,
        family: None,
        group: None,
        reply: None,
    };
}

/// One record of a capture and what became of it.
pub struct Frame<'a> {
    /// 1-based, across all captures.
    pub frame: usize,
    /// Which capture (index into the list given), and the record's 1-based index in it.
    pub capture: usize,
    pub path: &'a Path,
    pub index: usize,
    pub linktype: LinkType,
    /// What the program was given; `None` for a skipped record.
    pub bytes: Option<&'a [u8]>,
    pub len: usize,
    pub orig_len: usize,
    pub truncated: bool,
    /// Notes about how it was read or judged, `; `-separated.
    pub note: Option<&'a str>,
    pub policy: Decision<'a>,
    /// The baseline policy's decision, when one was given.
    pub baseline: Option<Decision<'a>>,
}

/// What was replayed: the policy, an optional baseline, the engine and the captures.
pub struct Replay {
    pub policy: Judge,
    pub baseline: Option<Judge>,
    pub engine: Engine,
}

impl Replay {
    pub fn new(policy: MapImage, baseline: Option<MapImage>, engine: Engine) -> Result<Self> {
        let policy = Judge::new(policy, engine).context("loading the policy")?;
        let baseline = baseline
            .map(|image| Judge::new(image, engine).context("loading the baseline policy"))
            .transpose()?;
        Ok(Replay {
            policy,
            baseline,
            engine,
        })
    }

    /// Judges every record of every capture, in order, handing each to `sink`; returns
    /// how each capture ended.
    pub fn run(&mut self, captures: &[PathBuf], sink: &mut impl Sink) -> Result<Vec<CaptureEnd>> {
        let mut frame = 0;
        let mut ends = Vec::with_capacity(captures.len());
        let mut note = String::new();
        for (capture, path) in captures.iter().enumerate() {
            sink.capture_start(capture, path)?;
            let end = capture::for_each_record(path, |record| {
                frame += 1;
                note.clear();
                if let Some(snaplen) = record.over_snaplen {
                    note.push_str(OVER_SNAPLEN_NOTE);
                    use std::fmt::Write as _;
                    let _ = write!(note, " ({snaplen})");
                }
                let Some(bytes) = record.frame else {
                    push_note(&mut note, record.skip.unwrap_or_default());
                    let skipped = Frame {
                        frame,
                        capture,
                        path,
                        index: record.index,
                        linktype: record.linktype,
                        bytes: None,
                        len: record.len,
                        orig_len: record.orig_len,
                        truncated: record.truncated,
                        note: Some(&note),
                        policy: Decision::SKIPPED,
                        baseline: self.baseline.as_ref().map(|_| Decision::SKIPPED),
                    };
                    return sink.frame(&skipped);
                };
                let (policy, policy_note) = self.policy.judge(bytes)?;
                if let Some(extra) = policy_note {
                    push_note(&mut note, extra);
                }
                let baseline = match &mut self.baseline {
                    Some(judge) => Some(judge.judge(bytes)?.0),
                    None => None,
                };
                sink.frame(&Frame {
                    frame,
                    capture,
                    path,
                    index: record.index,
                    linktype: record.linktype,
                    bytes: Some(bytes),
                    len: bytes.len(),
                    orig_len: record.orig_len,
                    truncated: record.truncated,
                    note: (!note.is_empty()).then_some(note.as_str()),
                    policy,
                    baseline,
                })
            })
            .with_context(|| format!("replaying {}", path.display()))?;
            sink.capture_end(capture, path, &end)?;
            ends.push(end);
        }
        Ok(ends)
    }
}

const OVER_SNAPLEN_NOTE: &str = "more bytes than the capture's snap length, read as libpcap does";

fn push_note(note: &mut String, text: &str) {
    if !note.is_empty() {
        note.push_str("; ");
    }
    note.push_str(text);
}

fn decision<'a>(image: &'a MapImage, judged: Judgement<'a>) -> Decision<'a> {
    Decision {
        verdict: Outcome::Judged(judged.verdict, judged.reason),
        reason: Some(judged.reason),
        family: Some(judged.family),
        group: (judged.group != 0).then(|| {
            image
                .group(judged.group)
                .map_or("(unnamed)", |g| g.name.as_str())
        }),
        reply: judged.reply,
    }
}
