//! Captures and expected-verdict files, as `replay` reads them, and one-line frame
//! summaries for its output.

use std::fmt::Write as _;

use crate::model::parse::{Parsed, parse};

mod expect;
mod pcap;

pub use expect::{Expected, parse_expect};
pub use pcap::{read_frames, write_pcap_to};

/// A short human description: encapsulation, then addresses and port when readable.
pub fn summarize(frame: &[u8]) -> String {
    let mut text = link_layers(frame);
    match parse(frame) {
        Parsed::Tcp {
            source,
            destination,
            dport,
            ..
        } => {
            let _ = write!(text, " tcp {source} -> {destination} port {dport}");
        }
        Parsed::Malformed {
            source: Some(source),
            ..
        } => {
            let _ = write!(text, " from {source}, headers cut or invalid");
        }
        Parsed::Malformed { source: None, .. } => text.push_str(", headers cut or invalid"),
        Parsed::Pass { .. } => {}
    }
    text
}

/// "vlan 10 / vlan 20 / pppoe / ipv4", following the same rules as the filter.
fn link_layers(frame: &[u8]) -> String {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let mut parts = Vec::new();
    let mut offset = 14;
    let mut ethertype = be16(12);
    while let Some(tpid @ (0x8100 | 0x88a8 | 0x9100)) = ethertype {
        if parts.len() == 2 {
            break;
        }
        let vid = be16(offset).map(|tci| tci & 0x0fff);
        parts.push(match vid {
            Some(vid) => format!("vlan {vid} (0x{tpid:04x})"),
            None => "vlan (cut)".to_string(),
        });
        ethertype = be16(offset + 2);
        offset += 4;
    }
    let name = match ethertype {
        None => "ethernet (cut)".to_string(),
        Some(0x0800) => "ipv4".to_string(),
        Some(0x86dd) => "ipv6".to_string(),
        Some(0x0806) => "arp".to_string(),
        Some(0x8863) => "pppoe discovery".to_string(),
        Some(0x8864) => match be16(offset + 6) {
            Some(0x0021) => "pppoe / ipv4".to_string(),
            Some(0x0057) => "pppoe / ipv6".to_string(),
            Some(protocol) => format!("pppoe / ppp 0x{protocol:04x}"),
            None => "pppoe (cut)".to_string(),
        },
        Some(other) => format!("ethertype 0x{other:04x}"),
    };
    parts.push(name);
    parts.join(" / ")
}
