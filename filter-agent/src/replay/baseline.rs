//! `replay --baseline OLD.yaml`: what the policy changes, frame by frame, grouped by the
//! source prefix that decides and the groups on each side, with counts.

use std::{collections::BTreeMap, io::Write, net::IpAddr};

use anyhow::Result;
use serde::Serialize;

use super::{Decision, Engine, Frame, output::EXAMPLES};
use crate::{
    capture::{Outcome, Summary},
    image::MapImage,
    model::{
        lookup_source,
        parse::{Parsed, parse},
    },
};

/// One side of a change, as grouped and printed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
struct Side {
    verdict: &'static str,
    reason: Option<&'static str>,
    group: Option<String>,
}

impl Side {
    fn of(decision: &Decision<'_>) -> Self {
        let (verdict, reason) = match decision.verdict {
            Outcome::Judged(verdict, reason) => (verdict.name(), Some(reason.name())),
            Outcome::Skipped => (crate::capture::SKIPPED, None),
        };
        Side {
            verdict,
            reason,
            group: decision.group.map(str::to_string),
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.verdict)?;
        if let Some(reason) = self.reason {
            write!(f, " {reason}")?;
        }
        write!(f, " (group {})", self.group.as_deref().unwrap_or("none"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ChangeKey {
    /// The longest prefix of the source in the policy, else in the baseline.
    prefix: String,
    baseline: Side,
    policy: Side,
}

#[derive(Default)]
struct ChangeGroup {
    frames: usize,
    /// The first few: frame number, label and summary.
    examples: Vec<(usize, String, String)>,
}

/// The frames whose verdict or reason differs between baseline and policy, grouped.
pub struct Changes {
    policy: MapImage,
    baseline: MapImage,
    groups: BTreeMap<ChangeKey, ChangeGroup>,
    changed: usize,
    fail_on_change: bool,
}

impl Changes {
    /// `policy` and `baseline`: the images judged, for the prefixes that decide.
    pub fn new(policy: MapImage, baseline: MapImage, fail_on_change: bool) -> Self {
        Changes {
            policy,
            baseline,
            groups: BTreeMap::new(),
            changed: 0,
            fail_on_change,
        }
    }

    pub fn changed(&self) -> usize {
        self.changed
    }

    pub fn fail_on_change(&self) -> bool {
        self.fail_on_change
    }

    /// Notes `frame` if its verdict or reason changed; true if it did.
    pub(super) fn record(
        &mut self,
        frame: &Frame<'_>,
        baseline: &Decision<'_>,
        label: &str,
    ) -> bool {
        if baseline.verdict == frame.policy.verdict {
            return false;
        }
        self.changed += 1;
        let prefix = frame
            .bytes
            .and_then(source)
            .map(|source| {
                lookup_source(&self.policy, source)
                    .or_else(|| lookup_source(&self.baseline, source))
                    .map_or_else(
                        || format!("{source} (in no prefix)"),
                        |(p, _)| p.to_string(),
                    )
            })
            .unwrap_or_else(|| "(no source address)".to_string());
        let key = ChangeKey {
            prefix,
            baseline: Side::of(baseline),
            policy: Side::of(&frame.policy),
        };
        let group = self.groups.entry(key).or_default();
        group.frames += 1;
        if group.examples.len() < EXAMPLES {
            let summary = frame
                .bytes
                .map_or_else(|| "(skipped)".to_string(), |b| Summary(b).to_string());
            group
                .examples
                .push((frame.frame, label.to_string(), summary));
        }
        true
    }

    /// The groups, most frames first.
    fn ranked(&self) -> Vec<(&ChangeKey, &ChangeGroup)> {
        let mut groups: Vec<_> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.1.frames.cmp(&a.1.frames).then(a.0.cmp(b.0)));
        groups
    }

    pub(super) fn print_table(
        &self,
        out: &mut impl Write,
        frames: usize,
        engine: Engine,
    ) -> Result<()> {
        writeln!(
            out,
            "{} of {frames} frames change between the baseline and the policy ({} engine)",
            self.changed,
            engine.name()
        )?;
        for (key, group) in self.ranked() {
            writeln!(
                out,
                "\n{:>8}  {}\n          baseline: {}\n          policy:   {}",
                group.frames, key.prefix, key.baseline, key.policy
            )?;
            for (frame, label, summary) in &group.examples {
                writeln!(out, "          frame {frame} ({label}) {summary}")?;
            }
            if group.frames > group.examples.len() {
                writeln!(
                    out,
                    "          ... and {} more (--format json lists them all)",
                    group.frames - group.examples.len()
                )?;
            }
        }
        Ok(())
    }

    /// The final JSON object: `{"summary": {...}}`.
    pub(super) fn print_summary_json(
        &self,
        out: &mut impl Write,
        engine: Engine,
        frames: usize,
    ) -> Result<()> {
        #[derive(Serialize)]
        struct Group<'a> {
            prefix: &'a str,
            frames: usize,
            baseline: &'a Side,
            policy: &'a Side,
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            engine: Engine,
            frames: usize,
            changed: usize,
            groups: Vec<Group<'a>>,
        }
        #[derive(Serialize)]
        struct Line<'a> {
            summary: Summary<'a>,
        }
        let groups = self
            .ranked()
            .into_iter()
            .map(|(key, group)| Group {
                prefix: &key.prefix,
                frames: group.frames,
                baseline: &key.baseline,
                policy: &key.policy,
            })
            .collect();
        let line = Line {
            summary: Summary {
                engine,
                frames,
                changed: self.changed,
                groups,
            },
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
        Ok(())
    }
}

/// The frame's source address, when the headers hold one.
fn source(frame: &[u8]) -> Option<IpAddr> {
    match parse(frame) {
        Parsed::Tcp { source, .. } => Some(source),
        Parsed::Malformed { source, .. } => source,
        Parsed::Pass { .. } => None,
    }
}
