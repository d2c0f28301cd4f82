//! `replay`: captures in -> BPF_PROG_TEST_RUN of the real program -> verdicts out.
//! Verdict and reason come from the kernel (return code and counters), never the model;
//! so does the reply frame of a `reject` (what the program left to XDP_TX).
//!
//! All captures are judged by one freshly loaded program, in order: the relay limit's
//! buckets carry from frame to frame (and capture to capture) as they would on the wire,
//! only much faster, so no bucket refills during a replay of a few seconds.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use filter_common::{Family, Reason, Verdict};
use serde::{Serialize, Serializer};

use crate::{
    capture::{self, Expected},
    dataplane::{Dataplane, KernelVerdict, MIN_FRAME_LEN},
    image::MapImage,
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
    pub verdict: Verdict,
    pub reason: Reason,
    pub family: Family,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
    /// The frame the program sent back (`reject`: a TCP RST+ACK); hex in JSON.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "hex_frame")]
    pub reply: Option<Vec<u8>>,
}

fn hex_frame<S: Serializer>(frame: &Option<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
    match frame {
        Some(bytes) => serializer.serialize_str(&hex(bytes)),
        None => serializer.serialize_none(),
    }
}

/// Lower-case hex, two digits a byte, no separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, b| {
        let _ = write!(text, "{b:02x}");
        text
    })
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
                verdict: kernel.verdict,
                reason: kernel.reason,
                family: kernel.family,
                summary: capture::summarize(frame),
                note,
                reply: kernel.reply,
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
        "{:>6}  {:<capture_width$}  {:<7}  {:<12}  {:<6}  SUMMARY",
        "FRAME", "CAPTURE", "VERDICT", "REASON", "FAMILY"
    )?;
    for v in verdicts {
        let mut note = v.note.map(|n| format!(" ({n})")).unwrap_or_default();
        if let Some(reply) = &v.reply {
            let _ = write!(note, " (answered: {})", describe_reply(reply));
        }
        writeln!(
            out,
            "{:>6}  {:<capture_width$}  {:<7}  {:<12}  {:<6}  {}{note}",
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
        _ => format!("{}, ", capture::summarize(reply)),
    };
    format!("{summary}{} bytes", reply.len())
}

/// Writes the reply frames of `verdicts` (those the program sent back, in frame order) to
/// a classic pcap at `path`; returns how many there were. Frame `i` of the file is
/// stamped `i` ms after 2024-01-01, so equal replies make equal files.
pub fn write_replies(path: &Path, verdicts: &[FrameVerdict]) -> Result<usize> {
    let replies: Vec<Vec<u8>> = verdicts.iter().filter_map(|v| v.reply.clone()).collect();
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    capture::write_pcap_to(&mut out, &replies)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(replies.len())
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
    // By name, as the summary has always been sorted.
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for v in verdicts {
        *counts
            .entry((v.verdict.name(), v.reason.name()))
            .or_default() += 1;
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
