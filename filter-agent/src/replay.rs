//! `replay`: captures in -> BPF_PROG_TEST_RUN of the real program -> verdicts out.
//! Verdict and reason come from the kernel (return code and counters), never the model.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use filter_common::{Family, Reason};
use serde::Serialize;

use crate::{
    capture::{self, Expected},
    dataplane::{Dataplane, KernelVerdict, MIN_FRAME_LEN},
    image::MapImage,
    model::Verdict,
};

/// The largest frame BPF_PROG_TEST_RUN accepts for a non-multi-buffer XDP program
/// (a page less headroom and shared info). Longer frames are judged on this prefix:
/// the decision reads only headers.
pub const MAX_TEST_FRAME_LEN: usize = 3520;

#[derive(Debug, Clone, Serialize)]
pub struct FrameVerdict {
    /// 1-based, across all captures.
    pub frame: usize,
    pub capture: PathBuf,
    /// 1-based within its capture.
    pub index: usize,
    pub len: usize,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub family: &'static str,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
}

/// Judges every frame of every capture in the kernel, in capture order.
pub fn replay(image: &MapImage, captures: &[PathBuf]) -> Result<Vec<FrameVerdict>> {
    let dataplane = Dataplane::load_with(image)?;
    let mut verdicts = Vec::new();
    for path in captures {
        let frames = capture::read_frames(path)
            .with_context(|| format!("reading capture {}", path.display()))?;
        for (i, frame) in frames.iter().enumerate() {
            let (kernel, note) = judge(&dataplane, frame)?;
            verdicts.push(FrameVerdict {
                frame: verdicts.len() + 1,
                capture: path.clone(),
                index: i + 1,
                len: frame.len(),
                verdict: kernel.verdict.name(),
                reason: kernel.reason.name(),
                family: kernel.family.name(),
                summary: capture::summarize(frame),
                note,
            });
        }
    }
    Ok(verdicts)
}

fn judge(dataplane: &Dataplane, frame: &[u8]) -> Result<(KernelVerdict, Option<&'static str>)> {
    if frame.len() < MIN_FRAME_LEN {
        // No driver hands XDP a runt; report it without pretending the kernel judged it.
        let runt = KernelVerdict {
            verdict: Verdict::Pass,
            reason: Reason::Malformed,
            family: Family::Other,
            reply: None,
        };
        return Ok((
            runt,
            Some("shorter than an Ethernet header: never reaches XDP"),
        ));
    }
    if frame.len() > MAX_TEST_FRAME_LEN {
        let verdict = dataplane.judge(&frame[..MAX_TEST_FRAME_LEN])?;
        return Ok((verdict, Some("judged on its first 3520 bytes")));
    }
    Ok((dataplane.judge(frame)?, None))
}

pub fn print_table(out: &mut impl Write, verdicts: &[FrameVerdict]) -> io::Result<()> {
    let capture_width = verdicts
        .iter()
        .map(|v| frame_label(v).len())
        .max()
        .unwrap_or(0)
        .max("CAPTURE".len());
    writeln!(
        out,
        "{:>6}  {:<capture_width$}  {:<7}  {:<10}  {:<6}  SUMMARY",
        "FRAME", "CAPTURE", "VERDICT", "REASON", "FAMILY"
    )?;
    for v in verdicts {
        let note = v.note.map(|n| format!(" ({n})")).unwrap_or_default();
        writeln!(
            out,
            "{:>6}  {:<capture_width$}  {:<7}  {:<10}  {:<6}  {}{note}",
            v.frame,
            frame_label(v),
            v.verdict,
            v.reason,
            v.family,
            v.summary
        )?;
    }
    writeln!(out)?;
    out.write_all(summary(verdicts).as_bytes())
}

fn frame_label(v: &FrameVerdict) -> String {
    let name = v
        .capture
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| v.capture.display().to_string());
    format!("{name}:{}", v.index)
}

pub fn print_json(out: &mut impl Write, verdicts: &[FrameVerdict]) -> Result<()> {
    for v in verdicts {
        serde_json::to_writer(&mut *out, v)?;
        writeln!(out)?;
    }
    Ok(())
}

/// Counts per verdict and reason.
pub fn summary(verdicts: &[FrameVerdict]) -> String {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for v in verdicts {
        *counts.entry((v.verdict, v.reason)).or_default() += 1;
    }
    let mut text = format!("{} frames\n", verdicts.len());
    for ((verdict, reason), n) in counts {
        let _ = writeln!(text, "{n:>8}  {verdict:<5} {reason}");
    }
    text
}

/// Every difference between the kernel's verdicts and the expected ones, as lines.
pub fn mismatches(
    verdicts: &[FrameVerdict],
    expected: &[Expected],
    expect_file: &Path,
) -> Vec<String> {
    let mut problems = Vec::new();
    for e in expected {
        match verdicts.get(e.frame.wrapping_sub(1)) {
            None => problems.push(format!(
                "{}:{}: frame {} is expected but the captures hold only {} frames",
                expect_file.display(),
                e.line,
                e.frame,
                verdicts.len()
            )),
            Some(v) if v.verdict != e.verdict || v.reason != e.reason => problems.push(format!(
                "frame {} ({}): expected {} {}, the kernel said {} {}  [{}]",
                v.frame,
                frame_label(v),
                e.verdict,
                e.reason,
                v.verdict,
                v.reason,
                v.summary
            )),
            Some(_) => {}
        }
    }
    let covered: std::collections::BTreeSet<usize> = expected.iter().map(|e| e.frame).collect();
    for v in verdicts.iter().filter(|v| !covered.contains(&v.frame)) {
        problems.push(format!(
            "frame {} ({}): no expected verdict in {} (kernel said {} {})",
            v.frame,
            frame_label(v),
            expect_file.display(),
            v.verdict,
            v.reason
        ));
    }
    problems
}
