//! What `replay` prints: a table, JSON lines or a JUnit report, the `--expect` check and
//! the `--replies` capture, all fed one frame at a time (nothing kept per frame but
//! counts and a bounded list of mismatches).

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use filter_common::{Family, REASON_COUNT, Reason, Verdict};
use serde::{Serialize, Serializer};

use super::{Changes, Decision, Engine, Frame};
use crate::capture::{CaptureEnd, Expected, FrameWriter, LinkType, Outcome, Summary};

/// How the frames are printed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line a frame, then counts.
    Table,
    /// One JSON object a frame.
    Json,
    /// A JUnit XML report: one test case a capture, one failure a mismatch.
    Junit,
}

/// Mismatches (and changes) listed in full; the rest are counted.
const MAX_LISTED: usize = 1000;
/// Example frames printed under each group of changes in the table.
pub(super) const EXAMPLES: usize = 5;

/// Receives every record of every capture, in order.
pub trait Sink {
    fn capture_start(&mut self, capture: usize, path: &Path) -> Result<()>;
    fn frame(&mut self, frame: &Frame<'_>) -> Result<()>;
    fn capture_end(&mut self, capture: usize, path: &Path, end: &CaptureEnd) -> Result<()>;
}

/// Lower-case hex, two digits a byte, no separators.
pub fn hex(bytes: &[u8]) -> String {
    Hex(bytes).to_string()
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

pub(super) fn outcome_name<S: Serializer>(outcome: &Outcome, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match outcome {
        Outcome::Judged(verdict, _) => verdict.name(),
        Outcome::Skipped => crate::capture::SKIPPED,
    })
}

fn display<T: fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn optional_display<T: fmt::Display, S: Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => s.collect_str(value),
        None => s.serialize_none(),
    }
}

/// One JSON line of a plain replay.
#[derive(Serialize)]
struct FrameLine<'a> {
    frame: usize,
    capture: &'a Path,
    index: usize,
    len: usize,
    orig_len: usize,
    truncated: bool,
    #[serde(serialize_with = "display")]
    linktype: LinkType,
    engine: Engine,
    #[serde(flatten)]
    decision: &'a Decision<'a>,
    family: Option<Family>,
    #[serde(serialize_with = "optional_display")]
    summary: Option<Summary<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    /// The frame the program sent back (`reject`: a TCP RST+ACK), hex.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "optional_display"
    )]
    reply: Option<Hex<'a>>,
}

/// One JSON line of a baseline comparison: a frame whose verdict or reason changed.
#[derive(Serialize)]
struct ChangeLine<'a> {
    frame: usize,
    capture: &'a Path,
    index: usize,
    truncated: bool,
    #[serde(serialize_with = "display")]
    linktype: LinkType,
    engine: Engine,
    #[serde(serialize_with = "optional_display")]
    summary: Option<Summary<'a>>,
    baseline: &'a Decision<'a>,
    policy: &'a Decision<'a>,
}

/// Checks the policy's verdicts against an expect file as frames go by.
pub struct ExpectCheck {
    path: PathBuf,
    /// By frame number, and the next one not yet reached.
    expected: Vec<Expected>,
    next: usize,
}

impl ExpectCheck {
    pub fn new(path: PathBuf, mut expected: Vec<Expected>) -> Self {
        expected.sort_by_key(|e| e.frame);
        ExpectCheck {
            path,
            expected,
            next: 0,
        }
    }

    /// What is wrong with this frame's verdict, if anything.
    fn check(&mut self, frame: &Frame<'_>, engine: Engine, label: &str) -> Option<String> {
        let got = frame.policy.verdict;
        let said = got_text(engine, got);
        match self.expected.get(self.next) {
            Some(want) if want.frame == frame.frame => {
                self.next += 1;
                let summary = frame.bytes.map(Summary);
                (want.verdict != got).then(|| {
                    let mut text = format!(
                        "frame {} ({label}): expected {}, {said}",
                        frame.frame, want.verdict
                    );
                    if let Some(summary) = summary {
                        let _ = write!(text, "  [{summary}]");
                    }
                    text
                })
            }
            _ => Some(format!(
                "frame {} ({label}): no expected verdict in {} ({said})",
                frame.frame,
                self.path.display()
            )),
        }
    }

    /// Expectations for frames past the last one.
    fn past_the_end(&self, frames: usize) -> impl Iterator<Item = String> + '_ {
        self.expected[self.next..].iter().map(move |e| {
            format!(
                "{}:{}: frame {} is expected but the captures hold only {frames} frames",
                self.path.display(),
                e.line,
                e.frame
            )
        })
    }
}

fn got_text(engine: Engine, got: Outcome) -> String {
    match (engine, got) {
        (_, Outcome::Skipped) => "it was skipped".to_string(),
        (Engine::Kernel, got) => format!("the kernel said {got}"),
        (Engine::Model, got) => format!("the model said {got}"),
    }
}

/// Per capture, for the JUnit report and the closing lines.
struct CaptureReport {
    path: PathBuf,
    name: String,
    records: usize,
    failures: Vec<String>,
    /// Failures beyond those listed.
    unlisted: usize,
    early: Option<String>,
}

/// How the replay went, for the exit status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ending {
    pub frames: usize,
    pub mismatches: usize,
    pub changes: usize,
}

/// Every output of one replay; see [`Sink`].
pub struct Output<W: Write> {
    out: W,
    format: Format,
    engine: Engine,
    expect: Option<ExpectCheck>,
    replies: Option<(PathBuf, FrameWriter<BufWriter<File>>)>,
    changes: Option<Changes>,
    /// Frames by verdict and reason (judged), and skipped ones by link type.
    counts: [[usize; REASON_COUNT as usize]; Verdict::ALL.len()],
    skipped: BTreeMap<i32, (LinkType, usize)>,
    truncated: usize,
    frames: usize,
    /// Frames whose verdict differs from the expected one.
    mismatches: usize,
    /// Failures listed so far (mismatches, and changes under --fail-on-change).
    listed: usize,
    captures: Vec<CaptureReport>,
    label_width: usize,
    label: String,
}

impl<W: Write> Output<W> {
    pub fn new(out: W, format: Format, engine: Engine, captures: &[PathBuf]) -> Self {
        let captures: Vec<CaptureReport> = captures
            .iter()
            .map(|path| CaptureReport {
                path: path.clone(),
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.display().to_string()),
                records: 0,
                failures: Vec::new(),
                unlisted: 0,
                early: None,
            })
            .collect();
        // Room for the name and a six-digit record number.
        let label_width = captures
            .iter()
            .map(|c| c.name.len() + 7)
            .max()
            .unwrap_or(0)
            .max("CAPTURE".len());
        Output {
            out,
            format,
            engine,
            expect: None,
            replies: None,
            changes: None,
            counts: [[0; REASON_COUNT as usize]; Verdict::ALL.len()],
            skipped: BTreeMap::new(),
            truncated: 0,
            frames: 0,
            mismatches: 0,
            listed: 0,
            captures,
            label_width,
            label: String::new(),
        }
    }

    pub fn expect(mut self, check: ExpectCheck) -> Self {
        self.expect = Some(check);
        self
    }

    /// Writes the policy's replies to a pcap at `path`, in frame order.
    pub fn replies(mut self, path: &Path) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let writer = FrameWriter::new(BufWriter::new(file))
            .with_context(|| format!("writing {}", path.display()))?;
        self.replies = Some((path.to_path_buf(), writer));
        Ok(self)
    }

    /// Compares with a baseline: only changed frames are printed.
    pub fn changes(mut self, changes: Changes) -> Self {
        self.changes = Some(changes);
        self
    }

    fn fail(&mut self, capture: usize, failure: String) {
        let report = &mut self.captures[capture];
        if self.listed < MAX_LISTED {
            self.listed += 1;
            report.failures.push(failure);
        } else {
            report.unlisted += 1;
        }
    }

    fn table_line(&mut self, frame: &Frame<'_>) -> Result<()> {
        let (verdict, reason, family) = match frame.policy.verdict {
            Outcome::Judged(verdict, reason) => (
                verdict.name(),
                reason.name(),
                frame.policy.family.map_or("-", Family::name),
            ),
            Outcome::Skipped => (crate::capture::SKIPPED, "-", "-"),
        };
        let out = &mut self.out;
        write!(
            out,
            "{:>6}  {:<width$}  {verdict:<7}  {reason:<12}  {family:<6}  ",
            frame.frame,
            self.label,
            width = self.label_width
        )?;
        match frame.bytes {
            Some(bytes) => write!(out, "{}", Summary(bytes))?,
            None => write!(
                out,
                "link type {} ({})",
                frame.linktype,
                frame.linktype.number()
            )?,
        }
        if frame.truncated {
            write!(out, " (truncated: {} bytes on the wire)", frame.orig_len)?;
        }
        if let Some(note) = frame.note {
            write!(out, " ({note})")?;
        }
        if let Some(reply) = frame.policy.reply {
            write!(out, " (answered: {})", describe_reply(reply))?;
        }
        writeln!(out)?;
        Ok(())
    }

    /// Prints what is left (counts, the JUnit report, the groups of changes) and says how
    /// it went.
    pub fn finish(mut self) -> Result<Ending> {
        let mut past_the_end = Vec::new();
        if let Some(expect) = &self.expect {
            past_the_end.extend(expect.past_the_end(self.frames));
        }
        let last = self.captures.len().saturating_sub(1);
        for failure in past_the_end {
            self.mismatches += 1;
            self.fail(last, format!("mismatch: {failure}"));
        }
        if let Some((path, writer)) = self.replies.take() {
            let written = writer.written();
            writer
                .into_inner()
                .flush()
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{written} replies written to {}", path.display());
        }
        let summary = self.summary();
        let changes = self.changes.take();
        match (self.format, &changes) {
            (Format::Table, None) => {
                writeln!(self.out)?;
                self.out.write_all(summary.as_bytes())?;
            }
            (Format::Table, Some(changes)) => {
                changes.print_table(&mut self.out, self.frames, self.engine)?;
                eprint!("{summary}");
            }
            (Format::Json, None) => eprint!("{summary}"),
            (Format::Json, Some(changes)) => {
                changes.print_summary_json(&mut self.out, self.engine, self.frames)?;
                eprint!("{summary}");
            }
            (Format::Junit, _) => {
                self.print_junit()?;
                eprint!("{summary}");
            }
        }
        self.out.flush()?;
        let mismatches = self.mismatches;
        let changed = changes.as_ref().map_or(0, Changes::changed);
        for failure in self.captures.iter().flat_map(|c| &c.failures) {
            eprintln!("{failure}");
        }
        let unlisted: usize = self.captures.iter().map(|c| c.unlisted).sum();
        if unlisted > 0 {
            eprintln!("... and {unlisted} more");
        }
        if let Some(expect) = &self.expect {
            let path = expect.path.display();
            if mismatches == 0 {
                eprintln!("all {} frames match {path}", self.frames);
            } else {
                eprintln!("{mismatches} mismatches against {path}");
            }
        }
        Ok(Ending {
            frames: self.frames,
            mismatches,
            changes: changed,
        })
    }

    /// Counts per verdict and reason, skipped records, truncations and early ends.
    fn summary(&self) -> String {
        let mut text = format!(
            "{} frames, judged by the {}\n",
            self.frames,
            match self.engine {
                Engine::Kernel => "kernel program",
                Engine::Model => "reference model (--engine model), not the kernel",
            }
        );
        // By name, as the summary has always been sorted.
        let mut rows: Vec<(&str, &str, usize)> = Vec::new();
        for verdict in Verdict::ALL {
            for reason in Reason::ALL {
                let n = self.counts[verdict as usize][reason as usize];
                if n > 0 {
                    rows.push((verdict.name(), reason.name(), n));
                }
            }
        }
        rows.sort();
        for (verdict, reason, n) in rows {
            let _ = writeln!(text, "{n:>8}  {verdict:<5} {reason}");
        }
        for (linktype, n) in self.skipped.values() {
            let _ = writeln!(
                text,
                "{n:>8}  skipped: link type {linktype} ({}) is not judged",
                linktype.number()
            );
        }
        if self.truncated > 0 {
            let _ = writeln!(
                text,
                "{:>8}  truncated by the capture's snap length (judged on the bytes captured)",
                self.truncated
            );
        }
        for capture in &self.captures {
            if let Some(early) = &capture.early {
                let _ = writeln!(
                    text,
                    "note: {} ended after {} records: {early}",
                    capture.path.display(),
                    capture.records
                );
            }
        }
        text
    }

    fn print_junit(&mut self) -> Result<()> {
        use quick_xml::escape::escape;
        let failures: usize = self
            .captures
            .iter()
            .map(|c| c.failures.len() + c.unlisted)
            .sum();
        let out = &mut self.out;
        writeln!(out, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
        writeln!(
            out,
            r#"<testsuites name="filter-agent replay" tests="{}" failures="{failures}">"#,
            self.captures.len()
        )?;
        writeln!(
            out,
            r#"  <testsuite name="filter-agent replay ({} engine)" tests="{}" failures="{failures}" errors="0" skipped="0">"#,
            self.engine.name(),
            self.captures.len()
        )?;
        writeln!(out, "    <properties>")?;
        writeln!(
            out,
            r#"      <property name="engine" value="{}"/>"#,
            self.engine.name()
        )?;
        writeln!(out, "    </properties>")?;
        for capture in &self.captures {
            let name = escape(capture.path.to_string_lossy().into_owned()).into_owned();
            writeln!(
                out,
                r#"    <testcase classname="replay.{}" name="{name}">"#,
                self.engine.name()
            )?;
            for failure in &capture.failures {
                let text = escape(failure.as_str());
                writeln!(
                    out,
                    r#"      <failure message="{text}" type="mismatch">{text}</failure>"#
                )?;
            }
            if capture.unlisted > 0 {
                writeln!(
                    out,
                    r#"      <failure message="{} more not listed" type="mismatch"/>"#,
                    capture.unlisted
                )?;
            }
            let mut system_out = format!(
                "{} records, judged by the {} engine",
                capture.records,
                self.engine.name()
            );
            if let Some(early) = &capture.early {
                let _ = write!(system_out, "; the file ended early: {early}");
            }
            writeln!(
                out,
                "      <system-out>{}</system-out>",
                escape(system_out.as_str())
            )?;
            writeln!(out, "    </testcase>")?;
        }
        writeln!(out, "  </testsuite>")?;
        writeln!(out, "</testsuites>")?;
        Ok(())
    }
}

impl<W: Write> Sink for Output<W> {
    fn capture_start(&mut self, _capture: usize, _path: &Path) -> Result<()> {
        if self.frames == 0 && self.format == Format::Table && self.changes.is_none() {
            writeln!(
                self.out,
                "{:>6}  {:<width$}  {:<7}  {:<12}  {:<6}  SUMMARY",
                "FRAME",
                "CAPTURE",
                "VERDICT",
                "REASON",
                "FAMILY",
                width = self.label_width
            )?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: &Frame<'_>) -> Result<()> {
        self.frames += 1;
        self.captures[frame.capture].records = frame.index;
        match frame.policy.verdict {
            Outcome::Judged(verdict, reason) => {
                self.counts[verdict as usize][reason as usize] += 1;
            }
            Outcome::Skipped => {
                self.skipped
                    .entry(frame.linktype.number())
                    .or_insert((frame.linktype, 0))
                    .1 += 1;
            }
        }
        self.truncated += usize::from(frame.truncated);
        self.label.clear();
        let _ = write!(
            self.label,
            "{}:{}",
            self.captures[frame.capture].name, frame.index
        );
        if let Some(expect) = &mut self.expect
            && let Some(failure) = expect.check(frame, self.engine, &self.label)
        {
            self.mismatches += 1;
            self.fail(frame.capture, format!("mismatch: {failure}"));
        }
        if let (Some((path, writer)), Some(reply)) = (&mut self.replies, frame.policy.reply) {
            writer
                .write(reply)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(changes) = &mut self.changes {
            let Some(baseline) = &frame.baseline else {
                return Ok(());
            };
            if !changes.record(frame, baseline, &self.label) {
                return Ok(());
            }
            if self.format == Format::Json {
                serde_json::to_writer(
                    &mut self.out,
                    &ChangeLine {
                        frame: frame.frame,
                        capture: frame.path,
                        index: frame.index,
                        truncated: frame.truncated,
                        linktype: frame.linktype,
                        engine: self.engine,
                        summary: frame.bytes.map(Summary),
                        baseline,
                        policy: &frame.policy,
                    },
                )?;
                writeln!(self.out)?;
            }
            if changes.fail_on_change() {
                let failure = format!(
                    "change: frame {} ({}): {} under the baseline, {} under the policy",
                    frame.frame, self.label, baseline.verdict, frame.policy.verdict
                );
                self.fail(frame.capture, failure);
            }
            return Ok(());
        }
        match self.format {
            Format::Table => self.table_line(frame)?,
            Format::Json => {
                serde_json::to_writer(
                    &mut self.out,
                    &FrameLine {
                        frame: frame.frame,
                        capture: frame.path,
                        index: frame.index,
                        len: frame.len,
                        orig_len: frame.orig_len,
                        truncated: frame.truncated,
                        linktype: frame.linktype,
                        engine: self.engine,
                        decision: &frame.policy,
                        family: frame.policy.family,
                        summary: frame.bytes.map(Summary),
                        note: frame.note,
                        reply: frame.policy.reply.map(Hex),
                    },
                )?;
                writeln!(self.out)?;
            }
            Format::Junit => {}
        }
        Ok(())
    }

    fn capture_end(&mut self, capture: usize, _path: &Path, end: &CaptureEnd) -> Result<()> {
        let report = &mut self.captures[capture];
        report.records = end.records;
        report.early = end.early.clone();
        Ok(())
    }
}

/// "tcp rst+ack 192.0.2.1 -> 100.64.0.1 port 49152, 54 bytes", as far as it parses.
fn describe_reply(reply: &[u8]) -> String {
    let summary = match etherparse::SlicedPacket::from_ethernet(reply) {
        Ok(etherparse::SlicedPacket {
            net: Some(net),
            transport: Some(etherparse::TransportSlice::Tcp(tcp)),
            ..
        }) => {
            let (source, destination): (std::net::IpAddr, std::net::IpAddr) = match net {
                etherparse::NetSlice::Ipv4(ip) => (
                    ip.header().source_addr().into(),
                    ip.header().destination_addr().into(),
                ),
                etherparse::NetSlice::Ipv6(ip) => (
                    ip.header().source_addr().into(),
                    ip.header().destination_addr().into(),
                ),
                _ => return format!("{} bytes", reply.len()),
            };
            let flags = match (tcp.rst(), tcp.ack()) {
                (true, true) => "rst+ack",
                (true, false) => "rst",
                _ => "segment",
            };
            format!(
                "tcp {flags} {source} -> {destination} port {}, ",
                tcp.destination_port()
            )
        }
        // etherparse does not read PPPoE: the summary's link layers say what it is.
        _ => format!("{}, ", Summary(reply)),
    };
    format!("{summary}{} bytes", reply.len())
}
