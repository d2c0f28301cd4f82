//! Captures and expected-verdict files, as `replay` reads them, and one-line frame
//! summaries for its output.

use std::fmt;

use crate::model::parse::{Parsed, parse};

mod expect;
mod pcap;
mod reader;

pub use expect::{Expected, Outcome, SKIPPED, parse_expect};
pub use pcap::{FrameWriter, write_pcap_to};
pub use reader::{CaptureEnd, LinkType, Record, for_each_record, read_frames};

/// A short human description of a frame: encapsulation, then addresses and port when
/// readable. Formatted straight into the output, without a string of its own.
pub struct Summary<'a>(pub &'a [u8]);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        link_layers(self.0, f)?;
        match parse(self.0) {
            Parsed::Tcp {
                source,
                destination,
                dport,
                ..
            } => write!(f, " tcp {source} -> {destination} port {dport}"),
            Parsed::Malformed {
                source: Some(source),
                ..
            } => write!(f, " from {source}, headers cut or invalid"),
            Parsed::Malformed { source: None, .. } => f.write_str(", headers cut or invalid"),
            Parsed::Pass { .. } => Ok(()),
        }
    }
}

/// A short human description of a frame (see [`Summary`]).
pub fn summarize(frame: &[u8]) -> String {
    Summary(frame).to_string()
}

/// "vlan 10 / vlan 20 / pppoe / ipv4", following the same rules as the filter.
fn link_layers(frame: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut tags = 0;
    let mut offset = 14;
    let mut ethertype = be16(12);
    while let Some(tpid @ (0x8100 | 0x88a8 | 0x9100)) = ethertype {
        if tags == 2 {
            break;
        }
        match be16(offset).map(|tci| tci & 0x0fff) {
            Some(vid) => write!(f, "vlan {vid} (0x{tpid:04x}) / ")?,
            None => f.write_str("vlan (cut) / ")?,
        }
        tags += 1;
        ethertype = be16(offset + 2);
        offset += 4;
    }
    match ethertype {
        None => f.write_str("ethernet (cut)"),
        Some(0x0800) => f.write_str("ipv4"),
        Some(0x86dd) => f.write_str("ipv6"),
        Some(0x0806) => f.write_str("arp"),
        Some(0x8863) => f.write_str("pppoe discovery"),
        Some(0x8864) => match be16(offset + 6) {
            Some(0x0021) => f.write_str("pppoe / ipv4"),
            Some(0x0057) => f.write_str("pppoe / ipv6"),
            Some(protocol) => write!(f, "pppoe / ppp 0x{protocol:04x}"),
            None => f.write_str("pppoe (cut)"),
        },
        Some(other) => write!(f, "ethertype 0x{other:04x}"),
    }
}
