//! The TCP RST+ACK that `action: reject` sends back for a blocked SYN, built the way a
//! packet library builds it: the IP and TCP headers and their checksums come from
//! etherparse, independently of the kernel program, which rewrites the frame in place.
//! Only the link layer (Ethernet, VLAN tags, PPPoE), which etherparse does not build with
//! PPPoE, is copied from the original frame: MACs swapped, the PPPoE length set.

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, TcpHeader};
use filter_common::{
    Family,
    wire::{IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, TCP_FIN, TCP_MIN_HEADER_LEN},
};

use super::parse::Segment;

/// Time to live / hop limit of a reply.
pub const REPLY_TTL: u8 = 64;
const PPP_PROTOCOL_LEN: u16 = 2;

/// The reply to the connection request `frame`, whose headers `segment` locates; the
/// caller has checked `segment.can_be_rejected()` (the whole TCP header is in the frame).
///
/// Ethernet: MACs swapped, everything from the EtherType to the IP header kept but the
/// PPPoE length (2 + the reply's IP length). IPv4: no options, DF, TTL 64, id 0, TOS 0.
/// IPv6: no extension headers, traffic class and flow label 0, hop limit 64. TCP: ports
/// swapped, sequence 0, acknowledgment = the request's sequence + SEG.LEN (1 for the SYN,
/// 1 for a FIN, plus the payload the IP length fields claim), RST|ACK, window 0.
pub fn build_reply(frame: &[u8], family: Family, segment: &Segment) -> Vec<u8> {
    let Segment { l3, l4, pppoe, .. } = *segment;
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let tcp = &frame[l4..l4 + TCP_MIN_HEADER_LEN];
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let sequence = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let data_offset = u32::from(tcp[12] >> 4) * 4;
    let fin = u32::from(tcp[13] & TCP_FIN != 0);
    // The IP payload as the header fields say, less the headers between IP and TCP.
    let ip_payload = match family {
        Family::Ipv6 => u32::from(be16(l3 + 4)).saturating_sub((l4 - l3 - IPV6_HEADER_LEN) as u32),
        _ => u32::from(be16(l3 + 2)).saturating_sub((l4 - l3) as u32),
    };
    let payload = ip_payload.saturating_sub(data_offset);
    let segment_len = 1u32.saturating_add(fin).saturating_add(payload);

    let mut reset = TcpHeader::new(dport, sport, 0, 0);
    reset.rst = true;
    reset.ack = true;
    reset.acknowledgment_number = sequence.wrapping_add(segment_len);

    let mut reply = frame[..l3].to_vec();
    reply[0..6].copy_from_slice(&frame[6..12]);
    reply[6..12].copy_from_slice(&frame[0..6]);
    let ip_len = match family {
        Family::Ipv6 => {
            let mut destination = [0u8; 16];
            destination.copy_from_slice(&frame[l3 + 8..l3 + 24]);
            let mut source = [0u8; 16];
            source.copy_from_slice(&frame[l3 + 24..l3 + 40]);
            let ip = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: TCP_MIN_HEADER_LEN as u16,
                next_header: IpNumber::TCP,
                hop_limit: REPLY_TTL,
                source,
                destination,
            };
            reset.checksum = reset
                .calc_checksum_ipv6(&ip, &[])
                .expect("a bare TCP header fits");
            reply.extend_from_slice(&ip.to_bytes());
            IPV6_HEADER_LEN + TCP_MIN_HEADER_LEN
        }
        _ => {
            let mut destination = [0u8; 4];
            destination.copy_from_slice(&frame[l3 + 12..l3 + 16]);
            let mut source = [0u8; 4];
            source.copy_from_slice(&frame[l3 + 16..l3 + 20]);
            let mut ip = Ipv4Header::new(
                TCP_MIN_HEADER_LEN as u16,
                REPLY_TTL,
                IpNumber::TCP,
                source,
                destination,
            )
            .expect("a bare TCP header fits");
            ip.identification = 0;
            ip.dont_fragment = true;
            ip.header_checksum = ip.calc_header_checksum();
            reset.checksum = reset
                .calc_checksum_ipv4(&ip, &[])
                .expect("a bare TCP header fits");
            reply.extend_from_slice(&ip.to_bytes());
            IPV4_MIN_HEADER_LEN + TCP_MIN_HEADER_LEN
        }
    };
    reply.extend_from_slice(&reset.to_bytes());
    if let Some(pppoe) = pppoe {
        let length = PPP_PROTOCOL_LEN + ip_len as u16;
        reply[pppoe + 4..pppoe + 6].copy_from_slice(&length.to_be_bytes());
    }
    reply
}
